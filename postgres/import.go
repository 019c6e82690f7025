package postgres

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/batchsender/batchsender"
	"github.com/jackc/pgx/v5"
)

// sqliteSchemaVersion is the SQLite store schema ImportSQLite reads.
const sqliteSchemaVersion = 3

// importTable maps one table of the SQLite store onto this store's.
type importTable struct {
	name string
	// from is the SQLite query; its columns come in the order of to.
	from string
	to   []string
	// ms marks the columns holding Unix milliseconds (NULL allowed), which
	// become timestamptz.
	ms map[string]bool
	// bools marks the columns holding SQLite's 0 or 1, which become
	// boolean.
	bools map[string]bool
}

// importTables reads the SQLite store's schema as of its migration 3 (see
// sqlite/migrations). A batch still being created there (ingesting = 1) is
// invisible to its users and is left out, as are items an unfinished append
// wrote beyond the batch's total.
var importTables = []importTable{
	{
		name: "projects",
		from: `SELECT id, name, created_at FROM projects ORDER BY id`,
		to:   []string{"id", "name", "created_at"},
		ms:   map[string]bool{"created_at": true},
	},
	{
		name: "api_keys",
		from: `SELECT id, project_id, name, role, secret_hash, created_at FROM api_keys ORDER BY id`,
		to:   []string{"id", "project_id", "name", "role", "secret_hash", "created_at"},
		ms:   map[string]bool{"created_at": true},
	},
	{
		name: "connections",
		from: `SELECT id, project_id, provider, name, config, secrets_sealed, secret_names, created_at, updated_at FROM connections ORDER BY id`,
		to:   []string{"id", "project_id", "provider", "name", "config", "secrets_sealed", "secret_names", "created_at", "updated_at"},
		ms:   map[string]bool{"created_at": true, "updated_at": true},
	},
	{
		name: "batches",
		from: `SELECT id, project_id, module, connection_id, provider, status, status_reason, template, options, max_attempts, send_at,
			idempotency_key, request_hash, total, pending, in_flight, succeeded, failed, cancelled, skipped, unknown,
			created_at, updated_at, started_at, completed_at FROM batches WHERE ingesting <> 1 ORDER BY id`,
		to: []string{"id", "project_id", "module", "connection_id", "provider", "status", "status_reason", "template", "options", "max_attempts", "send_at",
			"idempotency_key", "request_hash", "total", "count_pending", "count_in_flight", "count_succeeded", "count_failed", "count_cancelled", "count_skipped", "count_unknown",
			"created_at", "updated_at", "started_at", "completed_at"},
		ms: map[string]bool{"send_at": true, "created_at": true, "updated_at": true, "started_at": true, "completed_at": true},
	},
	{
		// The columns SQLite does not have are derived as migration 0005
		// derives them: the items in flight are grouped into one lease per
		// (batch, owner, expiry), numbered here and recorded in leases by
		// importDeriveSQL; retries waiting for their next attempt carry
		// retry_at; failed and unknown items are problems.
		name: "items",
		from: `SELECT i.id, b.id, b.project_id, i.seq, i.data, i.status, i.attempts, i.next_attempt_at, i.last_error, i.provider_message_id,
			i.lease_owner, i.lease_expires_at, i.units, i.updated_at,
			CASE WHEN i.status = 'pending' AND i.attempts > 0 THEN i.next_attempt_at END,
			i.status IN ('failed', 'unknown'),
			CASE WHEN i.status = 'in_flight' THEN dense_rank() OVER (ORDER BY b.id, i.lease_owner, i.lease_expires_at) END
			FROM items i JOIN batches b ON b.bkey = i.batch_key
			WHERE b.ingesting <> 1 AND i.seq <= b.total ORDER BY i.batch_key, i.seq`,
		to: []string{"id", "batch_id", "project_id", "seq", "data", "status", "attempts", "next_attempt_at", "last_error", "provider_message_id",
			"lease_owner", "lease_expires_at", "units", "updated_at", "retry_at", "problem", "lease_id"},
		ms:    map[string]bool{"next_attempt_at": true, "lease_expires_at": true, "updated_at": true, "retry_at": true},
		bools: map[string]bool{"problem": true},
	},
	{
		// COPY hands out the new IDs in the order read: each item's
		// attempts oldest first, as SQLite lists them.
		name: "attempts",
		from: `SELECT a.item_id, b.id, b.project_id, a.number, a.started_at, a.latency_ns, a.outcome, a.status_code, a.response, a.error
			FROM attempts a JOIN batches b ON b.bkey = a.batch_key WHERE b.ingesting <> 1 ORDER BY a.item_id, a.started_at, a.number`,
		to: []string{"item_id", "batch_id", "project_id", "number", "started_at", "latency_ns", "outcome", "status_code", "response", "error"},
		ms: map[string]bool{"started_at": true},
	},
	{
		name: "suppressions",
		from: `SELECT project_id, channel, address, reason, source, created_at FROM suppressions ORDER BY project_id, channel, address`,
		to:   []string{"project_id", "channel", "address", "reason", "source", "created_at"},
		ms:   map[string]bool{"created_at": true},
	},
	{
		name: "templates",
		from: `SELECT project_id, name, version, module, template, created_at FROM templates ORDER BY project_id, name, version`,
		to:   []string{"project_id", "name", "version", "module", "template", "created_at"},
		ms:   map[string]bool{"created_at": true},
	},
}

// importDeriveSQL completes the claim state of the imported items as
// migration 0005 does for live data: the leases of the items in flight, each
// batch's claim cursor after its last item that is not a pending first
// attempt, and retry_at for the pending items behind that cursor.
var importDeriveSQL = []string{
	`INSERT INTO leases (id, batch_id, owner, expires_at, live, seqs)
	SELECT lease_id, batch_id, min(lease_owner), min(lease_expires_at), count(*), array_agg(seq ORDER BY seq)
	FROM items WHERE lease_id IS NOT NULL GROUP BY lease_id, batch_id`,
	`SELECT setval('leases_id_seq', coalesce(max(id), 0) + 1, false) FROM leases`,
	`UPDATE batches b SET claim_seq = c.seq
	FROM (
		SELECT batch_id, max(seq) AS seq FROM items
		WHERE NOT (status = 'pending' AND attempts = 0)
		GROUP BY batch_id
	) c
	WHERE b.id = c.batch_id`,
	`UPDATE items i SET retry_at = i.next_attempt_at
	FROM batches b
	WHERE b.id = i.batch_id AND i.status = 'pending' AND i.retry_at IS NULL AND i.seq <= b.claim_seq`,
}

// ImportReport counts the rows ImportSQLite copied, per table.
type ImportReport map[string]int64

// ImportSQLite copies everything a SQLite store holds (projects, keys,
// connections, batches, items and their attempts, with IDs, statuses,
// counts and times unchanged) into this store, for moving an installation
// from SQLite to PostgreSQL. src is the SQLite database opened through
// database/sql (driver "sqlite", modernc.org/sqlite); the server using it
// should be stopped so the copy is a consistent snapshot.
//
// The copy is one transaction: it lands whole or not at all. The target must
// be empty (ECONFLICT otherwise), and src must be at the schema version this
// binary's SQLite store writes (EINVALID otherwise). Items that were in
// flight keep their leases, which expire and are rescued as after a crash.
// Connection secrets stay sealed as they were: keep the same
// BATCHSENDER_SECRET_KEY (or the data directory's secret.key) for the new
// store.
func (s *Store) ImportSQLite(ctx context.Context, src *sql.DB) (ImportReport, error) {
	var version int
	if err := src.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&version); err != nil {
		return nil, fmt.Errorf("importing: reading the SQLite schema version: %w", err)
	}
	if version != sqliteSchemaVersion {
		return nil, batchsender.Errorf(batchsender.EINVALID,
			"the SQLite database is at schema version %d, but this import reads version %d: open it once with the same batchsender version first", version, sqliteSchemaVersion)
	}
	// A read transaction gives one consistent snapshot of the source even
	// if something still writes to it.
	stx, err := src.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("importing: opening a SQLite read transaction: %w", err)
	}
	defer func() { _ = stx.Rollback() }()

	report := ImportReport{}
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		// Keep out other writers of this schema, and refuse to mix two
		// installations' data.
		if _, err := tx.Exec(ctx, `LOCK TABLE projects, api_keys, connections, batches, items, attempts, leases, suppressions, templates IN EXCLUSIVE MODE`); err != nil {
			return fmt.Errorf("importing: locking tables: %w", err)
		}
		var used bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM projects) OR EXISTS (SELECT 1 FROM batches)`).Scan(&used); err != nil {
			return fmt.Errorf("importing: checking the target is empty: %w", err)
		}
		if used {
			return batchsender.Errorf(batchsender.ECONFLICT, "the PostgreSQL database already holds projects; import into an empty one")
		}
		for _, t := range importTables {
			n, err := importTableRows(ctx, stx, tx, t)
			if err != nil {
				return err
			}
			report[t.name] = n
		}
		for _, q := range importDeriveSQL {
			if _, err := tx.Exec(ctx, q); err != nil {
				return fmt.Errorf("importing: deriving the claim state: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return report, nil
}

// importTableRows streams one table from SQLite into COPY.
func importTableRows(ctx context.Context, stx *sql.Tx, tx pgx.Tx, t importTable) (int64, error) {
	rows, err := stx.QueryContext(ctx, t.from)
	if err != nil {
		return 0, fmt.Errorf("importing %s: reading SQLite: %w", t.name, err)
	}
	defer rows.Close()
	src := &sqlRowsSource{rows: rows, t: t, vals: make([]any, len(t.to)), ptrs: make([]any, len(t.to))}
	for i := range src.vals {
		src.ptrs[i] = &src.vals[i]
	}
	n, err := tx.CopyFrom(ctx, pgx.Identifier{t.name}, t.to, src)
	if src.err != nil {
		return 0, fmt.Errorf("importing %s: %w", t.name, src.err)
	}
	if err != nil {
		return 0, fmt.Errorf("importing %s: %w", t.name, err)
	}
	return n, nil
}

// sqlRowsSource feeds COPY from SQLite rows, turning millisecond columns
// into times and TEXT read as bytes into strings.
type sqlRowsSource struct {
	rows *sql.Rows
	t    importTable
	vals []any
	ptrs []any
	row  []any
	err  error
}

func (src *sqlRowsSource) Next() bool {
	if !src.rows.Next() {
		src.err = src.rows.Err()
		return false
	}
	if err := src.rows.Scan(src.ptrs...); err != nil {
		src.err = err
		return false
	}
	row := make([]any, len(src.vals))
	for i, v := range src.vals {
		col := src.t.to[i]
		switch {
		case v == nil:
			row[i] = nil
		case src.t.ms[col]:
			n, ok := v.(int64)
			if !ok {
				src.err = fmt.Errorf("column %s holds %T, want milliseconds", col, v)
				return false
			}
			row[i] = time.UnixMilli(n).UTC()
		case src.t.bools[col]:
			n, ok := v.(int64)
			if !ok {
				src.err = fmt.Errorf("column %s holds %T, want 0 or 1", col, v)
				return false
			}
			row[i] = n != 0
		case col == "secret_hash" || col == "secrets_sealed":
			row[i] = asBytes(v)
		default:
			if b, ok := v.([]byte); ok {
				row[i] = string(b)
			} else {
				row[i] = v
			}
		}
	}
	src.row = row
	return true
}

func (src *sqlRowsSource) Values() ([]any, error) { return src.row, nil }
func (src *sqlRowsSource) Err() error             { return src.err }

func asBytes(v any) []byte {
	switch b := v.(type) {
	case []byte:
		return append([]byte(nil), b...)
	case string:
		return []byte(b)
	}
	return nil
}

var _ pgx.CopyFromSource = (*sqlRowsSource)(nil)
