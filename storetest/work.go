package storetest

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
)

func init() {
	register(
		test{"ChunkClaimLeasesAndCountsAttempts", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 10)
			now := time.Now()
			leaseUntil := now.Add(30 * time.Second)
			got, err := f.s.ChunkClaim(f.ctx, batchsender.ChunkClaimParams{BatchID: b.ID, Owner: "w-a", Now: now, LeaseUntil: leaseUntil, Limit: 4})
			if err != nil {
				t.Fatalf("ChunkClaim: %v", err)
			}
			if seqs := sortedSeqs(got); !slices.Equal(seqs, []int64{1, 2, 3, 4}) {
				t.Fatalf("claimed seqs %v, want the oldest four", seqs)
			}
			for _, it := range got {
				if it.Status != batchsender.ItemInFlight || it.Attempts != 1 || it.LeaseOwner != "w-a" || it.LeaseExpiresAt == nil || it.BatchID != b.ID {
					t.Fatalf("claimed item = %+v", it)
				}
				near(t, "LeaseExpiresAt", *it.LeaseExpiresAt, leaseUntil)
				if n := dataOf(t, it); int64(n) != it.Seq {
					t.Fatalf("item %d carries data of %d", it.Seq, n)
				}
			}
			if c := f.check(t, b.ID).Counts; c.Pending != 6 || c.InFlight != 4 {
				t.Fatalf("counts after claim = %+v", c)
			}
			listed := f.allItems(t, b.ID, batchsender.ItemInFlight)
			if !slices.Equal(ids(listed), ids(got)) {
				t.Fatalf("in-flight items listed %v, claimed %v", ids(listed), ids(got))
			}
			rest := f.claim(t, b.ID, "w-b", 100)
			if seqs := sortedSeqs(rest); !slices.Equal(seqs, []int64{5, 6, 7, 8, 9, 10}) {
				t.Fatalf("second claim seqs %v", seqs)
			}
			if more := f.claim(t, b.ID, "w-b", 100); more == nil || len(more) != 0 {
				t.Fatalf("claim of an exhausted batch = %#v, want an empty slice", more)
			}
			f.check(t, b.ID)
		}},
		test{"ChunkClaimOnlyRunningBatches", func(t *testing.T, f *fixture) {
			future := time.Now().Add(time.Hour)
			for _, b := range []batchsender.Batch{
				f.newBatch(t, 3, withStatus(batchsender.BatchDraft)),
				f.newBatch(t, 3, withStatus(batchsender.BatchScheduled), withOptions(batchsender.BatchOptions{SendAt: &future})),
			} {
				if got := f.claim(t, b.ID, f.owner, 10); len(got) != 0 {
					t.Fatalf("claimed %d items of a %s batch", len(got), b.Status)
				}
				f.check(t, b.ID)
			}
			if got := f.claim(t, "bat_missing", f.owner, 10); len(got) != 0 {
				t.Fatalf("claimed %d items of a missing batch", len(got))
			}
		}},
		test{"ChunkClaimOnlyDueItemsOldestDueFirst", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 6)
			first := f.claim(t, b.ID, f.owner, 3) // seqs 1..3
			later := time.Now().Add(time.Hour)
			sooner := time.Now().Add(-time.Minute)
			r0 := result(first[0], f.owner, batchsender.ItemPending)
			r0.NextAttemptAt = later
			r1 := result(first[1], f.owner, batchsender.ItemPending)
			r1.NextAttemptAt = sooner
			r2 := result(first[2], f.owner, batchsender.ItemPending)
			r2.NextAttemptAt = later
			f.write(t, 3, r0, r1, r2)
			f.check(t, b.ID)
			// Item 2 is due earlier than the untouched 4..6 (created now);
			// items 1 and 3 are not due.
			got := f.claim(t, b.ID, f.owner, 2)
			if seqs := sortedSeqs(got); !slices.Equal(seqs, []int64{2, 4}) {
				t.Fatalf("claimed %v, want 2 (due first) and 4", seqs)
			}
			for _, it := range got {
				if want := map[int64]int{2: 2, 4: 1}[it.Seq]; it.Attempts != want {
					t.Fatalf("item %d has attempts %d, want %d", it.Seq, it.Attempts, want)
				}
			}
			rest := f.claim(t, b.ID, f.owner, 10)
			if seqs := sortedSeqs(append(got, rest...)); !slices.Equal(seqs, []int64{2, 4, 5, 6}) {
				t.Fatalf("due items claimed %v, want 2 4 5 6", seqs)
			}
			// At a time past their next attempt, 1 and 3 are claimed too.
			now := later.Add(time.Second)
			due, err := f.s.ChunkClaim(f.ctx, batchsender.ChunkClaimParams{BatchID: b.ID, Owner: f.owner, Now: now, LeaseUntil: now.Add(time.Minute), Limit: 10})
			if err != nil {
				t.Fatalf("ChunkClaim: %v", err)
			}
			if seqs := sortedSeqs(due); !slices.Equal(seqs, []int64{1, 3}) {
				t.Fatalf("later claim %v, want 1 3", seqs)
			}
			f.check(t, b.ID)
		}},
		test{"ChunkClaimConcurrentClaimersNeverShareItems", func(t *testing.T, f *fixture) {
			const n = 400
			b := f.newBatch(t, n)
			var mu sync.Mutex
			seen := map[string]string{}
			var dup []string
			var wg sync.WaitGroup
			errs := make(chan error, 4)
			for w := range 4 {
				owner := fmt.Sprintf("worker-%d", w)
				wg.Go(func() {
					for {
						now := time.Now()
						got, err := f.s.ChunkClaim(f.ctx, batchsender.ChunkClaimParams{BatchID: b.ID, Owner: owner, Now: now, LeaseUntil: now.Add(time.Minute), Limit: 17})
						if err != nil {
							errs <- err
							return
						}
						if len(got) == 0 {
							return
						}
						mu.Lock()
						for _, it := range got {
							if prev, ok := seen[it.ID]; ok {
								dup = append(dup, fmt.Sprintf("%s by %s and %s", it.ID, prev, owner))
							}
							seen[it.ID] = owner
						}
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatalf("ChunkClaim: %v", err)
			}
			if len(dup) > 0 {
				t.Fatalf("%d items claimed twice, e.g. %s", len(dup), dup[0])
			}
			if len(seen) != n {
				t.Fatalf("claimers got %d distinct items, want %d", len(seen), n)
			}
			for _, it := range f.allItems(t, b.ID, "") {
				if seen[it.ID] == "" || seen[it.ID] != it.LeaseOwner || it.Attempts != 1 {
					t.Fatalf("item %+v, claimed by %q", it, seen[it.ID])
				}
			}
			if c := f.check(t, b.ID).Counts; c.InFlight != n {
				t.Fatalf("counts = %+v", c)
			}
		}},
		test{"ItemResultsWriteManyRecordsOutcomes", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 5)
			claimed := f.claim(t, b.ID, f.owner, 5)
			retry := result(claimed[3], f.owner, batchsender.ItemPending)
			retry.NextAttemptAt = time.Now().Add(time.Hour)
			f.write(t, 4,
				result(claimed[0], f.owner, batchsender.ItemSucceeded),
				result(claimed[1], f.owner, batchsender.ItemFailed),
				result(claimed[2], f.owner, batchsender.ItemUnknown),
				retry)
			got := f.check(t, b.ID)
			if got.Counts != (batchsender.Counts{Succeeded: 1, Failed: 1, Unknown: 1, Pending: 1, InFlight: 1}) || got.Status != batchsender.BatchRunning {
				t.Fatalf("batch after results = %+v", got)
			}
			byID := map[string]batchsender.Item{}
			for _, it := range f.allItems(t, b.ID, "") {
				byID[it.ID] = it
			}
			ok := byID[claimed[0].ID]
			if ok.Status != batchsender.ItemSucceeded || ok.ProviderMessageID != "msg-"+ok.ID || ok.LeaseOwner != "" || ok.LeaseExpiresAt != nil || ok.Attempts != 1 {
				t.Fatalf("succeeded item = %+v", ok)
			}
			if bad := byID[claimed[1].ID]; bad.Status != batchsender.ItemFailed || bad.LastError != "400 bad request" || bad.LeaseOwner != "" {
				t.Fatalf("failed item = %+v", bad)
			}
			if unk := byID[claimed[2].ID]; unk.Status != batchsender.ItemUnknown {
				t.Fatalf("unknown item = %+v", unk)
			}
			pend := byID[claimed[3].ID]
			if pend.Status != batchsender.ItemPending || pend.LeaseOwner != "" || pend.Attempts != 1 || pend.LastError == "" {
				t.Fatalf("retried item = %+v", pend)
			}
			near(t, "NextAttemptAt", pend.NextAttemptAt, retry.NextAttemptAt)
			if still := byID[claimed[4].ID]; still.Status != batchsender.ItemInFlight || still.LeaseOwner != f.owner {
				t.Fatalf("untouched item = %+v", still)
			}

			attempts, err := f.s.ItemAttemptList(f.ctx, f.a.ID, claimed[1].ID)
			if err != nil {
				t.Fatalf("ItemAttemptList: %v", err)
			}
			if len(attempts) != 1 {
				t.Fatalf("attempts = %+v, want 1", attempts)
			}
			a := attempts[0]
			if a.ItemID != claimed[1].ID || a.Number != 1 || a.Outcome != "permanent" || a.StatusCode != 400 || a.Error != "400 bad request" || a.Latency != 3*time.Millisecond {
				t.Fatalf("attempt = %+v", a)
			}
			near(t, "StartedAt", a.StartedAt, time.Now())
			_, err = f.s.ItemAttemptList(f.ctx, f.b.ID, claimed[1].ID)
			wantCode(t, err, batchsender.ENOTFOUND)
			_, err = f.s.ItemAttemptList(f.ctx, f.a.ID, "itm_missing")
			wantCode(t, err, batchsender.ENOTFOUND)
			if none, err := f.s.ItemAttemptList(f.ctx, f.a.ID, claimed[4].ID); err != nil || len(none) != 0 {
				t.Fatalf("attempts of an unfinished item = %v, %v", none, err)
			}
		}},
		test{"ItemAttemptListOldestFirst", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 1)
			for i := 1; i <= 3; i++ {
				it := f.claim(t, b.ID, f.owner, 1)
				if len(it) != 1 || it[0].Attempts != i {
					t.Fatalf("claim %d = %+v", i, it)
				}
				st := batchsender.ItemPending
				if i == 3 {
					st = batchsender.ItemSucceeded
				}
				f.write(t, 1, result(it[0], f.owner, st))
			}
			items := f.allItems(t, b.ID, "")
			attempts, err := f.s.ItemAttemptList(f.ctx, f.a.ID, items[0].ID)
			if err != nil {
				t.Fatalf("ItemAttemptList: %v", err)
			}
			var outcomes []string
			for i, a := range attempts {
				if a.Number != i+1 {
					t.Fatalf("attempt %d has number %d", i, a.Number)
				}
				outcomes = append(outcomes, a.Outcome)
			}
			if !slices.Equal(outcomes, []string{"retry", "retry", "ok"}) {
				t.Fatalf("outcomes = %v", outcomes)
			}
			if got := f.check(t, b.ID); got.Status != batchsender.BatchCompleted {
				t.Fatalf("batch is %s, want completed", got.Status)
			}
		}},
		test{"ItemResultsWriteManyCompletesBatch", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 260)
			other := f.newBatch(t, 2)
			claimed := f.claim(t, b.ID, f.owner, 1000)
			otherClaimed := f.claim(t, other.ID, f.owner, 1)
			var rs []batchsender.ItemResult
			for i, it := range claimed {
				st := batchsender.ItemSucceeded
				if i%10 == 0 {
					st = batchsender.ItemFailed
				}
				rs = append(rs, result(it, f.owner, st))
			}
			rs = append(rs, result(otherClaimed[0], f.owner, batchsender.ItemSucceeded))
			f.write(t, 261, rs...)
			got := f.check(t, b.ID)
			if got.Status != batchsender.BatchCompleted || got.CompletedAt == nil || got.Counts != (batchsender.Counts{Succeeded: 234, Failed: 26}) {
				t.Fatalf("batch = %+v, want completed", got)
			}
			near(t, "CompletedAt", *got.CompletedAt, time.Now())
			if o := f.check(t, other.ID); o.Status != batchsender.BatchRunning || o.CompletedAt != nil {
				t.Fatalf("batch with a pending item = %+v", o)
			}
		}},
		test{"ItemResultsWriteManyIgnoresStaleResults", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 3)
			claimed := f.claim(t, b.ID, "w-a", 3)
			// Not the owner: ignored.
			f.write(t, 0, result(claimed[0], "w-b", batchsender.ItemSucceeded))
			// The lease is rescued and the item claimed by w-b: w-a's late
			// result is stale.
			if n, err := f.s.LeasesRescue(f.ctx, time.Now().Add(2*time.Minute)); err != nil || n != 3 {
				t.Fatalf("LeasesRescue = %d, %v; want 3", n, err)
			}
			again := f.claim(t, b.ID, "w-b", 3)
			if len(again) != 3 {
				t.Fatalf("reclaimed %d items, want 3", len(again))
			}
			i := slices.IndexFunc(again, func(it batchsender.Item) bool { return it.ID == claimed[0].ID })
			if i < 0 {
				t.Fatal("the rescued item was not reclaimed")
			}
			// The old owner's late result and the new owner's result for
			// the same item in one call: only the new owner's counts.
			f.write(t, 1, result(claimed[0], "w-a", batchsender.ItemFailed), result(again[i], "w-b", batchsender.ItemSucceeded))
			f.check(t, b.ID)
			// A result for an item that already finished changes nothing.
			f.write(t, 0, result(again[i], "w-b", batchsender.ItemFailed))
			got := f.check(t, b.ID)
			if got.Counts != (batchsender.Counts{Succeeded: 1, InFlight: 2}) {
				t.Fatalf("counts = %+v", got.Counts)
			}
			attempts, err := f.s.ItemAttemptList(f.ctx, f.a.ID, again[i].ID)
			if err != nil || len(attempts) != 1 || attempts[0].Number != 2 || attempts[0].Outcome != "ok" {
				t.Fatalf("attempts = %+v, %v; want one ok, numbered 2", attempts, err)
			}
		}},
		test{"ItemsReleaseGivesBackTheAttempt", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 5)
			claimed := f.claim(t, b.ID, f.owner, 5)
			n, err := f.s.ItemsRelease(f.ctx, "someone-else", ids(claimed))
			if err != nil || n != 0 {
				t.Fatalf("ItemsRelease by another owner = %d, %v; want 0", n, err)
			}
			n, err = f.s.ItemsRelease(f.ctx, f.owner, ids(claimed[:3]))
			if err != nil || n != 3 {
				t.Fatalf("ItemsRelease = %d, %v; want 3", n, err)
			}
			got := f.check(t, b.ID)
			if got.Counts != (batchsender.Counts{Pending: 3, InFlight: 2}) {
				t.Fatalf("counts after release = %+v", got.Counts)
			}
			for _, it := range f.allItems(t, b.ID, batchsender.ItemPending) {
				if it.Attempts != 0 || it.LeaseOwner != "" || it.LeaseExpiresAt != nil {
					t.Fatalf("released item = %+v", it)
				}
			}
			again := f.claim(t, b.ID, "w-2", 10)
			if seqs := sortedSeqs(again); !slices.Equal(seqs, []int64{1, 2, 3}) {
				t.Fatalf("reclaimed %v", seqs)
			}
			for _, it := range again {
				if it.Attempts != 1 {
					t.Fatalf("reclaimed item has attempts %d, want 1", it.Attempts)
				}
			}
			if n, err := f.s.ItemsRelease(f.ctx, f.owner, ids(claimed[:3])); err != nil || n != 0 {
				t.Fatalf("release of items now leased by another = %d, %v", n, err)
			}
			f.check(t, b.ID)
		}},
		test{"LeasesRescueReturnsExpiredItems", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 4, withOptions(batchsender.BatchOptions{MaxAttempts: 3}))
			now := time.Now()
			claimed, err := f.s.ChunkClaim(f.ctx, batchsender.ChunkClaimParams{BatchID: b.ID, Owner: "dead", Now: now, LeaseUntil: now.Add(time.Minute), Limit: 2})
			if err != nil || len(claimed) != 2 {
				t.Fatalf("ChunkClaim = %d, %v", len(claimed), err)
			}
			live, err := f.s.ChunkClaim(f.ctx, batchsender.ChunkClaimParams{BatchID: b.ID, Owner: "alive", Now: now, LeaseUntil: now.Add(time.Hour), Limit: 1})
			if err != nil || len(live) != 1 {
				t.Fatalf("ChunkClaim = %d, %v", len(live), err)
			}
			if n, err := f.s.LeasesRescue(f.ctx, now); err != nil || n != 0 {
				t.Fatalf("LeasesRescue before expiry = %d, %v; want 0", n, err)
			}
			if n, err := f.s.LeasesRescue(f.ctx, now.Add(2*time.Minute)); err != nil || n != 2 {
				t.Fatalf("LeasesRescue = %d, %v; want 2", n, err)
			}
			got := f.check(t, b.ID)
			if got.Counts != (batchsender.Counts{Pending: 3, InFlight: 1}) {
				t.Fatalf("counts after rescue = %+v", got.Counts)
			}
			for _, it := range f.allItems(t, b.ID, batchsender.ItemPending) {
				if it.LeaseOwner != "" || it.LeaseExpiresAt != nil {
					t.Fatalf("rescued item keeps its lease: %+v", it)
				}
				if it.Seq <= 2 && it.Attempts != 1 {
					t.Fatalf("rescued item has attempts %d, want 1 (the crash counts)", it.Attempts)
				}
			}
			if inflight := f.allItems(t, b.ID, batchsender.ItemInFlight); len(inflight) != 1 || inflight[0].LeaseOwner != "alive" {
				t.Fatalf("live lease touched: %+v", inflight)
			}
		}},
		test{"LeasesRescueFailsItemsOutOfAttempts", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 2, withOptions(batchsender.BatchOptions{MaxAttempts: 2}))
			rescueAt := time.Now()
			for round := 1; round <= 2; round++ {
				now := time.Now()
				claimed, err := f.s.ChunkClaim(f.ctx, batchsender.ChunkClaimParams{BatchID: b.ID, Owner: "crashy", Now: now, LeaseUntil: now.Add(time.Second), Limit: 10})
				if err != nil || len(claimed) != 2 {
					t.Fatalf("round %d: ChunkClaim = %d, %v", round, len(claimed), err)
				}
				rescueAt = now.Add(time.Minute)
				if n, err := f.s.LeasesRescue(f.ctx, rescueAt); err != nil || n != 2 {
					t.Fatalf("round %d: LeasesRescue = %d, %v", round, n, err)
				}
				f.check(t, b.ID)
			}
			got := f.check(t, b.ID)
			if got.Counts != (batchsender.Counts{Failed: 2}) {
				t.Fatalf("counts = %+v, want both failed", got.Counts)
			}
			if got.Status != batchsender.BatchCompleted {
				t.Fatalf("batch is %s, want completed", got.Status)
			}
			for _, it := range f.allItems(t, b.ID, "") {
				if it.Status != batchsender.ItemFailed || it.LastError == "" || it.Attempts != 2 {
					t.Fatalf("exhausted item = %+v", it)
				}
			}
			if n, err := f.s.LeasesRescue(f.ctx, rescueAt); err != nil || n != 0 {
				t.Fatalf("LeasesRescue with nothing in flight = %d, %v", n, err)
			}
		}},
		test{"WorkIsIsolatedBetweenTenants", func(t *testing.T, f *fixture) {
			mine := f.newBatch(t, 3)
			theirs := f.newBatch(t, 3, inProject(f.b.ID, f.conB.ID))
			got := f.claim(t, theirs.ID, f.owner, 10)
			if len(got) != 3 {
				t.Fatalf("claimed %d", len(got))
			}
			for _, it := range got {
				if it.BatchID != theirs.ID {
					t.Fatalf("claim of B's batch returned an item of %s", it.BatchID)
				}
			}
			_, err := f.s.ItemList(f.ctx, batchsender.ItemListParams{ProjectID: f.a.ID, BatchID: theirs.ID})
			wantCode(t, err, batchsender.ENOTFOUND)
			_, err = f.s.ItemAttemptList(f.ctx, f.a.ID, got[0].ID)
			wantCode(t, err, batchsender.ENOTFOUND)
			if c := f.check(t, mine.ID).Counts; c != (batchsender.Counts{Pending: 3}) {
				t.Fatalf("claim of B's batch touched A's: %+v", c)
			}
		}},
	)
}
