package engine_test

import (
	"context"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/engine"
	"github.com/batchsender/batchsender/sdk"
)

// BenchmarkEngineSQLite measures items delivered per second end to end on
// SQLite with a provider that does nothing (or waits 5ms): claim, send,
// classify and group commit, every result durable. b.N is the number of
// items, so run it with -benchtime=50000x or so; batch creation is not
// timed. Compare with sqlite's BenchmarkClaimWriteResults, the store path
// alone in chunks of 500.
func BenchmarkEngineSQLite(b *testing.B) {
	cases := []struct {
		name, provider string
		latency        time.Duration
	}{
		{"single", "test.noop", 0},
		{"single_latency_5ms", "test.noop", 5 * time.Millisecond},
		{"chunks_of_100", "test.noopbulk", 0},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			f := setup(b, tc.provider)
			if tc.latency > 0 {
				f.ctl.send = each(func(context.Context, sdk.Item) sdk.Result {
					time.Sleep(tc.latency)
					return sdk.OK("m")
				})
			}
			batch := f.batch(b, b.N, batchsender.BatchRunning, batchsender.BatchOptions{})
			e, err := engine.New(engine.Config{Store: f.store, Providers: f.cache, PollInterval: 20 * time.Millisecond})
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			runtime.GC()
			b.ResetTimer()
			start, cpu0 := time.Now(), cpuTime()
			go func() { done <- e.Run(ctx) }()
			for {
				got, err := f.store.BatchGetByID(f.ctx, f.project.ID, batch.ID)
				if err != nil {
					b.Fatal(err)
				}
				if got.Status == batchsender.BatchCompleted {
					break
				}
				time.Sleep(10 * time.Millisecond) // polling costs CPU the engine could use
			}
			elapsed, cpu := time.Since(start), cpuTime()-cpu0
			b.StopTimer()
			cancel()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			st := e.Stats()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "items/s")
			// On a shared machine CPU time measures the work better than
			// the wall clock.
			b.ReportMetric(float64(b.N)/cpu.Seconds(), "items/cpu-s")
			b.ReportMetric(float64(st.ItemsClaimed)/float64(max(st.Claims, 1)), "items/claim")
			b.ReportMetric(float64(st.ResultsWritten)/float64(max(st.Flushes, 1)), "results/flush")
		})
	}
}

// cpuTime returns the CPU time (user and system) the process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
