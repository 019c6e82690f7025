package sqlite

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"testing"

	"github.com/batchsender/batchsender"
)

// pragma reads one PRAGMA through the store's writer connection.
func pragma(t *testing.T, db *sql.DB, name string) string {
	t.Helper()
	var v string
	if err := db.QueryRowContext(context.Background(), "PRAGMA "+name).Scan(&v); err != nil {
		t.Fatalf("PRAGMA %s: %v", name, err)
	}
	return v
}

func TestOpenConfiguresWALAndDurability(t *testing.T) {
	t.Parallel()
	s, err := Open(t.Context(), filepath.Join(t.TempDir(), "a", "b", "bs.db"), nil)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	for _, db := range []*sql.DB{s.w, s.r} {
		if got := pragma(t, db, "journal_mode"); got != "wal" {
			t.Errorf("journal_mode = %q, want wal", got)
		}
		if got := pragma(t, db, "synchronous"); got != "1" { // NORMAL
			t.Errorf("synchronous = %q, want 1 (NORMAL)", got)
		}
		if got := pragma(t, db, "foreign_keys"); got != "1" {
			t.Errorf("foreign_keys = %q, want 1", got)
		}
		if got := pragma(t, db, "busy_timeout"); got == "0" {
			t.Errorf("busy_timeout = %q, want a wait", got)
		}
	}
	if got := pragma(t, s.r, "query_only"); got != "1" {
		t.Errorf("reader query_only = %q, want 1", got)
	}
	if n := s.w.Stats().MaxOpenConnections; n != 1 {
		t.Errorf("writer allows %d connections, want 1", n)
	}
}

func TestReopenKeepsDataAndAppliesMigrationsOnce(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "bs.db")
	s, err := Open(ctx, path, nil)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	p, err := s.ProjectCreate(ctx, "kept")
	if err != nil {
		t.Fatalf("ProjectCreate: %v", err)
	}
	b, err := s.BatchCreate(ctx, batchsender.BatchCreateParams{
		ProjectID: p.ID, Module: "webhook", ConnectionID: "con_x", Provider: "webhook.http",
		Status: batchsender.BatchRunning, Items: func(yield func(batchsender.NewItem, error) bool) {
			for range 3 {
				if !yield(batchsender.NewItem{Data: []byte(`{}`)}, nil) {
					return
				}
			}
		},
	})
	if err != nil {
		t.Fatalf("BatchCreate: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := Migrate(ctx, path, nil); err != nil {
		t.Fatalf("Migrate on a current database: %v", err)
	}
	s, err = Open(ctx, path, nil)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	got, err := s.BatchGetByID(ctx, p.ID, b.ID)
	if err != nil || got.Total != 3 || got.Counts.Pending != 3 {
		t.Fatalf("batch after reopen = %+v, %v", got, err)
	}
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	var rows, maxVersion int
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*), MAX(version) FROM schema_migrations`).Scan(&rows, &maxVersion); err != nil {
		t.Fatalf("reading schema_migrations: %v", err)
	}
	if rows != len(ms) || maxVersion != ms[len(ms)-1].version {
		t.Fatalf("schema_migrations has %d rows up to %d, want %d up to %d", rows, maxVersion, len(ms), ms[len(ms)-1].version)
	}
}

func TestMigrateCreatesDatabase(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "new", "bs.db")
	if err := Migrate(t.Context(), path, nil); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("database file: %v", err)
	}
}

func TestOpenRefusesPathWithQuery(t *testing.T) {
	t.Parallel()
	if _, err := Open(t.Context(), filepath.Join(t.TempDir(), "x.db?mode=ro"), nil); err == nil {
		t.Fatal("Open accepted a path with a query string")
	}
}

func TestMigrationsAreNumberedInOrder(t *testing.T) {
	t.Parallel()
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range ms {
		if m.version != i+1 {
			t.Fatalf("migration %s has number %d, want %d", m.name, m.version, i+1)
		}
	}
}

func TestCloseTwice(t *testing.T) {
	t.Parallel()
	s, err := Open(t.Context(), filepath.Join(t.TempDir(), "bs.db"), nil)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	_ = s.Close() // must not panic
}
