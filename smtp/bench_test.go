//go:build unix

package smtp

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/batchsender/batchsender/sdk"
)

// benchSend sends b.N personalized messages in chunks of MaxChunk to a
// local go-smtp server (AUTH PLAIN, no TLS) and reports messages/s.
//
//	go test ./smtp -run '^$' -bench SMTP -benchtime 20000x
func benchSend(b *testing.B, extra map[string]any) {
	f := newFake(b, fakeOptions{discard: true})
	p := provision(b, f, extra)
	s := sender(b, p)
	chunks := make([][]sdk.Item, 0, b.N/maxChunk+1)
	for i := 0; i < b.N; i += maxChunk {
		n := min(maxChunk, b.N-i)
		its := make([]sdk.Item, n)
		for j := range its {
			its[j] = sdk.Item{ID: fmt.Sprintf("itm_bench_%d", i+j), Attempt: 1, Data: item(i + j)}
		}
		chunks = append(chunks, its)
	}
	b.ResetTimer()
	cpu0 := cpuTime()
	start := time.Now()
	for _, c := range chunks {
		for i, r := range s.Send(context.Background(), c) {
			if r.Outcome != sdk.OutcomeOK {
				b.Fatalf("item %d: %+v", i, r)
			}
		}
	}
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	if got := f.count.Load(); got != int64(b.N) {
		b.Fatalf("server received %d messages, want %d", got, b.N)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(f.sessions.Load()), "sessions")
	// CPU per message, client and server together: on a machine shared
	// with other work, msgs/s swings with the load, this much less.
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/msg")
}

// cpuTime returns the process's user plus system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkSMTPPooled: 8 pooled sessions, up to 1000 messages each.
func BenchmarkSMTPPooled(b *testing.B) {
	benchSend(b, map[string]any{"pool_size": 8, "max_messages_per_connection": 1000, "timeout": "30s"})
}

// BenchmarkSMTPConnPerMessage is the baseline: the same concurrency, but a
// new session (TCP connect, greeting, EHLO, AUTH, QUIT) for every message.
func BenchmarkSMTPConnPerMessage(b *testing.B) {
	benchSend(b, map[string]any{"pool_size": 8, "max_messages_per_connection": 1, "timeout": "30s"})
}
