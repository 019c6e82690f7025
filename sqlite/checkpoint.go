package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// checkpointInterval is how often the background checkpointer copies the
// write-ahead log into the database file.
const checkpointInterval = time.Second

// checkpointer copies committed pages from the WAL into the database file
// on its own connection, off the writer's path. SQLite's default is to do
// it inside whichever commit pushes the WAL past 1000 pages, which stalls
// that commit (an ingest or a result flush) for the whole copy; the writer
// connection therefore runs with wal_autocheckpoint=0 and this goroutine
// runs PASSIVE checkpoints instead, which never block the writer or the
// readers. Durability does not depend on it: a commit is durable once it
// is in the WAL.
type checkpointer struct {
	db     *sql.DB
	logger *slog.Logger
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once
}

func startCheckpointer(path string, logger *slog.Logger) (*checkpointer, error) {
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(10000)&_pragma=synchronous(NORMAL)")
	if err != nil {
		return nil, fmt.Errorf("opening sqlite checkpointer: %w", err)
	}
	db.SetMaxOpenConns(1)
	c := &checkpointer{db: db, logger: logger, stop: make(chan struct{}), done: make(chan struct{})}
	go c.run()
	return c, nil
}

func (c *checkpointer) run() {
	defer close(c.done)
	t := time.NewTicker(checkpointInterval)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			if err := c.checkpoint(context.Background(), "PASSIVE"); err != nil {
				c.logger.Warn("sqlite checkpoint failed", slog.Any("error", err))
			}
		}
	}
}

// checkpoint runs one checkpoint of the given mode.
func (c *checkpointer) checkpoint(ctx context.Context, mode string) error {
	var busy, logFrames, done int
	if err := c.db.QueryRowContext(ctx, "PRAGMA wal_checkpoint("+mode+")").Scan(&busy, &logFrames, &done); err != nil {
		return fmt.Errorf("checkpointing: %w", err)
	}
	return nil
}

// close stops the goroutine and closes its connection.
func (c *checkpointer) close() error {
	var err error
	c.once.Do(func() {
		close(c.stop)
		<-c.done
		err = c.db.Close()
	})
	return err
}
