package e2e

import (
	"bytes"
	"context"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestProjectsAreIsolated creates a second project's key with the CLI, as
// an operator would, and checks that the first project's batch and
// connection answer 404 to it.
func TestProjectsAreIsolated(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, c := startServer(t, serverOptions{})
	connID, err := c.CreateConnection(ctx, "hooks", randomSecret(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.CreateBatch(ctx, map[string]any{"module": "webhook", "connection": "hooks", "template": map[string]any{"url": "https://example.com/hook"}})
	if err != nil {
		t.Fatal(err)
	}

	cmdCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cmdCtx, srv.Bin, "keys", "create", "--project", "other")
	cmd.Env = []string{"BATCHSENDER_DATA_DIR=" + srv.DataDir, "HOME=" + t.TempDir()}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("keys create: %v\n%s%s", err, out, stderr.String())
	}
	words := strings.Fields(string(out))
	if len(words) == 0 {
		t.Fatalf("keys create printed nothing")
	}
	other := NewClient(c.URL, words[len(words)-1])
	defer other.Close()

	for _, req := range []struct{ method, path string }{
		{http.MethodGet, "/v1/batches/" + b.ID},
		{http.MethodGet, "/v1/batches/" + b.ID + "/items"},
		{http.MethodPost, "/v1/batches/" + b.ID + "/start"},
		{http.MethodPost, "/v1/batches/" + b.ID + "/cancel"},
		{http.MethodGet, "/v1/connections/" + connID},
	} {
		resp, err := other.JSON(ctx, req.method, req.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Status != http.StatusNotFound {
			t.Errorf("%s %s with another project's key: %s, want 404", req.method, req.path, resp)
		} else if _, err := IsProblem(resp); err != nil {
			t.Errorf("%s %s: %v", req.method, req.path, err)
		}
	}
	resp, err := other.JSON(ctx, http.MethodPost, "/v1/batches", map[string]any{
		"module": "webhook", "connection": connID, "template": map[string]any{"url": "https://example.com/hook"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status/100 != 4 {
		t.Errorf("batch on another project's connection: %s, want a 4xx", resp)
	}
	ids, err := other.ListBatchIDs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 0 {
		t.Errorf("the other project lists batches %v", ids)
	}
	if got, err := c.GetBatch(ctx, b.ID); err != nil || got.Status != "draft" {
		t.Errorf("the owner's batch after the other project's attempts: %+v %v", got, err)
	}
}

// TestIdempotencyKey replays a batch creation: the same key and body give
// the first batch, a different body 409, and only one batch exists.
func TestIdempotencyKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, c := startServer(t, serverOptions{})
	if _, err := c.CreateConnection(ctx, "hooks", randomSecret(t), nil); err != nil {
		t.Fatal(err)
	}
	body := `{"module":"webhook","connection":"hooks","template":{"url":"https://example.com/hook"}}`
	create := func(body string) (Response, Batch) {
		t.Helper()
		resp, err := c.Do(ctx, http.MethodPost, "/v1/batches", "application/json", strings.NewReader(body),
			http.Header{"Idempotency-Key": {"order-42"}})
		if err != nil {
			t.Fatal(err)
		}
		var b Batch
		if resp.Status/100 == 2 {
			if err := resp.Decode(&b); err != nil {
				t.Fatal(err)
			}
		}
		return resp, b
	}
	r1, first := create(body)
	if r1.Status != http.StatusCreated || first.ID == "" {
		t.Fatalf("first create: %s", r1)
	}
	r2, again := create(body)
	if r2.Status/100 != 2 || again.ID != first.ID {
		t.Errorf("replay: %s, want the first batch %s", r2, first.ID)
	}
	r3, _ := create(strings.Replace(body, "example.com", "example.org", 1))
	if r3.Status != http.StatusConflict {
		t.Errorf("same key, different body: %s, want 409", r3)
	} else if _, err := IsProblem(r3); err != nil {
		t.Error(err)
	}
	ids, err := c.ListBatchIDs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 1 || ids[0] != first.ID {
		t.Errorf("batches %v, want only %s", ids, first.ID)
	}
}

// TestPauseResumeCancel pauses a running batch, checks that nothing more
// is sent while it is paused, resumes it, then cancels it: every item ends
// succeeded or cancelled, and the receiver got exactly the succeeded ones.
func TestPauseResumeCancel(t *testing.T) {
	t.Parallel()
	const n = 3_000
	ctx := context.Background()
	secret := randomSecret(t)
	recv := startReceiver(t, ReceiverOptions{Secret: secret})
	_, c := startServer(t, serverOptions{allowPrivate: true})
	if _, err := c.CreateConnection(ctx, "hooks", secret, nil); err != nil {
		t.Fatal(err)
	}
	draft, err := c.CreateBatch(ctx, map[string]any{
		"module": "webhook", "connection": "hooks",
		"template": map[string]any{"url": recv.URL + "/hook"},
		"options":  map[string]any{"concurrency": 8, "rate_per_second": 1000},
	})
	if err != nil {
		t.Fatal(err)
	}
	uploadNDJSON(ctx, t, c, draft.ID, n)
	if err := c.StartBatch(ctx, draft.ID); err != nil {
		t.Fatal(err)
	}
	action := func(name string) {
		t.Helper()
		resp, err := c.JSON(ctx, http.MethodPost, "/v1/batches/"+draft.ID+"/"+name, nil)
		if err != nil || resp.Status/100 != 2 {
			t.Fatalf("%s: %v %v", name, resp, err)
		}
	}
	waitDistinct := func(atLeast int) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for recv.Distinct() < atLeast {
			if time.Now().After(deadline) {
				t.Fatalf("receiver stuck at %d, waiting for %d", recv.Distinct(), atLeast)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}

	waitDistinct(n / 10)
	action("pause")
	paused, err := c.WaitBatch(ctx, draft.ID, 30*time.Second, func(b Batch) bool { return b.Status == "paused" && b.Counts.InFlight == 0 })
	if err != nil {
		t.Fatal(err)
	}
	seen := recv.Requests()
	// A negative check needs a window: at 1,000 items/s, half a second
	// would show hundreds of requests if the pause did not hold.
	time.Sleep(500 * time.Millisecond)
	if now := recv.Requests(); now != seen {
		t.Errorf("%d requests arrived while the batch was paused", now-seen)
	}
	if int64(recv.Distinct()) != paused.Counts.Succeeded {
		t.Errorf("paused with %d succeeded, the receiver saw %d items", paused.Counts.Succeeded, recv.Distinct())
	}
	t.Logf("paused at %d succeeded", paused.Counts.Succeeded)

	action("resume")
	waitDistinct(int(paused.Counts.Succeeded) + n/10)
	action("cancel")
	b, err := c.WaitBatch(ctx, draft.ID, 30*time.Second, func(b Batch) bool { return b.Status == "cancelled" && b.Counts.InFlight == 0 })
	if err != nil {
		t.Fatal(err)
	}
	if b.Counts.Succeeded+b.Counts.Cancelled != n || b.Counts.Cancelled == 0 {
		t.Errorf("cancelled batch counts %+v, want succeeded + cancelled = %d with some cancelled", b.Counts, n)
	}
	seen = recv.Requests()
	time.Sleep(500 * time.Millisecond)
	if now := recv.Requests(); now != seen {
		t.Errorf("%d requests arrived after the batch was cancelled", now-seen)
	}
	if int64(recv.Distinct()) != b.Counts.Succeeded {
		t.Errorf("cancelled with %d succeeded, the receiver saw %d items", b.Counts.Succeeded, recv.Distinct())
	}
	t.Logf("cancelled: %d succeeded, %d cancelled", b.Counts.Succeeded, b.Counts.Cancelled)
	resp, err := c.JSON(ctx, http.MethodPost, "/v1/batches/"+draft.ID+"/resume", nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != http.StatusConflict {
		t.Errorf("resume of a cancelled batch: %s, want 409", resp)
	}
}
