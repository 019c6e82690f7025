// Package postgres implements batchsender.Store on PostgreSQL through pgx,
// for running any number of BatchSender processes against one database.
//
// Beyond the Store it implements batchsender.WorkSignaler (LISTEN/NOTIFY on
// the channel batchsender_work) and batchsender.LeaderElector (a
// session-level advisory lock held on a dedicated connection).
//
// Locking discipline: every transaction that changes items of a batch first
// locks that batch's row (FOR NO KEY UPDATE, several batches in ID order) and
// only then touches items. The batch row carries the per-status counts, so it
// is written by all those transactions anyway; taking it first gives one lock
// order everywhere, so claims, results, rescues and cancels never deadlock.
// The batch lock also serialises the claims of one batch, so two claimers
// never return the same item: ChunkClaim takes first attempts behind a
// per-batch cursor (batches.claim_seq) and items due again through an index
// of their own, and lease rescue works from one leases row per claim. That
// way no index of items refers to a column that a claim or a result
// changes, and those updates are heap-only (HOT): see migration 0005.
//
// Everything the store creates lives in the connection's current schema
// (search_path), and the advisory lock keys and the NOTIFY payload are
// derived from that schema's name, so several installations (or test runs)
// can share one database without seeing each other.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/batchsender/batchsender"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Store is the PostgreSQL store. It is safe for concurrent use.
type Store struct {
	pool   *pgxpool.Pool
	logger *slog.Logger
	now    func() time.Time

	schema     string // current_schema() of the pool's connections
	leaderKey  int64  // advisory lock key of the maintenance role
	notifyData string // NOTIFY payload that marks this installation's signals

	leaderMu   sync.Mutex
	leaderConn *pgx.Conn // dedicated connection holding (or trying for) the leader lock
	leader     bool

	listenPIDv atomic.Uint32 // server PID of the WorkWait connection, for tests
}

// Interface guards.
var (
	_ batchsender.Store         = (*Store)(nil)
	_ batchsender.WorkSignaler  = (*Store)(nil)
	_ batchsender.LeaderElector = (*Store)(nil)
)

// defaultMaxConns is the pool size of a node unless the URL sets
// pool_max_conns. Each node also keeps two connections outside the pool
// (work signals and the leader lock).
const defaultMaxConns = 10

// Open connects to the database at databaseURL (a postgres:// URL or a
// key=value DSN; pgx's parameters such as pool_max_conns and search_path
// apply), applies pending migrations and returns the store.
func Open(ctx context.Context, databaseURL string, logger *slog.Logger) (*Store, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("parsing database URL: %w", err)
	}
	// BatchSender's working set (due items, items in flight) is small and
	// hot, so index lookups cost about what sequential reads do. With the
	// default random_page_cost of 4 (tuned for spinning disks) the planner
	// writes a chunk's results by scanning the whole items table of a
	// mid-sized installation rather than looking up 500 keys. Only this
	// store's sessions are affected; the URL may set another value.
	if _, ok := cfg.ConnConfig.RuntimeParams["random_page_cost"]; !ok {
		cfg.ConnConfig.RuntimeParams["random_page_cost"] = "1.1"
	}
	// pgxpool's default of max(4, CPUs) connections is tight for a node
	// whose workers claim and write for many batches while the API ingests
	// uploads; pool_max_conns in the URL overrides this.
	if !strings.Contains(databaseURL, "pool_max_conns") {
		cfg.MaxConns = max(cfg.MaxConns, defaultMaxConns)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to postgres: %w", err)
	}
	s := &Store{pool: pool, logger: logger, now: time.Now}
	var schema *string
	if err := s.pool.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connecting to postgres: %w", err)
	}
	if schema == nil {
		pool.Close()
		return nil, fmt.Errorf("connecting to postgres: no schema of the search_path exists; create it first (CREATE SCHEMA ...)")
	}
	s.schema = *schema
	s.leaderKey = lockKey("leader", s.schema)
	s.notifyData = s.schema
	if err := migrate(ctx, pool, s.schema, logger); err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

// Migrate applies pending migrations to the database at databaseURL and
// returns; it is what Open runs first. Safe to run from several processes
// at once: they queue on an advisory lock.
func Migrate(ctx context.Context, databaseURL string, logger *slog.Logger) error {
	s, err := Open(ctx, databaseURL, logger)
	if err != nil {
		return err
	}
	return s.Close()
}

// Close releases the pool and the dedicated connections, giving up the
// leader role if this store held it.
func (s *Store) Close() error {
	s.leaderMu.Lock()
	if s.leaderConn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = s.leaderConn.Close(ctx)
		cancel()
		s.leaderConn = nil
		s.leader = false
	}
	s.leaderMu.Unlock()
	s.pool.Close()
	return nil
}

// SetClock replaces the store's clock (time.Now by default), which stamps
// created_at, updated_at and the first due time of new items. For tests;
// call before using the store.
func (s *Store) SetClock(now func() time.Time) { s.now = now }

// Pool returns the store's connection pool, for health checks and tools.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Schema returns the schema the store works in.
func (s *Store) Schema() string { return s.schema }

// lockKey derives a 64-bit advisory lock key from a purpose and the schema,
// so installations in different schemas of one database never contend.
func lockKey(purpose, schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("batchsender:" + purpose + ":" + schema))
	return int64(h.Sum64())
}

// inTx runs fn in a transaction, committing if it returns nil.
func (s *Store) inTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("beginning transaction: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("committing: %w", err)
	}
	return nil
}

// PostgreSQL error codes the store maps to domain errors.
const (
	pgUniqueViolation     = "23505"
	pgForeignKeyViolation = "23503"
)

func pgCode(err error) string {
	if pe, ok := errors.AsType[*pgconn.PgError](err); ok {
		return pe.Code
	}
	return ""
}

// notFound maps pgx.ErrNoRows to ENOTFOUND and wraps anything else.
func notFound(err error, what, doing string) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return batchsender.Errorf(batchsender.ENOTFOUND, "%s not found", what)
	}
	return fmt.Errorf("%s: %w", doing, err)
}

// utc returns t in UTC, so values read back compare and print alike
// whatever the session's time zone.
func utc(t time.Time) time.Time { return t.UTC() }

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}
