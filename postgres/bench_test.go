package postgres

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
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
			var elapsed time.Duration
			for b.Loop() {
				b.StopTimer()
				batch := f.batch(b, batchsender.BatchRunning, items, batchsender.BatchOptions{})
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
				total += items
				if got := f.get(b, batch.ID); got.Status != batchsender.BatchCompleted || got.Counts.Succeeded != items {
					b.Fatalf("batch ended %s with %+v", got.Status, got.Counts)
				}
			}
			b.ReportMetric(float64(total)/elapsed.Seconds(), "items/s")
		})
	}
}
