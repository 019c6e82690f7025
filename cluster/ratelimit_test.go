package cluster

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batchsender/batchsender/e2e"
)

// TestClusterConnectionLimits runs three nodes (one serve, two workers) on
// one database against a connection whose config sets rate_per_second and
// concurrency: the per-connection rate limit is never exceeded in any
// one-second window at the receiver, nor its concurrency, although every
// node sends and the batch's own concurrency would allow far more.
func TestClusterConnectionLimits(t *testing.T) {
	// Not parallel: it measures arrival times.
	const (
		total = 600
		rate  = 100
		conc  = 6
	)
	db := newSchemaURL(t)
	recv, err := e2e.NewReceiver(e2e.ReceiverOptions{
		Secret:      signingSecret,
		Behavior:    func(e2e.Call) e2e.Action { return e2e.Action{Sleep: 5 * time.Millisecond} },
		RecordTimes: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(recv.Close)
	// In front of the receiver: requests in flight at once.
	var inFlight, maxInFlight atomic.Int64
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := maxInFlight.Load(); n > m && !maxInFlight.CompareAndSwap(m, n); m = maxInFlight.Load() {
		}
		recv.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)

	api := startNode(t, "serve", "serve", db)
	nodes := []*node{api, startNode(t, "worker-1", "worker", db), startNode(t, "worker-2", "worker", db)}
	c := apiClient(t, api)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.CreateConnection(ctx, "hooks", signingSecret, map[string]any{"rate_per_second": rate, "concurrency": conc}); err != nil {
		t.Fatal(err)
	}
	id := webhookBatch(t, c, front.URL, total, map[string]any{"concurrency": 64})
	b, err := c.WaitBatch(context.Background(), id, 2*time.Minute, func(b e2e.Batch) bool { return b.Counts.Done() == int64(total) })
	if err != nil {
		t.Fatal(err)
	}
	if b.Counts.Succeeded != total || recv.Distinct() != total {
		t.Fatalf("%d succeeded, receiver saw %d; want %d", b.Counts.Succeeded, recv.Distinct(), total)
	}
	var arrivals []time.Time
	for _, d := range recv.Deliveries() {
		arrivals = append(arrivals, d.Times...)
	}
	slices.SortFunc(arrivals, time.Time.Compare)
	worst, j := 0, 0
	for i := range arrivals {
		for arrivals[i].Sub(arrivals[j]) >= time.Second {
			j++
		}
		worst = max(worst, i-j+1)
	}
	working := 0
	for _, n := range nodes {
		if n.metric(claimedRE) > 0 {
			working++
		}
	}
	t.Logf("%d requests over %v; worst one-second window %d (limit %d/s); at most %d in flight (limit %d); %d of 3 nodes sent",
		len(arrivals), arrivals[len(arrivals)-1].Sub(arrivals[0]).Round(time.Millisecond), worst, rate, maxInFlight.Load(), conc, working)
	// Burst one: at most rate requests start in any second.
	if worst > rate+1 {
		t.Errorf("%d requests arrived within one second; the connection allows %d/s", worst, rate)
	}
	if got := maxInFlight.Load(); got > conc {
		t.Errorf("%d requests in flight at once; the connection allows %d", got, conc)
	}
	if working < 2 {
		t.Errorf("only %d node(s) sent: the limits were not shared", working)
	}
}
