package engine_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/engine"
	"github.com/batchsender/batchsender/providers"
	"github.com/batchsender/batchsender/sdk"
	"github.com/batchsender/batchsender/sqlite"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fixture is a fresh SQLite store with one project and one connection to a
// test provider whose behaviour the test controls.
type fixture struct {
	ctx     context.Context
	store   *sqlite.Store
	cache   *providers.Cache
	project batchsender.Project
	conn    batchsender.Connection
	ctl     *control
}

func setup(t testing.TB, providerID string) *fixture {
	t.Helper()
	ctx := t.Context()
	s, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "bs.db"), nil)
	if err != nil {
		t.Fatalf("opening store: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	p, err := s.ProjectCreate(ctx, "p")
	if err != nil {
		t.Fatalf("creating project: %v", err)
	}
	key, ctl := newControl()
	t.Cleanup(func() { controls.Delete(key) })
	conn, err := s.ConnectionCreate(ctx, batchsender.ConnectionCreateParams{
		ProjectID: p.ID,
		Provider:  providerID,
		Name:      "conn",
		Config:    json.RawMessage(fmt.Sprintf(`{"key":%q}`, key)),
	})
	if err != nil {
		t.Fatalf("creating connection: %v", err)
	}
	cache := providers.NewCache(providers.Config{})
	t.Cleanup(func() { _ = cache.Close() })
	return &fixture{ctx: ctx, store: s, cache: cache, project: p, conn: conn, ctl: ctl}
}

// tenant adds another project with its own connection to the fixture's
// store, returned as a fixture of its own that shares store and cache.
func (f *fixture) tenant(t *testing.T, name, providerID string) *fixture {
	t.Helper()
	p, err := f.store.ProjectCreate(f.ctx, name)
	if err != nil {
		t.Fatalf("creating project: %v", err)
	}
	key, ctl := newControl()
	t.Cleanup(func() { controls.Delete(key) })
	conn, err := f.store.ConnectionCreate(f.ctx, batchsender.ConnectionCreateParams{
		ProjectID: p.ID,
		Provider:  providerID,
		Name:      "conn",
		Config:    json.RawMessage(fmt.Sprintf(`{"key":%q}`, key)),
	})
	if err != nil {
		t.Fatalf("creating connection: %v", err)
	}
	g := *f
	g.project, g.conn, g.ctl = p, conn, ctl
	return &g
}

// engine starts an engine on the fixture's store and stops it at cleanup.
// It returns the engine and a stop function that shuts it down and waits.
func (f *fixture) engine(t *testing.T, cfg engine.Config) (*engine.Engine, func()) {
	t.Helper()
	cfg.Store = f.store
	cfg.Providers = f.cache
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 100 * time.Millisecond
	}
	e, err := engine.New(cfg)
	if err != nil {
		t.Fatalf("engine.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(f.ctx))
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run returned %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("Run did not return after its context ended")
			}
		})
	}
	t.Cleanup(stop)
	return e, stop
}

// batch creates a batch of n items with the given status and options.
func (f *fixture) batch(t testing.TB, n int, status batchsender.BatchStatus, opts batchsender.BatchOptions) batchsender.Batch {
	t.Helper()
	var items iter.Seq2[batchsender.NewItem, error] = func(yield func(batchsender.NewItem, error) bool) {
		for i := range n {
			if !yield(batchsender.NewItem{Data: json.RawMessage(fmt.Sprintf(`{"n":%d}`, i))}, nil) {
				return
			}
		}
	}
	b, err := f.store.BatchCreate(f.ctx, batchsender.BatchCreateParams{
		ProjectID:    f.project.ID,
		Module:       f.conn.Module(),
		ConnectionID: f.conn.ID,
		Provider:     f.conn.Provider,
		Status:       status,
		Template:     json.RawMessage(`{}`),
		Options:      opts,
		Items:        items,
	})
	if err != nil {
		t.Fatalf("creating batch: %v", err)
	}
	return b
}

func (f *fixture) get(t *testing.T, id string) batchsender.Batch {
	t.Helper()
	b, err := f.store.BatchGetByID(f.ctx, f.project.ID, id)
	if err != nil {
		t.Fatalf("getting batch: %v", err)
	}
	return b
}

// items returns every item of a batch.
func (f *fixture) items(t *testing.T, id string) []batchsender.Item {
	t.Helper()
	var out []batchsender.Item
	var after int64
	for {
		page, err := f.store.ItemList(f.ctx, batchsender.ItemListParams{ProjectID: f.project.ID, BatchID: id, AfterSeq: after, Limit: 1000})
		if err != nil {
			t.Fatalf("listing items: %v", err)
		}
		if len(page) == 0 {
			return out
		}
		out = append(out, page...)
		after = page[len(page)-1].Seq
	}
}

func (f *fixture) attempts(t *testing.T, itemID string) []batchsender.Attempt {
	t.Helper()
	as, err := f.store.ItemAttemptList(f.ctx, f.project.ID, itemID)
	if err != nil {
		t.Fatalf("listing attempts: %v", err)
	}
	return as
}

// waitFor polls cond until it holds or the deadline passes. It polls
// gently: under -race every store read costs milliseconds of CPU.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for pause := 5 * time.Millisecond; !cond(); pause = min(pause*3/2, 100*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(pause)
	}
}

// waitStatus waits until the batch has the status and returns it.
func (f *fixture) waitStatus(t *testing.T, id string, st batchsender.BatchStatus) batchsender.Batch {
	t.Helper()
	var b batchsender.Batch
	waitFor(t, fmt.Sprintf("batch %s is %s", id, st), func() bool {
		b = f.get(t, id)
		return b.Status == st
	})
	return b
}

func (f *fixture) transition(t *testing.T, id string, action batchsender.BatchAction) batchsender.Batch {
	t.Helper()
	b, err := f.store.BatchTransition(f.ctx, batchsender.BatchTransitionParams{
		ProjectID: f.project.ID, BatchID: id, Action: action, Now: time.Now(),
	})
	if err != nil {
		t.Fatalf("%s: %v", action, err)
	}
	return b
}

var fastRetries = batchsender.BatchOptions{
	RetryBaseDelay: batchsender.Duration(10 * time.Millisecond),
	RetryMaxDelay:  batchsender.Duration(50 * time.Millisecond),
}

// guardOff returns opts with the failure-rate guard off, for tests whose
// failures are the point.
func guardOff(opts batchsender.BatchOptions) batchsender.BatchOptions {
	off := 0.0
	opts.FailureThreshold = &off
	return opts
}

func TestEngine(t *testing.T) {
	t.Parallel()

	t.Run("AllItemsSucceed", func(t *testing.T) {
		t.Parallel()
		for _, pid := range []string{"test.single", "test.chunked"} {
			t.Run(pid, func(t *testing.T) {
				t.Parallel()
				f := setup(t, pid)
				b := f.batch(t, 120, batchsender.BatchRunning, batchsender.BatchOptions{})
				e, _ := f.engine(t, engine.Config{})
				e.Wake()
				b = f.waitStatus(t, b.ID, batchsender.BatchCompleted)
				if b.Counts.Succeeded != 120 || b.Counts.Live() != 0 {
					t.Fatalf("counts = %+v, want 120 succeeded", b.Counts)
				}
				for _, it := range f.items(t, b.ID) {
					if it.Status != batchsender.ItemSucceeded || it.Attempts != 1 || it.ProviderMessageID != "msg-"+it.ID {
						t.Fatalf("item %+v: want succeeded on attempt 1 with message ID", it)
					}
				}
				as := f.attempts(t, f.items(t, b.ID)[0].ID)
				if len(as) != 1 || as[0].Outcome != "ok" || as[0].Number != 1 {
					t.Fatalf("attempts = %+v, want one ok attempt", as)
				}
				if got := f.ctl.items.Load(); got != 120 {
					t.Fatalf("provider saw %d items, want 120", got)
				}
				st := e.Stats()
				if st.Succeeded != 120 || st.ItemsClaimed != 120 || st.ResultsWritten != 120 || st.Flushes == 0 {
					t.Fatalf("stats = %+v", st)
				}
			})
		}
	})

	t.Run("RetryAfterIsHonoured", func(t *testing.T) {
		t.Parallel()
		f := setup(t, "test.single")
		const wait = 300 * time.Millisecond
		f.ctl.send = each(func(_ context.Context, it sdk.Item) sdk.Result {
			if it.Attempt == 1 {
				return sdk.Result{Outcome: sdk.OutcomeRetry, RetryAfter: wait, Err: errBoom, StatusCode: 429, Response: "slow down"}
			}
			return sdk.OK("m")
		})
		b := f.batch(t, 20, batchsender.BatchRunning, fastRetries)
		f.engine(t, engine.Config{})
		f.waitStatus(t, b.ID, batchsender.BatchCompleted)

		// The provider's own view: no second attempt before Retry-After
		// passed since the first answer.
		firstEnd := map[string]time.Time{}
		recs := f.ctl.records()
		for _, r := range recs {
			if r.items[0].Attempt == 1 {
				firstEnd[r.items[0].ID] = r.end
			}
		}
		for _, r := range recs {
			if it := r.items[0]; it.Attempt == 2 {
				if gap := r.start.Sub(firstEnd[it.ID]); gap < wait {
					t.Fatalf("item %s: second attempt %s after the first answer, want at least %s", it.ID, gap, wait)
				}
			}
		}
		for _, it := range f.items(t, b.ID) {
			as := f.attempts(t, it.ID)
			if it.Status != batchsender.ItemSucceeded || it.Attempts != 2 || len(as) != 2 {
				t.Fatalf("item %+v with %d attempt records: want succeeded on attempt 2", it, len(as))
			}
			if as[0].Outcome != "retry" || as[0].StatusCode != 429 || as[0].Response != "slow down" || as[0].Error != errBoom.Error() {
				t.Fatalf("first attempt %+v", as[0])
			}
			if as[1].StartedAt.Before(as[0].StartedAt.Add(wait)) {
				t.Fatalf("attempts %+v: second started before Retry-After", as)
			}
		}
	})

	t.Run("MaxAttemptsBoundsRetries", func(t *testing.T) {
		t.Parallel()
		f := setup(t, "test.chunked")
		f.ctl.send = each(func(context.Context, sdk.Item) sdk.Result { return sdk.Retry(errBoom) })
		opts := guardOff(fastRetries)
		opts.MaxAttempts = 3
		b := f.batch(t, 25, batchsender.BatchRunning, opts)
		e, _ := f.engine(t, engine.Config{})
		b = f.waitStatus(t, b.ID, batchsender.BatchCompleted)
		if b.Counts.Failed != 25 {
			t.Fatalf("counts = %+v, want 25 failed", b.Counts)
		}
		for _, it := range f.items(t, b.ID) {
			want := "giving up after 3 attempts: " + errBoom.Error()
			if it.Status != batchsender.ItemFailed || it.Attempts != 3 || it.LastError != want {
				t.Fatalf("item %+v: want failed after 3 attempts with %q", it, want)
			}
			if as := f.attempts(t, it.ID); len(as) != 3 {
				t.Fatalf("item %s has %d attempt records, want 3", it.ID, len(as))
			}
		}
		if got := f.ctl.items.Load(); got != 75 {
			t.Fatalf("provider saw %d item sends, want 75", got)
		}
		if st := e.Stats(); st.Retried != 50 || st.Failed != 25 {
			t.Fatalf("stats = %+v, want 50 retried and 25 failed", st)
		}
	})

	t.Run("PermanentFailureIsNotRetried", func(t *testing.T) {
		t.Parallel()
		f := setup(t, "test.single")
		f.ctl.send = each(func(_ context.Context, it sdk.Item) sdk.Result {
			if it.Seq%2 == 0 {
				return sdk.Result{Outcome: sdk.OutcomePermanent, Err: fmt.Errorf("recipient %d rejected", it.Seq), StatusCode: 400}
			}
			return sdk.OK("m")
		})
		b := f.batch(t, 40, batchsender.BatchRunning, guardOff(fastRetries))
		f.engine(t, engine.Config{})
		b = f.waitStatus(t, b.ID, batchsender.BatchCompleted)
		if b.Counts.Failed != 20 || b.Counts.Succeeded != 20 {
			t.Fatalf("counts = %+v, want 20 failed and 20 succeeded", b.Counts)
		}
		for _, it := range f.items(t, b.ID) {
			if it.Seq%2 == 0 && (it.Status != batchsender.ItemFailed || it.Attempts != 1 ||
				it.LastError != fmt.Sprintf("recipient %d rejected", it.Seq)) {
				t.Fatalf("item %+v: want failed after one attempt", it)
			}
		}
	})

	t.Run("FailureRateGuardPausesBatch", func(t *testing.T) {
		t.Parallel()
		f := setup(t, "test.single")
		f.ctl.send = each(func(_ context.Context, it sdk.Item) sdk.Result {
			if it.Seq%4 == 0 {
				return sdk.OK("m")
			}
			return sdk.Result{Outcome: sdk.OutcomePermanent, Err: errors.New("401 bad credentials"), StatusCode: 401}
		})
		b := f.batch(t, 400, batchsender.BatchRunning, batchsender.BatchOptions{Concurrency: 2})
		e, _ := f.engine(t, engine.Config{})
		b = f.waitStatus(t, b.ID, batchsender.BatchPaused)
		if !strings.Contains(b.StatusReason, "failure-rate guard") || !strings.Contains(b.StatusReason, "401 bad credentials") {
			t.Fatalf("status_reason = %q, want the guard and the last error", b.StatusReason)
		}
		waitFor(t, "in-flight items finished", func() bool { return f.get(t, b.ID).Counts.InFlight == 0 })
		b = f.get(t, b.ID)
		if done := b.Counts.Failed + b.Counts.Succeeded; done < 20 || b.Counts.Pending == 0 {
			t.Fatalf("counts = %+v: want a pause after at least 20 outcomes with items left", b.Counts)
		}
		if e.Stats().GuardPauses != 1 {
			t.Fatalf("stats = %+v, want one guard pause", e.Stats())
		}
		t.Logf("paused after %d outcomes: %s", b.Counts.Failed+b.Counts.Succeeded, b.StatusReason)
	})

	t.Run("FailureRateGuardOffOrBelowThreshold", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			name      string
			failEvery int64 // items whose seq is a multiple fail
			opts      batchsender.BatchOptions
		}{
			{"Off", 1, guardOff(batchsender.BatchOptions{})},
			{"BelowDefault", 3, batchsender.BatchOptions{}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				f := setup(t, "test.single")
				f.ctl.send = each(func(_ context.Context, it sdk.Item) sdk.Result {
					if it.Seq%tc.failEvery == 0 {
						return sdk.Permanent(errors.New("rejected"))
					}
					return sdk.OK("m")
				})
				b := f.batch(t, 120, batchsender.BatchRunning, tc.opts)
				f.engine(t, engine.Config{})
				b = f.waitStatus(t, b.ID, batchsender.BatchCompleted)
				if want := 120 / tc.failEvery; b.Counts.Failed != want {
					t.Fatalf("counts = %+v, want %d failed", b.Counts, want)
				}
			})
		}
	})

	t.Run("UnknownStopsUnlessAtLeastOnce", func(t *testing.T) {
		t.Parallel()
		for _, atLeastOnce := range []bool{false, true} {
			t.Run(fmt.Sprint("at_least_once=", atLeastOnce), func(t *testing.T) {
				t.Parallel()
				f := setup(t, "test.single")
				f.ctl.send = each(func(_ context.Context, it sdk.Item) sdk.Result {
					if it.Attempt == 1 {
						return sdk.Unknown(fmt.Errorf("timeout after the request left"))
					}
					return sdk.OK("m")
				})
				opts := fastRetries
				opts.AtLeastOnce = atLeastOnce
				b := f.batch(t, 10, batchsender.BatchRunning, opts)
				f.engine(t, engine.Config{})
				b = f.waitStatus(t, b.ID, batchsender.BatchCompleted)
				want, attempts := batchsender.ItemUnknown, 1
				if atLeastOnce {
					want, attempts = batchsender.ItemSucceeded, 2
				}
				if b.Counts.Get(want) != 10 {
					t.Fatalf("counts = %+v, want 10 %s", b.Counts, want)
				}
				for _, it := range f.items(t, b.ID) {
					if it.Status != want || it.Attempts != attempts {
						t.Fatalf("item %+v: want %s after %d attempts", it, want, attempts)
					}
					if as := f.attempts(t, it.ID); as[0].Outcome != "unknown" {
						t.Fatalf("first attempt %+v, want outcome unknown", as[0])
					}
				}
			})
		}
	})

	t.Run("PauseStopsClaimingAndResumeContinues", func(t *testing.T) {
		t.Parallel()
		f := setup(t, "test.single")
		f.ctl.send = each(func(context.Context, sdk.Item) sdk.Result {
			time.Sleep(5 * time.Millisecond)
			return sdk.OK("m")
		})
		b := f.batch(t, 80, batchsender.BatchRunning, batchsender.BatchOptions{Concurrency: 2})
		e, _ := f.engine(t, engine.Config{})
		waitFor(t, "some items succeeded", func() bool { return f.get(t, b.ID).Counts.Succeeded >= 10 })
		f.transition(t, b.ID, batchsender.ActionPause)
		waitFor(t, "in-flight items finished", func() bool { return f.get(t, b.ID).Counts.InFlight == 0 })
		seen := f.ctl.items.Load()
		// Several polls later, nothing more was sent.
		time.Sleep(150 * time.Millisecond)
		paused := f.get(t, b.ID)
		if got := f.ctl.items.Load(); got != seen || paused.Status != batchsender.BatchPaused {
			t.Fatalf("after pause the provider saw %d items, then %d; batch %s", seen, got, paused.Status)
		}
		if paused.Counts.Pending == 0 {
			t.Fatalf("pause came too late to test anything: %+v", paused.Counts)
		}
		f.transition(t, b.ID, batchsender.ActionResume)
		e.Wake()
		b = f.waitStatus(t, b.ID, batchsender.BatchCompleted)
		if b.Counts.Succeeded != 80 {
			t.Fatalf("counts = %+v, want 80 succeeded", b.Counts)
		}
		if got := f.ctl.items.Load(); got != 80 {
			t.Fatalf("provider saw %d items, want each of 80 once", got)
		}
	})

	t.Run("CancelStopsClaiming", func(t *testing.T) {
		t.Parallel()
		f := setup(t, "test.single")
		f.ctl.send = each(func(context.Context, sdk.Item) sdk.Result {
			time.Sleep(5 * time.Millisecond)
			return sdk.OK("m")
		})
		b := f.batch(t, 80, batchsender.BatchRunning, batchsender.BatchOptions{Concurrency: 2})
		f.engine(t, engine.Config{})
		waitFor(t, "some items succeeded", func() bool { return f.get(t, b.ID).Counts.Succeeded >= 10 })
		f.transition(t, b.ID, batchsender.ActionCancel)
		waitFor(t, "in-flight items finished", func() bool { return f.get(t, b.ID).Counts.InFlight == 0 })
		seen := f.ctl.items.Load()
		time.Sleep(150 * time.Millisecond)
		b = f.get(t, b.ID)
		if got := f.ctl.items.Load(); got != seen {
			t.Fatalf("after cancel the provider saw %d items, then %d", seen, got)
		}
		if b.Status != batchsender.BatchCancelled || b.Counts.Succeeded != seen || b.Counts.Cancelled != 80-seen || b.Counts.Live() != 0 {
			t.Fatalf("batch %s counts %+v, provider saw %d", b.Status, b.Counts, seen)
		}
	})

	t.Run("ConnectionRateLimitHolds", func(t *testing.T) {
		t.Parallel()
		// test.limited allows 50 calls/s per connection, burst 1; two
		// batches share that bucket.
		f := setup(t, "test.limited")
		t0 := time.Now()
		b1 := f.batch(t, 30, batchsender.BatchRunning, batchsender.BatchOptions{})
		b2 := f.batch(t, 30, batchsender.BatchRunning, batchsender.BatchOptions{})
		f.engine(t, engine.Config{})
		f.waitStatus(t, b1.ID, batchsender.BatchCompleted)
		f.waitStatus(t, b2.ID, batchsender.BatchCompleted)
		checkRate(t, f.ctl.records(), t0, 50, 1)
	})

	t.Run("BatchRateLimitHolds", func(t *testing.T) {
		t.Parallel()
		f := setup(t, "test.chunked")
		t0 := time.Now()
		b := f.batch(t, 300, batchsender.BatchRunning, batchsender.BatchOptions{RatePerSecond: 20})
		f.engine(t, engine.Config{})
		f.waitStatus(t, b.ID, batchsender.BatchCompleted)
		recs := f.ctl.records()
		checkRate(t, recs, t0, 20, 1)
		if len(recs) < 30 {
			t.Fatalf("%d calls for 300 items in chunks of 10", len(recs))
		}
	})

	t.Run("ConcurrencyLimitHolds", func(t *testing.T) {
		t.Parallel()
		slow := each(func(context.Context, sdk.Item) sdk.Result {
			time.Sleep(time.Millisecond)
			return sdk.OK("m")
		})
		t.Run("Batch", func(t *testing.T) {
			t.Parallel()
			f := setup(t, "test.single") // connection allows 8
			f.ctl.send = barrier(f.ctl, 3)
			b := f.batch(t, 30, batchsender.BatchRunning, batchsender.BatchOptions{Concurrency: 3})
			f.engine(t, engine.Config{})
			f.waitStatus(t, b.ID, batchsender.BatchCompleted)
			if got := f.ctl.maxSeen.Load(); got != 3 {
				t.Fatalf("max calls in flight = %d, want 3 (the batch's limit, reached)", got)
			}
		})
		t.Run("ConnectionSharedByBatches", func(t *testing.T) {
			t.Parallel()
			f := setup(t, "test.chunked") // connection allows 4
			f.ctl.send = barrier(f.ctl, 4)
			var ids []string
			for range 3 {
				ids = append(ids, f.batch(t, 60, batchsender.BatchRunning, batchsender.BatchOptions{}).ID)
			}
			f.engine(t, engine.Config{})
			for _, id := range ids {
				f.waitStatus(t, id, batchsender.BatchCompleted)
			}
			if got := f.ctl.maxSeen.Load(); got > 4 || got < 2 {
				t.Fatalf("max calls in flight = %d, want at most the connection's 4 (and some parallelism)", got)
			}
		})
		t.Run("Global", func(t *testing.T) {
			t.Parallel()
			f := setup(t, "test.single")
			f.ctl.send = slow
			b := f.batch(t, 24, batchsender.BatchRunning, batchsender.BatchOptions{})
			f.engine(t, engine.Config{MaxInFlight: 2})
			f.waitStatus(t, b.ID, batchsender.BatchCompleted)
			if got := f.ctl.maxSeen.Load(); got > 2 {
				t.Fatalf("max calls in flight = %d, want at most MaxInFlight 2", got)
			}
		})
	})

	t.Run("ClaimsLookAheadOfFreeSlots", func(t *testing.T) {
		t.Parallel()
		// One item per call and 8 calls in flight: claiming only for free
		// slots would take at most 8 items per claim. The runner claims
		// what it starts within about a second at its measured pace. Calls
		// take 2ms so that the batch runs well past the pace's first
		// measuring window (250ms) however fast the machine: until then
		// claims are for the free slots only.
		f := setup(t, "test.single")
		f.ctl.send = each(func(context.Context, sdk.Item) sdk.Result {
			time.Sleep(2 * time.Millisecond)
			return sdk.OK("m")
		})
		const n = 6000
		b := f.batch(t, n, batchsender.BatchRunning, batchsender.BatchOptions{})
		e, _ := f.engine(t, engine.Config{})
		f.waitStatus(t, b.ID, batchsender.BatchCompleted)
		st := e.Stats()
		if st.ItemsClaimed != n || st.Claims == 0 {
			t.Fatalf("stats = %+v, want %d items claimed", st, n)
		}
		if per := st.ItemsClaimed / st.Claims; per <= 16 {
			t.Fatalf("%d items per claim (%d claims), want well over the 8 free slots", per, st.Claims)
		}
		if got := f.ctl.maxSeen.Load(); got > 8 {
			t.Fatalf("max calls in flight = %d, want at most the connection's 8", got)
		}
		t.Logf("%d claims for %d items", st.Claims, n)
	})

	t.Run("QueuedItemsAreGivenBackWhenHalfTheirLeaseIsGone", func(t *testing.T) {
		t.Parallel()
		// One call at a time, fast, so the runner queues items ahead; a few
		// items then take most of a 1s lease each. Items queued behind them
		// must not be sent with little lease left: they go back and are
		// claimed again, each sent once, none rescued.
		f := setup(t, "test.single")
		var sent sync.Map
		f.ctl.send = each(func(_ context.Context, it sdk.Item) sdk.Result {
			if n, _ := sent.LoadOrStore(it.ID, new(atomic.Int64)); n.(*atomic.Int64).Add(1) > 1 {
				return sdk.Permanent(fmt.Errorf("item %d sent twice", it.Seq))
			}
			if it.Seq%50 == 0 && it.Seq <= 200 {
				time.Sleep(600 * time.Millisecond)
			}
			return sdk.OK("m")
		})
		b := f.batch(t, 300, batchsender.BatchRunning, guardOff(batchsender.BatchOptions{Concurrency: 1}))
		e, _ := f.engine(t, engine.Config{LeaseDuration: time.Second})
		b = f.waitStatus(t, b.ID, batchsender.BatchCompleted)
		st := e.Stats()
		if b.Counts.Succeeded != 300 || st.Rescued != 0 {
			t.Fatalf("counts %+v, stats %+v: want 300 succeeded, none rescued", b.Counts, st)
		}
		if st.Released == 0 {
			t.Fatalf("stats %+v: want queued items given back while slow calls ran", st)
		}
		t.Logf("%d claims, %d items given back", st.Claims, st.Released)
	})

	t.Run("ConnectionConfigSetsLimits", func(t *testing.T) {
		t.Parallel()
		// test.single defaults to 8 in flight and no rate; the connection's
		// config sets 2 in flight and 40 calls a second. Calls take 60ms,
		// longer than the 25ms between two calls at that rate, so that two
		// run at once and the concurrency limit is what holds them back.
		f := setup(t, "test.single")
		key, ctl := newControl()
		t.Cleanup(func() { controls.Delete(key) })
		conn, err := f.store.ConnectionCreate(f.ctx, batchsender.ConnectionCreateParams{
			ProjectID: f.project.ID, Provider: "test.single", Name: "limited",
			Config: json.RawMessage(fmt.Sprintf(`{"key":%q,"rate_per_second":40,"concurrency":2}`, key)),
		})
		if err != nil {
			t.Fatal(err)
		}
		ctl.send = each(func(context.Context, sdk.Item) sdk.Result {
			time.Sleep(60 * time.Millisecond)
			return sdk.OK("m")
		})
		f.conn, f.ctl = conn, ctl
		t0 := time.Now()
		b := f.batch(t, 40, batchsender.BatchRunning, batchsender.BatchOptions{})
		f.engine(t, engine.Config{})
		f.waitStatus(t, b.ID, batchsender.BatchCompleted)
		if got := ctl.maxSeen.Load(); got != 2 {
			t.Fatalf("max calls in flight = %d, want the connection's 2 (reached)", got)
		}
		checkRate(t, ctl.records(), t0, 40, 1)
	})

	t.Run("SmallBatchIsNotStarvedByHugeOne", func(t *testing.T) {
		t.Parallel()
		f := setup(t, "test.chunked") // 4 calls of 10 items in flight
		f.ctl.send = each(func(context.Context, sdk.Item) sdk.Result {
			time.Sleep(time.Millisecond)
			return sdk.OK("m")
		})
		// Large enough that what the huge batch may claim ahead (about a
		// second of work, at most ClaimSize) is well under half of it: with
		// 800 items the look-ahead alone could cover the rest, and the test
		// failed by timing, not by unfairness.
		const hugeN = 4000
		huge := f.batch(t, hugeN, batchsender.BatchRunning, batchsender.BatchOptions{})
		e, _ := f.engine(t, engine.Config{})
		waitFor(t, "the huge batch is under way", func() bool { return f.get(t, huge.ID).Counts.Succeeded >= 100 })
		small := f.batch(t, 50, batchsender.BatchRunning, batchsender.BatchOptions{})
		e.Wake()
		h0 := f.get(t, huge.ID).Counts.Succeeded
		f.waitStatus(t, small.ID, batchsender.BatchCompleted)
		h1 := f.get(t, huge.ID).Counts.Succeeded
		// Taking turns, the small batch's 5 calls are done long before the
		// huge batch's remaining ones: it must not wait for half of them.
		if h1-h0 > (hugeN-h0)/2 {
			t.Fatalf("while the small batch of 50 ran, the huge one sent %d more of its %d left", h1-h0, hugeN-h0)
		}
		t.Logf("while the small batch of 50 ran, the huge one sent %d more of its %d left", h1-h0, hugeN-h0)
	})

	t.Run("SmallTenantIsNotStarvedByBigOne", func(t *testing.T) {
		t.Parallel()
		// Two projects, each its own connection; the process-wide limit of
		// 2 calls in flight is what they share.
		big := setup(t, "test.chunked")
		small := big.tenant(t, "small", "test.chunked")
		slow := each(func(context.Context, sdk.Item) sdk.Result {
			time.Sleep(2 * time.Millisecond)
			return sdk.OK("m")
		})
		big.ctl.send, small.ctl.send = slow, slow
		huge := big.batch(t, 800, batchsender.BatchRunning, batchsender.BatchOptions{})
		e, _ := big.engine(t, engine.Config{MaxInFlight: 2})
		waitFor(t, "the big tenant's batch is under way", func() bool { return big.get(t, huge.ID).Counts.Succeeded >= 100 })
		b := small.batch(t, 50, batchsender.BatchRunning, batchsender.BatchOptions{})
		e.Wake()
		h0 := big.get(t, huge.ID).Counts.Succeeded
		small.waitStatus(t, b.ID, batchsender.BatchCompleted)
		h1 := big.get(t, huge.ID).Counts.Succeeded
		if h1-h0 > (800-h0)/2 {
			t.Fatalf("while the small tenant's 50 items ran, the big one sent %d more of its %d left", h1-h0, 800-h0)
		}
		t.Logf("while the small tenant's 50 items ran, the big one sent %d more of its %d left", h1-h0, 800-h0)
	})

	t.Run("ShutdownReleasesUnsentItems", func(t *testing.T) {
		t.Parallel()
		f := setup(t, "test.single")
		started := make(chan struct{})
		var once sync.Once
		f.ctl.send = each(func(ctx context.Context, it sdk.Item) sdk.Result {
			once.Do(func() { close(started) })
			<-ctx.Done() // calls only end when cancelled
			return sdk.Retry(ctx.Err())
		})
		// 2 calls/s: the first call starts at once; the claim also takes
		// the items for tokens 500ms and 1s ahead, which wait unsent.
		b := f.batch(t, 20, batchsender.BatchRunning, batchsender.BatchOptions{RatePerSecond: 2})
		e, stop := f.engine(t, engine.Config{ShutdownGrace: 50 * time.Millisecond})
		select {
		case <-started:
		case <-time.After(30 * time.Second):
			t.Fatal("no call started")
		}
		stop()
		st := e.Stats()
		if st.Released == 0 || st.Released != st.ItemsClaimed-st.Calls {
			t.Fatalf("stats after shutdown = %+v: want every claimed item that was not sent released", st)
		}
		b = f.get(t, b.ID)
		if b.Counts.InFlight != 0 || b.Counts.Pending != 20 || b.Status != batchsender.BatchRunning {
			t.Fatalf("batch %s counts %+v, want all 20 pending again", b.Status, b.Counts)
		}
		var sent int64
		for _, it := range f.items(t, b.ID) {
			switch it.Attempts {
			case 0:
			case 1:
				sent++
				if as := f.attempts(t, it.ID); len(as) != 1 || as[0].Outcome != "retry" {
					t.Fatalf("cancelled call's attempt records %+v", as)
				}
			default:
				t.Fatalf("item %+v has attempts left over from release", it)
			}
		}
		if sent != st.Calls {
			t.Fatalf("%d items count an attempt, want the %d that were sent (their calls cancelled)", sent, st.Calls)
		}
	})

	t.Run("PanickingProviderDoesNotCrash", func(t *testing.T) {
		t.Parallel()
		f := setup(t, "test.chunked")
		f.ctl.send = func(_ context.Context, items []sdk.Item) []sdk.Result {
			for _, it := range items {
				if it.Seq == 7 {
					panic("poison item")
				}
			}
			return each(func(context.Context, sdk.Item) sdk.Result { return sdk.OK("m") })(nil, items)
		}
		opts := fastRetries
		opts.MaxAttempts = 3
		b := f.batch(t, 30, batchsender.BatchRunning, opts)
		e, _ := f.engine(t, engine.Config{})
		b = f.waitStatus(t, b.ID, batchsender.BatchCompleted)
		// The poison item fails after its attempts; the items sharing its
		// calls land in other calls on a retry and go through.
		var poison batchsender.Item
		for _, it := range f.items(t, b.ID) {
			if it.Seq == 7 {
				poison = it
			}
		}
		if poison.Status != batchsender.ItemFailed || poison.Attempts != 3 || !strings.Contains(poison.LastError, "panicked: poison item") {
			t.Fatalf("poison item %+v", poison)
		}
		if b.Counts.Failed < 1 || b.Counts.Succeeded+b.Counts.Failed != 30 {
			t.Fatalf("counts = %+v", b.Counts)
		}
		if st := e.Stats(); st.Panics < 3 {
			t.Fatalf("stats = %+v, want at least 3 panics", st)
		}
	})

	t.Run("WrongNumberOfResultsIsRetried", func(t *testing.T) {
		t.Parallel()
		f := setup(t, "test.chunked")
		f.ctl.send = func(_ context.Context, items []sdk.Item) []sdk.Result {
			out := each(func(context.Context, sdk.Item) sdk.Result { return sdk.OK("m") })(nil, items)
			if items[0].Attempt == 1 && len(items) > 1 {
				return out[:1] // a buggy provider drops results
			}
			return out
		}
		b := f.batch(t, 40, batchsender.BatchRunning, fastRetries)
		e, _ := f.engine(t, engine.Config{})
		b = f.waitStatus(t, b.ID, batchsender.BatchCompleted)
		if b.Counts.Succeeded != 40 {
			t.Fatalf("counts = %+v, want 40 succeeded", b.Counts)
		}
		if st := e.Stats(); st.BadResults == 0 || st.Retried == 0 {
			t.Fatalf("stats = %+v, want bad results counted and retried", st)
		}
	})

	t.Run("CompileErrorPausesBatch", func(t *testing.T) {
		t.Parallel()
		f := setup(t, "test.single")
		f.ctl.compileErr = fmt.Errorf("template.url: missing")
		b := f.batch(t, 5, batchsender.BatchRunning, batchsender.BatchOptions{})
		f.engine(t, engine.Config{})
		b = f.waitStatus(t, b.ID, batchsender.BatchPaused)
		if !strings.Contains(b.StatusReason, "template.url: missing") {
			t.Fatalf("status reason %q", b.StatusReason)
		}
		if f.ctl.calls.Load() != 0 {
			t.Fatal("items were sent")
		}
	})

	t.Run("ScheduledBatchStartsWhenDue", func(t *testing.T) {
		t.Parallel()
		f := setup(t, "test.single")
		at := time.Now().Add(300 * time.Millisecond)
		b := f.batch(t, 10, batchsender.BatchScheduled, batchsender.BatchOptions{SendAt: &at})
		f.engine(t, engine.Config{})
		f.waitStatus(t, b.ID, batchsender.BatchCompleted)
		for _, r := range f.ctl.records() {
			if r.start.Before(at) {
				t.Fatalf("a call started at %s, before send_at %s", r.start, at)
			}
		}
	})

	t.Run("CrashedEnginesItemsAreRescuedOnStart", func(t *testing.T) {
		t.Parallel()
		f := setup(t, "test.single")
		b := f.batch(t, 50, batchsender.BatchRunning, batchsender.BatchOptions{})
		// A process claims 20 items and dies: its leases still run for an
		// hour.
		now := time.Now()
		dead, err := f.store.ChunkClaim(f.ctx, batchsender.ChunkClaimParams{
			BatchID: b.ID, Owner: "node_dead", Now: now, LeaseUntil: now.Add(time.Hour), Limit: 20,
		})
		if err != nil || len(dead) != 20 {
			t.Fatalf("claim: %d items, %v", len(dead), err)
		}
		e, _ := f.engine(t, engine.Config{RescueOnStart: true})
		b = f.waitStatus(t, b.ID, batchsender.BatchCompleted)
		if b.Counts.Succeeded != 50 {
			t.Fatalf("counts = %+v, want 50 succeeded", b.Counts)
		}
		if st := e.Stats(); st.Rescued != 20 {
			t.Fatalf("stats = %+v, want 20 rescued", st)
		}
		for _, it := range f.items(t, b.ID) {
			want := 1
			if slices.ContainsFunc(dead, func(d batchsender.Item) bool { return d.ID == it.ID }) {
				want = 2 // the dead process's attempt counts
			}
			if it.Attempts != want {
				t.Fatalf("item %+v: want %d attempts", it, want)
			}
		}
	})

	t.Run("ExpiredLeasesAreRescued", func(t *testing.T) {
		t.Parallel()
		f := setup(t, "test.single")
		b := f.batch(t, 10, batchsender.BatchRunning, batchsender.BatchOptions{})
		now := time.Now()
		if _, err := f.store.ChunkClaim(f.ctx, batchsender.ChunkClaimParams{
			BatchID: b.ID, Owner: "node_dead", Now: now, LeaseUntil: now.Add(100 * time.Millisecond), Limit: 10,
		}); err != nil {
			t.Fatal(err)
		}
		// Rescue runs every LeaseDuration/4 on the (only) node.
		e, _ := f.engine(t, engine.Config{LeaseDuration: 2 * time.Second})
		b = f.waitStatus(t, b.ID, batchsender.BatchCompleted)
		if b.Counts.Succeeded != 10 || e.Stats().Rescued != 10 {
			t.Fatalf("counts = %+v, stats %+v", b.Counts, e.Stats())
		}
	})
}

// barrier makes each call wait a while for n calls to be in flight, so that
// a concurrency limit of n is reached whenever the engine allows it, however
// slow the machine.
func barrier(c *control, n int64) func(context.Context, []sdk.Item) []sdk.Result {
	return each(func(context.Context, sdk.Item) sdk.Result {
		for deadline := time.Now().Add(100 * time.Millisecond); c.inFlight.Load() < n && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		return sdk.OK("m")
	})
}

// checkRate asserts that by the start of its k-th call (k from 1) no more
// calls had started than a bucket of burst and rate per second allows since
// t0: k ≤ burst + rate·(start−t0).
func checkRate(t *testing.T, recs []sendRecord, t0 time.Time, rate float64, burst int) {
	t.Helper()
	starts := make([]time.Time, len(recs))
	for i, r := range recs {
		starts[i] = r.start
	}
	slices.SortFunc(starts, time.Time.Compare)
	for i, s := range starts {
		allowed := float64(burst) + rate*s.Sub(t0).Seconds()
		if float64(i+1) > allowed+1e-9 {
			t.Fatalf("call %d started %s after t0; a bucket of %v/s with burst %d allows %.2f by then",
				i+1, s.Sub(t0), rate, burst, allowed)
		}
	}
	if len(starts) > 1 {
		t.Logf("%d calls in %s", len(starts), starts[len(starts)-1].Sub(t0))
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	if _, err := engine.New(engine.Config{}); batchsender.ErrorCode(err) != batchsender.EINVALID {
		t.Fatalf("New without a store: %v", err)
	}
}
