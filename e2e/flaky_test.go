package e2e

import (
	"context"
	"hash/fnv"
	"net/http"
	"strings"
	"testing"
	"time"
)

// flakyKind is how the flaky receiver treats an item's first attempt.
type flakyKind int

const (
	flakyOK          flakyKind = iota
	flaky503                   // a fifth of the items
	flaky429                   // a tenth: 429 with Retry-After: 1
	flakyTooSlow               // a tenth: no answer before the client's timeout
	flakyKindsNumber           // the number of kinds, for tests
)

func flakyKindOf(id string) flakyKind {
	h := fnv.New32a()
	h.Write([]byte(id))
	switch h.Sum32() % 10 {
	case 0, 1:
		return flaky503
	case 2:
		return flaky429
	case 3:
		return flakyTooSlow
	}
	return flakyOK
}

// TestFlakyReceiver sends to a receiver that answers 503 to a fifth of
// first attempts, 429 with Retry-After: 1 to a tenth, and is too slow for
// the connection's timeout on another tenth: every item must end
// succeeded, no item may be tried more than max_attempts times, and no
// retry of a 429 may come before its Retry-After.
func TestFlakyReceiver(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const (
		items       = 400
		maxAttempts = 8
		timeout     = 500 * time.Millisecond
	)
	secret := randomSecret(t)
	recv := startReceiver(t, ReceiverOptions{
		Secret:      secret,
		RecordTimes: true,
		Behavior: func(c Call) Action {
			if c.Path == "/down" {
				return Action{Status: http.StatusServiceUnavailable}
			}
			if c.Attempt > 1 {
				return Action{}
			}
			switch flakyKindOf(c.ID) {
			case flaky503:
				return Action{Status: http.StatusServiceUnavailable}
			case flaky429:
				return Action{Status: http.StatusTooManyRequests, RetryAfter: "1"}
			case flakyTooSlow:
				return Action{Sleep: 10 * timeout}
			}
			return Action{}
		},
	})
	_, c := startServer(t, serverOptions{allowPrivate: true})
	if _, err := c.CreateConnection(ctx, "hooks", secret, map[string]any{"timeout": timeout.String()}); err != nil {
		t.Fatal(err)
	}
	var inline []map[string]any
	for i := range items {
		inline = append(inline, map[string]any{"payload": map[string]any{"n": i}})
	}
	b, err := c.CreateBatch(ctx, map[string]any{
		"module":     "webhook",
		"connection": "hooks",
		"template":   map[string]any{"url": recv.URL + "/flaky"},
		"items":      inline,
		"options": map[string]any{
			"concurrency":      32,
			"max_attempts":     maxAttempts,
			"retry_base_delay": "50ms",
			"retry_max_delay":  "2s",
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err = c.WaitBatch(ctx, b.ID, 2*time.Minute, func(b Batch) bool { return b.Status == "completed" })
	if err != nil {
		t.Fatal(err)
	}
	if b.Counts.Succeeded != items {
		failed, _ := c.ListItems(ctx, b.ID, "failed")
		t.Fatalf("counts %+v, want all %d succeeded; failed items: %+v", b.Counts, items, failed)
	}
	if n, reasons := recv.BadSignatures(); n != 0 {
		t.Errorf("%d requests with bad signatures: %v", n, reasons)
	}

	listed, err := c.ListItems(ctx, b.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	deliveries := recv.Deliveries()
	if len(listed) != items || len(deliveries) != items {
		t.Fatalf("listed %d items, receiver saw %d ids; want %d", len(listed), len(deliveries), items)
	}
	seen := map[flakyKind]int{}
	const slop = 150 * time.Millisecond // clocks and scheduling; an ordering check, not a timing one
	for _, it := range listed {
		d, ok := deliveries[it.ID]
		if !ok {
			t.Errorf("item %s never reached the receiver under its ID", it.ID)
			continue
		}
		kind := flakyKindOf(it.ID)
		seen[kind]++
		if it.Status != "succeeded" {
			t.Errorf("item %s status %q", it.ID, it.Status)
		}
		if it.Attempts > maxAttempts || d.Count > it.Attempts {
			t.Errorf("item %s: %d attempts counted, %d requests received, max_attempts %d", it.ID, it.Attempts, d.Count, maxAttempts)
		}
		if last := d.Statuses[len(d.Statuses)-1]; last != http.StatusOK {
			t.Errorf("item %s: last answer %d", it.ID, last)
		}
		if kind != flakyOK && d.Count < 2 {
			t.Errorf("item %s (kind %d) received %d times, want a retry", it.ID, kind, d.Count)
		}
		if kind == flaky429 && len(d.Times) >= 2 {
			if gap := d.Times[1].Sub(d.Times[0]); gap < time.Second-slop {
				t.Errorf("item %s retried %v after a 429 with Retry-After: 1", it.ID, gap)
			}
		}
		if kind == flakyTooSlow && len(d.Times) >= 2 {
			if gap := d.Times[1].Sub(d.Times[0]); gap < timeout-slop {
				t.Errorf("item %s retried %v after a request cut off by the %v timeout", it.ID, gap, timeout)
			}
		}
	}
	for k := flakyOK; k < flakyKindsNumber; k++ {
		if seen[k] == 0 {
			t.Errorf("no item of kind %d: the test proves nothing about it", k)
		}
	}
	t.Run("StopsAtMaxAttemptsWhenTheReceiverStaysDown", func(t *testing.T) {
		const down, attempts = 5, 4
		var inline []map[string]any
		for i := range down {
			inline = append(inline, map[string]any{"payload": map[string]any{"n": i}})
		}
		b, err := c.CreateBatch(ctx, map[string]any{
			"module": "webhook", "connection": "hooks",
			"template": map[string]any{"url": recv.URL + "/down"},
			"items":    inline,
			"options":  map[string]any{"max_attempts": attempts, "retry_base_delay": "50ms", "retry_max_delay": "200ms"},
		})
		if err != nil {
			t.Fatal(err)
		}
		b, err = c.WaitBatch(ctx, b.ID, time.Minute, func(b Batch) bool { return b.Status == "completed" })
		if err != nil {
			t.Fatal(err)
		}
		if b.Counts.Failed != down {
			t.Fatalf("counts %+v, want %d failed", b.Counts, down)
		}
		failed, err := c.ListItems(ctx, b.ID, "failed")
		if err != nil {
			t.Fatal(err)
		}
		deliveries := recv.Deliveries()
		for _, it := range failed {
			if it.Attempts != attempts || deliveries[it.ID].Count != attempts || !strings.Contains(it.LastError, "503") {
				t.Errorf("item %s: %d attempts, %d requests received, last error %q; want %d and a 503",
					it.ID, it.Attempts, deliveries[it.ID].Count, it.LastError, attempts)
			}
		}
		if len(failed) != down {
			t.Errorf("listed %d failed items, want %d", len(failed), down)
		}
	})

	t.Logf("items by first-attempt behaviour (ok, 503, 429, slow): %d %d %d %d; requests %d",
		seen[flakyOK], seen[flaky503], seen[flaky429], seen[flakyTooSlow], recv.Requests())
}
