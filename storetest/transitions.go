package storetest

import (
	"testing"
	"time"

	"github.com/batchsender/batchsender"
)

func init() {
	register(
		test{"StartMovesDraftToRunningOrScheduled", func(t *testing.T, f *fixture) {
			draft := f.newBatch(t, 2, withStatus(batchsender.BatchDraft))
			b := f.transition(t, draft.ID, batchsender.ActionStart)
			if b.Status != batchsender.BatchRunning || b.StartedAt == nil {
				t.Fatalf("started batch = %+v", b)
			}
			near(t, "StartedAt", *b.StartedAt, time.Now())
			future := time.Now().Add(time.Hour)
			later := f.newBatch(t, 2, withStatus(batchsender.BatchDraft), withOptions(batchsender.BatchOptions{SendAt: &future}))
			if b := f.transition(t, later.ID, batchsender.ActionStart); b.Status != batchsender.BatchScheduled {
				t.Fatalf("start with send_at ahead gave %s, want scheduled", b.Status)
			}
			past := time.Now().Add(-time.Hour)
			overdue := f.newBatch(t, 2, withStatus(batchsender.BatchDraft), withOptions(batchsender.BatchOptions{SendAt: &past}))
			if b := f.transition(t, overdue.ID, batchsender.ActionStart); b.Status != batchsender.BatchRunning {
				t.Fatalf("start with send_at passed gave %s, want running", b.Status)
			}
			f.check(t, draft.ID)
		}},
		test{"StartRefusesEmptyDraftAndNonDrafts", func(t *testing.T, f *fixture) {
			empty := f.newBatch(t, 0, withStatus(batchsender.BatchDraft))
			_, err := f.s.BatchTransition(f.ctx, batchsender.BatchTransitionParams{ProjectID: f.a.ID, BatchID: empty.ID, Action: batchsender.ActionStart, Now: time.Now()})
			wantCode(t, err, batchsender.ECONFLICT)
			if got := f.get(t, empty.ID); got.Status != batchsender.BatchDraft {
				t.Fatalf("refused start left status %s", got.Status)
			}
			running := f.newBatch(t, 1)
			_, err = f.s.BatchTransition(f.ctx, batchsender.BatchTransitionParams{ProjectID: f.a.ID, BatchID: running.ID, Action: batchsender.ActionStart, Now: time.Now()})
			wantCode(t, err, batchsender.ECONFLICT)
		}},
		test{"TransitionReturnsNotFoundForOtherProject", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 1)
			for _, a := range []batchsender.BatchAction{batchsender.ActionPause, batchsender.ActionCancel} {
				_, err := f.s.BatchTransition(f.ctx, batchsender.BatchTransitionParams{ProjectID: f.b.ID, BatchID: b.ID, Action: a, Now: time.Now()})
				wantCode(t, err, batchsender.ENOTFOUND)
			}
			if got := f.get(t, b.ID); got.Status != batchsender.BatchRunning {
				t.Fatalf("other project changed the batch to %s", got.Status)
			}
		}},
		test{"PauseAndResume", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 5)
			got, err := f.s.BatchTransition(f.ctx, batchsender.BatchTransitionParams{
				ProjectID: f.a.ID, BatchID: b.ID, Action: batchsender.ActionPause, Now: time.Now(), Reason: "too many failures",
			})
			if err != nil || got.Status != batchsender.BatchPaused || got.StatusReason != "too many failures" {
				t.Fatalf("pause = %+v, %v", got, err)
			}
			if items := f.claim(t, b.ID, f.owner, 10); len(items) != 0 {
				t.Fatalf("claimed %d items of a paused batch", len(items))
			}
			conflict(t, f, b.ID, batchsender.ActionPause)
			got = f.transition(t, b.ID, batchsender.ActionResume)
			if got.Status != batchsender.BatchRunning {
				t.Fatalf("resume gave %s", got.Status)
			}
			conflict(t, f, b.ID, batchsender.ActionResume)
			if items := f.claim(t, b.ID, f.owner, 10); len(items) != 5 {
				t.Fatalf("claimed %d items after resume, want 5", len(items))
			}
			f.check(t, b.ID)
		}},
		test{"PauseScheduledAndResumeToScheduled", func(t *testing.T, f *fixture) {
			future := time.Now().Add(time.Hour)
			b := f.newBatch(t, 2, withStatus(batchsender.BatchScheduled), withOptions(batchsender.BatchOptions{SendAt: &future}))
			if got := f.transition(t, b.ID, batchsender.ActionPause); got.Status != batchsender.BatchPaused {
				t.Fatalf("pause gave %s", got.Status)
			}
			if got := f.transition(t, b.ID, batchsender.ActionResume); got.Status != batchsender.BatchScheduled {
				t.Fatalf("resume before send_at gave %s, want scheduled", got.Status)
			}
		}},
		test{"ResumeCompletesBatchWithNothingLive", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 3)
			claimed := f.claim(t, b.ID, f.owner, 3)
			f.transition(t, b.ID, batchsender.ActionPause)
			var rs []batchsender.ItemResult
			for _, it := range claimed {
				rs = append(rs, result(it, f.owner, batchsender.ItemSucceeded))
			}
			f.write(t, 3, rs...)
			if got := f.check(t, b.ID); got.Status != batchsender.BatchPaused {
				t.Fatalf("paused batch became %s when its items finished", got.Status)
			}
			got := f.transition(t, b.ID, batchsender.ActionResume)
			if got.Status != batchsender.BatchCompleted || got.CompletedAt == nil {
				t.Fatalf("resume of a finished batch = %+v, want completed", got)
			}
		}},
		test{"CancelCancelsPendingItemsAndLetsInFlightFinish", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 10)
			claimed := f.claim(t, b.ID, f.owner, 3)
			got := f.transition(t, b.ID, batchsender.ActionCancel)
			if got.Status != batchsender.BatchCancelled || got.Counts.Cancelled != 7 || got.Counts.InFlight != 3 || got.Counts.Pending != 0 {
				t.Fatalf("cancelled batch = %+v", got)
			}
			f.check(t, b.ID)
			if items := f.claim(t, b.ID, f.owner, 10); len(items) != 0 {
				t.Fatalf("claimed %d items of a cancelled batch", len(items))
			}
			f.write(t, 2, result(claimed[0], f.owner, batchsender.ItemSucceeded), result(claimed[1], f.owner, batchsender.ItemFailed))
			got = f.check(t, b.ID)
			if got.Status != batchsender.BatchCancelled || got.Counts.Succeeded != 1 || got.Counts.Failed != 1 || got.Counts.InFlight != 1 {
				t.Fatalf("after in-flight results = %+v", got)
			}
			for _, a := range []batchsender.BatchAction{batchsender.ActionCancel, batchsender.ActionPause, batchsender.ActionResume, batchsender.ActionRetryFailed, batchsender.ActionStart} {
				conflict(t, f, b.ID, a)
			}
		}},
		test{"CancelDraftAndPaused", func(t *testing.T, f *fixture) {
			draft := f.newBatch(t, 2, withStatus(batchsender.BatchDraft))
			if got := f.transition(t, draft.ID, batchsender.ActionCancel); got.Status != batchsender.BatchCancelled || got.Counts.Cancelled != 2 {
				t.Fatalf("cancelled draft = %+v", got)
			}
			paused := f.newBatch(t, 2)
			f.transition(t, paused.ID, batchsender.ActionPause)
			if got := f.transition(t, paused.ID, batchsender.ActionCancel); got.Status != batchsender.BatchCancelled {
				t.Fatalf("cancel of paused gave %s", got.Status)
			}
			f.check(t, draft.ID)
			f.check(t, paused.ID)
		}},
		test{"RetryFailedReopensFailedAndUnknownItems", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 4, withOptions(batchsender.BatchOptions{MaxAttempts: 2}))
			conflict(t, f, b.ID, batchsender.ActionRetryFailed)
			claimed := f.claim(t, b.ID, f.owner, 4)
			f.write(t, 4,
				result(claimed[0], f.owner, batchsender.ItemSucceeded),
				result(claimed[1], f.owner, batchsender.ItemFailed),
				result(claimed[2], f.owner, batchsender.ItemUnknown),
				result(claimed[3], f.owner, batchsender.ItemFailed))
			got := f.check(t, b.ID)
			if got.Status != batchsender.BatchCompleted || got.CompletedAt == nil {
				t.Fatalf("batch = %+v, want completed", got)
			}
			conflict(t, f, b.ID, batchsender.ActionPause)
			got = f.transition(t, b.ID, batchsender.ActionRetryFailed)
			if got.Status != batchsender.BatchRunning || got.Counts != (batchsender.Counts{Pending: 3, Succeeded: 1}) {
				t.Fatalf("after retry_failed = %+v", got)
			}
			f.check(t, b.ID)
			again := f.claim(t, b.ID, f.owner, 10)
			if len(again) != 3 {
				t.Fatalf("claimed %d retried items, want 3", len(again))
			}
			for _, it := range again {
				if it.Attempts != 1 {
					t.Fatalf("retried item has attempts %d, want fresh attempts (1)", it.Attempts)
				}
			}
			conflict(t, f, b.ID, batchsender.ActionRetryFailed)
			f.check(t, b.ID)
		}},
		test{"UnknownActionIsRefused", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 1)
			_, err := f.s.BatchTransition(f.ctx, batchsender.BatchTransitionParams{ProjectID: f.a.ID, BatchID: b.ID, Action: "explode", Now: time.Now()})
			if code := batchsender.ErrorCode(err); code != batchsender.EINVALID && code != batchsender.ECONFLICT {
				t.Fatalf("unknown action: error %v", err)
			}
		}},
	)
}

// conflict asserts an action does not apply to the batch now, and that the
// refusal changed nothing.
func conflict(t *testing.T, f *fixture, batchID string, a batchsender.BatchAction) {
	t.Helper()
	before := f.get(t, batchID)
	_, err := f.s.BatchTransition(f.ctx, batchsender.BatchTransitionParams{ProjectID: f.a.ID, BatchID: batchID, Action: a, Now: time.Now()})
	if batchsender.ErrorCode(err) != batchsender.ECONFLICT {
		t.Fatalf("%s on a %s batch: error %v, want conflict", a, before.Status, err)
	}
	after := f.get(t, batchID)
	if after.Status != before.Status || after.Counts != before.Counts {
		t.Fatalf("refused %s changed the batch from %+v to %+v", a, before, after)
	}
}
