package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
)

// These tests pin PostgreSQL-specific behaviour and the store's SQL; the
// shared semantics are checked by storetest.Exercise (postgres_test.go).

func TestItemDataRoundTripsByteExact(t *testing.T) {
	t.Parallel()
	f := setup(t, newStore(t))
	ctx := context.Background()
	raw := []string{`{"b":1,"a":2}`, `{"a":1,"a":2}`, `{ "spaced" : [1, 2 ,3] }`, `"text"`, `{"uni":"é\u00e9"}`}
	b, err := f.s.BatchCreate(ctx, batchsender.BatchCreateParams{
		ProjectID: f.project.ID, Module: "webhook", ConnectionID: f.conn.ID, Provider: "webhook.http",
		Status: batchsender.BatchDraft, Template: json.RawMessage(`{"z":1,"a":0}`),
		Items: func(yield func(batchsender.NewItem, error) bool) {
			for _, r := range raw {
				if !yield(batchsender.NewItem{Data: json.RawMessage(r)}, nil) {
					return
				}
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := f.s.ItemList(ctx, batchsender.ItemListParams{ProjectID: f.project.ID, BatchID: b.ID})
	if err != nil {
		t.Fatal(err)
	}
	for i, it := range got {
		if string(it.Data) != raw[i] || it.Seq != int64(i+1) {
			t.Errorf("item %d: seq %d data %s, want %s", i, it.Seq, it.Data, raw[i])
		}
	}
	if g := f.get(t, b.ID); string(g.Template) != `{"z":1,"a":0}` {
		t.Errorf("template %s", g.Template)
	}
}

func TestBatchCreateKeepsNothingWhenItemsFail(t *testing.T) {
	t.Parallel()
	f := setup(t, newStore(t))
	ctx := context.Background()
	bad := batchsender.Errorf(batchsender.EINVALID, "row 5001: bad")
	_, err := f.s.BatchCreate(ctx, batchsender.BatchCreateParams{
		ProjectID: f.project.ID, Module: "webhook", ConnectionID: f.conn.ID, Provider: "webhook.http",
		Status: batchsender.BatchRunning, IdempotencyKey: "k1",
		Items: func(yield func(batchsender.NewItem, error) bool) {
			for it := range items(5000) { // several COPY buffers are sent before the error
				if !yield(it, nil) {
					return
				}
			}
			yield(batchsender.NewItem{}, bad)
		},
	})
	if !errors.Is(err, bad) {
		t.Fatalf("BatchCreate error %v, want the iterator's", err)
	}
	list, err := f.s.BatchList(ctx, batchsender.BatchListParams{ProjectID: f.project.ID})
	if err != nil || len(list) != 0 {
		t.Fatalf("BatchList = %v, %v; want nothing", list, err)
	}
	var n int
	if err := f.s.pool.QueryRow(ctx, `SELECT count(*) FROM items`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d items kept (%v)", n, err)
	}
	// The key was not used up.
	f.batch(t, batchsender.BatchRunning, 1, batchsender.BatchOptions{})
}

func TestLifecycleKeepsCountsCurrent(t *testing.T) {
	t.Parallel()
	f := setup(t, newStore(t))
	s := f.s
	ctx := context.Background()
	b := f.batch(t, batchsender.BatchRunning, 10, batchsender.BatchOptions{MaxAttempts: 2})
	now := time.Now().UTC().Truncate(time.Millisecond)
	if b.Total != 10 || b.Counts.Pending != 10 || b.StartedAt == nil {
		t.Fatalf("new batch %+v", b)
	}
	claim := func(owner string, limit int, at time.Time) []batchsender.Item {
		t.Helper()
		got, err := s.ChunkClaim(ctx, batchsender.ChunkClaimParams{BatchID: b.ID, Owner: owner, Now: at, LeaseUntil: at.Add(time.Minute), Limit: limit})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	wantCounts := func(want batchsender.Counts) batchsender.Batch {
		t.Helper()
		got := f.get(t, b.ID)
		if got.Counts != want {
			t.Fatalf("counts %+v, want %+v", got.Counts, want)
		}
		return got
	}
	c1 := claim("w1", 4, now)
	if len(c1) != 4 || c1[0].Seq != 1 || c1[3].Seq != 4 {
		t.Fatalf("claimed %+v", c1)
	}
	wantCounts(batchsender.Counts{Pending: 6, InFlight: 4})

	res := func(it batchsender.Item, owner string, st batchsender.ItemStatus, next time.Time) batchsender.ItemResult {
		return batchsender.ItemResult{ItemID: it.ID, BatchID: b.ID, Owner: owner, Status: st, NextAttemptAt: next, Error: "e-" + string(st),
			ProviderMessageID: "m-" + it.ID, Units: 1,
			Attempt: batchsender.Attempt{ItemID: it.ID, Number: it.Attempts, StartedAt: now, Latency: 3 * time.Millisecond, Outcome: "x", StatusCode: 500, Response: "r", Error: "ae"}}
	}
	n, err := s.ItemResultsWriteMany(ctx, []batchsender.ItemResult{
		res(c1[0], "w1", batchsender.ItemSucceeded, time.Time{}),
		res(c1[1], "w1", batchsender.ItemFailed, time.Time{}),
		res(c1[2], "w1", batchsender.ItemPending, now.Add(time.Hour)),
		res(c1[3], "someone-else", batchsender.ItemSucceeded, time.Time{}), // stale: ignored
	})
	if err != nil || n != 3 {
		t.Fatalf("ItemResultsWriteMany = %d, %v; want 3", n, err)
	}
	wantCounts(batchsender.Counts{Pending: 7, InFlight: 1, Succeeded: 1, Failed: 1})
	atts, err := s.ItemAttemptList(ctx, f.project.ID, c1[0].ID)
	if err != nil || len(atts) != 1 || atts[0].Latency != 3*time.Millisecond || atts[0].StatusCode != 500 || atts[0].Number != 1 {
		t.Fatalf("attempts %+v, %v", atts, err)
	}
	if _, err := s.ItemAttemptList(ctx, "prj_other", c1[0].ID); !batchsender.IsNotFound(err) {
		t.Fatalf("attempts of another project: %v", err)
	}

	// Released items come back with their attempt taken back.
	if n, err := s.ItemsRelease(ctx, "w1", []string{c1[3].ID}); err != nil || n != 1 {
		t.Fatalf("ItemsRelease = %d, %v", n, err)
	}
	wantCounts(batchsender.Counts{Pending: 8, Succeeded: 1, Failed: 1})

	// The retry due in an hour is not claimed now; everything else is.
	c2 := claim("w2", 100, now)
	if len(c2) != 7 {
		t.Fatalf("claimed %d, want 7", len(c2))
	}
	// Leases expire: items with attempts left go back, and after a second
	// claim and expiry the items have used their two attempts and fail.
	if n, err := s.LeasesRescue(ctx, now.Add(2*time.Minute)); err != nil || n != 7 {
		t.Fatalf("LeasesRescue = %d, %v", n, err)
	}
	c3 := claim("w3", 100, now.Add(3*time.Minute))
	if len(c3) != 7 {
		t.Fatalf("claimed %d after rescue, want 7", len(c3))
	}
	if n, err := s.LeasesRescue(ctx, now.Add(10*time.Minute)); err != nil || n != 7 {
		t.Fatalf("LeasesRescue = %d, %v", n, err)
	}
	// Left: the retry due in an hour.
	wantCounts(batchsender.Counts{Pending: 1, Succeeded: 1, Failed: 8})

	// The last item finishes: the batch completes.
	c4 := claim("w4", 100, now.Add(2*time.Hour))
	if len(c4) != 1 || c4[0].ID != c1[2].ID || c4[0].Attempts != 2 {
		t.Fatalf("claimed %+v, want the retried item on its second attempt", c4)
	}
	var rs []batchsender.ItemResult
	for _, it := range c4 {
		rs = append(rs, res(it, "w4", batchsender.ItemSucceeded, time.Time{}))
	}
	if _, err := s.ItemResultsWriteMany(ctx, rs); err != nil {
		t.Fatal(err)
	}
	done := wantCounts(batchsender.Counts{Succeeded: 2, Failed: 8})
	if done.Status != batchsender.BatchCompleted || done.CompletedAt == nil {
		t.Fatalf("batch %s, completed_at %v", done.Status, done.CompletedAt)
	}

	// Retrying the failed items reopens the batch.
	again, err := s.BatchTransition(ctx, batchsender.BatchTransitionParams{ProjectID: f.project.ID, BatchID: b.ID, Action: batchsender.ActionRetryFailed, Now: now})
	if err != nil || again.Status != batchsender.BatchRunning || again.Counts != (batchsender.Counts{Pending: 8, Succeeded: 2}) || again.CompletedAt != nil {
		t.Fatalf("retry_failed: %+v, %v", again, err)
	}
	failed, err := s.ItemList(ctx, batchsender.ItemListParams{ProjectID: f.project.ID, BatchID: b.ID, Status: batchsender.ItemPending})
	if err != nil || len(failed) != 8 || failed[0].Attempts != 0 {
		t.Fatalf("items after retry: %v %v", failed, err)
	}

	// Cancelling stops pending items; in-flight ones finish, and a retry
	// verdict for them ends as cancelled.
	c5 := claim("w5", 2, now)
	cancelled, err := s.BatchTransition(ctx, batchsender.BatchTransitionParams{ProjectID: f.project.ID, BatchID: b.ID, Action: batchsender.ActionCancel, Now: now, Reason: "enough"})
	if err != nil || cancelled.Status != batchsender.BatchCancelled || cancelled.StatusReason != "enough" {
		t.Fatalf("cancel: %+v, %v", cancelled, err)
	}
	wantCounts(batchsender.Counts{InFlight: 2, Succeeded: 2, Cancelled: 6})
	if got := claim("w6", 10, now); len(got) != 0 {
		t.Fatalf("claimed %d items of a cancelled batch", len(got))
	}
	if _, err := s.ItemResultsWriteMany(ctx, []batchsender.ItemResult{
		res(c5[0], "w5", batchsender.ItemPending, now), res(c5[1], "w5", batchsender.ItemSucceeded, time.Time{}),
	}); err != nil {
		t.Fatal(err)
	}
	final := wantCounts(batchsender.Counts{Succeeded: 3, Cancelled: 7})
	if final.Status != batchsender.BatchCancelled {
		t.Fatalf("status %s after the last results of a cancelled batch", final.Status)
	}
	if _, err := s.BatchTransition(ctx, batchsender.BatchTransitionParams{ProjectID: f.project.ID, BatchID: b.ID, Action: batchsender.ActionRetryFailed, Now: now}); batchsender.ErrorCode(err) != batchsender.ECONFLICT {
		t.Fatalf("retry_failed on a cancelled batch: %v", err)
	}
}

func TestScheduleAndPause(t *testing.T) {
	t.Parallel()
	f := setup(t, newStore(t))
	s := f.s
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Microsecond)
	sendAt := now.Add(time.Hour)
	d := f.batch(t, batchsender.BatchDraft, 0, batchsender.BatchOptions{SendAt: &sendAt})
	d, err := s.BatchItemsAppend(ctx, batchsender.BatchItemsAppendParams{ProjectID: f.project.ID, BatchID: d.ID, Items: items(3)})
	if err != nil || d.Total != 3 {
		t.Fatalf("append: %+v %v", d, err)
	}
	d, err = s.BatchItemsAppend(ctx, batchsender.BatchItemsAppendParams{ProjectID: f.project.ID, BatchID: d.ID, Items: items(2)})
	if err != nil || d.Total != 5 || d.Counts.Pending != 5 {
		t.Fatalf("append: %+v %v", d, err)
	}
	list, err := s.ItemList(ctx, batchsender.ItemListParams{ProjectID: f.project.ID, BatchID: d.ID, AfterSeq: 3, Limit: 1})
	if err != nil || len(list) != 1 || list[0].Seq != 4 {
		t.Fatalf("ItemList page: %+v %v", list, err)
	}
	tr := func(a batchsender.BatchAction, at time.Time) (batchsender.Batch, error) {
		return s.BatchTransition(ctx, batchsender.BatchTransitionParams{ProjectID: f.project.ID, BatchID: d.ID, Action: a, Now: at})
	}
	st, err := tr(batchsender.ActionStart, now)
	if err != nil || st.Status != batchsender.BatchScheduled {
		t.Fatalf("start: %+v %v", st, err)
	}
	if _, err := s.BatchItemsAppend(ctx, batchsender.BatchItemsAppendParams{ProjectID: f.project.ID, BatchID: d.ID, Items: items(1)}); batchsender.ErrorCode(err) != batchsender.ECONFLICT {
		t.Fatalf("append to a scheduled batch: %v", err)
	}
	if n, err := s.BatchesActivateDue(ctx, now); err != nil || n != 0 {
		t.Fatalf("activate early: %d %v", n, err)
	}
	if n, err := s.BatchesActivateDue(ctx, sendAt); err != nil || n != 1 {
		t.Fatalf("activate: %d %v", n, err)
	}
	run, err := s.BatchesRunnable(ctx, 10)
	if err != nil || len(run) != 1 || run[0].ID != d.ID {
		t.Fatalf("runnable: %+v %v", run, err)
	}
	p, err := tr(batchsender.ActionPause, sendAt)
	if err != nil || p.Status != batchsender.BatchPaused {
		t.Fatalf("pause: %+v %v", p, err)
	}
	if got, err := s.ChunkClaim(ctx, batchsender.ChunkClaimParams{BatchID: d.ID, Owner: "w", Now: sendAt, LeaseUntil: sendAt.Add(time.Minute), Limit: 10}); err != nil || len(got) != 0 {
		t.Fatalf("claim from a paused batch: %d %v", len(got), err)
	}
	if _, err := tr(batchsender.ActionPause, sendAt); batchsender.ErrorCode(err) != batchsender.ECONFLICT {
		t.Fatalf("pause twice: %v", err)
	}
	r, err := tr(batchsender.ActionResume, sendAt)
	if err != nil || r.Status != batchsender.BatchRunning {
		t.Fatalf("resume: %+v %v", r, err)
	}
	if _, err := s.BatchGetByID(ctx, "prj_other", d.ID); !batchsender.IsNotFound(err) {
		t.Fatalf("another project's batch: %v", err)
	}
}

func TestIdempotencyKeyConflicts(t *testing.T) {
	t.Parallel()
	f := setup(t, newStore(t))
	ctx := context.Background()
	p := batchsender.BatchCreateParams{ProjectID: f.project.ID, Module: "webhook", ConnectionID: f.conn.ID, Provider: "webhook.http",
		Status: batchsender.BatchRunning, IdempotencyKey: "same", RequestHash: "h1", Items: items(2)}
	b, err := f.s.BatchCreate(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.s.BatchCreate(ctx, p); batchsender.ErrorCode(err) != batchsender.ECONFLICT {
		t.Fatalf("second create: %v", err)
	}
	got, err := f.s.BatchGetByIdempotencyKey(ctx, f.project.ID, "same")
	if err != nil || got.ID != b.ID || got.RequestHash != "h1" {
		t.Fatalf("by key: %+v %v", got, err)
	}
}
