package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/sqlite"
)

// storeConfig says where the data lives.
type storeConfig struct {
	// DataDir holds the SQLite file, its lock and the generated secrets key.
	DataDir string
	// DatabaseURL selects PostgreSQL when set (reserved: not wired in yet).
	DatabaseURL string
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
	// Name describes the store for the start-up log, without credentials.
	Name  string
	close func() error
}

// Close closes the store and releases what openStore took.
func (s *openedStore) Close() error { return s.close() }

// openStore opens the configured store, applying pending migrations. It is
// the one place that chooses between store implementations. exclusive takes
// the data directory's lock, for serve: two servers must never share one
// SQLite file, since each rescues all in-flight items at start. One-shot
// commands (migrate, keys create) skip it, so they work next to a running
// server; SQLite itself serialises their writes.
func openStore(ctx context.Context, cfg storeConfig, logger *slog.Logger, exclusive bool) (*openedStore, error) {
	switch {
	case cfg.DatabaseURL != "":
		return nil, errors.New(envDatabaseURL + " is set, but this build has no PostgreSQL store wired in yet; unset it to use SQLite")
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
			close: func() error {
				return errors.Join(st.Close(), release())
			},
		}, nil
	}
}
