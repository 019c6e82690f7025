package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/postgres"
	"github.com/batchsender/batchsender/sqlite"
)

// storeConfig says where the data lives.
type storeConfig struct {
	// DataDir holds the SQLite file, its lock and the generated secrets key.
	DataDir string
	// DatabaseURL selects PostgreSQL when set. Never logged: it may carry a
	// password.
	DatabaseURL string
}

// storeFlags registers --data-dir and --database-url on cmd. The database
// URL flag has no default in its definition, so --help never prints a
// password from the environment; the environment fills it in before the
// command runs.
func storeFlags(cmd *cobra.Command, getenv func(string) string, cfg *storeConfig) {
	cmd.Flags().StringVar(&cfg.DataDir, "data-dir", envOr(getenv, envDataDir, defaultDataDir), "directory of the SQLite database and secrets key file (env "+envDataDir+")")
	cmd.Flags().StringVar(&cfg.DatabaseURL, "database-url", "", "postgres:// URL: use PostgreSQL instead of SQLite (env "+envDatabaseURL+")")
	prev := cmd.PreRunE
	cmd.PreRunE = func(c *cobra.Command, args []string) error {
		cfg.DatabaseURL = strings.TrimSpace(cfg.DatabaseURL)
		if cfg.DatabaseURL == "" {
			cfg.DatabaseURL = strings.TrimSpace(getenv(envDatabaseURL))
		}
		if prev != nil {
			return prev(c, args)
		}
		return nil
	}
}

// sqliteFile is the database file's name inside the data directory.
const sqliteFile = "batchsender.db"

// openedStore is a store with what the caller must know about it.
type openedStore struct {
	batchsender.Store
	// SingleProcess is true when no other process can use the store (SQLite
	// under the data directory lock): then every in-flight item at start
	// belongs to a dead process and can be rescued at once.
	SingleProcess bool
	// Shared is true when several processes share the store (PostgreSQL):
	// they must then share the secrets key too.
	Shared bool
	// Name describes the store for the start-up log, without credentials.
	Name string
	// Leader reports whether this process holds the cluster's maintenance
	// role now. A single-process store always does.
	Leader func() bool
	close  func() error
}

// Close closes the store and releases what openStore took.
func (s *openedStore) Close() error { return s.close() }

// openStore opens the configured store, applying pending migrations. It is
// the one place that chooses between store implementations. exclusive takes
// the data directory's lock, for serve: two servers must never share one
// SQLite file, since each rescues all in-flight items at start. One-shot
// commands (migrate, keys create) skip it, so they work next to a running
// server; SQLite itself serialises their writes. PostgreSQL takes no lock:
// any number of nodes share it, leases expire normally and the elected
// leader rescues them.
//
// The embedded Store is the implementation itself (not a wrapper hiding its
// methods), so the engine finds the optional WorkSignaler and LeaderElector.
func openStore(ctx context.Context, cfg storeConfig, logger *slog.Logger, exclusive bool) (*openedStore, error) {
	switch {
	case cfg.DatabaseURL != "":
		name, err := describeDatabaseURL(cfg.DatabaseURL)
		if err != nil {
			return nil, err
		}
		pg, err := postgres.Open(ctx, cfg.DatabaseURL, logger)
		if err != nil {
			return nil, fmt.Errorf("opening PostgreSQL store %s: %w", name, err)
		}
		st := &leaderStore{Store: pg}
		return &openedStore{
			Store:  st,
			Shared: true,
			Name:   name + " schema " + pg.Schema(),
			Leader: st.leader.Load,
			close:  pg.Close,
		}, nil
	default:
		release := func() error { return nil }
		if exclusive {
			var err error
			if release, err = lockDataDir(cfg.DataDir); err != nil {
				return nil, err
			}
		}
		path := filepath.Join(cfg.DataDir, sqliteFile)
		st, err := sqlite.Open(ctx, path, logger)
		if err != nil {
			_ = release()
			return nil, fmt.Errorf("opening SQLite store %s: %w", path, err)
		}
		return &openedStore{
			Store:         st,
			SingleProcess: exclusive,
			Name:          "sqlite " + path,
			Leader:        func() bool { return true },
			close: func() error {
				return errors.Join(st.Close(), release())
			},
		}, nil
	}
}

// describeDatabaseURL names the database for logs: host, port and database,
// never the user's password.
func describeDatabaseURL(databaseURL string) (string, error) {
	c, err := pgx.ParseConfig(databaseURL)
	if err != nil {
		// pgx's parse errors redact the password.
		return "", fmt.Errorf("%s: %w", envDatabaseURL, err)
	}
	return fmt.Sprintf("postgres %s:%d/%s", c.Host, c.Port, c.Database), nil
}

// leaderStore is the PostgreSQL store, remembering the outcome of the
// engine's last LeaderTry for the batchsender_leader gauge.
type leaderStore struct {
	*postgres.Store
	leader atomic.Bool
}

// LeaderTry asks the store and records the answer.
func (s *leaderStore) LeaderTry(ctx context.Context) (bool, error) {
	ok, err := s.Store.LeaderTry(ctx)
	s.leader.Store(ok && err == nil)
	return ok, err
}

// Interface guards: the engine relies on these to share work and elect
// one maintenance node.
var (
	_ batchsender.WorkSignaler  = (*leaderStore)(nil)
	_ batchsender.LeaderElector = (*leaderStore)(nil)
)
