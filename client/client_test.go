package client_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/client"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// setup starts a real server with a "hooks" webhook connection and returns
// it with a client.
func setup(t *testing.T) (*apiServer, *client.Client) {
	t.Helper()
	srv, err := startAPI()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	c := client.New(srv.URL, testKey)
	t.Cleanup(c.Close)
	_, err = c.ConnectionCreate(context.Background(), client.ConnectionCreateRequest{
		Provider: "webhook.http", Name: "hooks", Config: map[string]any{"timeout": "5s"},
		Secrets: map[string]string{"signing_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return srv, c
}

func follow(t *testing.T, c *client.Client, id string) batchsender.Batch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var last batchsender.Batch
	n := 0
	if err := c.Events(ctx, id, func(b batchsender.Batch) error { last = b; n++; return nil }); err != nil {
		t.Fatalf("events of %s: %v (last %+v)", id, err, last)
	}
	if n == 0 || !last.Status.Terminal() {
		t.Fatalf("events ended after %d snapshots at status %q", n, last.Status)
	}
	return last
}

func TestConnections(t *testing.T) {
	t.Parallel()
	_, c := setup(t)
	ctx := context.Background()
	got, err := c.ConnectionGet(ctx, "hooks")
	if err != nil {
		t.Fatal(err)
	}
	if got.Provider != "webhook.http" || got.Module() != "webhook" || strings.Join(got.SecretNames, ",") != "signing_secret" {
		t.Fatalf("connection %+v", got)
	}
	byID, err := c.ConnectionGet(ctx, got.ID)
	if err != nil || byID.Name != "hooks" {
		t.Fatalf("by ID: %+v, %v", byID, err)
	}
	list, err := c.ConnectionList(ctx)
	if err != nil || len(list) != 1 || list[0].ID != got.ID {
		t.Fatalf("list: %+v, %v", list, err)
	}
	_, err = c.ConnectionCreate(ctx, client.ConnectionCreateRequest{Provider: "webhook.http", Name: "hooks",
		Secrets: map[string]string{"signing_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}})
	if client.StatusCode(err) != http.StatusConflict {
		t.Fatalf("duplicate name: %v, want 409", err)
	}
	_, err = c.ConnectionCreate(ctx, client.ConnectionCreateRequest{Provider: "nope.nope", Name: "x"})
	var e *client.Error
	if !errors.As(err, &e) || e.StatusCode/100 != 4 || e.Detail == "" || e.Title == "" {
		t.Fatalf("unknown provider: %#v, want a 4xx problem with title and detail", err)
	}
}

func TestBatchInlineAndItemsPagination(t *testing.T) {
	t.Parallel()
	srv, c := setup(t)
	ctx := context.Background()
	var items []any
	for i := range 7 {
		url := srv.Receiver + "/ok"
		if i == 3 || i == 5 {
			url = srv.Receiver + "/fail"
		}
		items = append(items, map[string]any{"url": url, "payload": map[string]int{"n": i}})
	}
	b, err := c.BatchCreate(ctx, client.BatchCreateRequest{Module: "webhook", Connection: "hooks", Items: items,
		Options: &batchsender.BatchOptions{MaxAttempts: 2}})
	if err != nil {
		t.Fatal(err)
	}
	if b.Total != 7 || b.ID == "" {
		t.Fatalf("created %+v", b)
	}
	final := follow(t, c, b.ID)
	if final.Status != batchsender.BatchCompleted || final.Counts.Succeeded != 5 || final.Counts.Failed != 2 {
		t.Fatalf("final %s %+v", final.Status, final.Counts)
	}

	// One page at a time, following the cursor.
	var seqs []int64
	p := client.ItemListParams{Limit: 3}
	for pages := 0; ; pages++ {
		if pages > 5 {
			t.Fatal("too many pages")
		}
		page, err := c.BatchItems(ctx, b.ID, p)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Data) > 3 {
			t.Fatalf("page of %d items with limit 3", len(page.Data))
		}
		for _, it := range page.Data {
			seqs = append(seqs, it.Seq)
		}
		if page.NextCursor == "" {
			break
		}
		p.Cursor = page.NextCursor
	}
	if fmt.Sprint(seqs) != "[1 2 3 4 5 6 7]" {
		t.Fatalf("pages gave seqs %v", seqs)
	}

	var failed []int64
	for it, err := range c.BatchItemsAll(ctx, b.ID, batchsender.ItemFailed) {
		if err != nil {
			t.Fatal(err)
		}
		if it.LastError == "" || it.Attempts != 1 {
			t.Fatalf("failed item %+v lacks its error or attempt count", it)
		}
		failed = append(failed, it.Seq)
	}
	if fmt.Sprint(failed) != "[4 6]" {
		t.Fatalf("failed items %v, want [4 6]", failed)
	}

	// retry-failed reopens the batch; the same items fail again.
	again, err := c.BatchRetryFailed(ctx, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	if again.Status != batchsender.BatchRunning || again.Counts.Failed != 0 {
		t.Fatalf("after retry-failed: %s %+v", again.Status, again.Counts)
	}
	final = follow(t, c, b.ID)
	if final.Counts.Failed != 2 || final.Counts.Succeeded != 5 {
		t.Fatalf("after the retry: %+v", final.Counts)
	}

	page, err := c.BatchList(ctx, client.ListParams{Limit: 10})
	if err != nil || len(page.Data) != 1 || page.Data[0].ID != b.ID {
		t.Fatalf("list: %+v, %v", page, err)
	}
}

func TestDraftUploadsAndLifeCycle(t *testing.T) {
	t.Parallel()
	srv, c := setup(t)
	ctx := context.Background()
	sendAt := time.Now().Add(time.Hour)
	draft, err := c.BatchCreate(ctx, client.BatchCreateRequest{
		Module: "webhook", Connection: "hooks",
		Template: map[string]any{"url": srv.Receiver + "/hook"},
		Options:  &batchsender.BatchOptions{SendAt: &sendAt},
	})
	if err != nil {
		t.Fatal(err)
	}
	if draft.Status != batchsender.BatchDraft {
		t.Fatalf("a batch without items is %q, want draft", draft.Status)
	}
	b, err := c.BatchUploadItems(ctx, draft.ID, client.ContentTypeNDJSON, strings.NewReader("{\"payload\":1}\n{\"payload\":2}\n"))
	if err != nil || b.Total != 2 {
		t.Fatalf("NDJSON upload: %+v, %v", b, err)
	}
	path := t.TempDir() + "/more.csv"
	if err := os.WriteFile(path, []byte("payload.n,headers.X-Row\n3,c\n4,d\n5,e\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err = c.BatchUploadFile(ctx, draft.ID, path); err != nil || b.Total != 5 {
		t.Fatalf("CSV file upload: %+v, %v", b, err)
	}

	// A bad row rejects its whole upload and keeps nothing of it.
	_, err = c.BatchUploadItems(ctx, draft.ID, client.ContentTypeNDJSON, strings.NewReader("{\"payload\":6}\n[7]\n"))
	var e *client.Error
	if !errors.As(err, &e) || e.StatusCode/100 != 4 || !strings.Contains(e.Detail, "row 2") {
		t.Fatalf("bad upload: %v, want a 4xx naming row 2", err)
	}
	if b, err = c.BatchGet(ctx, draft.ID); err != nil || b.Total != 5 {
		t.Fatalf("after the bad upload total is %d (%v), want 5", b.Total, err)
	}

	steps := []struct {
		do   func(context.Context, string) (batchsender.Batch, error)
		want batchsender.BatchStatus
	}{
		{c.BatchStart, batchsender.BatchScheduled},
		{c.BatchPause, batchsender.BatchPaused},
		{c.BatchResume, batchsender.BatchScheduled},
		{c.BatchCancel, batchsender.BatchCancelled},
	}
	for i, s := range steps {
		got, err := s.do(ctx, draft.ID)
		if err != nil || got.Status != s.want {
			t.Fatalf("step %d: %q, %v; want %q", i, got.Status, err, s.want)
		}
	}
	if _, err := c.BatchUploadItems(ctx, draft.ID, client.ContentTypeNDJSON, strings.NewReader("{}\n")); client.StatusCode(err) != http.StatusConflict {
		t.Fatalf("upload to a cancelled batch: %v, want 409", err)
	}
	// Events of a terminal batch end at once.
	if final := follow(t, c, draft.ID); final.Counts.Cancelled != 5 {
		t.Fatalf("cancelled batch counts %+v", final.Counts)
	}
}

func TestIdempotencyKey(t *testing.T) {
	t.Parallel()
	srv, c := setup(t)
	ctx := context.Background()
	req := client.BatchCreateRequest{Module: "webhook", Connection: "hooks", IdempotencyKey: "order-42",
		Items: []any{map[string]any{"url": srv.Receiver + "/x"}}}
	a, err := c.BatchCreate(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.BatchCreate(ctx, req)
	if err != nil || b.ID != a.ID {
		t.Fatalf("replay gave %q (%v), want %q", b.ID, err, a.ID)
	}
	req.Items = []any{map[string]any{"url": srv.Receiver + "/y"}}
	if _, err := c.BatchCreate(ctx, req); client.StatusCode(err) != http.StatusConflict {
		t.Fatalf("same key, other body: %v, want 409", err)
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	srv, _ := setup(t)
	ctx := context.Background()
	bad := client.New(srv.URL, "bsk_wrong_key_0123456789")
	defer bad.Close()
	_, err := bad.BatchGet(ctx, "bat_x")
	var e *client.Error
	if !errors.As(err, &e) || e.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(err.Error(), "401 ") {
		t.Fatalf("wrong key: %v", err)
	}
	good := client.New(srv.URL, testKey)
	defer good.Close()
	if err := good.Events(ctx, "bat_missing", func(batchsender.Batch) error { return nil }); client.StatusCode(err) != http.StatusNotFound {
		t.Fatalf("events of a missing batch: %v, want 404", err)
	}
	if _, err := good.BatchUploadFile(ctx, "bat_x", "items.xlsx"); err == nil || !strings.Contains(err.Error(), ".csv") {
		t.Fatalf("unknown file type: %v", err)
	}
}

func TestErrorWithoutProblemDocument(t *testing.T) {
	t.Parallel()
	// A proxy in front of the server may answer with plain text.
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "upstream unavailable", http.StatusBadGateway)
	}))
	defer proxy.Close()
	c := client.New(proxy.URL, testKey)
	defer c.Close()
	_, err := c.BatchGet(context.Background(), "bat_x")
	if err == nil || err.Error() != "502 Bad Gateway: upstream unavailable" {
		t.Fatalf("got %v", err)
	}
}

func TestContentTypeFor(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]string{"a.csv": "text/csv", "A.CSV": "text/csv", "b.ndjson": "application/x-ndjson", "c.jsonl": "application/x-ndjson", "d.json": ""} {
		got, err := client.ContentTypeFor(name)
		if got != want || (want == "") != (err != nil) {
			t.Errorf("%s: %q, %v; want %q", name, got, err, want)
		}
	}
}
