package engine

import (
	"context"
	"math"
	"time"

	"golang.org/x/sync/semaphore"
	"golang.org/x/time/rate"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/sdk"
)

// defaultConcurrency applies when a provider declares no default concurrency.
const defaultConcurrency = 16

// connLimits are the limits one connection's batches share in this process.
type connLimits struct {
	rate float64 // Send calls per second, 0 for unlimited
	conc int     // Send calls in flight
	sem  *semaphore.Weighted
	lim  *rate.Limiter // nil when unlimited
}

// limitsFor returns the connection's shared limits, creating them on first
// use. The connection's limits are the provider's defaults; when they change
// (another provider version, later a connection setting), batches that
// start afterwards use fresh limits while running calls finish under the old.
func (e *Engine) limitsFor(conn batchsender.Connection, info sdk.Info) *connLimits {
	r, c := info.DefaultRate, info.DefaultConcurrency
	if r < 0 {
		r = 0
	}
	if c <= 0 {
		c = defaultConcurrency
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if l, ok := e.conns[conn.ID]; ok && l.rate == r && l.conc == c {
		return l
	}
	l := &connLimits{rate: r, conc: c, sem: semaphore.NewWeighted(int64(c)), lim: newLimiter(r)}
	e.conns[conn.ID] = l
	return l
}

// newLimiter returns a token bucket of r calls per second, or nil for r == 0.
// The burst is one call: a limit of r per second then also holds in every
// window of one second, which is what providers mean by it. Claims still
// come in batches because calls may reserve tokens up to claimHorizon ahead.
func newLimiter(r float64) *rate.Limiter {
	if r <= 0 || math.IsInf(r, 1) {
		return nil
	}
	return rate.NewLimiter(rate.Limit(r), 1)
}

// slots are what one Send call holds: a batch slot, a connection slot and a
// global slot. The call may start at notBefore, when its rate tokens are due.
type slots struct {
	notBefore time.Time
}

// acquire blocks until the runner holds the slots and rate tokens of one
// call that may start now, or ctx ends. The order matters: the batch's own
// limits first, so that a batch waiting on its own rate holds nothing that
// other batches need, and the process-wide slot last, since it is the most
// shared.
func (r *runner) acquire(ctx context.Context) (slots, error) {
	var s slots
	if err := r.sem.Acquire(ctx, 1); err != nil {
		return s, err
	}
	if r.lim != nil && !waitToken(ctx, r.lim, r.e.now()) {
		r.release(true, false, false)
		return s, ctx.Err()
	}
	if err := r.conn.sem.Acquire(ctx, 1); err != nil {
		r.release(true, false, false)
		return s, err
	}
	if r.conn.lim != nil && !waitToken(ctx, r.conn.lim, r.e.now()) {
		r.release(true, true, false)
		return s, ctx.Err()
	}
	if err := r.e.global.Acquire(ctx, 1); err != nil {
		r.release(true, true, false)
		return s, err
	}
	return s, nil
}

// waitToken takes one token, sleeping until it is due. It reports false if
// ctx ended first (the token is then given back).
func waitToken(ctx context.Context, lim *rate.Limiter, now time.Time) bool {
	tok := lim.ReserveN(now, 1)
	if !sleepCtx(ctx, tok.DelayFrom(now)) {
		tok.CancelAt(now)
		return false
	}
	return true
}

// rateBudget returns how many more calls the runner's rate limits allow
// within claimHorizon from now, counting tokens others reserved already
// (they make the bucket negative). -1 means unlimited.
func (r *runner) rateBudget(now time.Time) int {
	budget := -1
	for _, lim := range []*rate.Limiter{r.lim, r.conn.lim} {
		if lim == nil {
			continue
		}
		n := int(math.Floor(lim.TokensAt(now) + float64(lim.Limit())*claimHorizon.Seconds()))
		if budget < 0 || n < budget {
			budget = max(n, 0)
		}
	}
	return budget
}

// tryAcquire takes the slots of one more call without waiting. It fails as
// soon as anyone queues for a slot (the semaphores are FIFO), which is what
// keeps runners that share a connection taking turns.
func (r *runner) tryAcquire() bool {
	if !r.sem.TryAcquire(1) {
		return false
	}
	if !r.conn.sem.TryAcquire(1) {
		r.release(true, false, false)
		return false
	}
	if !r.e.global.TryAcquire(1) {
		r.release(true, true, false)
		return false
	}
	return true
}

// schedule reserves the rate tokens of a call that got its slots through
// tryAcquire, after the claim, and returns when the call may start. Taking
// the tokens only now, not before the claim, keeps a slow claim from
// bunching calls: a token is always reserved for a time at or after the
// moment it is taken. The connection's token is reserved for the time the
// batch's own token allows, so it is not spent before the call can use it.
func (r *runner) schedule(now time.Time) time.Time {
	at := now
	if r.lim != nil {
		at = at.Add(r.lim.ReserveN(at, 1).DelayFrom(at))
	}
	if r.conn.lim != nil {
		at = at.Add(r.conn.lim.ReserveN(at, 1).DelayFrom(at))
	}
	return at
}

// release frees the slots a call held (or would have held).
func (r *runner) release(batch, conn, global bool) {
	if global {
		r.e.global.Release(1)
	}
	if conn {
		r.conn.sem.Release(1)
	}
	if batch {
		r.sem.Release(1)
	}
}
