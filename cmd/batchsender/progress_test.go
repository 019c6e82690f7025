package main

import (
	"strings"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
)

func TestProgressOutsideATerminalPrintsThrottledLines(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := &progress{w: &out, start: now, now: func() time.Time { return now }}
	b := batchsender.Batch{ID: "bat_1", Status: batchsender.BatchRunning, Total: 10, Counts: batchsender.Counts{Pending: 10}}
	p.update(b)
	b.Counts = batchsender.Counts{Pending: 5, Succeeded: 5}
	now = now.Add(100 * time.Millisecond)
	p.update(b) // within a second of the last line: not printed
	now = now.Add(2 * time.Second)
	b.Counts = batchsender.Counts{Pending: 2, InFlight: 1, Succeeded: 6, Failed: 1}
	p.update(b)
	b.Status, b.Counts = batchsender.BatchCompleted, batchsender.Counts{Succeeded: 9, Failed: 1}
	p.finish(b)

	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	want := []string{
		"[>                             ] 0/10   0%  succeeded 0  failed 0  in flight 0  pending 10  running",
		"[=====================>        ] 7/10  70%  succeeded 6  failed 1  in flight 1  pending 2  3/s  running",
		"[==============================] 10/10 100%  succeeded 9  failed 1  in flight 0  pending 0  5/s  completed",
		"Batch bat_1 completed in 2.1s: 9 succeeded, 1 failed, 0 cancelled, 0 skipped, 0 unknown of 10.",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	if strings.Contains(out.String(), "\r") {
		t.Fatal("carriage returns outside a terminal")
	}
}
