// Package engine carries batches out: it claims due items of running batches
// in chunks under a lease, sends them through the batch's provider within the
// connection's rate and concurrency limits, classifies each result and writes
// the results back in bulk (group commit).
//
// The moving parts, following one item:
//
//   - The supervisor (Run) wakes every PollInterval (jittered) or on Wake. It
//     activates scheduled batches whose send_at has come (once a second) and
//     rescues expired leases (every LeaseDuration/4), both on the elected
//     node only when the store elects one, and keeps one runner per runnable
//     batch.
//   - A runner first waits for the slots of one Send call, in this order:
//     the batch's concurrency slot, a token of the batch's own rate limit,
//     the connection's concurrency slot, a token of the connection's rate
//     limit and a slot of the process-wide MaxInFlight. It then takes, without
//     waiting, the slots of as many more calls as are free and as the rate
//     limits allow within claimHorizon. It hands those calls items from its
//     queue; when the queue is empty it first claims the items of those
//     calls plus a look-ahead: as many items as it started in the last
//     second at its measured pace (at most an eighth of a lease's worth,
//     within the rate budget, and never more than ClaimSize). Without the
//     look-ahead a provider that sends one item per call (webhooks) frees
//     slots one at a time, and each claim would be a write transaction for
//     a handful of items. A claimed item therefore starts within about a
//     second, at most about claimHorizon of rate-limit wait later; queued
//     items whose lease is half over (the pace fell sharply) are given back
//     and claimed again under a fresh lease. The semaphores are FIFO, and a
//     runner queues for at most one slot at a time, so runners sharing a
//     connection (and connections sharing the process) take turns: a huge
//     batch cannot starve a small one. Queued items are in flight: after a
//     pause or cancel up to a second's worth of them are still sent, as
//     in-flight items finish.
//   - Rates count Send calls, as sdk.Info.DefaultRate does: for a provider
//     whose MaxChunk is 1 that is items per second. Buckets hold one token,
//     so a limit of r per second also holds within any second.
//   - Each Send call runs in its own goroutine; its results are classified
//     (ok, retry with backoff, permanent, unknown) and handed to the completer.
//   - The completer buffers results and writes them with one
//     Store.ItemResultsWriteMany transaction per flush, when about
//     flushSize results are buffered or flushInterval after the first.
//
// Connection limits: the connection config's top-level rate_per_second and
// concurrency, when above 0, else the provider's Info defaults. On a store
// that several processes share (batchsender.LimitStore, PostgreSQL) they
// hold across all nodes together: rate slots come from one token bucket row
// in groups of about a tenth of a second (one round trip per group), at 95%
// of the configured rate so that clock and scheduling jitter between nodes
// (up to about 50ms) cannot push a one-second window over it; a call that would start more
// than half a slot late takes a fresh slot instead. Concurrency slots are
// rows leased by nodes for LeaseDuration, renewed every LeaseDuration/20,
// and used only while renewed within LeaseDuration/10, so a slot's lease
// outlasts every call on it; each node holds at most its fair share (the
// limit divided among nodes that want slots, rounded up) and gives surplus
// and idle slots back. Single-process stores keep the limits in process.
//
// The failure-rate guard (DESIGN.md): a runner keeps its batch's last 100
// final outcomes (succeeded, unknown, failed; retries are not final) and,
// once at least 20 are known and the share of failures reaches the batch's
// failure_threshold (default 0.5, 0 turns it off), pauses the batch with
// the reason as status_reason — a wrong credential or a dead endpoint stops
// the batch instead of burning the list. Resuming starts a fresh window.
//
// Known limits: the batch's own rate and concurrency options hold per node;
// with fewer concurrency slots than nodes some nodes hold none and wait;
// the failure-rate guard counts the outcomes of each node separately.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/providers"
)

// Defaults of Config.
const (
	DefaultPollInterval  = 200 * time.Millisecond
	DefaultLeaseDuration = 60 * time.Second
	DefaultShutdownGrace = 10 * time.Second
	DefaultMaxInFlight   = 512
	DefaultClaimSize     = 500
)

// Tuning that callers have no reason to change.
const (
	// runnableLimit bounds the batches one supervisor tick looks at.
	runnableLimit = 1000
	// claimHorizon is the longest a claimed item may wait for a rate-limit
	// token before its call starts.
	claimHorizon = time.Second
	// maxIdleSleep bounds how long a runner with nothing due sleeps between
	// looks, when it does not know when its next item falls due: a retry
	// whose due time the runner forgot (see maxDues) or wrote before a
	// restart is at most this late. Each look is a claim, a write on SQLite.
	maxIdleSleep = 5 * time.Second
	// prepareBackoff is how long a batch whose runner could not start (a
	// store error) waits before the next try.
	prepareBackoff = 5 * time.Second
	// storeTimeout bounds store calls made after Run's context ended.
	storeTimeout = 10 * time.Second
	// leaderCheckEvery bounds how often LeaderTry is asked.
	leaderCheckEvery = time.Second
	// activateEvery is how often scheduled batches are looked at: send_at
	// needs no finer grain, and the look is a write on SQLite.
	activateEvery = time.Second
)

// Config configures an Engine. Store and Providers are required; zero values
// of the other fields mean their defaults.
type Config struct {
	Store     batchsender.Store
	Providers *providers.Cache
	Logger    *slog.Logger
	// NodeID is the lease owner written on claimed items; default
	// batchsender.NewID("node"). Two live engines must not share it.
	NodeID string
	// Now is the clock; default time.Now.
	Now func() time.Time
	// PollInterval is how often the supervisor looks for work without being
	// woken (jittered by ±25%); default 200ms.
	PollInterval time.Duration
	// LeaseDuration is how long a claim holds its items; default 60s. A Send
	// call is cut off before the lease of its items runs out.
	LeaseDuration time.Duration
	// ShutdownGrace is how long in-flight calls may run on after Run's
	// context ends before they are cancelled; default 10s.
	ShutdownGrace time.Duration
	// MaxInFlight caps concurrent Send calls of the whole process; default 512.
	MaxInFlight int
	// ClaimSize is the most items one claim takes; default 500.
	ClaimSize int
	// RescueOnStart is for single-process stores (SQLite): when Run starts,
	// every in-flight item belongs to a process that died, so all of them are
	// rescued at once instead of waiting for their leases to expire.
	RescueOnStart bool
}

// WithDefaults returns the config with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.NodeID == "" {
		c.NodeID = batchsender.NewID("node")
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.LeaseDuration == 0 {
		c.LeaseDuration = DefaultLeaseDuration
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = DefaultShutdownGrace
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.ClaimSize == 0 {
		c.ClaimSize = DefaultClaimSize
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.Store == nil:
		return batchsender.Errorf(batchsender.EINVALID, "engine: Store is required")
	case c.Providers == nil:
		return batchsender.Errorf(batchsender.EINVALID, "engine: Providers is required")
	case c.PollInterval < 0:
		return batchsender.Errorf(batchsender.EINVALID, "engine: PollInterval must be positive, got %s", c.PollInterval)
	case c.LeaseDuration < time.Second:
		return batchsender.Errorf(batchsender.EINVALID, "engine: LeaseDuration must be at least 1s, got %s", c.LeaseDuration)
	case c.ShutdownGrace < 0:
		return batchsender.Errorf(batchsender.EINVALID, "engine: ShutdownGrace must not be negative, got %s", c.ShutdownGrace)
	case c.MaxInFlight < 1:
		return batchsender.Errorf(batchsender.EINVALID, "engine: MaxInFlight must be at least 1, got %d", c.MaxInFlight)
	case c.ClaimSize < 1:
		return batchsender.Errorf(batchsender.EINVALID, "engine: ClaimSize must be at least 1, got %d", c.ClaimSize)
	}
	return nil
}

// Engine carries batches out. Create it with New and start it with Run.
type Engine struct {
	cfg    Config
	store  batchsender.Store
	log    *slog.Logger
	global *semaphore.Weighted // MaxInFlight
	// globalWaiting counts runners blocked acquiring global.
	globalWaiting atomic.Int32
	wake          chan struct{}
	stats         counters
	comp          *completer

	started atomic.Bool

	// runCtx ends when Run's context ends: no more claims. sendCtx ends
	// ShutdownGrace later: in-flight calls are cancelled.
	runCtx     context.Context
	sendCtx    context.Context
	cancelSend context.CancelFunc

	loops sync.WaitGroup // runner loops
	calls sync.WaitGroup // Send call goroutines

	mu        sync.Mutex
	runners   map[string]*runner     // by batch ID
	conns     map[string]*connLimits // by connection ID
	notBefore map[string]time.Time   // by batch ID: runner start backoff after errors
}

// New checks the config and returns an engine ready to Run.
func New(cfg Config) (*Engine, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	e := &Engine{
		cfg:       cfg,
		store:     cfg.Store,
		log:       cfg.Logger.With(slog.String("node_id", cfg.NodeID)),
		global:    semaphore.NewWeighted(int64(cfg.MaxInFlight)),
		wake:      make(chan struct{}, 1),
		runners:   map[string]*runner{},
		conns:     map[string]*connLimits{},
		notBefore: map[string]time.Time{},
	}
	e.comp = newCompleter(e)
	return e, nil
}

// Wake tells the engine that new work may be due (a batch was created,
// started, resumed or had items retried). It never blocks.
func (e *Engine) Wake() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
	e.mu.Lock()
	for _, r := range e.runners {
		r.poke()
	}
	e.mu.Unlock()
}

// Run carries batches out until ctx ends, then shuts down gracefully: it
// stops claiming, lets in-flight calls finish within ShutdownGrace and
// cancels the rest, gives claimed but unsent items back, writes every
// result, and returns nil. It returns an error only when it cannot start.
// Run may be called once.
func (e *Engine) Run(ctx context.Context) error {
	if !e.started.CompareAndSwap(false, true) {
		return errors.New("engine: Run called twice")
	}
	e.runCtx = ctx
	e.sendCtx, e.cancelSend = context.WithCancel(context.WithoutCancel(ctx))
	defer e.cancelSend()

	if e.cfg.RescueOnStart {
		// Every lease in a single-process store belongs to a dead process,
		// whatever its expiry: hand the items out again now.
		n, err := e.store.LeasesRescue(ctx, e.now().Add(100*365*24*time.Hour))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("rescuing leases at start: %w", err)
		}
		e.stats.rescued.Add(int64(n))
		if n > 0 {
			e.log.Info("rescued in-flight items of a previous run", slog.Int("items", n))
		}
	}

	compDone := make(chan struct{})
	go func() {
		defer close(compDone)
		e.comp.run()
	}()

	var signalDone chan struct{}
	if ws, ok := e.store.(batchsender.WorkSignaler); ok {
		signalDone = make(chan struct{})
		go func() {
			defer close(signalDone)
			e.waitSignals(ctx, ws)
		}()
	}

	e.supervise(ctx)
	e.shutdown()
	e.comp.stop()
	<-compDone
	if signalDone != nil {
		<-signalDone
	}
	return nil
}

// shutdown waits for runner loops to stop claiming and for in-flight calls
// to end, cancelling the calls after ShutdownGrace.
func (e *Engine) shutdown() {
	e.loops.Wait()
	callsDone := make(chan struct{})
	go func() {
		e.calls.Wait()
		close(callsDone)
	}()
	grace := time.NewTimer(e.cfg.ShutdownGrace)
	defer grace.Stop()
	select {
	case <-callsDone:
		return
	case <-grace.C:
	}
	e.log.Warn("shutdown grace over: cancelling in-flight calls",
		slog.Int64("calls_in_flight", e.stats.callsInFlight.Load()))
	e.cancelSend()
	// A provider that ignores its context must not hold the process
	// forever; its items stay leased and are rescued after the restart.
	hard := time.NewTimer(e.cfg.ShutdownGrace + time.Second)
	defer hard.Stop()
	select {
	case <-callsDone:
	case <-hard.C:
		e.log.Error("calls still running after cancellation: abandoning them",
			slog.Int64("calls_in_flight", e.stats.callsInFlight.Load()))
	}
}

// supervise runs the supervisor loop until ctx ends.
func (e *Engine) supervise(ctx context.Context) {
	var (
		leader     bool
		leaderAt   time.Time
		m          maintenance
		elector, _ = e.store.(batchsender.LeaderElector)
	)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.wake:
		case <-timer.C:
		}
		now := e.now()
		if elector == nil {
			leader = true
		} else if now.Sub(leaderAt) >= leaderCheckEvery || now.Before(leaderAt) {
			ok, err := elector.LeaderTry(ctx)
			if err != nil && ctx.Err() == nil {
				e.log.Error("trying for leadership", slog.Any("error", err))
			}
			leader, leaderAt = ok && err == nil, now
		}
		if leader {
			e.maintain(ctx, now, &m)
		}
		e.startRunners(ctx)
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(jitter(e.cfg.PollInterval))
	}
}

// maintenance remembers when the supervisor last did each maintenance task.
type maintenance struct {
	activated, rescued time.Time
}

// due reports whether a task last done at *last is due again, and if so
// marks it done now. A clock that went back makes it due.
func due(last *time.Time, now time.Time, every time.Duration) bool {
	if !last.IsZero() && now.Sub(*last) < every && !now.Before(*last) {
		return false
	}
	*last = now
	return true
}

// maintain does the work only one node should do: starting scheduled
// batches (every activateEvery) and rescuing expired leases (every quarter
// of LeaseDuration, so that an item waits at most 1.25 leases after its
// worker died).
func (e *Engine) maintain(ctx context.Context, now time.Time, m *maintenance) {
	if due(&m.activated, now, max(activateEvery, e.cfg.PollInterval)) {
		n, err := e.store.BatchesActivateDue(ctx, now)
		switch {
		case err != nil && ctx.Err() == nil:
			e.log.Error("activating scheduled batches", slog.Any("error", err))
		case n > 0:
			e.log.Info("scheduled batches started", slog.Int("batches", n))
			// Their runners start in this same tick.
		}
	}
	if !due(&m.rescued, now, e.cfg.LeaseDuration/4) {
		return
	}
	n, err := e.store.LeasesRescue(ctx, now)
	switch {
	case err != nil && ctx.Err() == nil:
		e.log.Error("rescuing expired leases", slog.Any("error", err))
	case n > 0:
		e.stats.rescued.Add(int64(n))
		e.log.Warn("rescued items with expired leases", slog.Int("items", n))
	}
}

// startRunners makes sure every runnable batch has a running runner.
func (e *Engine) startRunners(ctx context.Context) {
	batches, err := e.store.BatchesRunnable(ctx, runnableLimit)
	if err != nil {
		if ctx.Err() == nil {
			e.log.Error("listing runnable batches", slog.Any("error", err))
		}
		return
	}
	now := e.now()
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, b := range batches {
		if t, ok := e.notBefore[b.ID]; ok {
			if now.Before(t) {
				continue
			}
			delete(e.notBefore, b.ID)
		}
		r := e.runners[b.ID]
		if r == nil {
			r = newRunner(e, b)
			e.runners[b.ID] = r
		}
		if r.looping {
			continue
		}
		r.looping = true
		e.stats.runners.Add(1)
		e.loops.Add(1)
		go func() {
			defer e.loops.Done()
			r.loop(ctx)
		}()
	}
}

// loopEnded records that a runner's loop returned, forgetting the runner
// unless its results are still outstanding.
func (e *Engine) loopEnded(r *runner) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r.looping = false
	e.stats.runners.Add(-1)
	if r.outstanding == 0 && e.runners[r.batch.ID] == r {
		delete(e.runners, r.batch.ID)
	}
}

// settled records that n of a runner's claimed items have their results
// written (or were given back).
func (e *Engine) settled(r *runner, n int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r.outstanding -= n
	if r.outstanding == 0 && !r.looping && e.runners[r.batch.ID] == r {
		delete(e.runners, r.batch.ID)
	}
}

// waitSignals wakes the engine on the store's work signals until ctx ends.
func (e *Engine) waitSignals(ctx context.Context, ws batchsender.WorkSignaler) {
	for {
		err := ws.WorkWait(ctx, e.Wake)
		if ctx.Err() != nil {
			return
		}
		e.log.Error("waiting for work signals", slog.Any("error", err))
		if !sleepCtx(ctx, time.Second) {
			return
		}
	}
}

func (e *Engine) now() time.Time { return e.cfg.Now() }

// jitter returns d scaled by a random factor in [0.75, 1.25), so that nodes
// and runners do not poll in lockstep.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.75 + rand.Float64()/2))
}

// sleepCtx sleeps for d and reports whether ctx is still alive.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Stats are counters of an engine's work since it was created, for /metrics.
type Stats struct {
	Succeeded      int64 // attempts that succeeded
	Retried        int64 // attempts that failed and will be tried again
	Failed         int64 // items that failed for good (permanent, or attempts used up)
	Unknown        int64 // items whose send may or may not have happened
	Released       int64 // claimed items given back unsent (shutdown, pause, cancel, lease half over)
	Rescued        int64 // items whose lease this engine rescued
	Claims         int64 // claims that returned items
	ItemsClaimed   int64
	Calls          int64 // Send calls made
	CallsInFlight  int64
	Panics         int64 // Send calls that panicked
	BadResults     int64 // Send calls that returned the wrong number of results
	Flushes        int64 // group commits
	FlushErrors    int64 // failed group commits (retried)
	ResultsWritten int64 // results the store took
	ResultsIgnored int64 // results the store ignored: their lease had been rescued
	Runners        int64 // batches being worked on now
	GuardPauses    int64 // batches the failure-rate guard paused
}

type counters struct {
	succeeded, retried, failed, unknown, released, rescued       atomic.Int64
	claims, itemsClaimed, calls, callsInFlight, panics, badCalls atomic.Int64
	flushes, flushErrors, written, ignored, runners              atomic.Int64
	guardPauses                                                  atomic.Int64
}

// Stats returns a snapshot of the engine's counters.
func (e *Engine) Stats() Stats {
	c := &e.stats
	return Stats{
		Succeeded:      c.succeeded.Load(),
		Retried:        c.retried.Load(),
		Failed:         c.failed.Load(),
		Unknown:        c.unknown.Load(),
		Released:       c.released.Load(),
		Rescued:        c.rescued.Load(),
		Claims:         c.claims.Load(),
		ItemsClaimed:   c.itemsClaimed.Load(),
		Calls:          c.calls.Load(),
		CallsInFlight:  c.callsInFlight.Load(),
		Panics:         c.panics.Load(),
		BadResults:     c.badCalls.Load(),
		Flushes:        c.flushes.Load(),
		FlushErrors:    c.flushErrors.Load(),
		ResultsWritten: c.written.Load(),
		ResultsIgnored: c.ignored.Load(),
		Runners:        c.runners.Load(),
		GuardPauses:    c.guardPauses.Load(),
	}
}
