package storetest

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
)

// The ways an item comes back to pending after its first claim (a retry, a
// release, a rescue, retry_failed) and what each must leave claimable. A
// store may claim first attempts and returning items by different means
// (PostgreSQL does); these tests hold both to one order and lose nothing.
func init() {
	register(
		test{"ReleasedItemIsClaimedBeforeLaterFirstAttempts", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 6)
			claimed := f.claim(t, b.ID, f.owner, 3) // seqs 1..3
			if n, err := f.s.ItemsRelease(f.ctx, f.owner, []string{claimed[1].ID}); err != nil || n != 1 {
				t.Fatalf("ItemsRelease = %d, %v; want 1", n, err)
			}
			// Item 2 is due as it was (since the batch was created), as are
			// 4..6: the tie goes to the lower seq.
			got := f.claim(t, b.ID, "w-2", 2)
			if seqs := sortedSeqs(got); !slices.Equal(seqs, []int64{2, 4}) {
				t.Fatalf("claimed %v after a release, want 2 4", seqs)
			}
			rest := f.claim(t, b.ID, "w-2", 10)
			if seqs := sortedSeqs(rest); !slices.Equal(seqs, []int64{5, 6}) {
				t.Fatalf("then claimed %v, want 5 6", seqs)
			}
			f.check(t, b.ID)
		}},
		test{"RescueAfterPartialResultsReturnsOnlyUnfinishedItems", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 5)
			now := time.Now()
			claimed, err := f.s.ChunkClaim(f.ctx, batchsender.ChunkClaimParams{BatchID: b.ID, Owner: "dead", Now: now, LeaseUntil: now.Add(time.Minute), Limit: 5})
			if err != nil || len(claimed) != 5 {
				t.Fatalf("ChunkClaim = %d, %v", len(claimed), err)
			}
			f.write(t, 2, result(claimed[0], "dead", batchsender.ItemSucceeded), result(claimed[3], "dead", batchsender.ItemFailed))
			if n, err := f.s.LeasesRescue(f.ctx, now.Add(2*time.Minute)); err != nil || n != 3 {
				t.Fatalf("LeasesRescue = %d, %v; want the 3 unfinished items", n, err)
			}
			f.check(t, b.ID)
			again := f.claim(t, b.ID, "w-2", 10)
			if seqs := sortedSeqs(again); !slices.Equal(seqs, []int64{2, 3, 5}) {
				t.Fatalf("claimed %v after the rescue, want 2 3 5", seqs)
			}
			for _, it := range again {
				if it.Attempts != 2 {
					t.Fatalf("rescued item %d claimed with attempts %d, want 2", it.Seq, it.Attempts)
				}
			}
			if n, err := f.s.LeasesRescue(f.ctx, time.Now()); err != nil || n != 0 {
				t.Fatalf("second LeasesRescue = %d, %v; want 0 (the new leases run for a minute)", n, err)
			}
			f.check(t, b.ID)
		}},
		test{"LeasesRescueFollowsAnItemsLatestClaim", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 2)
			now := time.Now()
			claimed, err := f.s.ChunkClaim(f.ctx, batchsender.ChunkClaimParams{BatchID: b.ID, Owner: "w", Now: now, LeaseUntil: now.Add(time.Minute), Limit: 2})
			if err != nil || len(claimed) != 2 {
				t.Fatalf("ChunkClaim = %d, %v", len(claimed), err)
			}
			if n, err := f.s.ItemsRelease(f.ctx, "w", []string{claimed[0].ID}); err != nil || n != 1 {
				t.Fatalf("ItemsRelease = %d, %v; want 1", n, err)
			}
			// The same owner claims the released item again, on a longer
			// lease: the first lease's expiry no longer concerns it.
			again, err := f.s.ChunkClaim(f.ctx, batchsender.ChunkClaimParams{BatchID: b.ID, Owner: "w", Now: now, LeaseUntil: now.Add(time.Hour), Limit: 2})
			if err != nil || len(again) != 1 || again[0].ID != claimed[0].ID {
				t.Fatalf("second ChunkClaim = %+v, %v; want the released item", again, err)
			}
			if n, err := f.s.LeasesRescue(f.ctx, now.Add(2*time.Minute)); err != nil || n != 1 {
				t.Fatalf("LeasesRescue after the first lease = %d, %v; want 1", n, err)
			}
			inflight := f.allItems(t, b.ID, batchsender.ItemInFlight)
			if len(inflight) != 1 || inflight[0].ID != claimed[0].ID {
				t.Fatalf("in flight after the rescue: %+v, want the item claimed again", inflight)
			}
			if n, err := f.s.LeasesRescue(f.ctx, now.Add(2*time.Hour)); err != nil || n != 1 {
				t.Fatalf("LeasesRescue after the second lease = %d, %v; want 1", n, err)
			}
			if c := f.check(t, b.ID).Counts; c != (batchsender.Counts{Pending: 2}) {
				t.Fatalf("counts = %+v, want both pending", c)
			}
			if got := f.claim(t, b.ID, "w-2", 10); len(got) != 2 {
				t.Fatalf("claimed %d items after both rescues, want 2", len(got))
			}
		}},
		test{"CancelCancelsWaitingRetriesAndReleasedItems", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 6)
			claimed := f.claim(t, b.ID, f.owner, 4) // seqs 1..4
			retry := result(claimed[0], f.owner, batchsender.ItemPending)
			retry.NextAttemptAt = time.Now().Add(time.Hour)
			f.write(t, 1, retry)
			if n, err := f.s.ItemsRelease(f.ctx, f.owner, []string{claimed[1].ID}); err != nil || n != 1 {
				t.Fatalf("ItemsRelease = %d, %v; want 1", n, err)
			}
			got := f.transition(t, b.ID, batchsender.ActionCancel)
			if got.Counts != (batchsender.Counts{Cancelled: 4, InFlight: 2}) {
				t.Fatalf("counts after cancel = %+v, want 4 cancelled (the retry, the released item, 5 and 6) and 2 in flight", got.Counts)
			}
			f.check(t, b.ID)
			cancelled := f.allItems(t, b.ID, batchsender.ItemCancelled)
			if seqs := sortedSeqs(cancelled); !slices.Equal(seqs, []int64{1, 2, 5, 6}) {
				t.Fatalf("cancelled items %v, want 1 2 5 6", seqs)
			}
			later := time.Now().Add(2 * time.Hour)
			if items, err := f.s.ChunkClaim(f.ctx, batchsender.ChunkClaimParams{BatchID: b.ID, Owner: f.owner, Now: later, LeaseUntil: later.Add(time.Minute), Limit: 10}); err != nil || len(items) != 0 {
				t.Fatalf("claim of a cancelled batch = %d items, %v", len(items), err)
			}
			// A retry result after the cancel cancels its item too.
			f.write(t, 1, result(claimed[2], f.owner, batchsender.ItemPending))
			if c := f.check(t, b.ID).Counts; c != (batchsender.Counts{Cancelled: 5, InFlight: 1}) {
				t.Fatalf("counts after a late retry = %+v", c)
			}
		}},
		test{"ItemListByStatusFollowsRetryFailed", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 4, withOptions(batchsender.BatchOptions{MaxAttempts: 1}))
			claimed := f.claim(t, b.ID, f.owner, 4)
			f.write(t, 4,
				result(claimed[0], f.owner, batchsender.ItemFailed),
				result(claimed[1], f.owner, batchsender.ItemUnknown),
				result(claimed[2], f.owner, batchsender.ItemSucceeded),
				result(claimed[3], f.owner, batchsender.ItemFailed))
			listed := func(st batchsender.ItemStatus) []int64 { return sortedSeqs(f.allItems(t, b.ID, st)) }
			if got := listed(batchsender.ItemFailed); !slices.Equal(got, []int64{1, 4}) {
				t.Fatalf("failed items %v, want 1 4", got)
			}
			if got := listed(batchsender.ItemUnknown); !slices.Equal(got, []int64{2}) {
				t.Fatalf("unknown items %v, want 2", got)
			}
			f.transition(t, b.ID, batchsender.ActionRetryFailed)
			if failed, unknown := listed(batchsender.ItemFailed), listed(batchsender.ItemUnknown); len(failed)+len(unknown) != 0 {
				t.Fatalf("after retry_failed: failed %v, unknown %v; want none", failed, unknown)
			}
			if got := listed(batchsender.ItemPending); !slices.Equal(got, []int64{1, 2, 4}) {
				t.Fatalf("pending items after retry_failed %v, want 1 2 4", got)
			}
			again := f.claim(t, b.ID, f.owner, 10)
			if seqs := sortedSeqs(again); !slices.Equal(seqs, []int64{1, 2, 4}) {
				t.Fatalf("claimed %v after retry_failed, want 1 2 4", seqs)
			}
			var rs []batchsender.ItemResult
			for _, it := range again {
				st := batchsender.ItemSucceeded
				if it.Seq == 4 {
					st = batchsender.ItemFailed
				}
				rs = append(rs, result(it, f.owner, st))
			}
			f.write(t, 3, rs...)
			if got := listed(batchsender.ItemFailed); !slices.Equal(got, []int64{4}) {
				t.Fatalf("failed items after the second round %v, want 4", got)
			}
			if got := listed(batchsender.ItemSucceeded); !slices.Equal(got, []int64{1, 2, 3}) {
				t.Fatalf("succeeded items %v, want 1 2 3", got)
			}
			f.check(t, b.ID)
		}},
		test{"ConcurrentClaimersWithRetriesAndReleasesFinishEveryItem", func(t *testing.T, f *fixture) {
			const n = 300
			b := f.newBatch(t, n, withOptions(batchsender.BatchOptions{MaxAttempts: 10}))
			var mu sync.Mutex
			inFlight := map[string]string{}
			released := map[string]bool{}
			var problems []string
			// round claims a chunk and settles it: every seventh item is
			// released the first time, every third retried (due at once)
			// until its third attempt, the rest succeed. It reports whether it
			// claimed anything.
			round := func(owner string) (bool, error) {
				now := time.Now()
				got, err := f.s.ChunkClaim(f.ctx, batchsender.ChunkClaimParams{BatchID: b.ID, Owner: owner, Now: now, LeaseUntil: now.Add(time.Minute), Limit: 13})
				if err != nil || len(got) == 0 {
					return false, err
				}
				mu.Lock()
				for _, it := range got {
					if prev, ok := inFlight[it.ID]; ok {
						problems = append(problems, fmt.Sprintf("item %d claimed by %s while %s held it", it.Seq, owner, prev))
					}
					inFlight[it.ID] = owner
				}
				mu.Unlock()
				var rs []batchsender.ItemResult
				var release []string
				mu.Lock()
				for _, it := range got {
					switch {
					case it.Seq%7 == 0 && !released[it.ID]:
						released[it.ID] = true
						release = append(release, it.ID)
					case it.Seq%3 == 0 && it.Attempts < 3:
						rs = append(rs, result(it, owner, batchsender.ItemPending))
					default:
						rs = append(rs, result(it, owner, batchsender.ItemSucceeded))
					}
				}
				for _, it := range got {
					delete(inFlight, it.ID)
				}
				mu.Unlock()
				if len(release) > 0 {
					if k, err := f.s.ItemsRelease(f.ctx, owner, release); err != nil || k != len(release) {
						return false, fmt.Errorf("ItemsRelease = %d, %v; want %d", k, err, len(release))
					}
				}
				if k, err := f.s.ItemResultsWriteMany(f.ctx, rs); err != nil || k != len(rs) {
					return false, fmt.Errorf("ItemResultsWriteMany = %d, %v; want %d", k, err, len(rs))
				}
				return true, nil
			}
			var wg sync.WaitGroup
			errs := make(chan error, 4)
			for w := range 4 {
				owner := fmt.Sprintf("worker-%d", w)
				wg.Go(func() {
					for {
						more, err := round(owner)
						if err != nil {
							errs <- err
							return
						}
						if !more {
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			// A worker stops at its first empty claim, which can come while
			// another still holds items it then gives back: finish alone.
			for range n * 3 {
				more, err := round("sweeper")
				if err != nil {
					t.Fatal(err)
				}
				if !more {
					break
				}
			}
			if len(problems) > 0 {
				t.Fatalf("%d overlapping claims, e.g. %s", len(problems), problems[0])
			}
			got := f.check(t, b.ID)
			if got.Status != batchsender.BatchCompleted || got.Counts != (batchsender.Counts{Succeeded: n}) {
				t.Fatalf("batch ended %s with %+v, want completed with all %d succeeded", got.Status, got.Counts, n)
			}
			for _, it := range f.allItems(t, b.ID, "") {
				want := 1
				if it.Seq%3 == 0 {
					want = 3
				}
				if it.Attempts != want {
					t.Fatalf("item %d finished after %d attempts, want %d", it.Seq, it.Attempts, want)
				}
			}
		}},
	)
}
