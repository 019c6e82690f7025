package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/client"
)

func TestVersionAndModules(t *testing.T) {
	t.Parallel()
	var out syncBuffer
	if err := run(context.Background(), []string{"version"}, env{}.get, strings.NewReader(""), &out, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "batchsender "+version+" ") {
		t.Fatalf("version printed %q", out.String())
	}
	var mods syncBuffer
	if err := run(context.Background(), []string{"modules"}, env{}.get, strings.NewReader(""), &mods, &mods); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(mods.String(), "webhook.http") {
		t.Fatalf("modules does not list webhook.http:\n%s", mods.String())
	}
}

func TestServeBootstrapKeyWorks(t *testing.T) {
	t.Parallel()
	s := startServer(t, env{envBootstrapKey: bootstrapKey})
	ctx := context.Background()
	if _, err := s.client(t, bootstrapKey).ConnectionList(ctx); err != nil {
		t.Fatalf("bootstrap key refused: %v", err)
	}
	_, err := s.client(t, bootstrapKey+"x").ConnectionList(ctx)
	if client.StatusCode(err) != http.StatusUnauthorized {
		t.Fatalf("wrong key: got %v, want 401", err)
	}
	_, err = s.client(t, "").ConnectionList(ctx)
	if client.StatusCode(err) != http.StatusUnauthorized {
		t.Fatalf("no key: got %v, want 401", err)
	}

	// The engine's counters are part of /metrics.
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hc.Get(s.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "\nbatchsender_engine_runners 0\n") {
		t.Fatalf("/metrics answered %d without the engine's counters:\n%s", resp.StatusCode, body)
	}
}

func TestKeysCreatePrintsUsableKey(t *testing.T) {
	t.Parallel()
	s, def := webhookServer(t)
	ctx := context.Background()

	// Next to the running server, on its data directory, as an operator would.
	out, err := s.admin(t, "keys", "create", "--project", "acme", "--name", "ci")
	if err != nil {
		t.Fatalf("keys create: %v\n%s", err, out)
	}
	words := strings.Fields(out)
	key := words[len(words)-1]
	if !strings.HasPrefix(key, "bsk_") {
		t.Fatalf("last word %q of %q is not a key", key, out)
	}
	acme := s.client(t, key)
	conns, err := acme.ConnectionList(ctx)
	if err != nil {
		t.Fatalf("new key refused: %v", err)
	}
	if len(conns) != 0 {
		t.Fatalf("project acme sees %d connections of project default", len(conns))
	}
	// Another project's records answer 404.
	if _, err := acme.ConnectionGet(ctx, "hooks"); client.StatusCode(err) != http.StatusNotFound {
		t.Fatalf("acme reading default's connection: got %v, want 404", err)
	}
	if _, err := def.ConnectionGet(ctx, "hooks"); err != nil {
		t.Fatal(err)
	}

	// A second key of the same project works too.
	out, err = s.admin(t, "keys", "create", "--project", "acme", "--role", "member")
	if err != nil {
		t.Fatalf("keys create: %v\n%s", err, out)
	}
	words = strings.Fields(out)
	if _, err := s.client(t, words[len(words)-1]).ConnectionList(ctx); err != nil {
		t.Fatalf("member key refused: %v", err)
	}
	if out, err := s.admin(t, "keys", "create", "--project", "acme", "--role", "boss"); err == nil {
		t.Fatalf("an unknown role was accepted: %s", out)
	}
}

func TestServeRefusesASecondServerOnTheSameDataDir(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	e := env{envAddr: "127.0.0.1:0", envDataDir: s.DataDir}
	var out, errOut syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := run(ctx, []string{"serve"}, e.get, strings.NewReader(""), &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "in use by another batchsender serve") {
		t.Fatalf("second serve: got %v, want a data directory lock error", err)
	}
}

func TestMigrateRuns(t *testing.T) {
	t.Parallel()
	e := env{envDataDir: t.TempDir(), envLogLevel: "warn"}
	var out, errOut syncBuffer
	if err := run(context.Background(), []string{"migrate"}, e.get, strings.NewReader(""), &out, &errOut); err != nil {
		t.Fatalf("migrate: %v\n%s", err, errOut.String())
	}
	if !strings.Contains(out.String(), "Migrations applied") {
		t.Fatalf("migrate printed %q", out.String())
	}
}

func TestWebhookBatchIsDeliveredSigned(t *testing.T) {
	t.Parallel()
	recv := startReceiver(t)
	s, c := webhookServer(t)
	ctx := context.Background()
	const n = 50
	items := make([]any, n)
	for i := range items {
		items[i] = map[string]any{"payload": map[string]any{"n": i}}
	}
	b, err := c.BatchCreate(ctx, client.BatchCreateRequest{
		Module: "webhook", Connection: "hooks",
		Template: map[string]any{"url": recv.URL + "/hook", "headers": map[string]string{"X-Test": "yes"}},
		Items:    items,
		Options:  &batchsender.BatchOptions{Concurrency: 8, MaxAttempts: 3},
	})
	if err != nil {
		t.Fatal(err)
	}
	final := follow(t, c, b.ID)
	if final.Status != batchsender.BatchCompleted || final.Counts.Succeeded != n {
		t.Fatalf("batch ended %s with counts %+v, want %d succeeded", final.Status, final.Counts, n)
	}
	distinct, bad := recv.stats()
	if len(bad) > 0 {
		t.Fatalf("%d deliveries had bad signatures, first: %s", len(bad), bad[0])
	}
	if distinct != n {
		t.Fatalf("receiver saw %d distinct webhook-ids, want %d", distinct, n)
	}
	// Every succeeded item's ID is the webhook-id the receiver saw.
	for it, err := range c.BatchItemsAll(ctx, b.ID, batchsender.ItemSucceeded) {
		if err != nil {
			t.Fatal(err)
		}
		recv.mu.Lock()
		got := recv.seen[it.ID]
		recv.mu.Unlock()
		if got == 0 {
			t.Fatalf("item %s succeeded but the receiver never saw it", it.ID)
		}
	}
	_ = s
}

// follow waits for the batch's end through the SDK's event stream.
func follow(t *testing.T, c *client.Client, id string) batchsender.Batch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var last batchsender.Batch
	if err := c.Events(ctx, id, func(b batchsender.Batch) error { last = b; return nil }); err != nil {
		t.Fatalf("following batch %s: %v (last %+v)", id, err, last)
	}
	return last
}

func TestCLIBatchCreateFromFiles(t *testing.T) {
	t.Parallel()
	recv := startReceiver(t)
	s, _ := webhookServer(t)
	var csvRows, ndjsonRows strings.Builder
	csvRows.WriteString("url,payload.name,payload.n\n")
	for i := range 20 {
		fmt.Fprintf(&csvRows, "%s/csv,Name %d,%d\n", recv.URL, i, i)
		fmt.Fprintf(&ndjsonRows, `{"url":%q,"payload":{"n":%d}}`+"\n", recv.URL+"/ndjson", i)
	}
	for _, tc := range []struct {
		name, content string
		extra         []string // more flags
		stdin         bool
	}{
		{name: "items.csv", content: csvRows.String()},
		{name: "items.ndjson", content: ndjsonRows.String()},
		{name: "items.txt", content: csvRows.String(), extra: []string{"--format", "csv"}},
		{name: "stdin", content: ndjsonRows.String(), extra: []string{"--format", "ndjson"}, stdin: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := []string{"batch", "create", "--connection", "hooks", "--options", `{"max_attempts":3}`}
			stdin := ""
			if tc.stdin {
				args, stdin = append(args, "--file", "-"), tc.content
			} else {
				args = append(args, "--file", writeFile(t, tc.name, tc.content))
			}
			out, errOut, err := s.cliStdin(t, bootstrapKey, stdin, append(args, tc.extra...)...)
			if err != nil {
				t.Fatalf("batch create: %v\nstderr:\n%s", err, errOut)
			}
			var b batchsender.Batch
			if err := json.Unmarshal([]byte(out), &b); err != nil {
				t.Fatalf("stdout is not the batch: %v\n%s", err, out)
			}
			if b.Status != batchsender.BatchCompleted || b.Total != 20 || b.Counts.Succeeded != 20 {
				t.Fatalf("batch %s total %d counts %+v, want completed with 20 succeeded", b.Status, b.Total, b.Counts)
			}
			for _, want := range []string{"Uploaded 20 items", "succeeded 20", "completed"} {
				if !strings.Contains(errOut, want) {
					t.Fatalf("progress on stderr lacks %q:\n%s", want, errOut)
				}
			}
		})
	}
}

func TestCLIFailedItems(t *testing.T) {
	t.Parallel()
	recv := startReceiver(t)
	s, _ := webhookServer(t)
	var rows strings.Builder
	rows.WriteString("url,payload.n\n")
	for i := range 10 {
		path := "/ok"
		if i%3 == 0 {
			path = "/fail" // 410 Gone: a permanent failure
		}
		fmt.Fprintf(&rows, "%s%s,%d\n", recv.URL, path, i)
	}
	file := writeFile(t, "items.csv", rows.String())
	out, errOut, err := s.cli(t, bootstrapKey, "batch", "create", "--connection", "hooks", "--module", "webhook", "--file", file)
	if code := exitCodeOf(err); code != 2 {
		t.Fatalf("batch create with failed items: exit %d (%v), want 2\nstderr:\n%s", code, err, errOut)
	}
	if !strings.Contains(err.Error(), "4 failed") {
		t.Fatalf("error %q does not count the failed items", err)
	}
	var b batchsender.Batch
	if err := json.Unmarshal([]byte(out), &b); err != nil {
		t.Fatalf("stdout is not the batch: %v\n%s", err, out)
	}
	if b.Counts.Failed != 4 || b.Counts.Succeeded != 6 {
		t.Fatalf("counts %+v, want 4 failed and 6 succeeded", b.Counts)
	}

	t.Run("CSV", func(t *testing.T) {
		t.Parallel()
		out, errOut, err := s.cli(t, bootstrapKey, "batch", "items", b.ID, "--status", "failed", "--format", "csv")
		if err != nil {
			t.Fatalf("%v\n%s", err, errOut)
		}
		recs, err := csv.NewReader(strings.NewReader(out)).ReadAll()
		if err != nil {
			t.Fatalf("output is not CSV: %v\n%s", err, out)
		}
		if len(recs) != 5 || strings.Join(recs[0], ",") != "seq,id,status,attempts,last_error,provider_message_id,data" {
			t.Fatalf("want a header and 4 rows, got:\n%s", out)
		}
		for _, r := range recs[1:] {
			if r[2] != "failed" || r[4] == "" || !strings.Contains(r[6], "/fail") {
				t.Fatalf("row %q is not a failed /fail item with its error", r)
			}
		}
	})
	t.Run("NDJSON", func(t *testing.T) {
		t.Parallel()
		out, errOut, err := s.cli(t, bootstrapKey, "batch", "items", b.ID, "--status", "failed")
		if err != nil {
			t.Fatalf("%v\n%s", err, errOut)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 4 {
			t.Fatalf("want 4 lines, got:\n%s", out)
		}
		for _, l := range lines {
			var it batchsender.Item
			if err := json.Unmarshal([]byte(l), &it); err != nil {
				t.Fatalf("line %q: %v", l, err)
			}
			if it.Status != batchsender.ItemFailed || it.Attempts != 1 || it.LastError == "" {
				t.Fatalf("item %+v is not failed after one attempt with an error", it)
			}
		}
	})
	t.Run("GetAndListAndRetry", func(t *testing.T) {
		t.Parallel()
		out, _, err := s.cli(t, bootstrapKey, "batch", "get", b.ID, "--output", "table")
		if err != nil || !strings.Contains(out, b.ID) || !strings.Contains(out, "completed") {
			t.Fatalf("batch get: %v\n%s", err, out)
		}
		out, _, err = s.cli(t, bootstrapKey, "batch", "list")
		if err != nil {
			t.Fatal(err)
		}
		var list []batchsender.Batch
		if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) == 0 || list[0].ID != b.ID {
			t.Fatalf("batch list: %v\n%s", err, out)
		}
	})
}

func TestCLIActionsAndErrors(t *testing.T) {
	t.Parallel()
	recv := startReceiver(t)
	s, c := webhookServer(t)
	ctx := context.Background()
	// A scheduled batch stays put, so pause, resume and cancel meet it.
	sendAt := time.Now().Add(time.Hour)
	b, err := c.BatchCreate(ctx, client.BatchCreateRequest{
		Module: "webhook", Connection: "hooks", Template: map[string]any{"url": recv.URL + "/later"},
		Items: []any{map[string]any{"payload": 1}}, Options: &batchsender.BatchOptions{SendAt: &sendAt},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		action string
		want   batchsender.BatchStatus
	}{{"pause", batchsender.BatchPaused}, {"resume", batchsender.BatchScheduled}, {"cancel", batchsender.BatchCancelled}} {
		out, errOut, err := s.cli(t, bootstrapKey, "batch", step.action, b.ID)
		if err != nil {
			t.Fatalf("batch %s: %v\n%s", step.action, err, errOut)
		}
		var got batchsender.Batch
		if err := json.Unmarshal([]byte(out), &got); err != nil || got.Status != step.want {
			t.Fatalf("batch %s: status %q (%v), want %q", step.action, got.Status, err, step.want)
		}
	}
	// Errors carry the server's problem detail.
	_, _, err = s.cli(t, bootstrapKey, "batch", "resume", b.ID)
	if err == nil || !strings.HasPrefix(err.Error(), "409 ") {
		t.Fatalf("resuming a cancelled batch: got %v, want a 409 problem", err)
	}
	_, _, err = s.cli(t, bootstrapKey, "batch", "get", "bat_nope")
	if err == nil || !strings.HasPrefix(err.Error(), "404 ") {
		t.Fatalf("missing batch: got %v, want 404", err)
	}
	_, _, err = s.cli(t, "", "batch", "list")
	if err == nil || !strings.Contains(err.Error(), envAPIKey) {
		t.Fatalf("no key: got %v, want advice to set %s", err, envAPIKey)
	}
	_, _, err = s.cli(t, bootstrapKey, "batch", "create", "--connection", "hooks", "--file", "-")
	if err == nil || !strings.Contains(err.Error(), "--format") {
		t.Fatalf("stdin without a format: got %v, want advice to pass --format", err)
	}
	bad := writeFile(t, "bad.csv", "url,payload.n\n"+recv.URL+",1\n"+recv.URL+"\n")
	_, _, err = s.cli(t, bootstrapKey, "batch", "create", "--connection", "hooks", "--file", bad)
	if err == nil || !strings.Contains(err.Error(), "row 2") {
		t.Fatalf("ragged CSV: got %v, want an error naming row 2", err)
	}
	// The empty draft of the rejected upload is cancelled, not left behind.
	page, err := c.BatchList(ctx, client.ListParams{Limit: 1})
	if err != nil || len(page.Data) != 1 {
		t.Fatalf("listing batches: %+v, %v", page, err)
	}
	if last := page.Data[0]; last.ID == b.ID || last.Status != batchsender.BatchCancelled || last.Total != 0 {
		t.Fatalf("after a rejected upload the newest batch is %s %s with %d items, want a cancelled empty draft", last.ID, last.Status, last.Total)
	}
}

func TestServeShutsDownPromptlyWithAnOpenEventStream(t *testing.T) {
	t.Parallel()
	recv := startReceiver(t)
	s, c := webhookServer(t)
	ctx := context.Background()
	sendAt := time.Now().Add(time.Hour)
	b, err := c.BatchCreate(ctx, client.BatchCreateRequest{
		Module: "webhook", Connection: "hooks", Template: map[string]any{"url": recv.URL + "/later"},
		Items: []any{map[string]any{"payload": 1}}, Options: &batchsender.BatchOptions{SendAt: &sendAt},
	})
	if err != nil {
		t.Fatal(err)
	}
	// A stream of a batch that stays scheduled never ends on its own.
	streaming := make(chan struct{})
	streamErr := make(chan error, 1)
	go func() {
		var once sync.Once
		streamErr <- c.Events(ctx, b.ID, func(batchsender.Batch) error {
			once.Do(func() { close(streaming) })
			return nil
		})
	}()
	select {
	case <-streaming:
	case err := <-streamErr:
		t.Fatalf("event stream ended before shutdown: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no event within 30s")
	}
	// Well under the HTTP shutdown timeout: the stream must not hold it up.
	if err := s.shutdown(t, httpShutdownTimeout/2); err != nil {
		t.Fatalf("shutdown: %v; stderr:\n%s", err, s.Stderr)
	}
	select {
	case err := <-streamErr:
		if err == nil {
			t.Fatal("the stream of an unfinished batch ended without an error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the event stream did not end at shutdown")
	}
}
