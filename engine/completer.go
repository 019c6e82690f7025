package engine

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/batchsender/batchsender"
)

// Group commit tuning.
const (
	// flushSize is the number of buffered results that triggers a write.
	flushSize = 1000
	// flushInterval is the longest a result waits to be written.
	flushInterval = 20 * time.Millisecond
	// maxBuffered bounds the buffer: calls that finish while it is full wait,
	// which slows claiming down to what the store can write.
	maxBuffered = 8 * flushSize
	// splitAfter is how many failed writes of one flush make the completer
	// write its results one by one, so that a single bad result cannot stall
	// the engine.
	splitAfter = 3
)

// completer writes results in groups: one store transaction per flush.
type completer struct {
	e *Engine

	mu     sync.Mutex
	buf    []batchsender.ItemResult
	owners []ownerSpan // which runner each run of buf belongs to
	// The buffers of the last flush, emptied, for the next one: results
	// are large structs, and a fresh buffer per flush was a good part of
	// the engine's allocations.
	spare       []batchsender.ItemResult
	spareOwners []ownerSpan
	space       chan struct{} // closed and replaced when the buffer drains
	stopped     bool          // no more results taken

	arrived  chan struct{} // the buffer became non-empty
	full     chan struct{} // the buffer reached flushSize
	idle     chan struct{} // no call is in flight: write what there is now
	stopping chan struct{}
	stopOnce sync.Once
}

// ownerSpan says that n consecutive buffered results came from runner r.
type ownerSpan struct {
	r *runner
	n int
}

func newCompleter(e *Engine) *completer {
	return &completer{
		e:        e,
		space:    make(chan struct{}),
		arrived:  make(chan struct{}, 1),
		full:     make(chan struct{}, 1),
		idle:     make(chan struct{}, 1),
		stopping: make(chan struct{}),
	}
}

// push hands over the results of one call, waiting while the buffer is full.
// After stop the results are dropped: their items stay leased and are
// rescued later.
func (c *completer) push(r *runner, results []batchsender.ItemResult) {
	c.mu.Lock()
	for len(c.buf) >= maxBuffered && !c.stopped {
		space := c.space
		c.mu.Unlock()
		<-space
		c.mu.Lock()
	}
	if c.stopped {
		c.mu.Unlock()
		c.e.log.Error("results arrived after shutdown: their items stay leased until rescued",
			slog.String("batch_id", r.batch.ID), slog.Int("items", len(results)))
		return
	}
	wasEmpty := len(c.buf) == 0
	c.buf = append(c.buf, results...)
	if k := len(c.owners); k > 0 && c.owners[k-1].r == r {
		c.owners[k-1].n += len(results)
	} else {
		c.owners = append(c.owners, ownerSpan{r: r, n: len(results)})
	}
	n := len(c.buf)
	c.mu.Unlock()
	if wasEmpty {
		signal(c.arrived)
	}
	if n >= flushSize {
		signal(c.full)
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (c *completer) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.buf)
}

// stop makes run write what is buffered and return. Call it once no more
// calls run.
func (c *completer) stop() {
	c.stopOnce.Do(func() { close(c.stopping) })
}

// run flushes until stop, then flushes the rest.
func (c *completer) run() {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		if c.len() == 0 {
			select {
			case <-c.arrived:
			case <-c.stopping:
				c.final()
				return
			}
		}
		if c.len() < flushSize {
			timer.Reset(flushInterval)
			select {
			case <-c.full:
			case <-c.idle:
			case <-timer.C:
			case <-c.stopping:
			}
			timer.Stop()
		}
		c.flush(false)
	}
}

func (c *completer) isStopping() bool {
	select {
	case <-c.stopping:
		return true
	default:
		return false
	}
}

// final writes what is left and refuses further results.
func (c *completer) final() {
	c.mu.Lock()
	c.stopped = true
	close(c.space)
	c.mu.Unlock()
	c.flush(true)
}

// flush takes the whole buffer and writes it in one transaction, retrying
// until it is written (or, during shutdown, a few times).
func (c *completer) flush(final bool) {
	c.mu.Lock()
	results, owners := c.buf, c.owners
	c.buf, c.owners = c.spare, c.spareOwners
	c.spare, c.spareOwners = nil, nil
	if !c.stopped {
		close(c.space)
		c.space = make(chan struct{})
	}
	c.mu.Unlock()
	if len(results) == 0 {
		return
	}

	ctx := c.e.sendCtx
	if final {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
		defer cancel()
	} else {
		// Results of calls that finished are true whatever happens to Run's
		// context: write them even while shutting down.
		ctx = context.WithoutCancel(ctx)
	}
	written := c.write(ctx, results, final)
	c.e.stats.written.Add(int64(written))
	c.e.stats.ignored.Add(int64(len(results) - written))

	// Tell each runner when its retries fall due: the earliest and the
	// latest of each group; those between are found while the runner polls.
	i := 0
	for _, o := range owners {
		var first, last time.Time
		for _, res := range results[i : i+o.n] {
			if res.Status != batchsender.ItemPending {
				continue
			}
			if first.IsZero() || res.NextAttemptAt.Before(first) {
				first = res.NextAttemptAt
			}
			if res.NextAttemptAt.After(last) {
				last = res.NextAttemptAt
			}
		}
		i += o.n
		if !first.IsZero() {
			o.r.noteDue(first, last)
		}
		c.e.settled(o.r, o.n)
	}
	clear(results) // let go of the results' strings
	clear(owners)
	c.mu.Lock()
	c.spare, c.spareOwners = results[:0], owners[:0]
	c.mu.Unlock()
}

// write stores results in one transaction, retrying with backoff. After
// splitAfter failures it writes them one by one and drops (logging) those
// the store refuses; their items stay leased until rescued. It returns how
// many results the store took.
func (c *completer) write(ctx context.Context, results []batchsender.ItemResult, final bool) int {
	wait := 50 * time.Millisecond
	for try := 1; ; try++ {
		c.e.stats.flushes.Add(1)
		n, err := c.e.store.ItemResultsWriteMany(ctx, results)
		if err == nil {
			return n
		}
		c.e.stats.flushErrors.Add(1)
		c.e.log.Error("writing results", slog.Int("results", len(results)), slog.Int("try", try), slog.Any("error", err))
		if ctx.Err() != nil {
			return 0
		}
		if try >= splitAfter && len(results) > 1 {
			total := 0
			for _, res := range results {
				n, err := c.e.store.ItemResultsWriteMany(ctx, []batchsender.ItemResult{res})
				if err != nil {
					c.e.log.Error("dropping a result the store refuses: the item stays leased until rescued",
						slog.String("batch_id", res.BatchID), slog.String("item_id", res.ItemID), slog.Any("error", err))
					continue
				}
				total += n
			}
			return total
		}
		if try >= splitAfter && (final || c.isStopping()) {
			return 0
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-c.stopping:
		case <-ctx.Done():
		}
		t.Stop()
		wait = min(wait*2, 5*time.Second)
	}
}
