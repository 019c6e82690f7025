package postgres

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
	"github.com/jackc/pgx/v5/pgxpool"
)

// hotColumns are the item columns a claim or a successful result changes.
// An index referring to any of them, as a key or in its predicate, makes
// those updates insert into every index of items (see migration 0005).
var hotColumns = []string{"status", "attempts", "next_attempt_at", "last_error", "provider_message_id",
	"lease_owner", "lease_expires_at", "lease_id", "units", "attempt_log", "updated_at"}

func TestItemsIndexesLeaveClaimAndResultColumnsAlone(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	rows, err := s.pool.Query(context.Background(), `SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid)
		FROM pg_index WHERE indrelid = 'items'::regclass ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var name, def string
		if err := rows.Scan(&name, &def); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
		for _, col := range hotColumns {
			if regexp.MustCompile(`\b` + col + `\b`).MatchString(def) {
				t.Errorf("index %s refers to %s, which claims or results change: %s", name, col, def)
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := []string{"items_batch_id_seq_key", "items_pkey", "items_problems", "items_retry"}
	if !slices.Equal(names, want) {
		t.Errorf("indexes on items %v, want %v", names, want)
	}
}

// TestClaimAndResultUpdatesAreHOT measures, and only logs, the share of
// the item updates of a claim and success round that PostgreSQL made
// heap-only: the share depends on free space on the pages and on how soon
// dead versions can be pruned, which other sessions' snapshots delay. It
// runs on one connection so that its statistics can be flushed before they
// are read.
func TestClaimAndResultUpdatesAreHOT(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openStore(t, newSchemaURL(t)+"&pool_max_conns=1")
	f := setup(t, s)
	const n, chunk = 5000, 500
	b := f.batch(t, batchsender.BatchRunning, n, batchsender.BatchOptions{})
	for {
		now := time.Now()
		got, err := s.ChunkClaim(ctx, batchsender.ChunkClaimParams{BatchID: b.ID, Owner: "w", Now: now, LeaseUntil: now.Add(time.Minute), Limit: chunk})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 {
			break
		}
		// Results come back in flushes smaller than a claim, as from the
		// engine.
		for part := range slices.Chunk(got, 100) {
			rs := make([]batchsender.ItemResult, len(part))
			for i, it := range part {
				rs[i] = batchsender.ItemResult{ItemID: it.ID, BatchID: it.BatchID, Owner: "w", Status: batchsender.ItemSucceeded, ProviderMessageID: "m", Units: 1,
					Attempt: batchsender.Attempt{ItemID: it.ID, Number: it.Attempts, StartedAt: now, Latency: time.Millisecond, Outcome: "ok", StatusCode: 200}}
			}
			if _, err := s.ItemResultsWriteMany(ctx, rs); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got := f.get(t, b.ID); got.Status != batchsender.BatchCompleted || got.Counts.Succeeded != n {
		t.Fatalf("batch ended %s with %+v", got.Status, got.Counts)
	}
	// The session's statistics reach the shared counters when it next goes
	// idle after this.
	if _, err := s.pool.Exec(ctx, `SELECT pg_stat_force_next_flush()`); err != nil {
		t.Fatal(err)
	}
	var upd, hot int64
	var leases int
	if err := s.pool.QueryRow(ctx, `SELECT n_tup_upd, n_tup_hot_upd, (SELECT count(*) FROM leases)
		FROM pg_stat_user_tables WHERE schemaname = current_schema() AND relname = 'items'`).Scan(&upd, &hot, &leases); err != nil {
		t.Fatal(err)
	}
	if leases != 0 {
		t.Errorf("%d leases rows left with every item finished, want none", leases)
	}
	if upd > 0 {
		t.Logf("items: %d updates, %d HOT (%.1f%%)", upd, hot, 100*float64(hot)/float64(upd))
	}
}

// TestMigration0005KeepsLiveWork builds a running installation under the
// 0004 schema (items in flight under two leases, retries waiting for their
// backoff and due, an item released behind the claims, failed and unknown
// items, first attempts not yet claimed), migrates it, and checks that
// every item is still claimed, rescued or retried as before, and none lost.
func TestMigration0005KeepsLiveWork(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	u := newSchemaURL(t)
	pool, err := pgxpool.New(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	var schema string
	if err := pool.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		t.Fatal(err)
	}
	if err := migrateTo(ctx, pool, schema, testLogger(t), 4); err != nil {
		t.Fatalf("migrating to 0004: %v", err)
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	created := now.Add(-10 * time.Minute)
	soonExpiry, lateExpiry := now.Add(time.Minute), now.Add(time.Hour)
	type row struct {
		status    string
		attempts  int
		next      time.Time
		owner     string
		expiresAt *time.Time
	}
	// The running batch's items by seq.
	run := []row{
		1:  {status: "succeeded", attempts: 1, next: created},
		2:  {status: "failed", attempts: 3, next: created},
		3:  {status: "in_flight", attempts: 1, next: created, owner: "w1", expiresAt: &soonExpiry},
		4:  {status: "in_flight", attempts: 1, next: created, owner: "w1", expiresAt: &soonExpiry},
		5:  {status: "in_flight", attempts: 1, next: created, owner: "w2", expiresAt: &lateExpiry},
		6:  {status: "pending", attempts: 1, next: now.Add(-time.Minute)},     // a retry, due
		7:  {status: "pending", attempts: 2, next: now.Add(30 * time.Minute)}, // a retry in its backoff
		8:  {status: "pending", attempts: 0, next: created},                   // released behind the claims
		9:  {status: "unknown", attempts: 1, next: created},
		10: {status: "in_flight", attempts: 2, next: created, owner: "w1", expiresAt: &soonExpiry},
		11: {status: "pending", attempts: 0, next: created},
		12: {status: "pending", attempts: 0, next: created},
		13: {status: "pending", attempts: 0, next: created},
	}[1:]
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := pool.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`INSERT INTO projects (id, name, created_at) VALUES ('prj_m', 'm', $1)`, created)
	batch := func(id, status string, counts map[string]int, total int) {
		t.Helper()
		exec(`INSERT INTO batches (id, project_id, module, connection_id, provider, status, options, max_attempts, total,
				count_pending, count_in_flight, count_succeeded, count_failed, count_unknown, created_at, updated_at, started_at)
			VALUES ($1, 'prj_m', 'webhook', 'con_m', 'webhook.http', $2, '{"max_attempts":3}', 3, $3, $4, $5, $6, $7, $8, $9, $9, $9)`,
			id, status, total, counts["pending"], counts["in_flight"], counts["succeeded"], counts["failed"], counts["unknown"], created)
	}
	item := func(batchID string, seq int, r row) {
		t.Helper()
		var owner *string
		if r.owner != "" {
			owner = &r.owner
		}
		exec(`INSERT INTO items (id, batch_id, project_id, seq, data, status, attempts, next_attempt_at, lease_owner, lease_expires_at, updated_at)
			VALUES ($1, $2, 'prj_m', $3, '{}', $4, $5, $6, $7, $8, $9)`,
			fmt.Sprintf("itm_%s_%02d", batchID, seq), batchID, seq, r.status, r.attempts, r.next, owner, r.expiresAt, created)
	}
	counts := map[string]int{}
	for i, r := range run {
		item("bat_run", i+1, r)
		counts[r.status]++
	}
	batch("bat_run", "running", counts, len(run))
	batch("bat_done", "completed", map[string]int{"succeeded": 2}, 2)
	item("bat_done", 1, row{status: "succeeded", attempts: 1, next: created})
	item("bat_done", 2, row{status: "succeeded", attempts: 1, next: created})
	batch("bat_draft", "draft", map[string]int{"pending": 2}, 2)
	item("bat_draft", 1, row{status: "pending", next: created})
	item("bat_draft", 2, row{status: "pending", next: created})
	pool.Close()

	s := openStore(t, u) // migrates to the latest version
	var claimSeqs []int64
	var leases int
	if err := s.pool.QueryRow(ctx, `SELECT array_agg(claim_seq ORDER BY id), (SELECT count(*) FROM leases) FROM batches`).Scan(&claimSeqs, &leases); err != nil {
		t.Fatal(err)
	}
	// bat_done, bat_draft, bat_run: after the last item that is not a
	// pending first attempt.
	if !slices.Equal(claimSeqs, []int64{2, 0, 10}) || leases != 2 {
		t.Fatalf("after migrating: claim_seq %v, %d leases rows; want [2 0 10] and 2", claimSeqs, leases)
	}

	seqsOf := func(items []batchsender.Item) []int64 {
		out := make([]int64, len(items))
		for i, it := range items {
			out[i] = it.Seq
		}
		return out
	}
	claim := func(batchID string, at time.Time) []batchsender.Item {
		t.Helper()
		got, err := s.ChunkClaim(ctx, batchsender.ChunkClaimParams{BatchID: batchID, Owner: "new", Now: at, LeaseUntil: at.Add(time.Minute), Limit: 100})
		if err != nil {
			t.Fatalf("ChunkClaim: %v", err)
		}
		return got
	}
	succeed := func(items []batchsender.Item) {
		t.Helper()
		rs := make([]batchsender.ItemResult, len(items))
		for i, it := range items {
			rs[i] = batchsender.ItemResult{ItemID: it.ID, BatchID: it.BatchID, Owner: it.LeaseOwner, Status: batchsender.ItemSucceeded,
				Attempt: batchsender.Attempt{ItemID: it.ID, Number: it.Attempts, StartedAt: now, Outcome: "ok"}}
		}
		if n, err := s.ItemResultsWriteMany(ctx, rs); err != nil || n != len(items) {
			t.Fatalf("ItemResultsWriteMany = %d, %v; want %d", n, err, len(items))
		}
	}
	rescue := func(before time.Time, want int) {
		t.Helper()
		if n, err := s.LeasesRescue(ctx, before); err != nil || n != want {
			t.Fatalf("LeasesRescue(%v) = %d, %v; want %d", before, n, err, want)
		}
	}
	list := func(st batchsender.ItemStatus) []int64 {
		t.Helper()
		got, err := s.ItemList(ctx, batchsender.ItemListParams{ProjectID: "prj_m", BatchID: "bat_run", Status: st})
		if err != nil {
			t.Fatal(err)
		}
		return seqsOf(got)
	}

	// Everything due, oldest due first: the released item and the first
	// attempts (due since creation), then the due retry; not the retry in
	// its backoff.
	first := claim("bat_run", now)
	if got := seqsOf(first); !slices.Equal(got, []int64{8, 11, 12, 13, 6}) {
		t.Fatalf("first claim after migrating: seqs %v, want [8 11 12 13 6]", got)
	}
	succeed(first)
	if got := list(batchsender.ItemFailed); !slices.Equal(got, []int64{2}) {
		t.Fatalf("failed items %v, want [2]", got)
	}
	if got := list(batchsender.ItemUnknown); !slices.Equal(got, []int64{9}) {
		t.Fatalf("unknown items %v, want [9]", got)
	}
	// The leases taken before the migration expire and are rescued, the
	// earlier one first.
	rescue(now, 0)
	rescue(soonExpiry.Add(time.Second), 3)
	again := claim("bat_run", now)
	if got := seqsOf(again); !slices.Equal(got, []int64{3, 4, 10}) {
		t.Fatalf("claim after the first rescue: seqs %v, want [3 4 10]", got)
	}
	succeed(again)
	rescue(lateExpiry.Add(time.Second), 1)
	later := claim("bat_run", now.Add(time.Hour))
	if got := seqsOf(later); !slices.Equal(got, []int64{5, 7}) {
		t.Fatalf("claim after the second rescue: seqs %v, want [5 7]", got)
	}
	succeed(later)
	if _, err := s.BatchTransition(ctx, batchsender.BatchTransitionParams{ProjectID: "prj_m", BatchID: "bat_run", Action: batchsender.ActionRetryFailed, Now: now}); err != nil {
		t.Fatalf("retry_failed: %v", err)
	}
	if got := list(batchsender.ItemFailed); len(got) != 0 {
		t.Fatalf("failed items after retry_failed %v, want none", got)
	}
	retried := claim("bat_run", now.Add(time.Hour))
	if got := seqsOf(retried); !slices.Equal(got, []int64{2, 9}) {
		t.Fatalf("claim after retry_failed: seqs %v, want [2 9]", got)
	}
	succeed(retried)
	b, err := s.BatchGetByID(ctx, "prj_m", "bat_run")
	if err != nil {
		t.Fatal(err)
	}
	if b.Status != batchsender.BatchCompleted || b.Counts != (batchsender.Counts{Succeeded: int64(len(run))}) {
		t.Fatalf("batch after all work = %s %+v, want completed with every item succeeded", b.Status, b.Counts)
	}

	// The draft batch starts and is claimed through its cursor; the
	// finished one has nothing left.
	if _, err := s.BatchTransition(ctx, batchsender.BatchTransitionParams{ProjectID: "prj_m", BatchID: "bat_draft", Action: batchsender.ActionStart, Now: now}); err != nil {
		t.Fatalf("start: %v", err)
	}
	if got := seqsOf(claim("bat_draft", now)); !slices.Equal(got, []int64{1, 2}) {
		t.Fatalf("draft batch claimed %v, want [1 2]", got)
	}
	if got := claim("bat_done", now); len(got) != 0 {
		t.Fatalf("finished batch claimed %v", seqsOf(got))
	}
}

// TestOlderNodesItemWritesAreRefused writes items the way a node of a
// version before migration 0005 does (it knows nothing of lease_id,
// retry_at and problem) and expects the CHECK constraints to refuse each
// write that would leave an item unclaimable or unrescuable, so that a node
// left running through an upgrade fails loudly instead of losing items.
func TestOlderNodesItemWritesAreRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := setup(t, newStore(t))
	b := f.batch(t, batchsender.BatchRunning, 4, batchsender.BatchOptions{MaxAttempts: 5})
	now := time.Now()
	claimed, err := f.s.ChunkClaim(ctx, batchsender.ChunkClaimParams{BatchID: b.ID, Owner: "new", Now: now, LeaseUntil: now.Add(time.Minute), Limit: 3})
	if err != nil || len(claimed) != 3 {
		t.Fatalf("ChunkClaim = %d, %v", len(claimed), err)
	}
	retry := batchsender.ItemResult{ItemID: claimed[0].ID, BatchID: b.ID, Owner: "new", Status: batchsender.ItemPending, NextAttemptAt: now.Add(time.Hour),
		Attempt: batchsender.Attempt{ItemID: claimed[0].ID, Number: 1, StartedAt: now, Outcome: "retry"}}
	failed := batchsender.ItemResult{ItemID: claimed[1].ID, BatchID: b.ID, Owner: "new", Status: batchsender.ItemFailed,
		Attempt: batchsender.Attempt{ItemID: claimed[1].ID, Number: 1, StartedAt: now, Outcome: "permanent"}}
	if n, err := f.s.ItemResultsWriteMany(ctx, []batchsender.ItemResult{retry, failed}); err != nil || n != 2 {
		t.Fatalf("ItemResultsWriteMany = %d, %v", n, err)
	}
	var fresh string
	if err := f.s.pool.QueryRow(ctx, `SELECT id FROM items WHERE batch_id = $1 AND seq = 4`, b.ID).Scan(&fresh); err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct{ what, sql, id string }{
		{"claim", `UPDATE items SET status = 'in_flight', attempts = attempts + 1, lease_owner = 'old', lease_expires_at = now() WHERE id = $1`, fresh},
		{"result", `UPDATE items SET status = 'succeeded', lease_owner = NULL, lease_expires_at = NULL WHERE id = $1`, claimed[2].ID},
		{"release", `UPDATE items SET status = 'pending', attempts = attempts - 1, lease_owner = NULL, lease_expires_at = NULL WHERE id = $1`, claimed[2].ID},
		{"retry_failed", `UPDATE items SET status = 'pending', attempts = 0 WHERE id = $1`, claimed[1].ID},
		{"cancel", `UPDATE items SET status = 'cancelled' WHERE id = $1`, claimed[0].ID},
	} {
		_, err := f.s.pool.Exec(ctx, w.sql, w.id)
		if code := pgCode(err); code != "23514" {
			t.Errorf("an older node's %s: error %v (code %q), want a check violation", w.what, err, code)
		}
	}
}

// TestAttemptsListTableThenLog gives an item an attempt in the attempts
// table, as a node from before migration 0006 (or migrate-store) writes
// it, then two more through results, which go to the item's attempt_log,
// and expects ItemAttemptList to give all three, oldest first.
func TestAttemptsListTableThenLog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := setup(t, newStore(t))
	b := f.batch(t, batchsender.BatchRunning, 1, batchsender.BatchOptions{MaxAttempts: 5})
	t0 := time.Now().UTC().Truncate(time.Millisecond)
	claim := func(now time.Time) batchsender.Item {
		t.Helper()
		got, err := f.s.ChunkClaim(ctx, batchsender.ChunkClaimParams{BatchID: b.ID, Owner: "w", Now: now, LeaseUntil: now.Add(time.Minute), Limit: 1})
		if err != nil || len(got) != 1 {
			t.Fatalf("ChunkClaim = %v, %v", got, err)
		}
		return got[0]
	}
	it := claim(t0)
	// The older node's result: the item back to pending for a retry, its
	// attempt in the attempts table.
	if _, err := f.s.pool.Exec(ctx, `WITH u AS (
			UPDATE items SET status = 'pending', retry_at = $2, next_attempt_at = $2, lease_owner = NULL, lease_expires_at = NULL,
				lease_id = -lease_id WHERE id = $1 RETURNING -lease_id AS l
		), d AS (DELETE FROM leases WHERE id IN (SELECT l FROM u))
		INSERT INTO attempts (item_id, batch_id, project_id, number, started_at, latency_ns, outcome, status_code, response, error)
		VALUES ($1, $3, $4, 1, $2, 1000, 'retry', 503, 'busy', 'receiver answered 503')`, it.ID, t0, b.ID, f.project.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := f.s.pool.Exec(ctx, `UPDATE batches SET count_pending = 1, count_in_flight = 0 WHERE id = $1`, b.ID); err != nil {
		t.Fatal(err)
	}
	for i, st := range []batchsender.ItemStatus{batchsender.ItemPending, batchsender.ItemSucceeded} {
		now := t0.Add(time.Duration(i+1) * time.Second)
		it := claim(now)
		r := batchsender.ItemResult{ItemID: it.ID, BatchID: b.ID, Owner: "w", Status: st, NextAttemptAt: now,
			Attempt: batchsender.Attempt{ItemID: it.ID, Number: it.Attempts, StartedAt: now, Latency: time.Duration(i+2) * time.Microsecond,
				Outcome: fmt.Sprint("outcome", i), StatusCode: 200 + i, Response: fmt.Sprint("response", i), Error: fmt.Sprint("error", i)}}
		if n, err := f.s.ItemResultsWriteMany(ctx, []batchsender.ItemResult{r}); err != nil || n != 1 {
			t.Fatalf("ItemResultsWriteMany = %d, %v", n, err)
		}
	}
	got, err := f.s.ItemAttemptList(ctx, f.project.ID, it.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := []batchsender.Attempt{
		{ItemID: it.ID, Number: 1, StartedAt: t0, Latency: time.Microsecond, Outcome: "retry", StatusCode: 503, Response: "busy", Error: "receiver answered 503"},
		{ItemID: it.ID, Number: 2, StartedAt: t0.Add(time.Second), Latency: 2 * time.Microsecond, Outcome: "outcome0", StatusCode: 200, Response: "response0", Error: "error0"},
		{ItemID: it.ID, Number: 3, StartedAt: t0.Add(2 * time.Second), Latency: 3 * time.Microsecond, Outcome: "outcome1", StatusCode: 201, Response: "response1", Error: "error1"},
	}
	if len(got) != len(want) {
		t.Fatalf("attempts %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("attempt %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}
