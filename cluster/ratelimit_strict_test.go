package cluster

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/batchsender/batchsender/e2e"
)

// TestClusterRateLimitHolds sends a batch through a rate-limited connection
// on three nodes and checks at the receiver that no one-second window saw
// more requests than the connection's limit: the limit holds across the
// cluster, not per node. Unlike TestClusterConnectionLimits it allows no
// extra request in any window, at a lower rate.
func TestClusterRateLimitHolds(t *testing.T) {
	const (
		limit = 40 // requests per second
		total = 400
	)
	db := newSchemaURL(t)
	recv := slowReceiver(t, true)
	api := startNode(t, "serve", "serve", db)
	startNode(t, "worker-1", "worker", db)
	startNode(t, "worker-2", "worker", db)
	c := apiClient(t, api)
	// The limit is the connection's: every batch through it, on every node,
	// shares it.
	if _, err := c.CreateConnection(context.Background(), "hooks", signingSecret, map[string]any{"rate_per_second": limit}); err != nil {
		t.Fatal(err)
	}
	id := webhookBatch(t, c, recv.URL, total, map[string]any{"concurrency": 16})
	b, err := c.WaitBatch(context.Background(), id, 2*time.Minute, func(b e2e.Batch) bool { return b.Counts.Done() == total })
	if err != nil {
		t.Fatal(err)
	}
	if b.Counts.Succeeded != total {
		t.Fatalf("counts %+v, want %d succeeded", b.Counts, total)
	}
	var times []time.Time
	for _, d := range recv.Deliveries() {
		times = append(times, d.Times...)
	}
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	worst, at := 0, 0
	for i, j := 0, 0; j < len(times); j++ {
		for times[j].Sub(times[i]) >= time.Second {
			i++
		}
		if n := j - i + 1; n > worst {
			worst, at = n, i
		}
	}
	span := times[len(times)-1].Sub(times[0])
	t.Logf("%d requests over %v (%.1f/s on average); busiest one-second window: %d requests from %s", len(times), span.Round(time.Millisecond),
		float64(len(times)-1)/span.Seconds(), worst, times[at].Format("15:04:05.000"))
	if worst > limit {
		t.Fatalf("a one-second window saw %d requests, over the limit of %d per second across the cluster", worst, limit)
	}
}
