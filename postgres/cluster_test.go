package postgres

import (
	"context"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
	"github.com/jackc/pgx/v5"
)

func TestMigrationsRaceSafely(t *testing.T) {
	t.Parallel()
	u := newSchemaURL(t)
	const nodes = 4
	var wg sync.WaitGroup
	errs := make([]error, nodes)
	stores := make([]*Store, nodes)
	for i := range nodes {
		wg.Go(func() { stores[i], errs[i] = Open(context.Background(), u, testLogger(t)) })
	}
	wg.Wait()
	for i := range nodes {
		if errs[i] != nil {
			t.Fatalf("node %d: Open: %v", i, errs[i])
		}
		defer stores[i].Close()
	}
	ms, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	var applied int
	if err := stores[0].pool.QueryRow(context.Background(), `SELECT count(*) FROM schema_migrations`).Scan(&applied); err != nil {
		t.Fatal(err)
	}
	if applied != len(ms) {
		t.Fatalf("schema_migrations has %d rows, want %d", applied, len(ms))
	}
	// The schema works for every node.
	f := setup(t, stores[1])
	if _, err := stores[3].BatchGetByID(context.Background(), f.project.ID, "bat_none"); !batchsender.IsNotFound(err) {
		t.Fatalf("BatchGetByID on another node: %v, want not found", err)
	}
}

func TestMigrateRefusesNewerSchema(t *testing.T) {
	t.Parallel()
	u := newSchemaURL(t)
	s := openStore(t, u)
	if _, err := s.pool.Exec(context.Background(), `INSERT INTO schema_migrations (version, name) VALUES (9999, 'future')`); err != nil {
		t.Fatal(err)
	}
	if err := Migrate(context.Background(), u, testLogger(t)); err == nil {
		t.Fatal("Migrate accepted a database migrated by a newer binary")
	}
}

func TestChunkClaimAcrossPoolsNeverDoubleClaims(t *testing.T) {
	t.Parallel()
	u := newSchemaURL(t)
	const total, nodes, perNode, chunk = 3000, 3, 3, 37
	stores := make([]*Store, nodes)
	for i := range stores {
		stores[i] = openStore(t, u)
	}
	f := setup(t, stores[0])
	b := f.batch(t, batchsender.BatchRunning, total, batchsender.BatchOptions{})

	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	errc := make(chan error, nodes*perNode)
	for n := range nodes {
		for w := range perNode {
			wg.Go(func() {
				owner := batchsender.NewID("wrk")
				for {
					now := time.Now()
					got, err := stores[n].ChunkClaim(context.Background(), batchsender.ChunkClaimParams{
						BatchID: b.ID, Owner: owner, Now: now, LeaseUntil: now.Add(time.Minute), Limit: chunk + w,
					})
					if err != nil {
						errc <- err
						return
					}
					if len(got) == 0 {
						return
					}
					mu.Lock()
					for _, it := range got {
						seen[it.ID]++
						if it.Status != batchsender.ItemInFlight || it.LeaseOwner != owner || it.Attempts != 1 {
							errc <- batchsender.Errorf(batchsender.EINTERNAL, "claimed item %+v", it)
						}
					}
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if len(seen) != total {
		t.Fatalf("claimed %d distinct items, want %d", len(seen), total)
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("item %s claimed %d times", id, n)
		}
	}
	got := f.get(t, b.ID)
	if got.Counts.InFlight != total || got.Counts.Pending != 0 {
		t.Fatalf("counts after claiming everything: %+v", got.Counts)
	}
}

func TestLeaderMovesWhenItsConnectionDies(t *testing.T) {
	t.Parallel()
	u := newSchemaURL(t)
	a, b := openStore(t, u), openStore(t, u)
	other := newStore(t) // another installation in the same database
	ctx := context.Background()

	mustLead := func(s *Store, want bool) {
		t.Helper()
		got, err := s.LeaderTry(ctx)
		if err != nil {
			t.Fatalf("LeaderTry: %v", err)
		}
		if got != want {
			t.Fatalf("LeaderTry = %v, want %v", got, want)
		}
	}
	mustLead(a, true)
	mustLead(a, true) // staying leader is idempotent
	mustLead(b, false)
	mustLead(other, true) // schemas do not share the role

	// Cut the leader's session from the server side, as a crash or a
	// network failure would.
	pid := a.leaderPID()
	admin, err := pgx.Connect(ctx, testURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, `SELECT pg_terminate_backend($1)`, pid); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b to take the leader role", 10*time.Second, func() bool {
		got, err := b.LeaderTry(ctx)
		if err != nil {
			t.Fatalf("LeaderTry: %v", err)
		}
		return got
	})
	mustLead(a, false) // a notices its session is gone and does not claim the role
	mustLead(b, true)

	// A leader that closes hands the role on.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a to take the leader role after b closed", 10*time.Second, func() bool {
		got, err := a.LeaderTry(ctx)
		if err != nil {
			t.Fatalf("LeaderTry: %v", err)
		}
		return got
	})
}

func TestWorkWaitWakesOnSignalsFromOtherPools(t *testing.T) {
	t.Parallel()
	u := newSchemaURL(t)
	listener, sender := openStore(t, u), openStore(t, u)
	other := newStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wakes atomic.Int64
	done := make(chan error, 1)
	go func() { done <- listener.WorkWait(ctx, func() { wakes.Add(1) }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("WorkWait returned %v", err)
		}
	}()
	waitFor(t, "the listener to connect", 10*time.Second, func() bool { return listener.listenPID() != 0 })

	// Another installation's signal, committed first and so delivered
	// first, must not wake this one.
	if err := other.WorkSignal(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sender.WorkSignal(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a wake-up", 10*time.Second, func() bool { return wakes.Load() >= 1 })
	if n := wakes.Load(); n != 1 {
		t.Fatalf("woke %d times, want 1", n)
	}

	// Starting a batch signals by itself, on commit.
	f := setup(t, sender)
	f.batch(t, batchsender.BatchRunning, 3, batchsender.BatchOptions{})
	waitFor(t, "a wake-up for the new batch", 10*time.Second, func() bool { return wakes.Load() >= 2 })

	// The listener survives losing its connection.
	pid := listener.listenPID()
	admin, err := pgx.Connect(ctx, testURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx, `SELECT pg_terminate_backend($1)`, pid); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the listener to reconnect", 10*time.Second, func() bool {
		p := listener.listenPID()
		return p != 0 && p != pid
	})
	before := wakes.Load()
	if err := sender.WorkSignal(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a wake-up after reconnecting", 10*time.Second, func() bool { return wakes.Load() > before })
}

// TestConcurrentWritersKeepCountsExact runs claims, results, releases,
// lease rescues and a cancel at once from two pools on two batches, and
// then checks that no operation failed (no deadlock, no serialization
// error) and that every batch's counts equal its items' actual statuses.
func TestConcurrentWritersKeepCountsExact(t *testing.T) {
	t.Parallel()
	u := newSchemaURL(t)
	stores := []*Store{openStore(t, u), openStore(t, u)}
	f := setup(t, stores[0])
	ctx := context.Background()
	batches := []batchsender.Batch{
		// Big enough to be still running when it is cancelled.
		f.batch(t, batchsender.BatchRunning, 5000, batchsender.BatchOptions{MaxAttempts: 3}),
		f.batch(t, batchsender.BatchRunning, 800, batchsender.BatchOptions{MaxAttempts: 3}),
	}
	errc := make(chan error, 16)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 4 {
		s := stores[w%2]
		wg.Go(func() {
			owner := batchsender.NewID("wrk")
			for round := 0; ; round++ {
				now := time.Now()
				// Short leases, so that the rescuer takes some items away
				// and their late results become stale.
				got, err := s.ChunkClaim(ctx, batchsender.ChunkClaimParams{BatchID: batches[(w+round)%2].ID, Owner: owner, Now: now,
					LeaseUntil: now.Add(time.Duration(round%3) * 5 * time.Millisecond), Limit: 40})
				if err != nil {
					errc <- err
					return
				}
				if len(got) == 0 {
					select {
					case <-stop:
						return
					default:
						time.Sleep(time.Millisecond)
						continue
					}
				}
				var rs []batchsender.ItemResult
				var back []string
				for i, it := range got {
					st := []batchsender.ItemStatus{batchsender.ItemSucceeded, batchsender.ItemPending, batchsender.ItemFailed, batchsender.ItemUnknown, ""}[(i+round)%5]
					if st == "" {
						back = append(back, it.ID)
						continue
					}
					rs = append(rs, batchsender.ItemResult{ItemID: it.ID, BatchID: it.BatchID, Owner: owner, Status: st, NextAttemptAt: now,
						Attempt: batchsender.Attempt{ItemID: it.ID, Number: it.Attempts, StartedAt: now, Outcome: "x"}})
				}
				if _, err := s.ItemResultsWriteMany(ctx, rs); err != nil {
					errc <- err
					return
				}
				if _, err := s.ItemsRelease(ctx, owner, back); err != nil {
					errc <- err
					return
				}
			}
		})
	}
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := stores[1].LeasesRescue(ctx, time.Now()); err != nil {
				errc <- err
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	})
	// Cancel the first batch once all operations are under way on it.
	waitFor(t, "results in the first batch", 30*time.Second, func() bool {
		c := f.get(t, batches[0].ID).Counts
		return c.Succeeded > 50 && c.Failed > 0 && c.Unknown > 0
	})
	if _, err := stores[1].BatchTransition(ctx, batchsender.BatchTransitionParams{ProjectID: f.project.ID, BatchID: batches[0].ID, Action: batchsender.ActionCancel, Now: time.Now()}); err != nil {
		t.Errorf("cancel: %v", err)
	}
	// Let the rest run until the second batch is done (or a deadline).
	waitFor(t, "the running batch to complete", 60*time.Second, func() bool {
		select {
		case err := <-errc:
			t.Fatalf("concurrent operation failed: %v", err)
		default:
		}
		return f.get(t, batches[1].ID).Status == batchsender.BatchCompleted
	})
	close(stop)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatalf("concurrent operation failed: %v", err)
	}
	// Whatever is still leased goes back, then the counts must be exact.
	if _, err := stores[0].LeasesRescue(ctx, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	for _, b := range batches {
		got := f.get(t, b.ID)
		var actual batchsender.Counts
		rows, err := stores[0].pool.Query(ctx, `SELECT status, count(*) FROM items WHERE batch_id = $1 GROUP BY status`, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var st batchsender.ItemStatus
			var n int64
			if err := rows.Scan(&st, &n); err != nil {
				t.Fatal(err)
			}
			actual.Add(st, n)
		}
		rows.Close()
		if got.Counts != actual {
			t.Errorf("batch %s (%s): counts %+v, items %+v", b.ID, got.Status, got.Counts, actual)
		}
	}
	if st := f.get(t, batches[0].ID).Status; st != batchsender.BatchCancelled {
		t.Errorf("cancelled batch ended %s", st)
	}
}

func TestOpenNamesAMissingSchema(t *testing.T) {
	t.Parallel()
	u, err := url.Parse(testURL())
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", "bstest_does_not_exist")
	u.RawQuery = q.Encode()
	s, err := Open(context.Background(), u.String(), testLogger(t))
	if err == nil {
		s.Close()
		t.Fatal("Open succeeded without a schema to work in")
	}
	if !strings.Contains(err.Error(), "CREATE SCHEMA") {
		t.Fatalf("error %q does not say what to do", err)
	}
}
