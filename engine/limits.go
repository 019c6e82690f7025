package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
	"golang.org/x/time/rate"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/sdk"
)

// defaultConcurrency applies when a provider declares no default concurrency.
const defaultConcurrency = 16

// connLimits are the limits one connection's batches share in this process,
// or across the cluster when the store is a batchsender.LimitStore.
type connLimits struct {
	rate float64 // Send calls per second, 0 for unlimited
	conc int     // Send calls in flight
	sem  *semaphore.Weighted
	lim  *rate.Limiter // nil when unlimited
	// waiting counts callers blocked in semAcquire on sem or csem: while
	// anyone waits, calls hand their slots back instead of going on.
	waiting atomic.Int32

	// On a LimitStore, instead of sem and lim.
	csem  *clusterSem
	crate *clusterRate // nil when unlimited
}

// connConfig is the part of a connection's config the engine reads itself,
// whatever the provider: limits that lower or raise the provider's defaults.
type connConfig struct {
	RatePerSecond *float64 `json:"rate_per_second"`
	Concurrency   *int     `json:"concurrency"`
}

// connLimitsOf returns a connection's rate and concurrency: the top-level
// config fields rate_per_second and concurrency when set above 0, else the
// provider's defaults.
func connLimitsOf(conn batchsender.Connection, info sdk.Info) (float64, int) {
	r, c := info.DefaultRate, info.DefaultConcurrency
	var cfg connConfig
	if len(conn.Config) > 0 && json.Unmarshal(conn.Config, &cfg) == nil {
		if cfg.RatePerSecond != nil && *cfg.RatePerSecond > 0 {
			r = *cfg.RatePerSecond
		}
		if cfg.Concurrency != nil && *cfg.Concurrency > 0 {
			c = *cfg.Concurrency
		}
	}
	if r < 0 || math.IsNaN(r) {
		r = 0
	}
	if c <= 0 {
		c = defaultConcurrency
	}
	return r, c
}

// limitsFor returns the connection's shared limits, creating them on first
// use. When they change (a config edit, another provider version), batches
// that start afterwards use fresh limits while running calls finish under
// the old.
func (e *Engine) limitsFor(conn batchsender.Connection, info sdk.Info) *connLimits {
	r, c := connLimitsOf(conn, info)
	e.mu.Lock()
	defer e.mu.Unlock()
	if l, ok := e.conns[conn.ID]; ok && l.rate == r && l.conc == c {
		return l
	}
	l := &connLimits{rate: r, conc: c}
	if ls, ok := e.store.(batchsender.LimitStore); ok {
		// The limit is part of the key: after a change, the old limit's
		// slots (still held by calls that started under it) are not the
		// new one's, so one node's two sets never release each other's.
		l.csem = newClusterSem(e, ls, fmt.Sprintf("conn:%s:%d", conn.ID, c), e.cfg.NodeID, c)
		if r > 0 && !math.IsInf(r, 1) {
			l.crate = &clusterRate{e: e, ls: ls, key: "conn:" + conn.ID, rate: r * clusterRateMargin}
		}
	} else {
		l.sem, l.lim = semaphore.NewWeighted(int64(c)), newLimiter(r)
	}
	e.conns[conn.ID] = l
	return l
}

// semAcquire takes a concurrency slot of the connection, waiting.
func (l *connLimits) semAcquire(ctx context.Context) error {
	l.waiting.Add(1)
	defer l.waiting.Add(-1)
	if l.csem != nil {
		return l.csem.acquire(ctx)
	}
	return l.sem.Acquire(ctx, 1)
}

func (l *connLimits) semTryAcquire() bool {
	if l.csem != nil {
		return l.csem.tryAcquire()
	}
	return l.sem.TryAcquire(1)
}

func (l *connLimits) semRelease() {
	if l.csem != nil {
		l.csem.release()
		return
	}
	l.sem.Release(1)
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
	notBefore   time.Time
	clusterSlot bool // notBefore is a slot of a cluster-wide rate
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
	if r.csem != nil {
		if err := r.csem.acquire(ctx); err != nil {
			r.sem.Release(1)
			return s, err
		}
	}
	if r.lim != nil && !waitToken(ctx, r.lim, r.e.now()) {
		r.release(true, false, false)
		return s, ctx.Err()
	}
	// The call waits for its cluster rate slots (each at most about
	// rateGroup ahead): the batch's, then the connection's.
	if r.crate != nil {
		at, err := r.takeSlot(ctx, r.crate)
		if err != nil {
			r.release(true, false, false)
			return s, err
		}
		s.notBefore, s.clusterSlot = at, true
	}
	if err := r.conn.semAcquire(ctx); err != nil {
		r.release(true, false, false)
		return s, err
	}
	if r.conn.lim != nil && !waitToken(ctx, r.conn.lim, r.e.now()) {
		r.release(true, true, false)
		return s, ctx.Err()
	}
	if r.conn.crate != nil {
		at, err := r.takeSlot(ctx, r.conn.crate)
		if err != nil {
			r.release(true, true, false)
			return s, err
		}
		s.notBefore, s.clusterSlot = maxTime(s.notBefore, at), true
	}
	r.e.globalWaiting.Add(1)
	err := r.e.global.Acquire(ctx, 1)
	r.e.globalWaiting.Add(-1)
	if err != nil {
		r.release(true, true, false)
		return s, err
	}
	return s, nil
}

// takeSlot takes a slot of a cluster-wide rate; after a store error it
// waits a second before it reports it, so that a failing store is not
// asked in a loop.
func (r *runner) takeSlot(ctx context.Context, c *clusterRate) (time.Time, error) {
	at, err := c.take(ctx)
	if err != nil && ctx.Err() == nil {
		r.log.Error("taking a rate slot", slog.String("key", c.key), slog.Any("error", err))
		sleepCtx(ctx, time.Second)
	}
	return at, err
}

// takeClusterSlots takes a fresh slot of each cluster-wide rate and
// returns when the call may start.
func (r *runner) takeClusterSlots(ctx context.Context) (time.Time, error) {
	var at time.Time
	for _, c := range r.crates {
		a, err := c.take(ctx)
		if err != nil {
			return time.Time{}, err
		}
		at = maxTime(at, a)
	}
	return at, nil
}

// clusterGrace is how late a call may start after its cluster rate slots.
func (r *runner) clusterGrace() time.Duration {
	g := time.Duration(math.MaxInt64)
	for _, c := range r.crates {
		g = min(g, c.grace())
	}
	return g
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
	for _, c := range r.crates {
		// Only the slots this node holds: more would cost a round trip.
		if n := c.budget(now); budget < 0 || n < budget {
			budget = n
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
	if r.csem != nil && !r.csem.tryAcquire() {
		r.sem.Release(1)
		return false
	}
	if !r.conn.semTryAcquire() {
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
func (r *runner) schedule(now time.Time) slots {
	s := slots{notBefore: now}
	if r.lim != nil {
		s.notBefore = s.notBefore.Add(r.lim.ReserveN(s.notBefore, 1).DelayFrom(s.notBefore))
	}
	if r.conn.lim != nil {
		s.notBefore = s.notBefore.Add(r.conn.lim.ReserveN(s.notBefore, 1).DelayFrom(s.notBefore))
	}
	if len(r.crates) > 0 {
		// Slots the node holds (the claim was sized by them); if another
		// runner took one meanwhile, the call takes fresh ones when it
		// starts.
		for _, c := range r.crates {
			at, ok := c.takeNow(now)
			if !ok {
				s.notBefore = time.Time{}
				break
			}
			s.notBefore = maxTime(s.notBefore, at)
		}
		s.clusterSlot = true
	}
	return s
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// release frees the slots a call held (or would have held).
func (r *runner) release(batch, conn, global bool) {
	if global {
		r.e.global.Release(1)
	}
	if conn {
		r.conn.semRelease()
	}
	if batch {
		if r.csem != nil {
			r.csem.release()
		}
		r.sem.Release(1)
	}
}
