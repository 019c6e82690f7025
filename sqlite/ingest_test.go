package sqlite

import (
	"context"
	"encoding/json"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
)

// testChunkRows is the ingest chunk size of these tests.
const testChunkRows = 50

// ingestFixture opens a store with one project.
func ingestFixture(t *testing.T) (*Store, batchsender.Project) {
	t.Helper()
	s, err := Open(t.Context(), filepath.Join(t.TempDir(), "bs.db"), nil)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	// Small chunks, so a few hundred items take the multi-transaction path.
	s.ingestChunkRows = testChunkRows
	p, err := s.ProjectCreate(t.Context(), "p")
	if err != nil {
		t.Fatalf("ProjectCreate: %v", err)
	}
	return s, p
}

// pausingItems yields n items and calls at(i) before item i when i is in
// the set of checkpoints; at may fail the test.
func pausingItems(n int, at map[int]func()) func(yield func(batchsender.NewItem, error) bool) {
	return func(yield func(batchsender.NewItem, error) bool) {
		for i := 1; i <= n; i++ {
			if f := at[i]; f != nil {
				f()
			}
			if !yield(batchsender.NewItem{Data: json.RawMessage(`{"n":1}`)}, nil) {
				return
			}
		}
	}
}

// TestIngestLeavesWriterFreeAndBatchHidden shows that a large create
// neither holds the writer while it waits for items (other writes go on
// meanwhile) nor shows the batch before its last item is in.
func TestIngestLeavesWriterFreeAndBatchHidden(t *testing.T) {
	t.Parallel()
	s, p := ingestFixture(t)
	ctx := t.Context()
	// By item 3*testChunkRows+1 the producer has handed over three chunks,
	// so the writer has committed at least the first.
	const n = 4*testChunkRows + 17
	checked := false
	b, err := s.BatchCreate(ctx, batchsender.BatchCreateParams{
		ProjectID: p.ID, Module: "webhook", ConnectionID: "con_x", Provider: "webhook.http", Status: batchsender.BatchRunning,
		IdempotencyKey: "k",
		Items: pausingItems(n, map[int]func(){3*testChunkRows + 1: func() {
			checked = true
			var stored int
			if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM items`).Scan(&stored); err != nil || stored < testChunkRows {
				t.Errorf("items stored during the ingest: %d, %v; want at least a chunk", stored, err)
			}
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if _, err := s.ProjectCreate(wctx, "written-during-ingest"); err != nil {
				t.Errorf("a write during the ingest: %v", err)
			}
			if list, err := s.BatchList(ctx, batchsender.BatchListParams{ProjectID: p.ID}); err != nil || len(list) != 0 {
				t.Errorf("BatchList during the ingest = %d batches, %v", len(list), err)
			}
			if got, err := s.BatchesRunnable(ctx, 10); err != nil || len(got) != 0 {
				t.Errorf("BatchesRunnable during the ingest = %d, %v", len(got), err)
			}
			if _, err := s.BatchGetByIdempotencyKey(ctx, p.ID, "k"); !batchsender.IsNotFound(err) {
				t.Errorf("BatchGetByIdempotencyKey during the ingest: %v", err)
			}
		}}),
	})
	if err != nil {
		t.Fatalf("BatchCreate: %v", err)
	}
	if !checked {
		t.Fatal("the check inside the ingest did not run")
	}
	if b.Total != n || b.Counts.Pending != n || b.Status != batchsender.BatchRunning {
		t.Fatalf("batch = %+v", b)
	}
	items, err := s.ItemList(ctx, batchsender.ItemListParams{ProjectID: p.ID, BatchID: b.ID, AfterSeq: n - 3})
	if err != nil || len(items) != 3 || items[2].Seq != n {
		t.Fatalf("last items = %+v, %v", items, err)
	}
}

// TestAppendIsInvisibleUntilDone shows an append in progress: the draft
// lists only its earlier items, cannot start, and takes no second append.
func TestAppendIsInvisibleUntilDone(t *testing.T) {
	t.Parallel()
	s, p := ingestFixture(t)
	ctx := t.Context()
	draft, err := s.BatchCreate(ctx, batchsender.BatchCreateParams{
		ProjectID: p.ID, Module: "webhook", ConnectionID: "con_x", Provider: "webhook.http", Status: batchsender.BatchDraft,
		Items: pausingItems(2, nil),
	})
	if err != nil {
		t.Fatalf("BatchCreate: %v", err)
	}
	const n = 4*testChunkRows + 5
	checked := false
	got, err := s.BatchItemsAppend(ctx, batchsender.BatchItemsAppendParams{ProjectID: p.ID, BatchID: draft.ID,
		Items: pausingItems(n, map[int]func(){3*testChunkRows + 10: func() {
			checked = true
			var stored int
			if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM items`).Scan(&stored); err != nil || stored < 2+testChunkRows {
				t.Errorf("items stored during the append: %d, %v; want at least a chunk more than 2", stored, err)
			}
			items, err := s.ItemList(ctx, batchsender.ItemListParams{ProjectID: p.ID, BatchID: draft.ID, Limit: 1000})
			if err != nil || len(items) != 2 {
				t.Errorf("ItemList during the append = %d items, %v; want the 2 earlier ones", len(items), err)
			}
			_, err = s.BatchTransition(ctx, batchsender.BatchTransitionParams{ProjectID: p.ID, BatchID: draft.ID, Action: batchsender.ActionStart, Now: time.Now()})
			if batchsender.ErrorCode(err) != batchsender.ECONFLICT {
				t.Errorf("start during the append: %v, want conflict", err)
			}
			_, err = s.BatchItemsAppend(ctx, batchsender.BatchItemsAppendParams{ProjectID: p.ID, BatchID: draft.ID, Items: pausingItems(1, nil)})
			if batchsender.ErrorCode(err) != batchsender.ECONFLICT {
				t.Errorf("second append during the append: %v, want conflict", err)
			}
		}}),
	})
	if err != nil {
		t.Fatalf("BatchItemsAppend: %v", err)
	}
	if !checked {
		t.Fatal("the check inside the append did not run")
	}
	if got.Total != n+2 || got.Counts.Pending != n+2 {
		t.Fatalf("batch after append = %+v", got)
	}
	if _, err := s.BatchTransition(ctx, batchsender.BatchTransitionParams{ProjectID: p.ID, BatchID: draft.ID, Action: batchsender.ActionStart, Now: time.Now()}); err != nil {
		t.Fatalf("start after the append: %v", err)
	}
}

// TestFailedLargeIngestLeavesNothing covers the multi-transaction path:
// the iterator fails after several chunks were committed.
func TestFailedLargeIngestLeavesNothing(t *testing.T) {
	t.Parallel()
	s, p := ingestFixture(t)
	ctx := t.Context()
	bad := batchsender.Errorf(batchsender.EINVALID, "row 301: bad")
	failing := func(yield func(batchsender.NewItem, error) bool) {
		for range pausingItems(6*testChunkRows, nil) {
			if !yield(batchsender.NewItem{Data: json.RawMessage(`{}`)}, nil) {
				return
			}
		}
		yield(batchsender.NewItem{}, bad)
	}
	_, err := s.BatchCreate(ctx, batchsender.BatchCreateParams{
		ProjectID: p.ID, Module: "webhook", ConnectionID: "con_x", Provider: "webhook.http", Status: batchsender.BatchRunning,
		Items: failing,
	})
	if err != bad {
		t.Fatalf("BatchCreate error = %v, want the iterator's", err)
	}
	var batches, items int
	if err := s.r.QueryRowContext(ctx, `SELECT (SELECT COUNT(*) FROM batches), (SELECT COUNT(*) FROM items)`).Scan(&batches, &items); err != nil {
		t.Fatal(err)
	}
	if batches != 0 || items != 0 {
		t.Fatalf("after a failed create: %d batches, %d items in the database", batches, items)
	}

	draft, err := s.BatchCreate(ctx, batchsender.BatchCreateParams{
		ProjectID: p.ID, Module: "webhook", ConnectionID: "con_x", Provider: "webhook.http", Status: batchsender.BatchDraft,
		Items: pausingItems(3, nil),
	})
	if err != nil {
		t.Fatalf("BatchCreate: %v", err)
	}
	_, err = s.BatchItemsAppend(ctx, batchsender.BatchItemsAppendParams{ProjectID: p.ID, BatchID: draft.ID, Items: failing})
	if err != bad {
		t.Fatalf("BatchItemsAppend error = %v, want the iterator's", err)
	}
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM items`).Scan(&items); err != nil {
		t.Fatal(err)
	}
	if items != 3 {
		t.Fatalf("after a failed append the database holds %d items, want 3", items)
	}
	got, err := s.BatchItemsAppend(ctx, batchsender.BatchItemsAppendParams{ProjectID: p.ID, BatchID: draft.ID, Items: pausingItems(2, nil)})
	if err != nil || got.Total != 5 {
		t.Fatalf("append after a failed one = %+v, %v", got, err)
	}
}

// TestLeasesRescueRemovesStaleIngests: an ingest whose process died
// (hidden batch, or items beyond a draft's total) is removed once idle for
// staleIngest, and a live one is left alone.
func TestLeasesRescueRemovesStaleIngests(t *testing.T) {
	t.Parallel()
	s, p := ingestFixture(t)
	ctx := t.Context()
	draft, err := s.BatchCreate(ctx, batchsender.BatchCreateParams{
		ProjectID: p.ID, Module: "webhook", ConnectionID: "con_x", Provider: "webhook.http", Status: batchsender.BatchDraft,
		Items: pausingItems(2, nil),
	})
	if err != nil {
		t.Fatalf("BatchCreate: %v", err)
	}
	old := ms(time.Now().Add(-2 * staleIngest))
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := s.w.ExecContext(ctx, q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	// What a dead process leaves: a hidden batch with items, and items
	// appended beyond the draft's total.
	exec(`INSERT INTO batches (bkey, id, project_id, module, connection_id, provider, status, options, max_attempts, created_at, updated_at, ingesting, ingest_token)
		VALUES (999, 'bat_dead', ?, 'webhook', 'con_x', 'webhook.http', 'running', '{}', 8, ?, ?, 1, 'ing_1')`, p.ID, old, old)
	exec(`INSERT INTO items (batch_key, seq, id, data, next_attempt_at, updated_at) VALUES (999, 1, 'itm_dead1', '{}', 0, 0)`)
	exec(`UPDATE batches SET ingesting = 2, ingest_token = 'ing_2', updated_at = ? WHERE id = ?`, old, draft.ID)
	exec(`INSERT INTO items (batch_key, seq, id, data, next_attempt_at, updated_at)
		SELECT bkey, 3, 'itm_dead3', '{}', 0, 0 FROM batches WHERE id = ?`, draft.ID)
	// A live ingest, active a moment ago.
	exec(`INSERT INTO batches (bkey, id, project_id, module, connection_id, provider, status, options, max_attempts, created_at, updated_at, ingesting, ingest_token)
		VALUES (998, 'bat_live', ?, 'webhook', 'con_x', 'webhook.http', 'running', '{}', 8, ?, ?, 1, 'ing_3')`, p.ID, ms(time.Now()), ms(time.Now()))

	if _, err := s.LeasesRescue(ctx, time.Now()); err != nil {
		t.Fatalf("LeasesRescue: %v", err)
	}
	var ids []string
	rows, err := s.r.QueryContext(ctx, `SELECT id FROM items ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	rows.Close()
	if len(ids) != 2 || slices.Contains(ids, "itm_dead1") || slices.Contains(ids, "itm_dead3") {
		t.Fatalf("items left: %v, want only the draft's two", ids)
	}
	var dead, live int
	if err := s.r.QueryRowContext(ctx, `SELECT (SELECT COUNT(*) FROM batches WHERE id = 'bat_dead'), (SELECT COUNT(*) FROM batches WHERE id = 'bat_live')`).Scan(&dead, &live); err != nil {
		t.Fatal(err)
	}
	if dead != 0 || live != 1 {
		t.Fatalf("dead batch rows %d (want 0), live %d (want 1)", dead, live)
	}
	got, err := s.BatchItemsAppend(ctx, batchsender.BatchItemsAppendParams{ProjectID: p.ID, BatchID: draft.ID, Items: pausingItems(1, nil)})
	if err != nil || got.Total != 3 {
		t.Fatalf("append after the cleanup = %+v, %v", got, err)
	}
}

// TestIngestGivenUpAsStaleFails: when LeasesRescue removed an ingest as
// stale while it was in fact only slow, the ingest fails when it next
// writes and leaves nothing behind.
func TestIngestGivenUpAsStaleFails(t *testing.T) {
	t.Parallel()
	s, p := ingestFixture(t)
	ctx := t.Context()
	_, err := s.BatchCreate(ctx, batchsender.BatchCreateParams{
		ProjectID: p.ID, Module: "webhook", ConnectionID: "con_x", Provider: "webhook.http", Status: batchsender.BatchRunning,
		Items: pausingItems(6*testChunkRows, map[int]func(){3*testChunkRows + 1: func() {
			// Age the hidden batch, then let maintenance remove it. The
			// writer may still be committing chunks handed over earlier
			// (each refreshes the batch), but it runs out of them soon.
			for try := 0; ; try++ {
				if _, err := s.w.ExecContext(ctx, `UPDATE batches SET updated_at = ? WHERE ingesting = 1`, ms(time.Now().Add(-2*staleIngest))); err != nil {
					t.Errorf("aging the ingest: %v", err)
				}
				if _, err := s.LeasesRescue(ctx, time.Now()); err != nil {
					t.Errorf("LeasesRescue: %v", err)
				}
				var hidden int
				if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM batches WHERE ingesting = 1`).Scan(&hidden); err != nil {
					t.Errorf("counting hidden batches: %v", err)
				}
				if hidden == 0 {
					return
				}
				if try == 100 {
					t.Errorf("the ingest was never removed")
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		}}),
	})
	if err == nil {
		t.Fatal("BatchCreate succeeded after its ingest was removed")
	}
	var batches, items int
	if err := s.r.QueryRowContext(ctx, `SELECT (SELECT COUNT(*) FROM batches), (SELECT COUNT(*) FROM items)`).Scan(&batches, &items); err != nil {
		t.Fatal(err)
	}
	if batches != 0 || items != 0 {
		t.Fatalf("left %d batches and %d items", batches, items)
	}
}
