package cluster

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/batchsender/batchsender/e2e"
)

// receiverLatency is how long the receiver takes per request: the work is
// latency-bound, as real webhook deliveries are.
const receiverLatency = 20 * time.Millisecond

func slowReceiver(t *testing.T, recordTimes bool) *e2e.Receiver {
	t.Helper()
	r, err := e2e.NewReceiver(e2e.ReceiverOptions{
		Secret:      signingSecret,
		Behavior:    func(e2e.Call) e2e.Action { return e2e.Action{Sleep: receiverLatency} },
		RecordTimes: recordTimes,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func apiClient(t *testing.T, n *node) *e2e.Client {
	t.Helper()
	c := e2e.NewClient(n.URL(), bootstrapKey)
	t.Cleanup(c.Close)
	return c
}

// TestClusterSurvivesKill9 runs three nodes (one serve, two workers) on one
// database. The worker holding the maintenance role is killed with SIGKILL
// while the batch is being delivered: every item still succeeds, each
// reaches the receiver (by webhook-id), and another node takes the role.
//
// BATCHSENDER_CLUSTER_ITEMS sets the batch size (default 50,000).
func TestClusterSurvivesKill9(t *testing.T) {
	// Not parallel: the kill must land mid-batch, which needs the cores.
	total := envInt(t, "BATCHSENDER_CLUSTER_ITEMS", 50_000)
	db := newSchemaURL(t)
	recv := slowReceiver(t, false)

	// The first node alone takes the maintenance role; it is the one killed.
	victim := startNode(t, "worker-1", "worker", db)
	waitFor(t, 20*time.Second, "worker-1 to take the maintenance role", victim.Leader)
	api := startNode(t, "serve", "serve", db)
	other := startNode(t, "worker-2", "worker", db)
	if got := leaders(victim, api, other); len(got) != 1 || got[0] != victim.Name {
		t.Fatalf("leaders before the kill: %v, want [worker-1]", got)
	}

	c := apiClient(t, api)
	start := time.Now()
	id := webhookBatch(t, c, recv.URL, total, map[string]any{"concurrency": 64, "max_attempts": 5})
	waitFor(t, 3*time.Minute, "a third of the items delivered", func() bool { return recv.Distinct() >= total/3 })
	claimed := victim.metric(claimedRE)
	if claimed <= 0 {
		t.Fatalf("worker-1 claimed %d items before the kill; it must be doing part of the work", claimed)
	}
	victim.Kill()
	killedAt := time.Now()
	t.Logf("killed worker-1 with SIGKILL after %d of %d items delivered; it had claimed %d", recv.Distinct(), total, claimed)

	waitFor(t, 20*time.Second, "another node to take the maintenance role", func() bool {
		return len(leaders(api, other)) == 1
	})
	t.Logf("maintenance role moved to %v %v after the kill", leaders(api, other), time.Since(killedAt).Round(time.Millisecond))

	ctx := context.Background()
	b, err := c.WaitBatch(ctx, id, 5*time.Minute, func(b e2e.Batch) bool {
		return b.Status == "completed" || b.Status == "failed" || b.Status == "cancelled"
	})
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	if b.Status != "completed" || b.Counts.Succeeded != int64(total) || b.Total != int64(total) {
		t.Fatalf("batch ended %s (%s) with total %d, counts %+v; want all %d succeeded", b.Status, b.StatusReason, b.Total, b.Counts, total)
	}
	if bad, errs := recv.BadSignatures(); bad > 0 {
		t.Fatalf("%d deliveries with bad signatures: %v", bad, errs)
	}
	if got := recv.Distinct(); got != total {
		t.Fatalf("receiver saw %d distinct webhook-ids, want %d: items were lost", got, total)
	}
	dups := recv.Requests() - int64(total)
	t.Logf("%d items in %v (%.0f items/s, the lease wait after the kill included); %d duplicate deliveries (items in flight on the killed node, sent again: at least once)",
		total, elapsed.Round(time.Millisecond), float64(total)/elapsed.Seconds(), dups)

	// The survivors' logs say who took the role.
	if !strings.Contains(api.Log()+other.Log(), "took the maintenance role") {
		t.Fatalf("no surviving node logged taking the maintenance role")
	}
	if strings.Contains(api.Log()+other.Log()+victim.Log(), "postgres://") {
		t.Fatalf("a node logged the database URL")
	}
}

// TestClusterScaling delivers the same latency-bound batch with one node
// and with three, and logs the throughput ratio (target ≥ 2.5×). It asserts
// no timing: CI machines are shared. Each node sends at most 8 requests at a
// time (BATCHSENDER_MAX_IN_FLIGHT) to a receiver taking 20 ms each, so one
// node is bound at about 400 items/s by latency, not by CPU. (Not the
// batch's concurrency option: that holds across the cluster.)
//
// BATCHSENDER_CLUSTER_SCALE_ITEMS sets the batch size (default 2,400).
func TestClusterScaling(t *testing.T) {
	// Not parallel: it measures throughput.
	total := envInt(t, "BATCHSENDER_CLUSTER_SCALE_ITEMS", 2_400)
	rate := func(nodes int) float64 {
		db := newSchemaURL(t)
		recv := slowReceiver(t, false)
		const perNode = "BATCHSENDER_MAX_IN_FLIGHT=8"
		api := startNode(t, "serve", "serve", db, perNode)
		all := []*node{api}
		for i := 1; i < nodes; i++ {
			all = append(all, startNode(t, "worker-"+string(rune('0'+i)), "worker", db, perNode))
		}
		c := apiClient(t, api)
		id := webhookBatch(t, c, recv.URL, total, map[string]any{})
		// Timed from the first delivery: ingest is not what scales here.
		waitFor(t, time.Minute, "the first delivery", func() bool { return recv.Requests() > 0 })
		start := time.Now()
		b, err := c.WaitBatch(context.Background(), id, 5*time.Minute, func(b e2e.Batch) bool { return b.Counts.Done() == int64(total) })
		if err != nil {
			t.Fatal(err)
		}
		elapsed := time.Since(start)
		if b.Counts.Succeeded != int64(total) || recv.Distinct() != total {
			t.Fatalf("%d nodes: %d succeeded, receiver saw %d; want %d", nodes, b.Counts.Succeeded, recv.Distinct(), total)
		}
		for _, n := range all {
			t.Logf("  %s: %d claims, %d items claimed", n.Name, n.metric(claimsRE), n.metric(claimedRE))
		}
		r := float64(total) / elapsed.Seconds()
		t.Logf("%d node(s): %d items in %v: %.0f items/s", nodes, total, elapsed.Round(time.Millisecond), r)
		return r
	}
	one := rate(1)
	three := rate(3)
	t.Logf("scale-out: 3 nodes deliver %.2f× the items/s of 1 node (target ≥ 2.5×)", three/one)
}
