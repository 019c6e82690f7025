package storetest

import (
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
)

func init() {
	register(
		test{"SuppressionsAddNormalizesAndKeepsFirst", func(t *testing.T, f *fixture) {
			n, err := f.s.SuppressionsAdd(f.ctx, f.a.ID, []batchsender.Suppression{
				{Channel: "email", Address: " Ann@Example.COM ", Reason: batchsender.ReasonUnsubscribe, Source: "unsubscribe link"},
				{Channel: "email", Address: "bob@example.com", Reason: batchsender.ReasonHardBounce, Source: "sendgrid events"},
				{Channel: "email", Address: "ann@example.com", Reason: batchsender.ReasonComplaint}, // same address again
				{Channel: "sms", Address: "ann@example.com", Reason: batchsender.ReasonManual},      // another channel
			})
			if err != nil {
				t.Fatalf("SuppressionsAdd: %v", err)
			}
			if n != 3 {
				t.Fatalf("SuppressionsAdd added %d, want 3", n)
			}
			n, err = f.s.SuppressionsAdd(f.ctx, f.a.ID, []batchsender.Suppression{{Channel: "email", Address: "ANN@example.com", Reason: batchsender.ReasonManual}})
			if err != nil || n != 0 {
				t.Fatalf("SuppressionsAdd of a known address = %d, %v; want 0, nil", n, err)
			}
			got, err := f.s.SuppressionList(f.ctx, batchsender.SuppressionListParams{ProjectID: f.a.ID, Channel: "email"})
			if err != nil {
				t.Fatalf("SuppressionList: %v", err)
			}
			if len(got) != 2 {
				t.Fatalf("SuppressionList = %+v, want 2", got)
			}
			ann, bob := got[0], got[1]
			if ann.Address != "ann@example.com" || ann.Reason != batchsender.ReasonUnsubscribe || ann.Source != "unsubscribe link" || ann.Channel != "email" {
				t.Fatalf("first suppression = %+v", ann)
			}
			if bob.Address != "bob@example.com" || bob.Reason != batchsender.ReasonHardBounce {
				t.Fatalf("second suppression = %+v", bob)
			}
			near(t, "CreatedAt", ann.CreatedAt, time.Now())
		}},
		test{"SuppressionsAreTheProjects", func(t *testing.T, f *fixture) {
			if _, err := f.s.SuppressionsAdd(f.ctx, f.b.ID, []batchsender.Suppression{{Channel: "email", Address: "x@example.com", Reason: batchsender.ReasonManual}}); err != nil {
				t.Fatal(err)
			}
			got, err := f.s.SuppressionList(f.ctx, batchsender.SuppressionListParams{ProjectID: f.a.ID, Channel: "email"})
			if err != nil || len(got) != 0 {
				t.Fatalf("project A sees %+v, %v", got, err)
			}
			m, err := f.s.SuppressionsMatch(f.ctx, f.a.ID, "email", []string{"x@example.com"})
			if err != nil || len(m) != 0 {
				t.Fatalf("project A matches %v, %v", m, err)
			}
			wantCode(t, f.s.SuppressionDelete(f.ctx, f.a.ID, "email", "x@example.com"), batchsender.ENOTFOUND)
			_, err = f.s.SuppressionsAdd(f.ctx, "prj_missing", []batchsender.Suppression{{Channel: "email", Address: "x@example.com", Reason: batchsender.ReasonManual}})
			wantCode(t, err, batchsender.ENOTFOUND)
		}},
		test{"SuppressionListPages", func(t *testing.T, f *fixture) {
			var sups []batchsender.Suppression
			for i := range 25 {
				sups = append(sups, batchsender.Suppression{Channel: "email", Address: fmt.Sprintf("u%02d@example.com", 24-i), Reason: batchsender.ReasonManual})
			}
			if n, err := f.s.SuppressionsAdd(f.ctx, f.a.ID, sups); err != nil || n != 25 {
				t.Fatalf("SuppressionsAdd = %d, %v", n, err)
			}
			var all []string
			cursor := ""
			for {
				page, err := f.s.SuppressionList(f.ctx, batchsender.SuppressionListParams{ProjectID: f.a.ID, Channel: "email", Cursor: cursor, Limit: 10})
				if err != nil {
					t.Fatalf("SuppressionList: %v", err)
				}
				if len(page) == 0 {
					break
				}
				if len(page) > 10 {
					t.Fatalf("page of %d, limit 10", len(page))
				}
				for _, s := range page {
					all = append(all, s.Address)
				}
				cursor = page[len(page)-1].Address
			}
			if len(all) != 25 || all[0] != "u00@example.com" || all[24] != "u24@example.com" {
				t.Fatalf("pages = %v", all)
			}
		}},
		test{"SuppressionsMatchAndDelete", func(t *testing.T, f *fixture) {
			if _, err := f.s.SuppressionsAdd(f.ctx, f.a.ID, []batchsender.Suppression{
				{Channel: "email", Address: "ann@example.com", Reason: batchsender.ReasonUnsubscribe},
				{Channel: "email", Address: "bob@example.com", Reason: batchsender.ReasonComplaint},
				{Channel: "sms", Address: "+15550001", Reason: batchsender.ReasonManual},
			}); err != nil {
				t.Fatal(err)
			}
			addrs := []string{"ann@example.com", "bob@example.com", "cy@example.com", "+15550001"}
			for i := range 1200 { // more than one IN list's worth
				addrs = append(addrs, fmt.Sprintf("n%d@example.com", i))
			}
			m, err := f.s.SuppressionsMatch(f.ctx, f.a.ID, "email", addrs)
			if err != nil {
				t.Fatalf("SuppressionsMatch: %v", err)
			}
			want := map[string]batchsender.SuppressionReason{"ann@example.com": batchsender.ReasonUnsubscribe, "bob@example.com": batchsender.ReasonComplaint}
			if !maps.Equal(m, want) {
				t.Fatalf("SuppressionsMatch = %v, want %v", m, want)
			}
			if m, err := f.s.SuppressionsMatch(f.ctx, f.a.ID, "email", nil); err != nil || len(m) != 0 {
				t.Fatalf("SuppressionsMatch(nil) = %v, %v", m, err)
			}
			if err := f.s.SuppressionDelete(f.ctx, f.a.ID, "email", "ANN@example.com"); err != nil {
				t.Fatalf("SuppressionDelete: %v", err)
			}
			wantCode(t, f.s.SuppressionDelete(f.ctx, f.a.ID, "email", "ann@example.com"), batchsender.ENOTFOUND)
			m, err = f.s.SuppressionsMatch(f.ctx, f.a.ID, "email", addrs)
			if err != nil || len(m) != 1 || m["bob@example.com"] != batchsender.ReasonComplaint {
				t.Fatalf("after delete SuppressionsMatch = %v, %v", m, err)
			}
		}},
		test{"SkippedResultsCountAsSkipped", func(t *testing.T, f *fixture) {
			b := f.newBatch(t, 3)
			its := f.claim(t, b.ID, f.owner, 3)
			if len(its) != 3 {
				t.Fatalf("claimed %d", len(its))
			}
			skip := result(its[0], f.owner, batchsender.ItemSkipped)
			skip.Error, skip.Units = "suppressed: unsubscribe", 0
			skip.Attempt.Outcome, skip.Attempt.StatusCode, skip.Attempt.Error = "skipped", 0, skip.Error
			f.write(t, 3, skip, result(its[1], f.owner, batchsender.ItemSucceeded), result(its[2], f.owner, batchsender.ItemSucceeded))
			got := f.check(t, b.ID)
			if got.Counts.Skipped != 1 || got.Counts.Succeeded != 2 || got.Status != batchsender.BatchCompleted {
				t.Fatalf("batch after a skipped result = %+v", got)
			}
			sk := f.allItems(t, b.ID, batchsender.ItemSkipped)
			if len(sk) != 1 || sk[0].ID != its[0].ID || sk[0].LastError != "suppressed: unsubscribe" {
				t.Fatalf("skipped items = %+v", sk)
			}
		}},
	)
}
