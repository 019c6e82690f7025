package benchmarks

import (
	"context"
	"os"
	"strconv"
	"testing"
)

// envInt reads a size from the environment, for runs smaller or larger
// than the defaults (BATCHSENDER_BENCH_ITEMS, BATCHSENDER_BENCH_ROWS).
func envInt(b *testing.B, name string, def int) int {
	b.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		b.Fatalf("%s: %v", name, err)
	}
	return n
}

// Each benchmark does its whole measurement once, however large b.N: one
// run takes seconds to minutes, and the figures are reported as metrics.
// Run with: go test -run '^$' -bench . -benchtime 1x ./benchmarks/

// BenchmarkWebhookFanout fans BATCHSENDER_BENCH_ITEMS (100,000) webhooks
// out through the real binary and then runs the bare loop.
func BenchmarkWebhookFanout(b *testing.B) {
	cfg := Config{WorkDir: b.TempDir(), Items: envInt(b, "BATCHSENDER_BENCH_ITEMS", 100_000), Logf: b.Logf}
	b.ResetTimer()
	res, err := RunFanout(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Log(res)
	b.ReportMetric(res.ItemsPerSec, "items/s")
	b.ReportMetric(res.BarePerSec, "bare-req/s")
	b.ReportMetric(res.Ratio, "ratio")
	b.ReportMetric(float64(res.PeakRSS)/1e6, "peak-MB")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkCSVIngestAndSend uploads BATCHSENDER_BENCH_ROWS (1,000,000) CSV
// rows into a draft, sends them, and reports rows/s and peak RSS.
func BenchmarkCSVIngestAndSend(b *testing.B) {
	cfg := Config{WorkDir: b.TempDir(), Logf: b.Logf}
	rows := envInt(b, "BATCHSENDER_BENCH_ROWS", 1_000_000)
	b.ResetTimer()
	res, err := RunIngestAndSend(context.Background(), cfg, rows)
	if err != nil {
		b.Fatal(err)
	}
	b.Log(res)
	b.ReportMetric(res.RowsPerSec, "rows/s")
	b.ReportMetric(res.ItemsPerSec, "items/s")
	b.ReportMetric(float64(res.IngestRSS)/1e6, "ingest-peak-MB")
	b.ReportMetric(float64(res.PeakRSS)/1e6, "peak-MB")
	b.ReportMetric(0, "ns/op")
}

// TestPayloadShape keeps the bare loop's body the shape the server sends.
func TestPayloadShape(t *testing.T) {
	t.Parallel()
	if got := string(payload(nil, 42, 3)); got != `{"n":42,"pad":"xxx"}` {
		t.Fatalf("payload = %s", got)
	}
}
