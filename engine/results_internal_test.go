package engine

import (
	"testing"
	"time"

	"github.com/batchsender/batchsender"
)

func TestBackoffIsFullJitterWithinBounds(t *testing.T) {
	t.Parallel()
	opts := batchsender.BatchOptions{
		RetryBaseDelay: batchsender.Duration(100 * time.Millisecond),
		RetryMaxDelay:  batchsender.Duration(time.Second),
	}.WithDefaults()
	for _, tc := range []struct {
		attempt int
		ceiling time.Duration
	}{
		{1, 100 * time.Millisecond},
		{2, 200 * time.Millisecond},
		{4, 800 * time.Millisecond},
		{5, time.Second}, // 1.6s capped
		{80, time.Second},
	} {
		var lo, hi time.Duration = tc.ceiling, 0
		for range 2000 {
			d := backoff(opts, tc.attempt)
			if d < 0 || d > tc.ceiling {
				t.Fatalf("attempt %d: backoff %s outside [0, %s]", tc.attempt, d, tc.ceiling)
			}
			lo, hi = min(lo, d), max(hi, d)
		}
		// Full jitter spreads over the whole range, not around the ceiling.
		if lo > tc.ceiling/10 || hi < tc.ceiling*9/10 {
			t.Fatalf("attempt %d: 2000 backoffs spread only over [%s, %s] of [0, %s]", tc.attempt, lo, hi, tc.ceiling)
		}
	}
}

func TestTruncateKeepsUTF8Whole(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"abcdef", 3, "abc"},
		{"aé", 2, "a"}, // é is two bytes: never cut in half
		{"€€", 4, "€"},
	} {
		if got := truncate(tc.in, tc.n); got != tc.want {
			t.Errorf("truncate(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}

func TestRunnerRemembersDueTimes(t *testing.T) {
	t.Parallel()
	r := &runner{pokes: make(chan struct{}, 1)}
	now := time.Unix(1000, 0)
	if _, ok := r.untilDue(now); ok {
		t.Fatal("a fresh runner knows a due time")
	}
	r.noteDue(now.Add(3*time.Second), now.Add(time.Second))
	r.noteDue(now.Add(2 * time.Second))
	if d, ok := r.untilDue(now); !ok || d != time.Second {
		t.Fatalf("untilDue = %s, %v; want 1s", d, ok)
	}
	// Once a due time passed, claim at once, then wait for the next.
	if d, ok := r.untilDue(now.Add(1500 * time.Millisecond)); !ok || d != 0 {
		t.Fatalf("after the first passed: %s, %v; want 0", d, ok)
	}
	if d, ok := r.untilDue(now.Add(1500 * time.Millisecond)); !ok || d != 500*time.Millisecond {
		t.Fatalf("next: %s, %v; want 500ms", d, ok)
	}
	for i := range 2 * maxDues {
		r.noteDue(now.Add(time.Duration(10+i) * time.Second))
	}
	if len(r.dues) > maxDues {
		t.Fatalf("%d due times remembered, want at most %d", len(r.dues), maxDues)
	}
}
