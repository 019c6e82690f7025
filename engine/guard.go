package engine

import (
	"context"
	"fmt"
	"sync"

	"github.com/batchsender/batchsender"
)

// Failure-rate guard tuning (DESIGN.md): a batch pauses itself when the
// share of permanent failures among its last guardWindow final outcomes on
// this node reaches its threshold, once at least guardMinOutcomes are known.
const (
	guardWindow      = 100
	guardMinOutcomes = 20
)

// guard keeps a runner's recent final outcomes. Calls of one runner run
// concurrently, so it has its own lock.
type guard struct {
	threshold float64 // 0: off

	mu       sync.Mutex
	ring     [guardWindow]bool // true: failed for good
	next, n  int
	failures int
	lastErr  string
}

// record adds the final outcomes of one call's results and returns the
// reason to pause when the threshold is reached, "" otherwise. Reaching it
// clears the window, so that a resumed batch is judged on fresh outcomes.
func (g *guard) record(results []batchsender.ItemResult) string {
	if g.threshold <= 0 {
		return ""
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, res := range results {
		var failed bool
		switch res.Status {
		case batchsender.ItemFailed:
			failed = true
			g.lastErr = res.Error
		case batchsender.ItemSucceeded, batchsender.ItemUnknown:
		default:
			continue // a retry is not an outcome yet
		}
		if g.n == guardWindow {
			if g.ring[g.next] {
				g.failures--
			}
		} else {
			g.n++
		}
		g.ring[g.next] = failed
		if failed {
			g.failures++
		}
		g.next = (g.next + 1) % guardWindow
	}
	if g.n < guardMinOutcomes || float64(g.failures) < g.threshold*float64(g.n) {
		return ""
	}
	reason := fmt.Sprintf("failure-rate guard: %d of the last %d outcomes failed permanently (threshold %g%%); last error: %s",
		g.failures, g.n, g.threshold*100, truncate(g.lastErr, 300))
	g.ring, g.next, g.n, g.failures, g.lastErr = [guardWindow]bool{}, 0, 0, 0, ""
	return reason
}

// guardCheck records a call's results and pauses the batch when the guard
// trips. Items already claimed finish or are held back as on any pause.
func (r *runner) guardCheck(results []batchsender.ItemResult) {
	reason := r.guard.record(results)
	if reason == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.e.runCtx), storeTimeout)
	defer cancel()
	if r.pause(ctx, reason) {
		r.e.stats.guardPauses.Add(1)
		r.recheck.Store(true)
	}
}
