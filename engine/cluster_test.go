package engine_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/engine"
	"github.com/batchsender/batchsender/sqlite"
)

// clusterStore is the real SQLite store with the optional interfaces of
// stores that several processes share, driven by the test: whether this
// node leads, and work signals.
type clusterStore struct {
	*sqlite.Store
	leader     atomic.Bool
	leaderAsks atomic.Int64

	mu    sync.Mutex
	wakes []func()
}

func (s *clusterStore) LeaderTry(context.Context) (bool, error) {
	s.leaderAsks.Add(1)
	return s.leader.Load(), nil
}

func (s *clusterStore) WorkSignal(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, wake := range s.wakes {
		wake()
	}
	return nil
}

func (s *clusterStore) WorkWait(ctx context.Context, wake func()) error {
	s.mu.Lock()
	s.wakes = append(s.wakes, wake)
	s.mu.Unlock()
	<-ctx.Done()
	return ctx.Err()
}

var (
	_ batchsender.LeaderElector = (*clusterStore)(nil)
	_ batchsender.WorkSignaler  = (*clusterStore)(nil)
)

// engineOn starts an engine on the given store, stopped at cleanup.
func (f *fixture) engineOn(t *testing.T, s batchsender.Store, cfg engine.Config) *engine.Engine {
	t.Helper()
	cfg.Store, cfg.Providers = s, f.cache
	e, err := engine.New(cfg)
	if err != nil {
		t.Fatalf("engine.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(f.ctx))
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v", err)
		}
	})
	return e
}

func TestSharedStore(t *testing.T) {
	t.Parallel()

	t.Run("OnlyTheLeaderRescuesLeases", func(t *testing.T) {
		t.Parallel()
		f := setup(t, "test.single")
		cs := &clusterStore{Store: f.store}
		b := f.batch(t, 10, batchsender.BatchRunning, batchsender.BatchOptions{})
		now := time.Now()
		if _, err := f.store.ChunkClaim(f.ctx, batchsender.ChunkClaimParams{
			BatchID: b.ID, Owner: "node_dead", Now: now, LeaseUntil: now.Add(50 * time.Millisecond), Limit: 10,
		}); err != nil {
			t.Fatal(err)
		}
		// Rescue would run every 250ms on a leader.
		e := f.engineOn(t, cs, engine.Config{LeaseDuration: time.Second, PollInterval: 50 * time.Millisecond})
		// Asked once a second: by the second ask the lease is long expired
		// and many ticks have passed.
		waitFor(t, "the engine asked for leadership twice", func() bool { return cs.leaderAsks.Load() >= 2 })
		if got := f.get(t, b.ID); got.Counts.InFlight != 10 || e.Stats().Rescued != 0 {
			t.Fatalf("a node that does not lead rescued leases: %+v, stats %+v", got.Counts, e.Stats())
		}
		cs.leader.Store(true)
		f.waitStatus(t, b.ID, batchsender.BatchCompleted)
		if e.Stats().Rescued != 10 {
			t.Fatalf("stats = %+v, want 10 rescued once leading", e.Stats())
		}
	})

	t.Run("WorkSignalWakesTheEngine", func(t *testing.T) {
		t.Parallel()
		f := setup(t, "test.single")
		cs := &clusterStore{Store: f.store}
		cs.leader.Store(true)
		// Polling alone would take a minute to notice new work.
		f.engineOn(t, cs, engine.Config{PollInterval: time.Minute})
		waitFor(t, "the engine waits for signals and made its first look", func() bool {
			cs.mu.Lock()
			defer cs.mu.Unlock()
			return len(cs.wakes) == 1 && cs.leaderAsks.Load() >= 1
		})
		b := f.batch(t, 10, batchsender.BatchRunning, batchsender.BatchOptions{})
		if err := cs.WorkSignal(f.ctx); err != nil {
			t.Fatal(err)
		}
		f.waitStatus(t, b.ID, batchsender.BatchCompleted)
	})
}
