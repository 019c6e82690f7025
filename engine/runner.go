package engine

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
	"golang.org/x/time/rate"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/sdk"
)

// runner works on one batch: it claims the batch's due items as capacity
// frees up and sends them. A runner's loop ends when the batch stops being
// runnable; the runner itself is kept while results of its calls are
// outstanding, so that its concurrency limit spans a restart of its loop.
type runner struct {
	e     *Engine
	batch batchsender.Batch
	opts  batchsender.BatchOptions // with defaults
	log   *slog.Logger
	pokes chan struct{}
	guard guard
	// recheck makes the loop look at the batch's status before it hands
	// out more queued items (set when this node paused the batch).
	recheck atomic.Bool

	// Set by prepare, once.
	prepared bool
	sender   sdk.Sender
	maxChunk int
	conn     *connLimits
	sem      *semaphore.Weighted // the batch's concurrency in this process
	lim      *rate.Limiter       // the batch's own rate, nil if none or held across the cluster
	// On a LimitStore, a batch's own limits hold across the cluster too
	// (see prepare): nil when the connection's are as tight.
	csem   *clusterSem
	crate  *clusterRate
	crates []*clusterRate // the cluster-wide rates a call takes slots of: the batch's, the connection's, either or none

	// Guarded by e.mu.
	looping     bool
	outstanding int // claimed items whose results are not written yet

	// Claimed items not yet handed to a call, oldest claim first, and the
	// pace of starts. The loop and prefetches add to the queue; call
	// goroutines that go on with the next item (see next) take from it.
	qmu       sync.Mutex
	queue     []queued
	pace      pacer
	lastClaim int           // items the loop's last claim took (prefetches top up to it)
	lastFetch int           // items the last prefetch took (for the slow start; see maybePrefetch)
	claiming  chan struct{} // non-nil while a prefetch claims; closed when it ends
	queueOpen bool          // the loop runs and sends what is queued; a prefetch that ends after it gives its items back

	// Used by the loop goroutine only.
	statusAt time.Time // when the batch's status was last looked at
	// goOnUntil (Unix nanoseconds) is how long call goroutines may take
	// queued items themselves: until the loop's next look at the batch's
	// status is due.
	goOnUntil atomic.Int64

	dueMu sync.Mutex
	dues  []time.Time // due times of retries this runner wrote, sorted, at most maxDues
}

// queued is a claimed item waiting for its call, with its claim's lease and
// the context its call runs in.
type queued struct {
	it    batchsender.Item
	until time.Time // the claim's lease
	lc    *leaseCtx // held once for this item until its call ends
}

// maxDues bounds the due times a runner remembers; items due at times it
// forgot are found by its idle polling.
const maxDues = 64

func newRunner(e *Engine, b batchsender.Batch) *runner {
	return &runner{
		e:     e,
		batch: b,
		opts:  b.Options.WithDefaults(),
		log: e.log.With(slog.String("batch_id", b.ID), slog.String("project_id", b.ProjectID),
			slog.String("provider", b.Provider)),
		pokes: make(chan struct{}, 1),
		guard: guard{threshold: b.Options.FailureGuard()},
	}
}

// poke wakes the runner if it sleeps. It never blocks.
func (r *runner) poke() {
	select {
	case r.pokes <- struct{}{}:
	default:
	}
}

// noteDue tells the runner that some of its items fall due again at the
// given times.
func (r *runner) noteDue(ts ...time.Time) {
	r.dueMu.Lock()
	for _, t := range ts {
		i, found := slices.BinarySearchFunc(r.dues, t, time.Time.Compare)
		if !found && i < maxDues {
			r.dues = slices.Insert(r.dues, i, t)
		}
	}
	if len(r.dues) > maxDues {
		r.dues = r.dues[:maxDues]
	}
	r.dueMu.Unlock()
	r.poke()
}

// untilDue returns how long until the next remembered due time after now,
// forgetting those that passed, and false if none is known.
func (r *runner) untilDue(now time.Time) (time.Duration, bool) {
	r.dueMu.Lock()
	defer r.dueMu.Unlock()
	i := 0
	for i < len(r.dues) && !r.dues[i].After(now) {
		i++
	}
	passed := i > 0
	r.dues = r.dues[i:]
	switch {
	case passed:
		// Something fell due while the runner looked: claim again now.
		return 0, true
	case len(r.dues) == 0:
		return 0, false
	}
	return r.dues[0].Sub(now), true
}

// loop claims and sends until the batch is not runnable or ctx ends.
func (r *runner) loop(ctx context.Context) {
	defer r.e.loopEnded(r)
	r.qmu.Lock()
	r.queueOpen = true
	r.qmu.Unlock()
	defer func() {
		r.goOnUntil.Store(0)
		r.qmu.Lock()
		r.queueOpen = false
		q := r.queue
		r.queue = nil
		r.qmu.Unlock()
		// Only when shutting down or no longer running can the loop end
		// with items queued.
		r.releaseQueued(q)
	}()
	if !r.prepared {
		if !r.prepare(ctx) {
			return
		}
		r.prepared = true
	}
	idle := time.Duration(0)
	for ctx.Err() == nil {
		n, err := r.claimAndSend(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			r.log.Error("claiming items", slog.Any("error", err))
		}
		if n > 0 {
			idle = 0
			continue
		}
		if err == nil {
			if !r.stillRunnable(ctx) {
				return
			}
		}
		// Nothing due now: sleep until the next known due time, a poke, or
		// a poll that backs off while the batch stays idle.
		if idle == 0 {
			idle = r.e.cfg.PollInterval
		} else {
			idle = min(idle*2, max(maxIdleSleep, r.e.cfg.PollInterval))
		}
		d := jitter(idle)
		if until, ok := r.untilDue(r.e.now()); ok && until < d {
			d = until
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
		case <-t.C:
		case <-r.pokes:
			idle = 0
		}
		t.Stop()
	}
}

// prepare resolves the batch's connection and provider, compiles its
// template and sets up its limits. A batch that cannot be carried out as
// configured is paused with the reason; a store error leaves it for a later
// try. It reports whether the runner can go on.
func (r *runner) prepare(ctx context.Context) bool {
	conn, err := r.e.store.ConnectionGetByID(ctx, r.batch.ConnectionID)
	if err != nil {
		if batchsender.IsNotFound(err) {
			r.pause(ctx, fmt.Sprintf("connection %s no longer exists", r.batch.ConnectionID))
			return false
		}
		r.backoff(ctx, "loading the batch's connection", err)
		return false
	}
	p, err := r.e.cfg.Providers.Get(ctx, conn)
	if err != nil {
		if ctx.Err() != nil {
			return false
		}
		r.pause(ctx, fmt.Sprintf("provisioning connection %s: %s", conn.Name, batchsender.ErrorMessage(err)))
		if batchsender.ErrorCode(err) == batchsender.EINTERNAL {
			r.log.Error("provisioning connection", slog.String("connection_id", conn.ID), slog.Any("error", err))
		}
		return false
	}
	info := p.Info()
	sender, err := p.Compile(r.batch.Template)
	if err != nil {
		r.pause(ctx, fmt.Sprintf("template: %v", err))
		return false
	}
	r.sender = sender
	r.maxChunk = max(1, min(info.MaxChunk, r.e.cfg.ClaimSize))
	r.conn = r.e.limitsFor(conn, info)
	conc := r.conn.conc
	if r.opts.Concurrency > 0 && r.opts.Concurrency < conc {
		conc = r.opts.Concurrency
	}
	r.sem = semaphore.NewWeighted(int64(conc))
	// A batch's limits only lower the connection's: each gets one of its
	// own when it is below the connection's (or the connection has no
	// rate). On a store the nodes share, they hold across the cluster, as
	// the connection's do. The concurrency slots are this runner's own in
	// the store (owner: node and runner): a runner that ends may still be
	// giving its slots back when a new one for the same batch starts.
	br := r.opts.RatePerSecond
	ownRate := br > 0 && !math.IsInf(br, 1) && (r.conn.rate == 0 || br < r.conn.rate)
	ls, shared := r.e.store.(batchsender.LimitStore)
	switch {
	case ownRate && shared:
		r.crate = &clusterRate{e: r.e, ls: ls, key: "batch:" + r.batch.ID, rate: br * clusterRateMargin}
	case ownRate:
		r.lim = newLimiter(br)
	}
	for _, c := range []*clusterRate{r.crate, r.conn.crate} {
		if c != nil {
			r.crates = append(r.crates, c)
		}
	}
	if shared && conc < r.conn.conc {
		r.csem = newClusterSem(r.e, ls, fmt.Sprintf("batch:%s:%d", r.batch.ID, conc),
			r.e.cfg.NodeID+"/"+batchsender.NewID("run"), conc)
	}
	return true
}

// pause pauses the batch because it cannot be carried out, and reports
// whether this call paused it.
func (r *runner) pause(ctx context.Context, reason string) bool {
	_, err := r.e.store.BatchTransition(ctx, batchsender.BatchTransitionParams{
		ProjectID: r.batch.ProjectID,
		BatchID:   r.batch.ID,
		Action:    batchsender.ActionPause,
		Now:       r.e.now(),
		Reason:    reason,
	})
	switch {
	case err == nil:
		r.log.Warn("batch paused", slog.String("reason", reason))
		return true
	case batchsender.ErrorCode(err) == batchsender.ECONFLICT:
		// Paused, cancelled or completed meanwhile: nothing left to stop.
	case ctx.Err() == nil:
		r.log.Error("pausing batch", slog.String("reason", reason), slog.Any("error", err))
		r.backoff(ctx, "pausing batch", err)
	}
	return false
}

// backoff keeps the supervisor from restarting the runner at once after a
// store error.
func (r *runner) backoff(ctx context.Context, doing string, err error) {
	if ctx.Err() != nil {
		return
	}
	r.log.Error(doing, slog.Any("error", err))
	r.e.mu.Lock()
	r.e.notBefore[r.batch.ID] = r.e.now().Add(prepareBackoff)
	r.e.mu.Unlock()
}

// stillRunnable looks at the batch after a claim found nothing due. The
// runner goes on while the batch runs and still has pending items or results
// of its own that may turn into retries.
func (r *runner) stillRunnable(ctx context.Context) bool {
	b, err := r.e.store.BatchGetByID(ctx, r.batch.ProjectID, r.batch.ID)
	if err != nil {
		if ctx.Err() == nil && !batchsender.IsNotFound(err) {
			r.log.Error("loading batch", slog.Any("error", err))
			return true
		}
		return false
	}
	if b.Status != batchsender.BatchRunning {
		return false
	}
	if b.Counts.Pending > 0 {
		return true
	}
	r.e.mu.Lock()
	defer r.e.mu.Unlock()
	return r.outstanding > 0
}

// claimAndSend takes slots for as many calls as can start now and starts
// them with items from the runner's queue, claiming more items first when
// the queue is empty. It returns how many items it claimed or started.
//
// A claim takes the items of the calls whose slots are held plus a
// look-ahead: as many items as the runner started in the last
// lookaheadHorizon at its measured pace (see lookahead). With a provider
// that sends one item per call, slots free up one call at a time, and
// claiming only for free slots would make most claims a write transaction
// for a handful of items; the look-ahead makes claims large while keeping
// every claimed item within about a second of its start.
func (r *runner) claimAndSend(ctx context.Context) (int, error) {
	first, err := r.acquire(ctx)
	if err != nil {
		return 0, nil // ctx ended
	}
	held := []slots{first}
	// More calls only as far as slots are free now and the rate limits
	// allow within claimHorizon: claimed items never wait long for either.
	maxCalls := (r.e.cfg.ClaimSize + r.maxChunk - 1) / r.maxChunk
	budget := r.rateBudget(r.e.now())
	if budget >= 0 {
		maxCalls = min(maxCalls, 1+budget)
	}
	if n := r.queueLen(); n > 0 {
		maxCalls = min(maxCalls, (n+r.maxChunk-1)/r.maxChunk)
	}
	for len(held) < maxCalls && r.tryAcquire() {
		held = append(held, slots{})
	}
	giveBackFrom := func(i int) {
		for range held[i:] {
			r.release(true, true, true)
		}
	}

	now := r.e.now()
	r.qmu.Lock()
	stale := len(r.queue) > 0 && r.queue[0].until.Sub(now) < r.e.cfg.LeaseDuration/2
	r.qmu.Unlock()
	if stale {
		// The pace dropped so far that queued items waited half their
		// lease: give them back rather than send them with little lease
		// left; they are claimed again under a fresh one.
		q := r.takeQueue()
		r.log.Warn("giving back queued items whose lease is half over", slog.Int("items", len(q)))
		r.releaseQueued(q)
	}
	if r.queueLen() > 0 && !r.queueStillRunnable(ctx, now) {
		// Paused or cancelled: queued items were never sent; give them
		// back (they become pending, or cancelled with their batch).
		giveBackFrom(0)
		r.releaseQueued(r.takeQueue())
		return 0, nil
	}
	if r.queueLen() == 0 && !r.awaitPrefetch(ctx) {
		giveBackFrom(0)
		return 0, nil
	}
	claimed := 0
	if r.queueLen() == 0 {
		r.qmu.Lock()
		ahead := r.lookahead(now)
		r.qmu.Unlock()
		if budget >= 0 {
			// The first call's token is taken; the other held calls take
			// theirs in schedule.
			ahead = min(ahead, max(0, budget-(len(held)-1))*r.maxChunk)
		}
		limit := min(r.e.cfg.ClaimSize, len(held)*r.maxChunk+ahead)
		leaseUntil := now.Add(r.e.cfg.LeaseDuration)
		items, err := r.e.store.ChunkClaim(ctx, batchsender.ChunkClaimParams{
			BatchID:    r.batch.ID,
			Owner:      r.e.cfg.NodeID,
			Now:        now,
			LeaseUntil: leaseUntil,
			Limit:      limit,
		})
		if err != nil {
			giveBackFrom(0)
			if ctx.Err() != nil {
				return 0, nil
			}
			return 0, fmt.Errorf("claiming a chunk: %w", err)
		}
		if len(items) == 0 {
			giveBackFrom(0)
			return 0, nil
		}
		r.enqueue(items, now, leaseUntil)
		r.qmu.Lock()
		r.lastClaim = len(items)
		r.qmu.Unlock()
		claimed = len(items)
		r.statusAt = now // the claim found the batch running
	}

	if ctx.Err() != nil {
		// Shutting down between claim and send: give the items back.
		giveBackFrom(0)
		r.releaseQueued(r.takeQueue())
		return claimed, nil
	}

	// Take the held calls' share of the queue and spread it evenly over
	// the calls, each at most maxChunk.
	now = r.e.now()
	r.qmu.Lock()
	take := min(len(r.queue), len(held)*r.maxChunk)
	items := slices.Clone(r.queue[:take])
	r.queue = r.queue[take:]
	if len(r.queue) == 0 {
		r.queue = nil
	}
	r.pace.add(now, len(items))
	r.maybePrefetch(now)
	r.qmu.Unlock()
	if len(items) == 0 {
		// Call goroutines took the queue meanwhile.
		giveBackFrom(0)
		return 0, nil
	}
	calls := (len(items) + r.maxChunk - 1) / r.maxChunk
	for i := 1; i < calls; i++ {
		held[i] = r.schedule(now)
	}
	per, extra := len(items)/calls, len(items)%calls
	start := 0
	for i := range calls {
		n := per
		if i < extra {
			n++
		}
		chunk := items[start : start+n : start+n]
		start += n
		s := held[i]
		r.e.calls.Add(1)
		r.e.stats.callsInFlight.Add(1)
		go func() {
			defer r.e.calls.Done()
			defer func() {
				if r.e.stats.callsInFlight.Add(-1) == 0 {
					// No call runs that could add to the completer's
					// group: waiting out its interval would only delay
					// the results (and the end of a batch).
					signal(r.e.comp.idle)
				}
			}()
			defer r.release(true, true, true)
			// The chunk's oldest claim has the earliest deadline.
			its := make([]batchsender.Item, len(chunk))
			for i, q := range chunk {
				its[i] = q.it
			}
			r.call(chunk[0].lc.ctx, s, its)
			for _, q := range chunk {
				q.lc.release()
			}
			// Go on with the next queued item while that is fair (see next).
			for {
				q, ok := r.next()
				if !ok {
					return
				}
				its = append(its[:0], q.it)
				r.call(q.lc.ctx, slots{}, its)
				q.lc.release()
			}
		}()
	}
	giveBackFrom(calls)
	return max(claimed, len(items)), nil
}

// statusCheckEvery is how often a runner with queued items looks whether
// its batch still runs, so that a pause or cancel holds back queued items
// within about this long.
const statusCheckEvery = 100 * time.Millisecond

// queueStillRunnable reports whether the runner's batch is still running,
// looking at most every statusCheckEvery. A store error counts as running:
// the items are in flight under a lease either way.
func (r *runner) queueStillRunnable(ctx context.Context, now time.Time) bool {
	if !r.recheck.Swap(false) && now.Sub(r.statusAt) < statusCheckEvery && !now.Before(r.statusAt) {
		return true
	}
	r.statusAt = now
	b, err := r.e.store.BatchGetByID(ctx, r.batch.ProjectID, r.batch.ID)
	if err != nil {
		return !batchsender.IsNotFound(err)
	}
	if b.Status != batchsender.BatchRunning {
		return false
	}
	r.goOnUntil.Store(now.Add(statusCheckEvery).UnixNano())
	return true
}

// queueLen returns how many claimed items wait in the queue.
func (r *runner) queueLen() int {
	r.qmu.Lock()
	defer r.qmu.Unlock()
	return len(r.queue)
}

// takeQueue empties the queue and returns what it held.
func (r *runner) takeQueue() []queued {
	r.qmu.Lock()
	defer r.qmu.Unlock()
	q := r.queue
	r.queue = nil
	return q
}

// next gives a call goroutine that just finished the next queued item and
// its claim's context, so that it goes on with the slots it holds: handing
// them back would wake the loop and start a new goroutine for every item,
// which cost as much CPU as a good part of the HTTP request. It says no
// whenever going on could be unfair or wrong, and the goroutine then hands
// its slots back as before:
//   - a provider that takes chunks, or a rate limit (tokens are reserved
//     per call by the loop);
//   - anyone waiting for a slot of the connection or of the process (the
//     semaphores are FIFO so that batches take turns);
//   - the batch's status is due to be looked at again, or this node
//     paused it (recheck), or the engine is shutting down;
//   - the queue is empty or its lease is half over.
func (r *runner) next() (queued, bool) {
	if r.maxChunk != 1 || r.rateLimited() || r.e.runCtx.Err() != nil || r.recheck.Load() ||
		r.conn.waiting.Load() > 0 || r.e.globalWaiting.Load() > 0 ||
		(r.conn.csem != nil && !r.conn.csem.keep()) || (r.csem != nil && !r.csem.keep()) {
		return queued{}, false
	}
	now := r.e.now()
	if now.UnixNano() >= r.goOnUntil.Load() {
		return queued{}, false
	}
	r.qmu.Lock()
	defer r.qmu.Unlock()
	if len(r.queue) == 0 || r.queue[0].until.Sub(now) < r.e.cfg.LeaseDuration/2 {
		return queued{}, false
	}
	q := r.queue[0]
	r.queue[0] = queued{}
	r.queue = r.queue[1:]
	if len(r.queue) == 0 {
		r.queue = nil
	}
	r.pace.add(now, 1)
	r.maybePrefetch(now)
	return q, true
}

// rateLimited reports whether the runner's calls take rate tokens, which
// the loop reserves per call (schedule): such runners keep the loop's
// claim-and-start cycle, without prefetches or calls that go on.
func (r *runner) rateLimited() bool {
	return r.lim != nil || r.crate != nil || r.conn.lim != nil || r.conn.crate != nil
}

// prefetchBelow is the share of the last claim below which the queue is
// topped up by a prefetch: the next claim runs while the calls work
// through the rest, instead of every call slot waiting for it once the
// queue is empty (one store round trip per claim: milliseconds on
// PostgreSQL, the claim's whole write on SQLite).
const prefetchBelow = 2 // half

// queueClaims is how many claims' worth of items a runner may hold queued.
const queueClaims = 2

// maybePrefetch starts a claim in the background when the queue runs low,
// unless one runs. Only the claim is early: the items wait in the queue
// under their lease like any others. r.qmu is held.
func (r *runner) maybePrefetch(now time.Time) {
	if r.claiming != nil || !r.queueOpen || r.lastClaim == 0 || r.rateLimited() || r.e.runCtx.Err() != nil {
		return
	}
	// Top the queue up to what the runner starts within the look-ahead
	// horizon (or the loop's last claim, while the pace is not known
	// yet), as the loop's own claims do: a node never holds much more work
	// than that, which leaves the rest of the batch to the other nodes of
	// a cluster.
	ahead := r.lookahead(now)
	if !r.pace.known {
		// The pace is not known yet (its first window has not ended):
		// grow the claims, as TCP's slow start does, so that a batch
		// does not start with a claim per concurrency's worth of items.
		ahead = 2 * max(r.lastClaim, r.lastFetch)
	}
	// A fast runner may queue up to queueClaims claims: the next claim
	// (a store round trip and a commit, milliseconds on a busy machine)
	// then runs while the calls work through a whole claim, and the
	// calls do not run dry waiting for it.
	target := min(queueClaims*r.e.cfg.ClaimSize, max(ahead, r.lastClaim))
	if len(r.queue) > target/prefetchBelow {
		return
	}
	limit := min(r.e.cfg.ClaimSize, target-len(r.queue))
	done := make(chan struct{})
	r.claiming = done
	r.e.calls.Add(1)
	go func() {
		defer r.e.calls.Done()
		defer close(done)
		r.prefetch(limit)
	}()
}

// prefetch claims up to limit items and queues them.
func (r *runner) prefetch(limit int) {
	now := r.e.now()
	leaseUntil := now.Add(r.e.cfg.LeaseDuration)
	items, err := r.e.store.ChunkClaim(r.e.runCtx, batchsender.ChunkClaimParams{
		BatchID:    r.batch.ID,
		Owner:      r.e.cfg.NodeID,
		Now:        now,
		LeaseUntil: leaseUntil,
		Limit:      limit,
	})
	r.qmu.Lock()
	r.claiming = nil
	r.qmu.Unlock()
	if err != nil {
		if r.e.runCtx.Err() == nil {
			r.log.Error("claiming a chunk ahead", slog.Any("error", err))
		}
		return
	}
	if len(items) > 0 {
		r.enqueue(items, now, leaseUntil)
		r.qmu.Lock()
		r.lastFetch = len(items)
		r.qmu.Unlock()
	}
}

// awaitPrefetch waits for a running prefetch to end. It reports false if
// ctx ended first.
func (r *runner) awaitPrefetch(ctx context.Context) bool {
	r.qmu.Lock()
	done := r.claiming
	r.qmu.Unlock()
	if done == nil {
		return true
	}
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}

// enqueue counts freshly claimed items and queues them for calls, or gives
// them back when the loop ended or the engine is shutting down meanwhile.
func (r *runner) enqueue(items []batchsender.Item, now, leaseUntil time.Time) {
	r.e.stats.claims.Add(1)
	r.e.stats.itemsClaimed.Add(int64(len(items)))
	r.e.mu.Lock()
	r.outstanding += len(items)
	r.e.mu.Unlock()
	lc := newLeaseCtx(r.e.sendCtx, leaseUntil.Add(-r.e.cfg.LeaseDuration/10), now.Add(time.Second), len(items))
	r.qmu.Lock()
	if !r.queueOpen || r.e.runCtx.Err() != nil {
		r.qmu.Unlock()
		r.releaseItems(items)
		lc.cancel()
		return
	}
	r.queue = slices.Grow(r.queue, len(items))
	for _, it := range items {
		r.queue = append(r.queue, queued{it: it, until: leaseUntil, lc: lc})
	}
	r.qmu.Unlock()
	// The claim found the batch running (only the loop goroutine reads
	// statusAt; goOnUntil is what calls look at).
	r.goOnUntil.Store(now.Add(statusCheckEvery).UnixNano())
}

// releaseQueued gives queued items back unsent and lets go of their
// contexts.
func (r *runner) releaseQueued(q []queued) {
	if len(q) == 0 {
		return
	}
	items := make([]batchsender.Item, len(q))
	for i, x := range q {
		items[i] = x.it
	}
	r.releaseItems(items)
	for _, x := range q {
		x.lc.release()
	}
}

// lookaheadHorizon is how far ahead of its pace a runner claims: the
// longest a queued item should wait for its call.
const lookaheadHorizon = claimHorizon

// lookahead returns how many items beyond those of its held calls the
// runner may claim: what it started in the last lookaheadHorizon at its
// measured pace, and never more than an eighth of a lease's worth, so that
// a queued item starts long before its lease runs out even if the pace
// halves.
func (r *runner) lookahead(now time.Time) int {
	horizon := min(lookaheadHorizon, r.e.cfg.LeaseDuration/8)
	return int(r.pace.perSecond(now) * horizon.Seconds())
}

// pacer measures how many items per second a runner starts. Only the
// runner's loop goroutine uses it.
type pacer struct {
	t0   time.Time // start of the current window
	n    int       // items started in the window
	rate float64   // smoothed items per second of past windows
	// known is true once a window has ended: rate is a measurement
	// (possibly 0), not the lack of one.
	known bool
}

// paceWindow is the length of one measuring window of a pacer.
const paceWindow = 250 * time.Millisecond

// add records that n items started at now.
func (p *pacer) add(now time.Time, n int) {
	if p.t0.IsZero() || now.Before(p.t0) {
		p.t0, p.n = now, 0
	}
	p.n += n
	if d := now.Sub(p.t0); d >= paceWindow {
		p.fold(float64(p.n) / d.Seconds())
		p.t0, p.n = now, 0
	}
}

func (p *pacer) fold(r float64) {
	p.known = true
	if p.rate == 0 {
		p.rate = r
		return
	}
	p.rate = (p.rate + r) / 2
}

// perSecond returns the smoothed pace. A window that has run long without
// reaching its end (the runner was idle or slowed down) counts as it
// stands, so a stale fast pace does not outlive a slowdown.
func (p *pacer) perSecond(now time.Time) float64 {
	if d := now.Sub(p.t0); !p.t0.IsZero() && d >= 2*paceWindow {
		p.fold(float64(p.n) / d.Seconds())
		p.t0, p.n = now, 0
	}
	return p.rate
}

// releaseItems gives claimed items back unsent, their attempt not counted.
func (r *runner) releaseItems(items []batchsender.Item) {
	ids := make([]string, len(items))
	for i, it := range items {
		ids[i] = it.ID
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.e.runCtx), storeTimeout)
	defer cancel()
	n, err := r.e.store.ItemsRelease(ctx, r.e.cfg.NodeID, ids)
	if err != nil {
		r.log.Error("releasing unsent items: they stay leased until rescued",
			slog.Int("items", len(ids)), slog.Any("error", err))
	}
	r.e.stats.released.Add(int64(n))
	r.e.settled(r, len(items))
}

// leaseCtx is the context of the calls that send the items of one claim.
// It ends a tenth of a lease before the claim's lease does, so that a
// rescued item is not sent twice at the same time. There is one per claim
// rather than one per call because a claim's calls share its lease, and a
// context with its own timer per call was a measurable share of the send
// path. It is cancelled once every item of the claim is done with (sent or
// given back), and in any case at its deadline.
type leaseCtx struct {
	ctx    context.Context
	cancel context.CancelFunc
	refs   atomic.Int64
}

// newLeaseCtx returns a leaseCtx held refs times (once per claimed item),
// ending at deadline or notBefore, whichever is later.
func newLeaseCtx(parent context.Context, deadline, notBefore time.Time, refs int) *leaseCtx {
	if deadline.Before(notBefore) {
		deadline = notBefore
	}
	l := &leaseCtx{}
	l.ctx, l.cancel = context.WithDeadline(parent, deadline)
	l.refs.Store(int64(refs))
	return l
}

func (l *leaseCtx) release() {
	if l.refs.Add(-1) == 0 {
		l.cancel()
	}
}

// call sends one chunk, within ctx (its claim's leaseCtx), and hands its
// results to the completer.
func (r *runner) call(ctx context.Context, s slots, items []batchsender.Item) {
	for {
		if d := s.notBefore.Sub(r.e.now()); d > 0 {
			if !sleepCtx(r.e.runCtx, d) {
				r.releaseItems(items)
				return
			}
		}
		// A cluster rate slot used late could bunch with calls on time in
		// the next second: take fresh ones instead.
		if !s.clusterSlot || (!s.notBefore.IsZero() && r.e.now().Sub(s.notBefore) <= r.clusterGrace()) {
			break
		}
		at, err := r.takeClusterSlots(r.e.runCtx)
		if err != nil {
			if r.e.runCtx.Err() == nil {
				r.log.Error("taking a rate slot", slog.Any("error", err))
			}
			r.releaseItems(items)
			return
		}
		s.notBefore = at
	}
	if r.e.runCtx.Err() != nil {
		r.releaseItems(items)
		return
	}
	items, settled := r.sendable(ctx, items) // suppressed recipients are skipped, not sent
	if len(items) == 0 {
		r.e.comp.push(r, settled)
		return
	}
	in := make([]sdk.Item, len(items))
	for i, it := range items {
		in[i] = sdk.Item{ID: it.ID, Seq: it.Seq, Attempt: it.Attempts, Data: it.Data}
	}
	r.e.stats.calls.Add(1)
	started := r.e.now()
	results, panicked, stack := safeSend(ctx, r.sender, in)
	ended := r.e.now()
	if panicked != nil {
		r.e.stats.panics.Add(1)
		r.log.Error("provider panicked in Send", slog.Any("panic", panicked), slog.Int("items", len(items)),
			slog.String("stack", string(stack)))
		err := fmt.Errorf("provider %s panicked: %v", r.batch.Provider, panicked)
		results = make([]sdk.Result, len(items))
		for i := range results {
			results[i] = sdk.Retry(err)
		}
	} else if len(results) != len(items) {
		r.e.stats.badCalls.Add(1)
		r.log.Error("provider returned the wrong number of results",
			slog.Int("items", len(items)), slog.Int("results", len(results)))
		err := fmt.Errorf("provider %s returned %d results for %d items", r.batch.Provider, len(results), len(items))
		fixed := make([]sdk.Result, len(items))
		n := copy(fixed, results)
		for i := n; i < len(fixed); i++ {
			fixed[i] = sdk.Retry(err)
		}
		results = fixed
	}
	out := make([]batchsender.ItemResult, len(items))
	for i, it := range items {
		out[i] = r.classify(it, results[i], started, ended.Sub(started), ended)
	}
	r.e.comp.push(r, append(out, settled...))
	r.guardCheck(out) // skipped items are no verdict on the batch
}

// safeSend calls Send, turning a panic into a value and the stack where it
// happened.
func safeSend(ctx context.Context, s sdk.Sender, items []sdk.Item) (results []sdk.Result, panicked any, stack []byte) {
	defer func() {
		if p := recover(); p != nil {
			results, panicked, stack = nil, p, debug.Stack()
		}
	}()
	return s.Send(ctx, items), nil, nil
}
