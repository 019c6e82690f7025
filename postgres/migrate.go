package postgres

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// migration is one numbered schema change, from migrations/NNNN_name.sql.
type migration struct {
	version int
	name    string
	sql     string
}

func loadMigrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrationFS, "migrations")
	if err != nil {
		return nil, fmt.Errorf("reading migrations: %w", err)
	}
	var ms []migration
	for _, e := range entries {
		base, ok := strings.CutSuffix(e.Name(), ".sql")
		if !ok {
			continue
		}
		num, name, _ := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: name must start with a positive number", e.Name())
		}
		body, err := fs.ReadFile(migrationFS, "migrations/"+e.Name())
		if err != nil {
			return nil, fmt.Errorf("reading migration %s: %w", e.Name(), err)
		}
		ms = append(ms, migration{version: v, name: name, sql: string(body)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i := 1; i < len(ms); i++ {
		if ms[i].version == ms[i-1].version {
			return nil, fmt.Errorf("two migrations numbered %d", ms[i].version)
		}
	}
	return ms, nil
}

// migrate applies every pending migration in one transaction. The
// transaction first takes an advisory lock private to the schema, so nodes
// starting together queue up: the first applies the migrations, the others
// then find nothing left to do. PostgreSQL's DDL is transactional, so a
// failing migration leaves the schema as it was.
func migrate(ctx context.Context, pool *pgxpool.Pool, schema string, logger *slog.Logger) error {
	return migrateTo(ctx, pool, schema, logger, math.MaxInt)
}

// migrateTo applies the pending migrations up to version upTo; tests use it
// to build data under an older schema and then migrate it.
func migrateTo(ctx context.Context, pool *pgxpool.Pool, schema string, logger *slog.Logger, upTo int) error {
	ms, err := loadMigrations()
	if err != nil {
		return err
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("migrating: beginning transaction: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockKey("migrate", schema)); err != nil {
		return fmt.Errorf("migrating: taking the migration lock: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    integer PRIMARY KEY,
		name       text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now()
	)`); err != nil {
		return fmt.Errorf("migrating: creating schema_migrations: %w", err)
	}
	rows, err := tx.Query(ctx, `SELECT version FROM schema_migrations`)
	if err != nil {
		return fmt.Errorf("migrating: reading applied versions: %w", err)
	}
	applied, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		return fmt.Errorf("migrating: reading applied versions: %w", err)
	}
	done := make(map[int]bool, len(applied))
	latest := 0
	for _, v := range applied {
		done[v] = true
		latest = max(latest, v)
	}
	if n := len(ms); n > 0 && latest > ms[n-1].version {
		// A newer binary migrated this database; running old code on a new
		// schema could corrupt it.
		return fmt.Errorf("migrating: the database is at schema version %d, newer than this binary knows (%d): upgrade batchsender", latest, ms[n-1].version)
	}
	for _, m := range ms {
		if done[m.version] || m.version > upTo {
			continue
		}
		if _, err := tx.Exec(ctx, m.sql); err != nil {
			return fmt.Errorf("migrating: applying %04d_%s: %w", m.version, m.name, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, m.version, m.name); err != nil {
			return fmt.Errorf("migrating: recording %04d_%s: %w", m.version, m.name, err)
		}
		logger.Info("applied migration", slog.Int("version", m.version), slog.String("name", m.name), slog.String("schema", schema))
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("migrating: committing: %w", err)
	}
	return nil
}
