package sqlite_test

import (
	"context"
	"encoding/json"
	"fmt"
	"iter"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/sqlite"
)

// benchItems yields n items shaped like webhook items of a real upload.
func benchItems(n int) iter.Seq2[batchsender.NewItem, error] {
	return func(yield func(batchsender.NewItem, error) bool) {
		for i := range n {
			data := fmt.Appendf(nil, `{"url":"https://hooks.example.com/in/%d","payload":{"user_id":%d,"email":"user%d@example.com","plan":"pro"}}`, i%50, i, i)
			if !yield(batchsender.NewItem{Data: json.RawMessage(data)}, nil) {
				return
			}
		}
	}
}

// open2 opens a store in a temporary directory with one project and one
// connection.
func open2(tb testing.TB) (*sqlite.Store, string, string) {
	tb.Helper()
	s := openAt(tb, filepath.Join(tb.TempDir(), "bench.db"))
	p, err := s.ProjectCreate(context.Background(), "bench")
	if err != nil {
		tb.Fatal(err)
	}
	c, err := s.ConnectionCreate(context.Background(), batchsender.ConnectionCreateParams{
		ProjectID: p.ID, Provider: "webhook.http", Name: "hooks", Config: json.RawMessage(`{}`),
	})
	if err != nil {
		tb.Fatal(err)
	}
	return s, p.ID, c.ID
}

// BenchmarkBatchCreate ingests batches of 100,000 items, each in one
// BatchCreate call, and reports rows/s.
func BenchmarkBatchCreate(b *testing.B) {
	const n = 100_000
	ctx := context.Background()
	s, projectID, connID := open2(b)
	var rows int
	start, cpu0 := time.Now(), cpuTime()
	for b.Loop() {
		if _, err := s.BatchCreate(ctx, batchsender.BatchCreateParams{
			ProjectID: projectID, Module: "webhook", ConnectionID: connID, Provider: "webhook.http",
			Status: batchsender.BatchRunning, Items: benchItems(n),
		}); err != nil {
			b.Fatal(err)
		}
		rows += n
	}
	b.ReportMetric(float64(rows)/time.Since(start).Seconds(), "rows/s")
	b.ReportMetric(float64(rows)/(cpuTime()-cpu0).Seconds(), "rows/cpu-s")
}

// BenchmarkClaimWriteResults runs the engine's store path alone: claim a
// chunk of 500, write 500 succeeded results (each with its attempt
// record), until a 100,000-item batch is done; it reports items/s. The
// results are written in calls of 500 and of 95 (what the engine's
// completer wrote per flush in a fan-out of webhooks).
func BenchmarkClaimWriteResults(b *testing.B) {
	for _, write := range []int{500, 95} {
		b.Run(fmt.Sprintf("write%d", write), func(b *testing.B) { benchClaimWriteResults(b, write) })
	}
}

func benchClaimWriteResults(b *testing.B, write int) {
	const n, chunk = 100_000, 500
	ctx := context.Background()
	s, projectID, connID := open2(b)
	var items int
	var elapsed, cpu time.Duration
	for b.Loop() {
		b.StopTimer()
		batch, err := s.BatchCreate(ctx, batchsender.BatchCreateParams{
			ProjectID: projectID, Module: "webhook", ConnectionID: connID, Provider: "webhook.http",
			Status: batchsender.BatchRunning, Items: benchItems(n),
		})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start, cpu0 := time.Now(), cpuTime()
		results := make([]batchsender.ItemResult, 0, chunk)
		for {
			now := time.Now()
			claimed, err := s.ChunkClaim(ctx, batchsender.ChunkClaimParams{
				BatchID: batch.ID, Owner: "bench", Now: now, LeaseUntil: now.Add(time.Minute), Limit: chunk,
			})
			if err != nil {
				b.Fatal(err)
			}
			if len(claimed) == 0 {
				break
			}
			results = results[:0]
			for _, it := range claimed {
				results = append(results, batchsender.ItemResult{
					ItemID: it.ID, BatchID: it.BatchID, Owner: "bench", Status: batchsender.ItemSucceeded, Units: 1,
					ProviderMessageID: it.ID,
					Attempt: batchsender.Attempt{ItemID: it.ID, Number: it.Attempts, StartedAt: now,
						Latency: time.Millisecond, Outcome: "ok", StatusCode: 200, Response: `{"ok":true}`},
				})
			}
			for part := range slices.Chunk(results, write) {
				if w, err := s.ItemResultsWriteMany(ctx, part); err != nil || w != len(part) {
					b.Fatalf("ItemResultsWriteMany = %d, %v", w, err)
				}
			}
			items += len(claimed)
		}
		elapsed += time.Since(start)
		cpu += cpuTime() - cpu0
		got, err := s.BatchGetByID(ctx, projectID, batch.ID)
		if err != nil || got.Status != batchsender.BatchCompleted || got.Counts.Succeeded != n {
			b.Fatalf("batch after the loop = %+v, %v", got, err)
		}
	}
	b.ReportMetric(float64(items)/elapsed.Seconds(), "items/s")
	b.ReportMetric(float64(items)/cpu.Seconds(), "items/cpu-s")
}

// cpuTime returns the CPU time (user and system) the process used so far.
// On a shared machine it measures the work better than the wall clock.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
