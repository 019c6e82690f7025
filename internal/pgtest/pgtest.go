// Package pgtest gives tests a PostgreSQL of their own: the test database
// URL and a fresh schema per test, dropped when the test ends. Tests that use
// it fail, never skip, when PostgreSQL is unreachable: a skipped PostgreSQL
// test would pass CI while testing nothing.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// DefaultURL is the PostgreSQL of the development machine and CI: trust
// authentication on loopback, database test.
const DefaultURL = "postgres://root@127.0.0.1:5432/test?sslmode=disable"

// URL returns BATCHSENDER_TEST_DATABASE_URL, or DefaultURL when it is unset.
func URL() string {
	if u := os.Getenv("BATCHSENDER_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return DefaultURL
}

// Redacted returns URL() with any password hidden, for messages.
func Redacted() string {
	u, err := url.Parse(URL())
	if err != nil {
		return "the URL in BATCHSENDER_TEST_DATABASE_URL"
	}
	return u.Redacted()
}

// SchemaURL creates a schema named prefix + random hex, dropped when the test
// ends, and returns a database URL whose connections work in it.
func SchemaURL(t testing.TB, prefix string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := prefix + hex.EncodeToString(b[:])
	conn, err := pgx.Connect(ctx, URL())
	if err != nil {
		t.Fatalf("PostgreSQL is unreachable at %s (set BATCHSENDER_TEST_DATABASE_URL, or start it with bash .ci/run): %v", Redacted(), err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	if _, err := conn.Exec(ctx, `CREATE SCHEMA `+schema); err != nil {
		t.Fatalf("creating schema: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, URL())
		if err != nil {
			t.Errorf("connecting to drop schema: %v", err)
			return
		}
		defer func() { _ = conn.Close(context.Background()) }()
		if _, err := conn.Exec(ctx, `DROP SCHEMA `+schema+` CASCADE`); err != nil {
			t.Errorf("dropping schema: %v", err)
		}
	})
	u, err := url.Parse(URL())
	if err != nil {
		t.Fatalf("parsing the test database URL: %v", err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}
