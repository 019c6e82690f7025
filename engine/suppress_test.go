package engine_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/engine"
	"github.com/batchsender/batchsender/sdk"
)

// recipientProvider is test.chunked whose senders name each item's
// recipient (sdk.Recipienter): item {"n": i} goes to user<i>@example.com on
// channel "test".
type recipientProvider struct{ testProvider }

func (p *recipientProvider) Compile(raw json.RawMessage) (sdk.Sender, error) {
	s, err := p.testProvider.Compile(raw)
	if err != nil {
		return nil, err
	}
	return &recipientSender{s.(*testSender)}, nil
}

type recipientSender struct{ *testSender }

func (recipientSender) Recipient(data json.RawMessage) (string, string, bool) {
	var it struct {
		N *int `json:"n"`
	}
	if json.Unmarshal(data, &it) != nil || it.N == nil {
		return "", "", false
	}
	return "test", fmt.Sprintf("User%d@Example.com", *it.N), true // the engine normalizes
}

func init() {
	info := sdk.Info{ID: "test.recipient", Title: "test recipient", MaxChunk: 10, DefaultConcurrency: 4, BillableUnit: "message"}
	sdk.Register(sdk.Registration{ID: info.ID, New: func() sdk.Provider { return &recipientProvider{testProvider{info: info}} }})
}

func TestSuppressedRecipientsAreSkipped(t *testing.T) {
	t.Parallel()
	f := setup(t, "test.recipient")
	other := f.tenant(t, "other", "test.recipient")
	var sups []batchsender.Suppression
	for n := 0; n < 25; n += 3 {
		sups = append(sups, batchsender.Suppression{Channel: "test", Address: fmt.Sprintf("user%d@example.com", n), Reason: batchsender.ReasonUnsubscribe})
	}
	sups = append(sups, batchsender.Suppression{Channel: "email", Address: "user1@example.com", Reason: batchsender.ReasonManual}) // another channel
	if _, err := f.store.SuppressionsAdd(f.ctx, f.project.ID, sups); err != nil {
		t.Fatal(err)
	}
	b := f.batch(t, 25, batchsender.BatchRunning, batchsender.BatchOptions{})
	ob := other.batch(t, 25, batchsender.BatchRunning, batchsender.BatchOptions{})
	f.engine(t, engine.Config{})
	done := f.waitStatus(t, b.ID, batchsender.BatchCompleted)
	if done.Counts.Skipped != 9 || done.Counts.Succeeded != 16 {
		t.Fatalf("counts %+v, want 9 skipped and 16 succeeded", done.Counts)
	}
	for _, rec := range f.ctl.records() {
		for _, it := range rec.items {
			var d struct{ N int }
			_ = json.Unmarshal(it.Data, &d)
			if d.N%3 == 0 {
				t.Fatalf("item %d was sent to a suppressed recipient", d.N)
			}
		}
	}
	if got := f.ctl.items.Load(); got != 16 {
		t.Fatalf("the provider got %d items, want 16", got)
	}
	for _, it := range f.items(t, b.ID) {
		var d struct{ N int }
		_ = json.Unmarshal(it.Data, &d)
		if (d.N%3 == 0) != (it.Status == batchsender.ItemSkipped) {
			t.Fatalf("item %d is %s", d.N, it.Status)
		}
		if it.Status == batchsender.ItemSkipped {
			if !strings.Contains(it.LastError, "suppressed") || !strings.Contains(it.LastError, "unsubscribe") {
				t.Fatalf("skipped item error %q", it.LastError)
			}
			as := f.attempts(t, it.ID)
			if len(as) != 1 || as[0].Outcome != "skipped" {
				t.Fatalf("skipped item attempts %+v", as)
			}
		}
	}
	// The other project's suppressions are its own: none there.
	ok := other.waitStatus(t, ob.ID, batchsender.BatchCompleted)
	if ok.Counts.Succeeded != 25 || ok.Counts.Skipped != 0 {
		t.Fatalf("other project's counts %+v", ok.Counts)
	}
}
