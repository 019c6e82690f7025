package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"iter"
	"log/slog"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/internal/pgtest"
	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"
)

func testURL() string { return pgtest.URL() }

func TestMain(m *testing.M) {
	// An unreachable database fails the package loudly instead of skipping
	// it: a silently skipped store suite would pass CI while testing
	// nothing.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	conn, err := pgx.Connect(ctx, testURL())
	if err == nil {
		err = conn.Ping(ctx)
		_ = conn.Close(ctx)
	}
	cancel()
	if err != nil {
		shown := "the URL in BATCHSENDER_TEST_DATABASE_URL"
		if u, perr := url.Parse(testURL()); perr == nil {
			shown = u.Redacted() // never print a password
		}
		fmt.Fprintf(os.Stderr, "FAIL: PostgreSQL is unreachable at %s (set BATCHSENDER_TEST_DATABASE_URL, or start it: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start): %v\n", shown, err)
		os.Exit(1)
	}
	goleak.VerifyTestMain(m)
}

// newSchemaURL returns a database URL in a fresh schema, dropped when the
// test ends.
func newSchemaURL(t testing.TB) string {
	t.Helper()
	return pgtest.SchemaURL(t, "bstest_")
}

// openStore opens a store on databaseURL, closed when the test ends.
func openStore(t testing.TB, databaseURL string) *Store {
	t.Helper()
	s, err := Open(context.Background(), databaseURL, testLogger(t))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// newStore opens a store in a fresh schema of its own.
func newStore(t testing.TB) *Store {
	t.Helper()
	return openStore(t, newSchemaURL(t))
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// fixture is a project with a connection, ready for batches.
type fixture struct {
	s       *Store
	project batchsender.Project
	conn    batchsender.Connection
}

func setup(t testing.TB, s *Store) fixture {
	t.Helper()
	ctx := context.Background()
	p, err := s.ProjectCreate(ctx, "p-"+batchsender.NewID("x"))
	if err != nil {
		t.Fatalf("ProjectCreate: %v", err)
	}
	c, err := s.ConnectionCreate(ctx, batchsender.ConnectionCreateParams{
		ProjectID: p.ID, Provider: "webhook.http", Name: "hooks", Config: json.RawMessage(`{}`),
	})
	if err != nil {
		t.Fatalf("ConnectionCreate: %v", err)
	}
	return fixture{s: s, project: p, conn: c}
}

// items yields n items with small JSON data.
func items(n int) iter.Seq2[batchsender.NewItem, error] {
	return func(yield func(batchsender.NewItem, error) bool) {
		for i := range n {
			if !yield(batchsender.NewItem{Data: json.RawMessage(fmt.Sprintf(`{"url":"http://127.0.0.1/%d","n":%d}`, i, i))}, nil) {
				return
			}
		}
	}
}

func (f fixture) batch(t testing.TB, status batchsender.BatchStatus, n int, opts batchsender.BatchOptions) batchsender.Batch {
	t.Helper()
	b, err := f.s.BatchCreate(context.Background(), batchsender.BatchCreateParams{
		ProjectID: f.project.ID, Module: "webhook", ConnectionID: f.conn.ID, Provider: "webhook.http",
		Status: status, Options: opts, Items: items(n),
	})
	if err != nil {
		t.Fatalf("BatchCreate: %v", err)
	}
	return b
}

func (f fixture) get(t testing.TB, id string) batchsender.Batch {
	t.Helper()
	b, err := f.s.BatchGetByID(context.Background(), f.project.ID, id)
	if err != nil {
		t.Fatalf("BatchGetByID: %v", err)
	}
	return b
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
