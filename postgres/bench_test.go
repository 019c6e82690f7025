package postgres

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/benchmarks"
	"github.com/jackc/pgx/v5"
)

// BenchmarkIngestCopy measures BatchCreate streaming items through COPY.
// Run: go test ./postgres -run '^$' -bench IngestCopy -benchtime 3x
func BenchmarkIngestCopy(b *testing.B) {
	const rows = 100_000
	f := setup(b, newStore(b))
	var total int
	start := time.Now()
	for b.Loop() {
		f.batch(b, batchsender.BatchDraft, rows, batchsender.BatchOptions{})
		total += rows
	}
	b.ReportMetric(float64(total)/time.Since(start).Seconds(), "rows/s")
}

// BenchmarkClaimWrite measures the engine's store round trip without any
// sending: claim a chunk, write a success result for each item, repeat,
// with one and with four concurrent workers on one batch.
// Run: go test ./postgres -run '^$' -bench ClaimWrite -benchtime 3x
func BenchmarkClaimWrite(b *testing.B) {
	for _, workers := range []int{1, 4} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			const items, chunk = 20_000, 500
			f := setup(b, newStore(b))
			ctx := context.Background()
			var total int
			var elapsed, pgCPU time.Duration
			for b.Loop() {
				b.StopTimer()
				batch := f.batch(b, batchsender.BatchRunning, items, batchsender.BatchOptions{})
				cpu0 := backendsCPU(b, f.s)
				b.StartTimer()
				start := time.Now()
				var wg sync.WaitGroup
				for w := range workers {
					wg.Go(func() {
						owner := fmt.Sprintf("w%d", w)
						for {
							now := time.Now()
							got, err := f.s.ChunkClaim(ctx, batchsender.ChunkClaimParams{BatchID: batch.ID, Owner: owner, Now: now, LeaseUntil: now.Add(time.Minute), Limit: chunk})
							if err != nil {
								b.Error(err)
								return
							}
							if len(got) == 0 {
								return
							}
							rs := make([]batchsender.ItemResult, len(got))
							for i, it := range got {
								rs[i] = batchsender.ItemResult{ItemID: it.ID, BatchID: it.BatchID, Owner: owner, Status: batchsender.ItemSucceeded,
									ProviderMessageID: "m", Units: 1,
									Attempt: batchsender.Attempt{ItemID: it.ID, Number: it.Attempts, StartedAt: now, Latency: time.Millisecond, Outcome: "ok", StatusCode: 200}}
							}
							if _, err := f.s.ItemResultsWriteMany(ctx, rs); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				elapsed += time.Since(start)
				b.StopTimer()
				for pid, c := range backendsCPU(b, f.s) {
					pgCPU += c - cpu0[pid]
				}
				b.StartTimer()
				total += items
				if got := f.get(b, batch.ID); got.Status != batchsender.BatchCompleted || got.Counts.Succeeded != items {
					b.Fatalf("batch ended %s with %+v", got.Status, got.Counts)
				}
			}
			b.ReportMetric(float64(total)/elapsed.Seconds(), "items/s")
			b.ReportMetric(float64(pgCPU.Microseconds())/float64(total), "pg-µs/item")
		})
	}
}

// backendsCPU returns the CPU time so far of each PostgreSQL backend of the
// store's pool (PostgreSQL runs on this machine in tests).
func backendsCPU(b *testing.B, s *Store) map[int]time.Duration {
	b.Helper()
	rows, err := s.pool.Query(context.Background(), `SELECT pid FROM pg_stat_activity WHERE datname = current_database()
		AND backend_type = 'client backend' AND application_name = (SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid())`)
	if err != nil {
		b.Fatal(err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		b.Fatal(err)
	}
	out := make(map[int]time.Duration, len(pids))
	for _, pid := range pids {
		if c, err := benchmarks.ProcessCPU(int(pid)); err == nil {
			out[int(pid)] = c
		}
	}
	return out
}
