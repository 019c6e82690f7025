package remote

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batchsender/batchsender/sdk"
)

// FuzzClassify feeds arbitrary module answers to the classifier: whatever
// a module says, every item gets exactly one valid result.
func FuzzClassify(f *testing.F) {
	f.Add(200, []byte(`{"results":[{"outcome":"ok"},{"outcome":"retry","retry_after_seconds":1e300},{"outcome":"unknown"}]}`), "")
	f.Add(200, []byte(`{"results":[{"outcome":"permanent","error":"\u0000\xff"}]}`), "")
	f.Add(429, []byte(`slow`), "Wed, 21 Oct 2015 07:28:00 GMT")
	f.Add(503, []byte(``), "99999999999999999999")
	f.Add(302, []byte(`moved`), "")
	f.Fuzz(func(t *testing.T, status int, body []byte, retryAfter string) {
		if status < 100 || status > 999 {
			return
		}
		items := items(3)
		out := make([]sdk.Result, len(items))
		h := http.Header{}
		h.Set("Retry-After", retryAfter)
		classify(answer{status: status, header: h, body: body}, items, out, time.Unix(1700000000, 0))
		for i, r := range out {
			if r.Outcome < sdk.OutcomeOK || r.Outcome > sdk.OutcomeUnknown {
				t.Fatalf("item %d: invalid outcome %d", i, r.Outcome)
			}
			if r.Outcome != sdk.OutcomeOK && r.Err == nil {
				t.Fatalf("item %d: %v without an error", i, r.Outcome)
			}
			if r.Outcome == sdk.OutcomeOK && r.MessageID == "" {
				t.Fatalf("item %d: ok without a message ID", i)
			}
			if r.RetryAfter < 0 || r.RetryAfter > maxRetryAfter || len(r.Response) > snippetSize {
				t.Fatalf("item %d: RetryAfter %v, Response of %d bytes", i, r.RetryAfter, len(r.Response))
			}
		}
	})
}

func TestConcurrencyCapsCallsInFlight(t *testing.T) {
	t.Parallel()
	f := newFakeModule(t)
	var inFlight, most atomic.Int64
	f.answer = func(w http.ResponseWriter, req SendRequest) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		time.Sleep(30 * time.Millisecond) // long enough for calls to overlap if allowed
		var resp SendResponse
		for range req.Items {
			resp.Results = append(resp.Results, WireResult{Outcome: "ok"})
		}
		writeJSON(w, http.StatusOK, resp)
	}
	p := provision(t, f, map[string]any{"max_chunk": 2, "concurrency": 1})
	res := compile(t, p, `{}`).Send(context.Background(), items(8))
	for i, r := range res {
		if r.Outcome != sdk.OutcomeOK {
			t.Errorf("item %d: %v %v", i, r.Outcome, r.Err)
		}
	}
	if len(f.Calls()) != 4 || most.Load() != 1 {
		t.Errorf("%d calls, at most %d in flight; want 4 calls, 1 in flight", len(f.Calls()), most.Load())
	}
}
