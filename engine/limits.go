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

// slots are what one Send call holds: a batch slot, a connection slot, a
// global slot, and the rate tokens reserved for it. The call may start at
// notBefore.
type slots struct {
	batchTok, connTok *rate.Reservation
	notBefore         time.Time
}

// acquire blocks until the runner holds the slots of one call that may start
// now, or ctx ends. The order matters: the batch's own limits first, so that
// a batch waiting on its own rate holds nothing that other batches need, and
// the process-wide slot last, since it is the most shared.
func (r *runner) acquire(ctx context.Context) (slots, error) {
	var s slots
	if err := r.sem.Acquire(ctx, 1); err != nil {
		return s, err
	}
	if r.lim != nil {
		now := r.e.now()
		tok := r.lim.ReserveN(now, 1)
		if !sleepCtx(ctx, tok.DelayFrom(now)) {
			tok.CancelAt(r.e.now())
			r.sem.Release(1)
			return s, ctx.Err()
		}
		s.batchTok = tok
	}
	if err := r.conn.sem.Acquire(ctx, 1); err != nil {
		r.giveBack(s, true, false, false)
		return s, err
	}
	if r.conn.lim != nil {
		now := r.e.now()
		tok := r.conn.lim.ReserveN(now, 1)
		if !sleepCtx(ctx, tok.DelayFrom(now)) {
			tok.CancelAt(r.e.now())
			r.giveBack(s, true, true, false)
			return s, ctx.Err()
		}
		s.connTok = tok
	}
	if err := r.e.global.Acquire(ctx, 1); err != nil {
		r.giveBack(s, true, true, false)
		return s, err
	}
	return s, nil
}

// tryAcquire takes the slots of one more call without waiting for a slot,
// accepting rate tokens up to claimHorizon ahead. It fails as soon as anyone
// queues for a slot (the semaphores are FIFO), which is what keeps runners
// that share a connection taking turns.
func (r *runner) tryAcquire(now time.Time) (slots, bool) {
	var s slots
	if !r.sem.TryAcquire(1) {
		return s, false
	}
	if r.lim != nil {
		tok := r.lim.ReserveN(now, 1)
		d := tok.DelayFrom(now)
		if d > claimHorizon {
			tok.CancelAt(now)
			r.sem.Release(1)
			return s, false
		}
		s.batchTok = tok
		s.notBefore = now.Add(d)
	}
	if !r.conn.sem.TryAcquire(1) {
		r.giveBack(s, true, false, false)
		return s, false
	}
	if r.conn.lim != nil {
		tok := r.conn.lim.ReserveN(now, 1)
		d := tok.DelayFrom(now)
		if d > claimHorizon {
			tok.CancelAt(now)
			r.giveBack(s, true, true, false)
			return s, false
		}
		s.connTok = tok
		if t := now.Add(d); t.After(s.notBefore) {
			s.notBefore = t
		}
	}
	if !r.e.global.TryAcquire(1) {
		r.giveBack(s, true, true, false)
		return s, false
	}
	return s, true
}

// giveBack releases slots that were not used for a call, returning their
// rate tokens too.
func (r *runner) giveBack(s slots, batch, conn, global bool) {
	now := r.e.now()
	if s.batchTok != nil {
		s.batchTok.CancelAt(now)
	}
	if s.connTok != nil {
		s.connTok.CancelAt(now)
	}
	r.release(batch, conn, global)
}

// release frees the slots a call held. Its rate tokens stay used.
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
