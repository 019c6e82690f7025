package httpapi_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3filter"
)

func TestUploads(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.connection(t, b.key, "hooks")
	draft := func(t *testing.T) batchDoc {
		return b.batch(t, map[string]any{"module": "test", "connection": "hooks", "template": map[string]any{"to": "fallback"}})
	}
	upload := func(t *testing.T, id, contentType, body string) *response {
		return b.do(t, call{method: "POST", path: "/v1/batches/" + id + "/items", body: body, contentType: contentType})
	}

	t.Run("NDJSONThenCSVThenStart", func(t *testing.T) {
		d := draft(t)
		var got batchDoc
		upload(t, d.ID, "application/x-ndjson", "{\"to\":\"a\"}\n\n{\"to\":\"b\",\"n\":2}\r\n{}\n").expect(t, http.StatusOK).decode(t, &got)
		if got.ID != d.ID || got.Total != 3 || got.Status != "draft" || got.Counts.Pending != 3 {
			t.Fatalf("after NDJSON: %+v", got)
		}
		upload(t, d.ID, "text/csv; charset=utf-8", "to,n\nc,3\nd,\n").expect(t, http.StatusOK).decode(t, &got)
		if got.Total != 5 {
			t.Fatalf("after CSV: %+v", got)
		}
		var page struct {
			Data []struct {
				Seq  int64           `json:"seq"`
				Data json.RawMessage `json:"data"`
			} `json:"data"`
		}
		b.do(t, call{method: "GET", path: "/v1/batches/" + d.ID + "/items"}).expect(t, http.StatusOK).decode(t, &page)
		var seen []string
		for _, it := range page.Data {
			seen = append(seen, fmt.Sprintf("%d:%s", it.Seq, it.Data))
		}
		want := `1:{"to":"a"} 2:{"to":"b","n":2} 3:{} 4:{"n":"3","to":"c"} 5:{"to":"d"}`
		if strings.Join(seen, " ") != want {
			// CSV cells are strings and the key order follows the header.
			if strings.Join(seen, " ") != strings.Replace(want, `{"n":"3","to":"c"}`, `{"to":"c","n":"3"}`, 1) {
				t.Fatalf("items\n got %s\nwant %s", strings.Join(seen, " "), want)
			}
		}
		wakes := b.waker.n.Load()
		b.do(t, call{method: "POST", path: "/v1/batches/" + d.ID + "/start"}).expect(t, http.StatusOK).decode(t, &got)
		if got.Status != "running" || b.waker.n.Load() <= wakes {
			t.Fatalf("after start: %+v (wakes %d→%d)", got, wakes, b.waker.n.Load())
		}
		upload(t, d.ID, "application/x-ndjson", "{\"to\":\"late\"}\n").expectProblem(t, http.StatusConflict, "draft")
		b.do(t, call{method: "POST", path: "/v1/batches/" + d.ID + "/start"}).expectProblem(t, http.StatusConflict)
	})
	t.Run("StartingAnEmptyDraftIs409", func(t *testing.T) {
		d := draft(t)
		b.do(t, call{method: "POST", path: "/v1/batches/" + d.ID + "/start"}).expectProblem(t, http.StatusConflict, "no items")
	})
	t.Run("DraftWithFutureSendAtStartsScheduled", func(t *testing.T) {
		d := b.batch(t, map[string]any{"module": "test", "connection": "hooks",
			"options": map[string]any{"send_at": time.Now().Add(time.Hour).Format(time.RFC3339)}})
		upload(t, d.ID, "application/x-ndjson", "{\"to\":\"a\"}\n").expect(t, http.StatusOK)
		var got batchDoc
		b.do(t, call{method: "POST", path: "/v1/batches/" + d.ID + "/start"}).expect(t, http.StatusOK).decode(t, &got)
		if got.Status != "scheduled" {
			t.Fatalf("after start: %+v", got)
		}
	})

	bad := []struct {
		name, contentType, body string
		status                  int
		fragments               []string
	}{
		{"MalformedNDJSON", "application/x-ndjson", "{\"to\":\"a\"}\n{\"to\":\"b\"\n", 400, []string{"row 2"}},
		{"NDJSONNotObject", "application/x-ndjson", "{\"to\":\"a\"}\n[1]\n", 400, []string{"row 2"}},
		{"NDJSONRowRefusedByProvider", "application/x-ndjson", "{\"to\":\"a\"}\n{\"to\":\"b\"}\n{\"to\":\"c d\"}\n", 400, []string{"row 3", "to:"}},
		{"NDJSONUnknownField", "application/x-ndjson", "{\"to\":\"a\",\"bcc\":\"x\"}\n", 400, []string{"row 1", "bcc"}},
		{"MalformedCSV", "text/csv", "to,n\na,1\nb,2,3\n", 400, []string{"row 2"}},
		{"CSVBadQuote", "text/csv", "to\n\"a\n", 400, []string{"row"}},
		{"CSVRowRefusedByProvider", "text/csv", "to,cc\na,x\n", 400, []string{"row 1", "cc"}},
		{"EmptyUpload", "application/x-ndjson", "", 400, []string{"no items"}},
		{"HeaderOnlyCSV", "text/csv", "to\n", 400, []string{"no items"}},
	}
	for _, tc := range bad {
		t.Run("Rejects"+tc.name+"AndKeepsNothing", func(t *testing.T) {
			d := draft(t)
			upload(t, d.ID, "application/x-ndjson", "{\"to\":\"first\"}\n").expect(t, http.StatusOK)
			b.do(t, call{method: "POST", path: "/v1/batches/" + d.ID + "/items", body: tc.body, contentType: tc.contentType, badRequest: true}).
				expectProblem(t, tc.status, tc.fragments...)
			if got := b.getBatch(t, d.ID); got.Total != 1 || got.Counts.Pending != 1 {
				t.Fatalf("after a refused upload: %+v", got)
			}
			list, err := b.store.ItemList(t.Context(), itemListParams(b.project, d.ID))
			if err != nil || len(list) != 1 {
				t.Fatalf("items after a refused upload: %d, %v", len(list), err)
			}
		})
	}
	t.Run("RejectsWrongContentType", func(t *testing.T) {
		d := draft(t)
		for _, ct := range []string{"application/json", "text/plain", "", "multipart/form-data; boundary=x"} {
			b.do(t, call{method: "POST", path: "/v1/batches/" + d.ID + "/items", body: `{"to":"a"}`, contentType: ct, badRequest: true}).
				expectProblem(t, http.StatusUnsupportedMediaType, "application/x-ndjson", "text/csv")
		}
	})
	t.Run("OtherProjectGets404", func(t *testing.T) {
		d := draft(t)
		b.do(t, call{method: "POST", path: "/v1/batches/" + d.ID + "/items", key: &b.keyB, body: "{\"to\":\"a\"}\n",
			contentType: "application/x-ndjson"}).expectProblem(t, http.StatusNotFound)
		if got := b.getBatch(t, d.ID); got.Total != 0 {
			t.Fatalf("another project's upload landed: %+v", got)
		}
	})
	t.Run("UnknownBatchIs404", func(t *testing.T) {
		upload(t, "bat_nope", "text/csv", "to\na\n").expectProblem(t, http.StatusNotFound)
	})
}

func TestTransitions(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.connection(t, b.key, "hooks")
	act := func(t *testing.T, id, action string) *response {
		return b.do(t, call{method: "POST", path: "/v1/batches/" + id + "/" + action})
	}
	status := func(t *testing.T, r *response) string {
		var got batchDoc
		r.expect(t, http.StatusOK).decode(t, &got)
		return got.Status
	}
	bt := b.batch(t, map[string]any{"module": "test", "connection": "hooks", "items": items(4)})

	t.Run("PauseResume", func(t *testing.T) {
		if s := status(t, act(t, bt.ID, "pause")); s != "paused" {
			t.Fatalf("pause gave %s", s)
		}
		act(t, bt.ID, "pause").expectProblem(t, http.StatusConflict, "pause")
		wakes := b.waker.n.Load()
		if s := status(t, act(t, bt.ID, "resume")); s != "running" {
			t.Fatalf("resume gave %s", s)
		}
		if b.waker.n.Load() <= wakes {
			t.Fatal("resume did not wake the engine")
		}
		act(t, bt.ID, "resume").expectProblem(t, http.StatusConflict)
	})
	t.Run("RetryFailedRunsACompletedBatchAgain", func(t *testing.T) {
		b.finish(t, bt.ID, 10, func(seq int64) bool { return seq%2 == 0 })
		got := b.getBatch(t, bt.ID)
		if got.Status != "completed" || got.Counts.Succeeded != 2 || got.Counts.Failed != 2 {
			t.Fatalf("after finishing: %+v", got)
		}
		act(t, bt.ID, "pause").expectProblem(t, http.StatusConflict)
		if s := status(t, act(t, bt.ID, "retry-failed")); s != "running" {
			t.Fatalf("retry-failed gave %s", s)
		}
		got = b.getBatch(t, bt.ID)
		if got.Counts.Pending != 2 || got.Counts.Failed != 0 || got.Counts.Succeeded != 2 {
			t.Fatalf("after retry-failed: %+v", got)
		}
	})
	t.Run("Cancel", func(t *testing.T) {
		if s := status(t, act(t, bt.ID, "cancel")); s != "cancelled" {
			t.Fatalf("cancel gave %s", s)
		}
		got := b.getBatch(t, bt.ID)
		if got.Counts.Cancelled != 2 || got.Counts.Pending != 0 {
			t.Fatalf("after cancel: %+v", got)
		}
		for _, a := range []string{"cancel", "pause", "resume", "start", "retry-failed"} {
			act(t, bt.ID, a).expectProblem(t, http.StatusConflict)
		}
	})
	t.Run("OtherProjectGets404", func(t *testing.T) {
		other := b.batch(t, map[string]any{"module": "test", "connection": "hooks", "items": items(1)})
		for _, a := range []string{"start", "pause", "resume", "cancel", "retry-failed"} {
			b.do(t, call{method: "POST", path: "/v1/batches/" + other.ID + "/" + a, key: &b.keyB}).expectProblem(t, http.StatusNotFound)
		}
		if got := b.getBatch(t, other.ID); got.Status != "running" {
			t.Fatalf("another project changed the batch: %+v", got)
		}
	})
}

func TestLists(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.connection(t, b.key, "hooks")
	var made []string
	for range 5 {
		made = append(made, b.batch(t, map[string]any{"module": "test", "connection": "hooks", "items": items(1)}).ID)
	}

	t.Run("BatchesPageNewestFirst", func(t *testing.T) {
		var seen []string
		cursor := ""
		for page := 0; ; page++ {
			path := "/v1/batches?limit=2"
			if cursor != "" {
				path += "&cursor=" + cursor
			}
			var out struct {
				Data       []batchDoc `json:"data"`
				NextCursor string     `json:"next_cursor"`
			}
			b.do(t, call{method: "GET", path: path}).expect(t, http.StatusOK).decode(t, &out)
			for _, bt := range out.Data {
				seen = append(seen, bt.ID)
			}
			if out.NextCursor == "" {
				if len(out.Data) != 1 || page != 2 {
					t.Fatalf("last page %d has %d batches", page, len(out.Data))
				}
				break
			}
			if len(out.Data) != 2 {
				t.Fatalf("page %d has %d batches", page, len(out.Data))
			}
			cursor = out.NextCursor
		}
		for i := range made {
			if seen[i] != made[len(made)-1-i] {
				t.Fatalf("pages gave %v, want newest first of %v", seen, made)
			}
		}
	})
	t.Run("OtherProjectSeesNone", func(t *testing.T) {
		var out struct {
			Data []batchDoc `json:"data"`
		}
		b.do(t, call{method: "GET", path: "/v1/batches", key: &b.keyB}).expect(t, http.StatusOK).decode(t, &out)
		if len(out.Data) != 0 {
			t.Fatalf("beta sees %d batches", len(out.Data))
		}
	})
	t.Run("BadLimitIs400", func(t *testing.T) {
		for _, l := range []string{"0", "-1", "x", "501"} {
			b.do(t, call{method: "GET", path: "/v1/batches?limit=" + l, badRequest: true}).expectProblem(t, http.StatusBadRequest, "limit")
		}
	})

	bt := b.batch(t, map[string]any{"module": "test", "connection": "hooks", "items": items(7)})
	b.finish(t, bt.ID, 7, func(seq int64) bool { return seq == 2 || seq == 5 || seq == 6 })

	t.Run("ItemsFilterByStatusAndPage", func(t *testing.T) {
		type item struct {
			ID        string `json:"id"`
			Seq       int64  `json:"seq"`
			Status    string `json:"status"`
			Attempts  int    `json:"attempts"`
			LastError string `json:"last_error"`
		}
		var seqs []int64
		cursor := ""
		for {
			path := "/v1/batches/" + bt.ID + "/items?status=failed&limit=2"
			if cursor != "" {
				path += "&cursor=" + cursor
			}
			var out struct {
				Data       []item `json:"data"`
				NextCursor string `json:"next_cursor"`
			}
			b.do(t, call{method: "GET", path: path}).expect(t, http.StatusOK).decode(t, &out)
			for _, it := range out.Data {
				if it.Status != "failed" || it.Attempts != 1 || it.LastError != "rejected by the test" {
					t.Fatalf("item %+v", it)
				}
				seqs = append(seqs, it.Seq)
			}
			if out.NextCursor == "" {
				break
			}
			cursor = out.NextCursor
		}
		if fmt.Sprint(seqs) != "[2 5 6]" {
			t.Fatalf("failed items %v, want [2 5 6]", seqs)
		}
	})
	t.Run("ItemsOfAnotherProjectAre404", func(t *testing.T) {
		b.do(t, call{method: "GET", path: "/v1/batches/" + bt.ID + "/items", key: &b.keyB}).expectProblem(t, http.StatusNotFound)
	})
	t.Run("BadItemQueriesAre400", func(t *testing.T) {
		b.do(t, call{method: "GET", path: "/v1/batches/" + bt.ID + "/items?status=lost", badRequest: true}).expectProblem(t, http.StatusBadRequest, "lost")
		b.do(t, call{method: "GET", path: "/v1/batches/" + bt.ID + "/items?cursor=abc"}).expectProblem(t, http.StatusBadRequest, "cursor")
	})
	t.Run("Attempts", func(t *testing.T) {
		var page struct {
			Data []struct {
				ID string `json:"id"`
			} `json:"data"`
		}
		b.do(t, call{method: "GET", path: "/v1/batches/" + bt.ID + "/items?status=failed&limit=1"}).expect(t, http.StatusOK).decode(t, &page)
		itemID := page.Data[0].ID
		var out struct {
			Data []struct {
				ItemID     string `json:"item_id"`
				Number     int    `json:"number"`
				Outcome    string `json:"outcome"`
				StatusCode int    `json:"status_code"`
			} `json:"data"`
		}
		b.do(t, call{method: "GET", path: "/v1/batches/" + bt.ID + "/items/" + itemID + "/attempts"}).expect(t, http.StatusOK).decode(t, &out)
		if len(out.Data) != 1 || out.Data[0].ItemID != itemID || out.Data[0].Outcome != "permanent" || out.Data[0].StatusCode != 400 {
			t.Fatalf("attempts %+v", out)
		}
		b.do(t, call{method: "GET", path: "/v1/batches/" + bt.ID + "/items/" + itemID + "/attempts", key: &b.keyB}).expectProblem(t, http.StatusNotFound)
	})
}

// sseEvent is one Server-Sent Event.
type sseEvent struct {
	name string
	data string
}

// stream opens an event stream and delivers its events on a channel that
// closes when the stream ends. The whole body is validated against the
// OpenAPI document at the end.
func (b *bundle) stream(t *testing.T, ctx context.Context, path string) (*http.Response, <-chan sseEvent) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", b.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+b.key)
	req.Header.Set("Accept", "text/event-stream")
	route, params, err := b.router.FindRoute(req)
	if err != nil {
		t.Fatal(err)
	}
	input := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: bearerPresent}}
	if err := openapi3filter.ValidateRequest(ctx, input); err != nil {
		t.Fatalf("event stream request does not match the document: %v", err)
	}
	res, err := b.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan sseEvent, 100)
	go func() {
		defer close(events)
		defer res.Body.Close()
		var raw bytes.Buffer
		sc := bufio.NewScanner(io.TeeReader(res.Body, &raw))
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.name != "" {
					events <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, "event: "):
				ev.name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				ev.data = strings.TrimPrefix(line, "data: ")
			}
		}
		if ctx.Err() != nil {
			return // the test hung up on purpose; the body is cut short
		}
		err := openapi3filter.ValidateResponse(context.Background(), &openapi3filter.ResponseValidationInput{
			RequestValidationInput: input, Status: res.StatusCode, Header: res.Header,
			Body: io.NopCloser(bytes.NewReader(raw.Bytes())), Options: &openapi3filter.Options{IncludeResponseStatus: true},
		})
		if err != nil {
			events <- sseEvent{name: "validation-error", data: err.Error()}
		}
	}()
	return res, events
}

func next(t *testing.T, events <-chan sseEvent) (sseEvent, bool) {
	t.Helper()
	select {
	case ev, ok := <-events:
		if ev.name == "validation-error" {
			t.Fatalf("event stream does not match the OpenAPI document: %s", ev.data)
		}
		return ev, ok
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for an event")
	}
	return sseEvent{}, false
}

func TestEvents(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.connection(t, b.key, "hooks")

	t.Run("ProgressThenDone", func(t *testing.T) {
		bt := b.batch(t, map[string]any{"module": "test", "connection": "hooks", "items": items(4)})
		res, events := b.stream(t, t.Context(), "/v1/batches/"+bt.ID+"/events")
		if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("stream answered %d %q", res.StatusCode, res.Header.Get("Content-Type"))
		}
		decode := func(ev sseEvent) batchDoc {
			var d batchDoc
			if err := json.Unmarshal([]byte(ev.data), &d); err != nil {
				t.Fatalf("event data %q: %v", ev.data, err)
			}
			return d
		}
		ev, _ := next(t, events)
		if ev.name != "progress" || decode(ev).Counts.Pending != 4 {
			t.Fatalf("first event %+v", ev)
		}
		b.finish(t, bt.ID, 2, nil)
		// The claim may show as its own event (in_flight) before the results.
		for {
			ev, _ = next(t, events)
			d := decode(ev)
			if ev.name != "progress" || d.Status != "running" {
				t.Fatalf("event %+v while half the items are done", ev)
			}
			if d.Counts.Succeeded == 2 && d.Counts.Pending == 2 {
				break
			}
		}
		b.finish(t, bt.ID, 2, nil)
		var last batchDoc
		for {
			ev, ok := next(t, events)
			if !ok {
				t.Fatal("stream ended without done")
			}
			if ev.name == "done" {
				last = decode(ev)
				break
			}
			if ev.name != "progress" {
				t.Fatalf("unexpected event %+v", ev)
			}
		}
		if last.Status != "completed" || last.Counts.Succeeded != 4 {
			t.Fatalf("done event %+v", last)
		}
		if _, ok := next(t, events); ok {
			t.Fatal("the stream goes on after done")
		}
	})
	t.Run("FinishedBatchGivesProgressAndDoneAtOnce", func(t *testing.T) {
		bt := b.batch(t, map[string]any{"module": "test", "connection": "hooks", "items": items(1)})
		b.do(t, call{method: "POST", path: "/v1/batches/" + bt.ID + "/cancel"}).expect(t, http.StatusOK)
		_, events := b.stream(t, t.Context(), "/v1/batches/"+bt.ID+"/events")
		var names []string
		for {
			ev, ok := next(t, events)
			if !ok {
				break
			}
			names = append(names, ev.name)
		}
		if strings.Join(names, ",") != "progress,done" {
			t.Fatalf("events %v", names)
		}
	})
	t.Run("HeartbeatsAndDisconnect", func(t *testing.T) {
		bt := b.batch(t, map[string]any{"module": "test", "connection": "hooks", "items": items(1)})
		ctx, cancel := context.WithCancel(t.Context())
		req, _ := http.NewRequestWithContext(ctx, "GET", b.srv.URL+"/v1/batches/"+bt.ID+"/events", nil)
		req.Header.Set("Authorization", "Bearer "+b.key)
		res, err := b.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		rd := bufio.NewReader(res.Body)
		deadline := time.Now().Add(10 * time.Second)
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			if strings.HasPrefix(line, ": heartbeat") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no heartbeat")
			}
		}
		cancel() // the handler must notice and return; goleak checks at the end
	})
	t.Run("OtherProjectGets404", func(t *testing.T) {
		bt := b.batch(t, map[string]any{"module": "test", "connection": "hooks", "items": items(1)})
		b.do(t, call{method: "GET", path: "/v1/batches/" + bt.ID + "/events", key: &b.keyB}).expectProblem(t, http.StatusNotFound)
		b.do(t, call{method: "GET", path: "/v1/batches/bat_unknown/events"}).expectProblem(t, http.StatusNotFound)
	})
}
