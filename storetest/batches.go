package storetest

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
)

func init() {
	register(
		test{"BatchCreateStoresBatchAndNumberedItems", func(t *testing.T, f *fixture) {
			sendAt := time.Now().Add(-time.Minute).UTC().Truncate(time.Millisecond)
			opts := batchsender.BatchOptions{RatePerSecond: 50, Concurrency: 4, MaxAttempts: 3, SendAt: &sendAt,
				RetryBaseDelay: batchsender.Duration(2 * time.Second), AtLeastOnce: true}
			b := f.newBatch(t, 567, withOptions(opts), func(p *batchsender.BatchCreateParams) {
				p.IdempotencyKey, p.RequestHash = "idem-1", "hash-1"
			})
			if b.ID == "" || b.ProjectID != f.a.ID || b.Module != "webhook" || b.ConnectionID != f.conA.ID ||
				b.Provider != "webhook.http" || b.Status != batchsender.BatchRunning || b.Total != 567 ||
				b.Counts != (batchsender.Counts{Pending: 567}) || b.IdempotencyKey != "idem-1" || b.RequestHash != "hash-1" {
				t.Fatalf("BatchCreate = %+v", b)
			}
			near(t, "CreatedAt", b.CreatedAt, time.Now())
			sameJSON(t, "Template", b.Template, []byte(`{"url":"http://127.0.0.1:1/hook"}`))
			if b.Options.SendAt == nil || !b.Options.SendAt.Equal(sendAt) {
				t.Fatalf("Options.SendAt = %v, want %v", b.Options.SendAt, sendAt)
			}
			b.Options.SendAt = nil
			opts.SendAt = nil
			if b.Options != opts {
				t.Fatalf("Options = %+v, want %+v", b.Options, opts)
			}
			got := f.get(t, b.ID)
			if got.ID != b.ID || got.Total != b.Total || got.Counts != b.Counts || got.Status != b.Status || !got.CreatedAt.Equal(b.CreatedAt) {
				t.Fatalf("BatchGetByID = %+v, created %+v", got, b)
			}
			all := f.allItems(t, b.ID, "")
			if len(all) != 567 {
				t.Fatalf("batch has %d items, want 567", len(all))
			}
			seen := map[string]bool{}
			for i, it := range all {
				if it.Seq != int64(i+1) || it.BatchID != b.ID || it.Status != batchsender.ItemPending || it.Attempts != 0 || seen[it.ID] || it.ID == "" {
					t.Fatalf("item %d = %+v", i, it)
				}
				seen[it.ID] = true
				sameJSON(t, "Data", it.Data, fmt.Appendf(nil, `{"n":%d}`, i+1))
			}
			f.check(t, b.ID)
		}},
		test{"BatchCreateWithoutItemsIsEmptyDraft", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 0, withStatus(batchsender.BatchDraft), func(p *batchsender.BatchCreateParams) { p.Items = nil })
			if b.Status != batchsender.BatchDraft || b.Total != 0 || b.Counts != (batchsender.Counts{}) {
				t.Fatalf("BatchCreate = %+v", b)
			}
			if got := f.allItems(t, b.ID, ""); len(got) != 0 {
				t.Fatalf("empty draft has %d items", len(got))
			}
		}},
		test{"BatchCreateKeepsNothingWhenItemsFail", func(t *testing.T, f *fixture) {
			_, err := f.s.BatchCreate(f.ctx, batchsender.BatchCreateParams{
				ProjectID: f.a.ID, Module: "webhook", ConnectionID: f.conA.ID, Provider: "webhook.http",
				Status: batchsender.BatchRunning, IdempotencyKey: "k", Items: itemsThenError(500),
			})
			if !isErr(err, errBadRow) {
				t.Fatalf("BatchCreate error = %v, want the iterator's error", err)
			}
			list, err := f.s.BatchList(f.ctx, batchsender.BatchListParams{ProjectID: f.a.ID})
			if err != nil || len(list) != 0 {
				t.Fatalf("BatchList after failed create = %d batches, %v", len(list), err)
			}
			_, err = f.s.BatchGetByIdempotencyKey(f.ctx, f.a.ID, "k")
			wantCode(t, err, batchsender.ENOTFOUND)
			runnable, err := f.s.BatchesRunnable(f.ctx, 10)
			if err != nil || len(runnable) != 0 {
				t.Fatalf("BatchesRunnable after failed create = %d, %v", len(runnable), err)
			}
			// The key is free again, and the store still works.
			b := f.newBatch(t, 3, func(p *batchsender.BatchCreateParams) { p.IdempotencyKey = "k" })
			f.check(t, b.ID)
		}},
		test{"BatchCreateConflictsOnIdempotencyKey", func(t *testing.T, f *fixture) {
			key := func(p *batchsender.BatchCreateParams) { p.IdempotencyKey, p.RequestHash = "same", "h1" }
			first := f.newBatch(t, 2, key)
			_, err := f.s.BatchCreate(f.ctx, batchsender.BatchCreateParams{
				ProjectID: f.a.ID, Module: "webhook", ConnectionID: f.conA.ID, Provider: "webhook.http",
				Status: batchsender.BatchRunning, IdempotencyKey: "same", Items: items(5),
			})
			wantCode(t, err, batchsender.ECONFLICT)
			got, err := f.s.BatchGetByIdempotencyKey(f.ctx, f.a.ID, "same")
			if err != nil || got.ID != first.ID || got.RequestHash != "h1" || got.Total != 2 {
				t.Fatalf("BatchGetByIdempotencyKey = %+v, %v; want %s", got, err, first.ID)
			}
			// Keys are per project.
			other := f.newBatch(t, 1, key, inProject(f.b.ID, f.conB.ID))
			if other.ID == first.ID {
				t.Fatal("the other project got the same batch")
			}
			_, err = f.s.BatchGetByIdempotencyKey(f.ctx, f.a.ID, "missing")
			wantCode(t, err, batchsender.ENOTFOUND)
			got, err = f.s.BatchGetByIdempotencyKey(f.ctx, f.b.ID, "same")
			if err != nil || got.ID != other.ID {
				t.Fatalf("BatchGetByIdempotencyKey(B) = %s, %v; want %s", got.ID, err, other.ID)
			}
		}},
		test{"BatchGetReturnsNotFoundForOtherProject", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 1)
			_, err := f.s.BatchGetByID(f.ctx, f.b.ID, b.ID)
			wantCode(t, err, batchsender.ENOTFOUND)
			_, err = f.s.BatchGetByID(f.ctx, f.a.ID, "bat_missing")
			wantCode(t, err, batchsender.ENOTFOUND)
		}},
		test{"BatchListPagesNewestFirst", func(t *testing.T, f *fixture) {
			var want []string
			for range 7 {
				want = append(want, f.newBatch(t, 1).ID)
			}
			f.newBatch(t, 1, inProject(f.b.ID, f.conB.ID))
			slices.Reverse(want)
			var got []string
			cursor := ""
			for page := 0; ; page++ {
				list, err := f.s.BatchList(f.ctx, batchsender.BatchListParams{ProjectID: f.a.ID, Cursor: cursor, Limit: 3})
				if err != nil {
					t.Fatalf("BatchList: %v", err)
				}
				if len(list) > 3 {
					t.Fatalf("BatchList returned %d batches for limit 3", len(list))
				}
				if len(list) == 0 {
					break
				}
				for _, b := range list {
					got = append(got, b.ID)
				}
				cursor = list[len(list)-1].ID
				if page > 5 {
					t.Fatal("BatchList does not end")
				}
			}
			if !slices.Equal(got, want) {
				t.Fatalf("BatchList pages = %v, want %v", got, want)
			}
			p, err := f.s.ProjectCreate(f.ctx, "empty")
			if err != nil {
				t.Fatalf("ProjectCreate: %v", err)
			}
			list, err := f.s.BatchList(f.ctx, batchsender.BatchListParams{ProjectID: p.ID, Limit: 10})
			if err != nil || list == nil || len(list) != 0 {
				t.Fatalf("BatchList(empty project) = %#v, %v; want an empty slice", list, err)
			}
		}},
		test{"BatchItemsAppendNumbersAfterExisting", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 3, withStatus(batchsender.BatchDraft))
			got, err := f.s.BatchItemsAppend(f.ctx, batchsender.BatchItemsAppendParams{ProjectID: f.a.ID, BatchID: b.ID, Items: itemsFrom(4, 510)})
			if err != nil {
				t.Fatalf("BatchItemsAppend: %v", err)
			}
			if got.Total != 513 || got.Counts.Pending != 513 || got.Status != batchsender.BatchDraft {
				t.Fatalf("BatchItemsAppend = %+v", got)
			}
			for i, it := range f.allItems(t, b.ID, "") {
				if it.Seq != int64(i+1) {
					t.Fatalf("item %d has seq %d", i, it.Seq)
				}
				sameJSON(t, "Data", it.Data, fmt.Appendf(nil, `{"n":%d}`, i+1))
			}
			f.check(t, b.ID)
		}},
		test{"BatchItemsAppendIsAtomic", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 3, withStatus(batchsender.BatchDraft))
			_, err := f.s.BatchItemsAppend(f.ctx, batchsender.BatchItemsAppendParams{ProjectID: f.a.ID, BatchID: b.ID, Items: itemsThenError(1000)})
			if !isErr(err, errBadRow) {
				t.Fatalf("BatchItemsAppend error = %v, want the iterator's error", err)
			}
			if got := f.check(t, b.ID); got.Total != 3 {
				t.Fatalf("failed append left total %d, want 3", got.Total)
			}
			// A later append still numbers from 4.
			got, err := f.s.BatchItemsAppend(f.ctx, batchsender.BatchItemsAppendParams{ProjectID: f.a.ID, BatchID: b.ID, Items: itemsFrom(4, 2)})
			if err != nil || got.Total != 5 {
				t.Fatalf("BatchItemsAppend = %+v, %v", got, err)
			}
			if seqs := sortedSeqs(f.allItems(t, b.ID, "")); !slices.Equal(seqs, []int64{1, 2, 3, 4, 5}) {
				t.Fatalf("seqs = %v", seqs)
			}
		}},
		test{"BatchItemsAppendOnlyToOwnDrafts", func(t *testing.T, f *fixture) {
			running := f.newBatch(t, 1)
			_, err := f.s.BatchItemsAppend(f.ctx, batchsender.BatchItemsAppendParams{ProjectID: f.a.ID, BatchID: running.ID, Items: items(1)})
			wantCode(t, err, batchsender.ECONFLICT)
			draft := f.newBatch(t, 1, withStatus(batchsender.BatchDraft))
			_, err = f.s.BatchItemsAppend(f.ctx, batchsender.BatchItemsAppendParams{ProjectID: f.b.ID, BatchID: draft.ID, Items: items(1)})
			wantCode(t, err, batchsender.ENOTFOUND)
			if got := f.check(t, draft.ID); got.Total != 1 {
				t.Fatalf("total = %d, want 1", got.Total)
			}
			f.check(t, running.ID)
		}},
		test{"ItemListFiltersAndPages", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 20)
			claimed := f.claim(t, b.ID, f.owner, 10)
			var rs []batchsender.ItemResult
			for i, it := range claimed {
				st := batchsender.ItemSucceeded
				if i%2 == 1 {
					st = batchsender.ItemFailed
				}
				rs = append(rs, result(it, f.owner, st))
			}
			f.write(t, 10, rs...)
			failed := f.allItems(t, b.ID, batchsender.ItemFailed)
			if seqs := sortedSeqs(failed); !slices.Equal(seqs, []int64{2, 4, 6, 8, 10}) {
				t.Fatalf("failed items = %v", seqs)
			}
			for _, it := range failed {
				if it.Status != batchsender.ItemFailed || it.LastError == "" || it.Attempts != 1 {
					t.Fatalf("failed item = %+v", it)
				}
			}
			page, err := f.s.ItemList(f.ctx, batchsender.ItemListParams{ProjectID: f.a.ID, BatchID: b.ID, Status: batchsender.ItemPending, AfterSeq: 12, Limit: 4})
			if err != nil {
				t.Fatalf("ItemList: %v", err)
			}
			if seqs := sortedSeqs(page); !slices.Equal(seqs, []int64{13, 14, 15, 16}) {
				t.Fatalf("pending page after 12 = %v", seqs)
			}
			page, err = f.s.ItemList(f.ctx, batchsender.ItemListParams{ProjectID: f.a.ID, BatchID: b.ID, AfterSeq: 20})
			if err != nil || page == nil || len(page) != 0 {
				t.Fatalf("ItemList past the end = %#v, %v; want an empty slice", page, err)
			}
			_, err = f.s.ItemList(f.ctx, batchsender.ItemListParams{ProjectID: f.b.ID, BatchID: b.ID})
			wantCode(t, err, batchsender.ENOTFOUND)
			f.check(t, b.ID)
		}},
		test{"BatchesRunnableListsRunningBatchesWithPendingItems", func(t *testing.T, f *fixture) {
			running := f.newBatch(t, 2)
			otherTenant := f.newBatch(t, 2, inProject(f.b.ID, f.conB.ID))
			f.newBatch(t, 2, withStatus(batchsender.BatchDraft))
			paused := f.newBatch(t, 2)
			f.transition(t, paused.ID, batchsender.ActionPause)
			future := time.Now().Add(time.Hour)
			f.newBatch(t, 2, withStatus(batchsender.BatchScheduled), withOptions(batchsender.BatchOptions{SendAt: &future}))
			allClaimed := f.newBatch(t, 1)
			f.claim(t, allClaimed.ID, f.owner, 10)

			got, err := f.s.BatchesRunnable(f.ctx, 100)
			if err != nil {
				t.Fatalf("BatchesRunnable: %v", err)
			}
			var gotIDs []string
			for _, b := range got {
				gotIDs = append(gotIDs, b.ID)
			}
			slices.Sort(gotIDs)
			want := []string{running.ID, otherTenant.ID}
			slices.Sort(want)
			if !slices.Equal(gotIDs, want) {
				t.Fatalf("BatchesRunnable = %v, want %v", gotIDs, want)
			}
			got, err = f.s.BatchesRunnable(f.ctx, 1)
			if err != nil || len(got) != 1 {
				t.Fatalf("BatchesRunnable(1) = %d batches, %v", len(got), err)
			}
		}},
		test{"BatchesActivateDueStartsScheduledBatches", func(t *testing.T, f *fixture) {
			now := time.Now()
			soon, later := now.Add(time.Hour), now.Add(3*time.Hour)
			a := f.newBatch(t, 2, withStatus(batchsender.BatchScheduled), withOptions(batchsender.BatchOptions{SendAt: &soon}))
			b := f.newBatch(t, 2, withStatus(batchsender.BatchScheduled), withOptions(batchsender.BatchOptions{SendAt: &later}))
			if n, err := f.s.BatchesActivateDue(f.ctx, now); err != nil || n != 0 {
				t.Fatalf("BatchesActivateDue(now) = %d, %v; want 0", n, err)
			}
			if got := f.claim(t, a.ID, f.owner, 10); len(got) != 0 {
				t.Fatalf("claimed %d items of a scheduled batch", len(got))
			}
			if n, err := f.s.BatchesActivateDue(f.ctx, now.Add(2*time.Hour)); err != nil || n != 1 {
				t.Fatalf("BatchesActivateDue(+2h) = %d, %v; want 1", n, err)
			}
			if got := f.get(t, a.ID); got.Status != batchsender.BatchRunning || got.StartedAt == nil {
				t.Fatalf("activated batch = %+v", got)
			}
			if got := f.get(t, b.ID); got.Status != batchsender.BatchScheduled {
				t.Fatalf("batch due later is %s", got.Status)
			}
			if got := f.claim(t, a.ID, f.owner, 10); len(got) != 2 {
				t.Fatalf("claimed %d items of the activated batch, want 2", len(got))
			}
			if n, err := f.s.BatchesActivateDue(f.ctx, now.Add(2*time.Hour)); err != nil || n != 0 {
				t.Fatalf("second BatchesActivateDue = %d, %v; want 0", n, err)
			}
			f.check(t, a.ID)
		}},
	)
}

// dataOf decodes the "n" of an item's data.
func dataOf(t *testing.T, it batchsender.Item) int {
	t.Helper()
	var d struct{ N int }
	if err := json.Unmarshal(it.Data, &d); err != nil {
		t.Fatalf("item data %s: %v", it.Data, err)
	}
	return d.N
}
