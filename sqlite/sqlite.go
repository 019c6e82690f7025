// Package sqlite implements batchsender.Store on an embedded SQLite file
// through the pure-Go modernc.org/sqlite driver, so the binary builds with
// CGO_ENABLED=0.
//
// SQLite allows one writer at a time, so the store keeps every write on one
// connection (a *sql.DB limited to one open connection) and serves reads
// from a separate pool; in WAL mode readers never block the writer and the
// writer never blocks readers. Every write transaction is therefore kept
// short: the hot paths are a few multi-row statements each (a claim is one
// UPDATE ... RETURNING, a flush of results one UPDATE ... FROM (VALUES ...)
// per 250 results plus one multi-row INSERT of their attempts), an upload
// is written in chunks of a few thousand rows and never while the store
// waits for the uploader (see ingest.go), and checkpoints run on a
// goroutine of their own (see checkpoint.go).
//
// The schema (migrations/) clusters items by (batch, seq) and keeps only
// the indexes the hot paths need, most of them partial, so ingest touches
// three B-trees per item and a claimed-and-finished item about ten.
//
// Times are stored as UTC Unix milliseconds and returned in UTC.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/batchsender/batchsender"
)

// Store is the SQLite implementation of batchsender.Store. It is safe for
// concurrent use.
type Store struct {
	w      *sql.DB // the one writer connection
	r      *sql.DB // the reader pool
	logger *slog.Logger
	now    func() time.Time

	st stmts // the hot statements, prepared once on w
	cp *checkpointer

	ingestChunkRows int // rows per ingest transaction (see ingest.go); tests lower it
}

// stmts are the statements of the hot paths (ingest, claim, results),
// prepared once on the writer connection: a multi-row statement takes
// longer to parse than to run.
type stmts struct {
	insertItems *sql.Stmt // itemInsertRows items
	batchRef    *sql.Stmt // batchRefSQL, for claims
	claim       *sql.Stmt
	results     [len(writeSizes)]*sql.Stmt // writeSizes[i] results
	attempts    [len(writeSizes)]*sql.Stmt // writeSizes[i] attempts
	counts      *sql.Stmt
	complete    *sql.Stmt
}

// writeSizes are the row counts of the prepared result and attempt
// statements. A write of n rows uses the smallest that holds them and pads
// the rest with rows that change nothing: preparing a statement for each n
// cost more than running it.
var writeSizes = [...]int{16, 64, 128, resultRows}

// writeSize returns the index in writeSizes of the smallest size that
// holds n rows; n is at most resultRows.
func writeSize(n int) int {
	for i, size := range writeSizes {
		if n <= size {
			return i
		}
	}
	return len(writeSizes) - 1
}

func (st *stmts) all() []**sql.Stmt {
	out := []**sql.Stmt{&st.insertItems, &st.batchRef, &st.claim, &st.counts, &st.complete}
	for i := range writeSizes {
		out = append(out, &st.results[i], &st.attempts[i])
	}
	return out
}

func (st *stmts) prepare(ctx context.Context, w *sql.DB) error {
	texts := []string{itemInsertSQL(itemInsertRows), batchRefSQL, claimSQL, countsSQL, completeSQL}
	for _, size := range writeSizes {
		texts = append(texts, resultSQL(size), attemptInsertSQL(size))
	}
	for i, p := range st.all() {
		var err error
		if *p, err = w.PrepareContext(ctx, texts[i]); err != nil {
			return fmt.Errorf("preparing statement %d: %w", i, err)
		}
	}
	return nil
}

var _ batchsender.Store = (*Store)(nil)

// readers is the size of the reader pool. Reads are short; a few
// connections keep API reads from queueing behind each other.
const readers = 4

// dsn builds the connection string. The pragmas:
//   - journal_mode=WAL: readers and the writer do not block each other, and
//     a commit is one append to the write-ahead log.
//   - synchronous=NORMAL: in WAL mode a commit is durable across a crash of
//     the process (kill -9), because the WAL is written before the commit
//     returns; only an OS crash or power loss can lose the last commits
//     before the next checkpoint. That is the durability the product
//     promises, at a fraction of FULL's fsync cost.
//   - busy_timeout: another process (the migrate command, a second server by
//     mistake) holding the write lock makes us wait instead of failing.
//   - foreign_keys: enforce the REFERENCES clauses.
//   - temp_store=MEMORY: temporary tables and journals (the RETURNING
//     buffers, sorting) stay in memory instead of temporary files.
//   - journal_size_limit: once checkpointed, the WAL file is cut back to
//     64 MiB rather than keeping the size of the largest transaction.
//   - _txlock=immediate (writer only): take the write lock at BEGIN, so a
//     transaction never fails halfway on upgrading a read lock.
//   - cache_size (writer only): 16 MiB of page cache, so a large ingest
//     transaction spills fewer pages to the WAL before its commit.
//   - wal_autocheckpoint=0 (writer only): commits never stop to checkpoint;
//     the checkpointer goroutine does it (see checkpointer).
func dsn(path string, writer bool) string {
	q := "_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=foreign_keys(1)" +
		"&_pragma=temp_store(MEMORY)&_pragma=journal_size_limit(67108864)"
	if writer {
		q += "&_txlock=immediate&_pragma=cache_size(-16384)&_pragma=wal_autocheckpoint(0)"
	} else {
		q += "&_pragma=query_only(1)"
	}
	return path + "?" + q
}

// Open opens (creating if needed, with its parent directory) the database
// file at path, applies pending migrations and returns the store.
func Open(ctx context.Context, path string, logger *slog.Logger) (*Store, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if path == "" || strings.ContainsRune(path, '?') {
		return nil, fmt.Errorf("opening sqlite store: invalid path %q", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("creating data directory: %w", err)
	}
	w, err := sql.Open("sqlite", dsn(path, true))
	if err != nil {
		return nil, fmt.Errorf("opening sqlite writer: %w", err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	s := &Store{w: w, logger: logger, now: time.Now, ingestChunkRows: defaultIngestChunkRows}
	if err := migrate(ctx, w, logger); err != nil {
		_ = w.Close()
		return nil, err
	}
	r, err := sql.Open("sqlite", dsn(path, false))
	if err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("opening sqlite readers: %w", err)
	}
	r.SetMaxOpenConns(readers)
	r.SetMaxIdleConns(readers)
	s.r = r
	if err := s.st.prepare(ctx, w); err != nil {
		_ = s.Close()
		return nil, err
	}
	if s.cp, err = startCheckpointer(path, logger); err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}

// Migrate applies pending migrations to the database file at path and
// closes it again; for the migrate command.
func Migrate(ctx context.Context, path string, logger *slog.Logger) error {
	s, err := Open(ctx, path, logger)
	if err != nil {
		return err
	}
	return s.Close()
}

// Close closes both connection pools.
func (s *Store) Close() error {
	var errs []error
	if s.cp != nil {
		errs = append(errs, s.cp.close())
	}
	for _, p := range s.st.all() {
		if *p != nil {
			errs = append(errs, (*p).Close())
		}
	}
	if s.r != nil {
		errs = append(errs, s.r.Close())
	}
	errs = append(errs, s.w.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("closing sqlite store: %w", err)
	}
	return nil
}

// SetClock replaces the store's clock (time.Now by default), which stamps
// created_at and updated_at. For tests; call before using the store.
func (s *Store) SetClock(now func() time.Time) { s.now = now }

// ms converts t to UTC Unix milliseconds.
func ms(t time.Time) int64 { return t.UnixMilli() }

// fromMS converts UTC Unix milliseconds back to a UTC time.
func fromMS(v int64) time.Time { return time.UnixMilli(v).UTC() }

// fromNullMS converts a nullable column to an optional time.
func fromNullMS(v sql.NullInt64) *time.Time {
	if !v.Valid {
		return nil
	}
	t := fromMS(v.Int64)
	return &t
}

// nullMS converts an optional time to a nullable column value.
func nullMS(t *time.Time) any {
	if t == nil {
		return nil
	}
	return ms(*t)
}

// isUnique reports whether err is a UNIQUE or PRIMARY KEY violation.
func isUnique(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		c := se.Code()
		return c == sqlite3.SQLITE_CONSTRAINT_UNIQUE || c == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
	}
	return false
}

// writeTx runs fn in a transaction on the writer connection and commits it
// when fn returns nil.
func (s *Store) writeTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("beginning write transaction: %w", err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("committing: %w", err)
	}
	return nil
}

// limit clamps a page size: def when unset, never more than max.
func limit(n, def, max int) int {
	if n <= 0 {
		return def
	}
	return min(n, max)
}
