package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/client"
	"github.com/batchsender/batchsender/internal/pgtest"
)

// newSchemaURL returns a database URL in a fresh schema, dropped when the
// test ends.
func newSchemaURL(t *testing.T) string {
	t.Helper()
	return pgtest.SchemaURL(t, "bscmd_")
}

// testSecretsKey is a 32-byte secrets key in hex.
const testSecretsKey = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

func TestPostgresNeedsTheSharedSecretsKey(t *testing.T) {
	t.Parallel()
	for _, cmd := range []string{"serve", "worker"} {
		e := env{envDatabaseURL: "postgres://nobody@127.0.0.1:1/none", envDataDir: t.TempDir(), envAddr: "127.0.0.1:0"}
		var out, errOut syncBuffer
		err := run(context.Background(), []string{cmd}, e.get, strings.NewReader(""), &out, &errOut)
		if err == nil || !strings.Contains(err.Error(), envSecretKey+" must be set") {
			t.Fatalf("%s without a secrets key: got %v, want the shared-key error", cmd, err)
		}
	}
}

// testWorker is `batchsender worker` running in process.
type testWorker struct {
	HealthURL string
	Stderr    *syncBuffer
}

var healthRE = regexp.MustCompile(`health on (http://\S+)`)

// startWorker runs a worker with the environment e and a health listener,
// stopping it (and failing the test if it does not stop cleanly) at the end.
func startWorker(t *testing.T, e env) *testWorker {
	t.Helper()
	w := &testWorker{Stderr: &syncBuffer{}}
	var out syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"worker", "--health-addr", "127.0.0.1:0"}, e.get, strings.NewReader(""), &out, w.Stderr)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("worker: %v; stderr:\n%s", err, w.Stderr)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("worker did not stop within 30s")
		}
	})
	waitFor(t, 30*time.Second, "the worker's health address", func() bool {
		m := healthRE.FindStringSubmatch(out.String())
		if m != nil {
			w.HealthURL = m[1]
		}
		return m != nil
	})
	return w
}

// get returns the status and body of a GET.
func get(t *testing.T, u string) (int, string) {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hc.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

var leaderRE = regexp.MustCompile(`(?m)^batchsender_leader ([01])$`)

// leaderGauge reads batchsender_leader from a /metrics URL.
func leaderGauge(t *testing.T, metricsURL string) string {
	t.Helper()
	code, body := get(t, metricsURL)
	m := leaderRE.FindStringSubmatch(body)
	if code != http.StatusOK || m == nil {
		t.Fatalf("%s answered %d without batchsender_leader:\n%s", metricsURL, code, body)
	}
	return m[1]
}

func TestServeAndWorkerShareAPostgresDatabase(t *testing.T) {
	t.Parallel()
	recv := startReceiver(t)
	dbURL := newSchemaURL(t)
	nodeEnv := env{
		envDatabaseURL:  dbURL,
		envSecretKey:    testSecretsKey,
		envAllowPrivate: "true",
		envLogLevel:     "warn",
		envDataDir:      t.TempDir(),
	}
	w := startWorker(t, nodeEnv)
	s := startServer(t, env{envDatabaseURL: dbURL, envSecretKey: testSecretsKey, envAllowPrivate: "true", envBootstrapKey: bootstrapKey})
	c := s.client(t, bootstrapKey)
	ctx := context.Background()
	if _, err := c.ConnectionCreate(ctx, client.ConnectionCreateRequest{
		Provider: "webhook.http", Name: "hooks", Config: map[string]any{},
		Secrets: map[string]any{"signing_secret": testSecret},
	}); err != nil {
		t.Fatal(err)
	}
	const n = 200
	items := make([]any, n)
	for i := range items {
		items[i] = map[string]any{"payload": map[string]any{"n": i}}
	}
	b, err := c.BatchCreate(ctx, client.BatchCreateRequest{
		Module: "webhook", Connection: "hooks",
		Template: map[string]any{"url": recv.URL + "/hook"},
		Items:    items,
		Options:  &batchsender.BatchOptions{Concurrency: 16, MaxAttempts: 3},
	})
	if err != nil {
		t.Fatal(err)
	}
	final := follow(t, c, b.ID)
	if final.Status != batchsender.BatchCompleted || final.Counts.Succeeded != n {
		t.Fatalf("batch ended %s with counts %+v, want %d succeeded", final.Status, final.Counts, n)
	}
	distinct, bad := recv.stats()
	if len(bad) > 0 || distinct != n {
		t.Fatalf("receiver saw %d distinct webhook-ids (want %d) and %d bad signatures", distinct, n, len(bad))
	}

	// The worker answers its probes, and exactly one node holds the
	// maintenance role.
	if code, _ := get(t, w.HealthURL+"/healthz"); code != http.StatusOK {
		t.Fatalf("worker /healthz answered %d", code)
	}
	if code, _ := get(t, w.HealthURL+"/readyz"); code != http.StatusOK {
		t.Fatalf("worker /readyz answered %d", code)
	}
	waitFor(t, 10*time.Second, "exactly one leader", func() bool {
		return leaderGauge(t, s.URL+"/metrics")+leaderGauge(t, w.HealthURL+"/metrics") == "01" ||
			leaderGauge(t, s.URL+"/metrics")+leaderGauge(t, w.HealthURL+"/metrics") == "10"
	})
	if strings.Contains(s.Stderr.String()+w.Stderr.String(), "postgres://") {
		t.Fatalf("a node logged the database URL")
	}
}

func TestMigrateStoreCopiesASQLiteInstallation(t *testing.T) {
	t.Parallel()
	recv := startReceiver(t)
	s, c := webhookServer(t)
	ctx := context.Background()
	// One delivered batch (items and attempts) and one draft.
	b, err := c.BatchCreate(ctx, client.BatchCreateRequest{
		Module: "webhook", Connection: "hooks",
		Template: map[string]any{"url": recv.URL + "/hook"},
		Items:    []any{map[string]any{"payload": 1}, map[string]any{"payload": 2}, map[string]any{"url": recv.URL + "/fail", "payload": 3}},
		Options:  &batchsender.BatchOptions{MaxAttempts: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	before := follow(t, c, b.ID)
	if _, err := c.BatchCreate(ctx, client.BatchCreateRequest{
		Module: "webhook", Connection: "hooks",
		Template: map[string]any{"url": recv.URL + "/hook"},
	}); err != nil {
		t.Fatal(err)
	}

	// A running server holds the data directory: migrate-store refuses.
	dbURL := newSchemaURL(t)
	if out, err := s.admin(t, "migrate-store", "--from", s.DataDir, "--to", dbURL); err == nil || !strings.Contains(out+err.Error(), "stop the server") {
		t.Fatalf("migrate-store next to a running server: %v\n%s", err, out)
	}
	if err := s.shutdown(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	out, err := s.admin(t, "migrate-store", "--from", filepath.Join(s.DataDir, sqliteFile), "--to", dbURL)
	if err != nil {
		t.Fatalf("migrate-store: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`(?m)^\s*items\s+3\s+3\s*$`).MatchString(out) || !strings.Contains(out, "verified") {
		t.Fatalf("migrate-store output lacks the verified counts:\n%s", out)
	}
	// Into a database that holds data already: refused.
	if out, err := s.admin(t, "migrate-store", "--from", s.DataDir, "--to", dbURL); err == nil {
		t.Fatalf("second migrate-store into the same database succeeded:\n%s", out)
	}

	// A PostgreSQL server with the SQLite installation's key sees the same
	// batch, and the connection's sealed secret still opens: a new batch
	// is delivered signed.
	key, err := os.ReadFile(filepath.Join(s.DataDir, "secret.key"))
	if err != nil {
		t.Fatal(err)
	}
	pg := startServer(t, env{envDatabaseURL: dbURL, envSecretKey: strings.TrimSpace(string(key)), envAllowPrivate: "true"})
	pc := pg.client(t, bootstrapKey)
	after, err := pc.BatchGet(ctx, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	if after.Status != before.Status || after.Counts != before.Counts || after.Total != before.Total {
		t.Fatalf("batch after the move: %s %+v, before: %s %+v", after.Status, after.Counts, before.Status, before.Counts)
	}
	nb, err := pc.BatchCreate(ctx, client.BatchCreateRequest{
		Module: "webhook", Connection: "hooks",
		Template: map[string]any{"url": recv.URL + "/hook"},
		Items:    []any{map[string]any{"payload": 5}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if final := follow(t, pc, nb.ID); final.Counts.Succeeded != 1 {
		t.Fatalf("batch on the moved installation ended %s %+v", final.Status, final.Counts)
	}
	if _, bad := recv.stats(); len(bad) > 0 {
		t.Fatalf("bad signatures after the move: %v", bad)
	}
}
