package engine

import (
	"context"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/batchsender/batchsender"
)

// Cluster-wide limits: on a store that several processes share
// (batchsender.LimitStore), a connection's rate and concurrency hold across
// all nodes together. See package postgres for how the store keeps them.

// rateGroup is how far ahead a node takes rate slots in one round trip:
// about a tenth of a second of calls.
const rateGroup = 100 * time.Millisecond

// clusterRate hands out the call slots of a cluster-wide rate limit,
// taking them from the store in groups.
type clusterRate struct {
	e    *Engine
	ls   batchsender.LimitStore
	key  string
	rate float64 // calls per second the cluster uses: the connection's times clusterRateMargin

	mu    sync.Mutex
	slots []time.Time // granted call times, ascending
}

// clusterRateMargin is the share of a connection's rate that the cluster
// uses. Nodes map the database's slot times onto their own clocks with an
// error of up to one round trip, calls start up to grace after their slot,
// and a loaded machine delays the request itself further; at the full rate
// these delays could put a few more calls than the rate into some
// one-second window. Running 7% under absorbs about 75ms of such delay at
// any rate (a window then holds at most 0.93·rate·1.075 < rate calls), so
// the configured rate holds in every window of one second at the receiver.
// (5% was not enough: with three nodes, PostgreSQL and the receiver on a
// loaded 2-core machine, a one-second window at the receiver once held 102
// requests at a rate of 100/s.)
const clusterRateMargin = 0.93

// grace is how late a call may start after its slot: half a slot, within
// [1ms, 50ms]. A later start could bunch with calls on time in the next
// second, so the call takes a new slot instead.
func (c *clusterRate) grace() time.Duration {
	return min(max(time.Duration(float64(time.Second)/c.rate/2), time.Millisecond), 50*time.Millisecond)
}

// take returns the time of a call slot, no earlier than now - grace,
// fetching slots from the store when none is left. It blocks while the
// cluster has no slot within rateGroup.
func (c *clusterRate) take(ctx context.Context) (time.Time, error) {
	for {
		c.mu.Lock()
		now := c.e.now()
		c.dropStale(now)
		if len(c.slots) > 0 {
			s := c.slots[0]
			c.slots = c.slots[1:]
			c.mu.Unlock()
			return s, nil
		}
		want := max(1, int(math.Ceil(c.rate*rateGroup.Seconds())))
		granted, wait, err := c.ls.RateTake(ctx, c.key, c.rate, want, rateGroup)
		if err != nil {
			c.mu.Unlock()
			return time.Time{}, err
		}
		base := c.e.now().Add(wait)
		for i := range granted {
			c.slots = append(c.slots, base.Add(time.Duration(float64(i)*float64(time.Second)/c.rate)))
		}
		c.mu.Unlock()
		if granted == 0 && !sleepCtx(ctx, max(wait-rateGroup, time.Millisecond)) {
			return time.Time{}, ctx.Err()
		}
	}
}

// dropStale forgets slots too late to use. c.mu is held.
func (c *clusterRate) dropStale(now time.Time) {
	g := c.grace()
	i := 0
	for i < len(c.slots) && now.Sub(c.slots[i]) > g {
		i++
	}
	c.slots = c.slots[i:]
}

// budget returns how many slots this node holds now, for claim sizing.
func (c *clusterRate) budget(now time.Time) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropStale(now)
	return len(c.slots)
}

// takeNow returns a slot this node holds without asking the store, and
// false if it holds none.
func (c *clusterRate) takeNow(now time.Time) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropStale(now)
	if len(c.slots) == 0 {
		return time.Time{}, false
	}
	s := c.slots[0]
	c.slots = c.slots[1:]
	return s, true
}

// clusterSem is a connection's (or a batch's) concurrency limit held
// across the cluster: a call runs only on a slot this node leased from the
// store. Leases last
// LeaseDuration and are renewed every LeaseDuration/20; a slot is used only
// while its lease was renewed within LeaseDuration/10, so its lease outlasts
// any call started on it (calls end before their items' lease, which is
// at most LeaseDuration). Slots above the node's fair share are given back
// as calls end, and all of them once the node is idle.
type clusterSem struct {
	e     *Engine
	ls    batchsender.LimitStore
	key   string
	owner string // this node, or one runner of this node (see newBatchLimits)
	limit int

	mu        sync.Mutex
	have      int       // slots leased
	inUse     int       // of which running calls
	share     int       // fair share, as the store last said
	renewedAt time.Time // last successful lease or renewal
	surplus   int       // slots to give back at the next tick
	waiting   int
	freed     chan struct{} // closed and replaced when a slot frees
	ticking   bool
}

func newClusterSem(e *Engine, ls batchsender.LimitStore, key, owner string, limit int) *clusterSem {
	return &clusterSem{e: e, ls: ls, key: key, owner: owner, limit: limit, share: limit, freed: make(chan struct{})}
}

func (c *clusterSem) ttl() time.Duration { return c.e.cfg.LeaseDuration }

// fresh reports whether leased slots may be used. c.mu is held.
func (c *clusterSem) fresh(now time.Time) bool {
	return now.Sub(c.renewedAt) <= c.ttl()/10
}

// tryAcquire takes a leased slot without waiting or asking the store.
func (c *clusterSem) tryAcquire() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.waiting == 0 && c.inUse < c.have-c.surplus && c.fresh(c.e.now()) {
		c.inUse++
		return true
	}
	return false
}

// acquire takes a slot, leasing more from the store when this node has
// none free, and waiting while the cluster has none.
func (c *clusterSem) acquire(ctx context.Context) error {
	for {
		c.mu.Lock()
		if c.inUse < c.have-c.surplus && c.fresh(c.e.now()) {
			c.inUse++
			c.mu.Unlock()
			return nil
		}
		if c.have-c.surplus >= c.share && c.fresh(c.e.now()) {
			// At its share: the store would lease nothing more, so wait
			// for a call of this node to end (the ticks renew the share).
			freed := c.freed
			c.mu.Unlock()
			t := time.NewTimer(jitter(c.ttl() / 20))
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-freed:
			case <-t.C:
			}
			t.Stop()
			continue
		}
		c.waiting++
		// Up to the share in one round trip: slots this node does not
		// use go back once it idles or its share shrinks.
		want := max(c.waiting, c.share-c.have)
		c.mu.Unlock()
		asked := c.e.now()
		got, share, err := c.ls.SlotsAcquire(ctx, c.key, c.owner, c.limit, want, c.ttl())
		c.mu.Lock()
		c.waiting--
		if err == nil {
			c.share = share
			if got > 0 {
				c.have += got
				if c.have == got {
					c.renewedAt = asked
				}
				c.startTicking()
			}
		}
		if c.inUse < c.have-c.surplus && c.fresh(c.e.now()) {
			c.inUse++
			c.mu.Unlock()
			return nil
		}
		freed := c.freed
		c.mu.Unlock()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			c.e.log.Error("leasing concurrency slots", slog.String("key", c.key), slog.Any("error", err))
		}
		t := time.NewTimer(jitter(50 * time.Millisecond))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-freed:
		case <-t.C:
		}
		t.Stop()
	}
}

// keep reports whether a call that ended may go on with its slot: no one
// waits for one, the slot is still fresh, and the node holds no more than
// its share.
func (c *clusterSem) keep() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.waiting == 0 && c.have-c.surplus <= c.share && c.fresh(c.e.now())
}

// release frees a slot after a call; a slot above the node's share is
// given back at the next tick.
func (c *clusterSem) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inUse--
	if c.have-c.surplus > c.share {
		c.surplus++
	}
	close(c.freed)
	c.freed = make(chan struct{})
}

// startTicking starts the renewal loop unless it runs. c.mu is held.
func (c *clusterSem) startTicking() {
	if c.ticking {
		return
	}
	c.ticking = true
	c.e.calls.Add(1)
	go func() {
		defer c.e.calls.Done()
		c.tick()
	}()
}

// tick renews the node's leases every ttl/20, gives back surplus slots,
// and gives back every slot once the node has been idle for two ticks or
// is shutting down with no call left on them.
func (c *clusterSem) tick() {
	ctx := context.WithoutCancel(c.e.runCtx)
	idleTicks := 0
	for {
		every := c.ttl() / 20
		if c.e.runCtx.Err() != nil {
			every = 20 * time.Millisecond
		}
		t := time.NewTimer(every)
		select {
		case <-t.C:
		case <-c.e.runCtx.Done():
			t.Stop()
		}
		stopping := c.e.runCtx.Err() != nil
		c.mu.Lock()
		if c.inUse == 0 && c.waiting == 0 {
			idleTicks++
		} else {
			idleTicks = 0
		}
		free := max(0, c.have-c.inUse)
		giveBack := min(c.surplus, free)
		if stopping || idleTicks >= 2 {
			giveBack = free
		}
		c.have -= giveBack
		c.surplus = 0
		done := c.have == 0
		if done {
			c.ticking = false
		}
		c.mu.Unlock()
		cctx, cancel := context.WithTimeout(ctx, storeTimeout)
		if giveBack > 0 || done {
			n := giveBack
			if done {
				n = 0 // all, and the demand too
			}
			if err := c.ls.SlotsRelease(cctx, c.key, c.owner, n); err != nil {
				c.e.log.Error("giving back concurrency slots", slog.String("key", c.key), slog.Any("error", err))
			}
		}
		if done {
			cancel()
			return
		}
		asked := c.e.now()
		held, share, err := c.ls.SlotsRenew(cctx, c.key, c.owner, c.limit, c.ttl())
		cancel()
		c.mu.Lock()
		if err == nil {
			c.share = share
			c.renewedAt = asked
			if held < c.have {
				// Lost some (their leases ran out while renewals failed):
				// trust the store.
				c.have = held
			}
		} else {
			c.e.log.Error("renewing concurrency slots", slog.String("key", c.key), slog.Any("error", err))
		}
		c.mu.Unlock()
	}
}
