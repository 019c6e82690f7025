package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"strings"
	"time"

	"github.com/batchsender/batchsender"
)

// Ingest never holds the one writer connection while it waits for items.
// The iterator usually reads an HTTP upload, which may trickle in for
// minutes, and every other write (claims, results) queues behind the
// writer. So items are read into a bounded buffer outside any transaction
// and written in short transactions of up to Store.ingestChunkRows rows, while
// the batch stays invisible: a new batch is hidden (ingesting = 1) until
// its last chunk is in, and items appended to a draft lie beyond its total
// (ingesting = 2) until the final transaction counts them. A failed ingest
// deletes what it wrote; one that died with its process is removed by
// LeasesRescue once it has been idle for staleIngest.
//
// An upload small enough for one buffer is written in one transaction.
const (
	defaultIngestChunkRows = 5000
	ingestChunkBytes       = 4 << 20
	staleIngest            = time.Hour
)

// Values of batches.ingesting.
const (
	ingestNone      = 0
	ingestCreating  = 1
	ingestAppending = 2
)

// itemInsertRows is how many items one INSERT statement carries. Fewer
// statements mean fewer trips through the driver; 1000 rows bind 2004
// values, far below SQLite's limit of 32766.
const itemInsertRows = 1000

// ikey is the rowid of a batch's item: the items of one batch form one
// rowid range, in seq order (see the items table).
func ikey(batchKey, seq int64) int64 { return batchKey<<32 | seq }

// itemInsertSQL returns a multi-row insert of n items. Only an item's id
// and data are bound per row: the values every row shares (the first
// row's ikey and seq less one, the batch key, the time) are bound once as
// ?1 to ?4 and the rows add their offset, which SQLite computes once per
// statement as constant expressions. Binding through database/sql costs
// far more per value than the insert itself. OR ROLLBACK: any failure
// ends the whole ingest anyway, and unlike the default (ABORT) it needs
// no statement journal, a copy of every page the statement changes.
func itemInsertSQL(n int) string {
	var b strings.Builder
	b.Grow(n * 48)
	b.WriteString(`INSERT OR ROLLBACK INTO items (ikey, batch_key, seq, next_attempt_at, updated_at, id, data) VALUES `)
	for k := 1; k <= n; k++ {
		if k > 1 {
			b.WriteByte(',')
		}
		// The per-row values are plain "?": SQLite numbers them on from
		// ?4, which the first row names before them, and the driver
		// looks every numbered parameter's name up in a list, which
		// would cost a scan of all the names per value.
		fmt.Fprintf(&b, "(?1+%d,?2,?3+%d,?4,?4,?,?)", k, k)
	}
	return b.String()
}

// valuesList returns n rows of cols placeholders: "(?,?),(?,?)".
func valuesList(n, cols int) string {
	row := "(?" + strings.Repeat(",?", cols-1) + ")"
	return row + strings.Repeat(","+row, n-1)
}

// The rows of a chunk are held as the values the insert binds, id then
// data for each row, boxed by the producer: boxing a string allocates,
// and the writer's goroutine is the one the ingest waits for.

// ingester reads items from an iterator chunk by chunk and writes them.
// A producer goroutine runs the iterator (parsing and validating an
// upload) and hands over chunks while the writer writes the previous one,
// so the two use both cores; at most two chunks wait between them.
type ingester struct {
	ch   chan ingestChunk
	quit chan struct{}
	rows []any // the chunk taken by the last fill, not yet written: id, data per row
	done bool  // the last chunk has been taken
	n    int64 // rows written so far
	args []any
}

// ingestChunk is what the producer hands over: rows, or the iterator's
// error; last marks the final chunk.
type ingestChunk struct {
	rows []any // id, data per row
	err  error
	last bool
}

// startIngest starts the producer. The caller must call close.
func (s *Store) startIngest(ctx context.Context, items iter.Seq2[batchsender.NewItem, error]) *ingester {
	g := &ingester{ch: make(chan ingestChunk, 1), quit: make(chan struct{})}
	go g.produce(ctx, items, s.ingestChunkRows)
	return g
}

func (g *ingester) produce(ctx context.Context, items iter.Seq2[batchsender.NewItem, error], chunkRows int) {
	defer close(g.ch)
	send := func(c ingestChunk) bool {
		select {
		case g.ch <- c:
			return true
		case <-g.quit:
			return false
		}
	}
	rows := make([]any, 0, 2*chunkRows)
	bytes := 0
	if items != nil {
		for it, err := range items {
			if err != nil {
				send(ingestChunk{err: err})
				return
			}
			if len(rows)%512 == 0 {
				if err := ctx.Err(); err != nil {
					send(ingestChunk{err: fmt.Errorf("reading items: %w", err)})
					return
				}
			}
			data := string(it.Data)
			if data == "" {
				data = "{}"
			}
			rows = append(rows, batchsender.NewID("itm"), data)
			bytes += len(data)
			if len(rows) >= 2*chunkRows || bytes >= ingestChunkBytes {
				if !send(ingestChunk{rows: rows}) {
					return
				}
				rows, bytes = make([]any, 0, 2*chunkRows), 0
			}
		}
	}
	send(ingestChunk{rows: rows, last: true})
}

// fill takes the next chunk from the producer. An error the iterator
// yielded is returned as it is.
func (g *ingester) fill() error {
	c, ok := <-g.ch
	if !ok || c.err != nil {
		g.done = true
		if c.err == nil {
			return errors.New("reading items: the item reader stopped")
		}
		return c.err
	}
	g.rows, g.done = c.rows, c.last
	return nil
}

// close stops the producer and waits for it to end, so nothing runs the
// iterator once the store method has returned.
func (g *ingester) close() {
	close(g.quit)
	for range g.ch {
	}
}

// write inserts the buffered rows into the batch, numbered after
// base+g.n, in multi-row statements.
func (g *ingester) write(ctx context.Context, s *Store, tx *sql.Tx, batchKey, base, now int64) error {
	if len(g.rows) == 0 {
		return nil
	}
	full := tx.StmtContext(ctx, s.st.insertItems)
	defer full.Close()
	for len(g.rows) > 0 {
		k := min(len(g.rows)/2, itemInsertRows)
		seq0 := base + g.n // the seq before this statement's first row
		g.args = append(g.args[:0], ikey(batchKey, seq0), batchKey, seq0, now)
		g.args = append(g.args, g.rows[:2*k]...)
		var err error
		if k == itemInsertRows {
			_, err = full.ExecContext(ctx, g.args...)
		} else {
			_, err = tx.ExecContext(ctx, itemInsertSQL(k), g.args...)
		}
		if err != nil {
			return fmt.Errorf("inserting items: %w", err)
		}
		g.n += int64(k)
		g.rows = g.rows[2*k:]
	}
	return nil
}

// cleanupContext outlives the caller's context (often an HTTP request the
// client gave up on), so the store can still remove what it wrote.
func cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
}

// BatchCreate implements batchsender.Store.
func (s *Store) BatchCreate(ctx context.Context, p batchsender.BatchCreateParams) (batchsender.Batch, error) {
	switch p.Status {
	case batchsender.BatchDraft, batchsender.BatchScheduled, batchsender.BatchRunning:
	default:
		return batchsender.Batch{}, batchsender.Errorf(batchsender.EINVALID, "a new batch cannot be %q", p.Status)
	}
	options, err := json.Marshal(p.Options)
	if err != nil {
		return batchsender.Batch{}, fmt.Errorf("encoding options: %w", err)
	}
	var template, idem any
	if len(p.Template) > 0 {
		template = string(p.Template)
	}
	if p.IdempotencyKey != "" {
		idem = p.IdempotencyKey
	}
	now := ms(s.now())
	var started any
	if p.Status == batchsender.BatchRunning {
		started = now
	}
	id := batchsender.NewID("bat")
	token := batchsender.NewID("ing")

	g := s.startIngest(ctx, p.Items)
	defer g.close()
	if err := g.fill(); err != nil {
		return batchsender.Batch{}, err
	}
	var key int64
	// insertBatch writes the batch row, hidden while more chunks follow.
	insertBatch := func(tx *sql.Tx, ingesting int) error {
		if err := projectExists(ctx, tx, p.ProjectID); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `INSERT INTO batches (id, project_id, module, connection_id, provider, status,
			template, options, max_attempts, send_at, idempotency_key, request_hash, created_at, updated_at, started_at,
			ingesting, ingest_token)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			id, p.ProjectID, p.Module, p.ConnectionID, p.Provider, p.Status, template, string(options),
			p.Options.WithDefaults().MaxAttempts, nullMS(p.Options.SendAt), idem, p.RequestHash, now, now, started,
			ingesting, token)
		if isUnique(err) {
			return batchsender.Errorf(batchsender.ECONFLICT, "idempotency key %q was already used", p.IdempotencyKey)
		}
		if err != nil {
			return fmt.Errorf("creating batch: %w", err)
		}
		if key, err = res.LastInsertId(); err != nil {
			return fmt.Errorf("creating batch: %w", err)
		}
		return nil
	}
	// finish counts the items and shows the batch. A running batch with
	// nothing to do is complete at once.
	var b batchsender.Batch
	finish := func(tx *sql.Tx) error {
		n := g.n
		if _, err := tx.ExecContext(ctx, `UPDATE batches SET total = ?, pending = ?, ingesting = 0, ingest_token = NULL,
			status = CASE WHEN ? = 0 AND status = 'running' THEN 'completed' ELSE status END,
			completed_at = CASE WHEN ? = 0 AND status = 'running' THEN ? END
			WHERE bkey = ?`, n, n, n, n, now, key); err != nil {
			return fmt.Errorf("counting items: %w", err)
		}
		var err error
		b, err = batchGet(ctx, tx, p.ProjectID, id)
		return err
	}

	if g.done {
		err := s.writeTx(ctx, func(tx *sql.Tx) error {
			if err := insertBatch(tx, ingestNone); err != nil {
				return err
			}
			if err := g.write(ctx, s, tx, key, 0, now); err != nil {
				return err
			}
			return finish(tx)
		})
		if err != nil {
			return batchsender.Batch{}, err
		}
		return b, nil
	}

	err = s.writeTx(ctx, func(tx *sql.Tx) error {
		if err := insertBatch(tx, ingestCreating); err != nil {
			return err
		}
		return g.write(ctx, s, tx, key, 0, now)
	})
	if err != nil {
		return batchsender.Batch{}, err
	}
	err = s.ingestRest(ctx, g, key, token, 0, now, finish)
	if err != nil {
		cctx, cancel := cleanupContext(ctx)
		defer cancel()
		if cerr := s.dropCreate(cctx, key, token); cerr != nil {
			s.logger.ErrorContext(ctx, "removing a failed batch ingest", slog.String("batch_id", id), slog.Any("error", cerr))
		}
		return batchsender.Batch{}, err
	}
	return b, nil
}

// ingestRest writes the remaining chunks, one transaction each, and then
// runs finish in the last one.
func (s *Store) ingestRest(ctx context.Context, g *ingester, key int64, token string, base, now int64, finish func(*sql.Tx) error) error {
	for {
		if err := g.fill(); err != nil {
			return err
		}
		err := s.writeTx(ctx, func(tx *sql.Tx) error {
			// The heartbeat that tells LeasesRescue this ingest is alive,
			// and the check that it has not been given up as stale.
			res, err := tx.ExecContext(ctx, `UPDATE batches SET updated_at = ? WHERE bkey = ? AND ingest_token = ?`, ms(s.now()), key, token)
			if err != nil {
				return fmt.Errorf("marking ingest progress: %w", err)
			}
			if n, err := res.RowsAffected(); err != nil || n != 1 {
				return fmt.Errorf("ingest was idle for too long and has been removed (%d, %v)", n, err)
			}
			if err := g.write(ctx, s, tx, key, base, now); err != nil {
				return err
			}
			if g.done {
				return finish(tx)
			}
			return nil
		})
		if err != nil || g.done {
			return err
		}
	}
}

// dropCreate removes a hidden batch whose ingest (token) failed, with its
// items.
func (s *Store) dropCreate(ctx context.Context, key int64, token string) error {
	return s.writeTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM batches WHERE bkey = ? AND ingesting = 1 AND ingest_token = ?`, key, token)
		if err != nil {
			return fmt.Errorf("deleting batch: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return err // someone else removed it already
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM items WHERE ikey >= ? AND ikey < ?`, ikey(key, 0), ikey(key+1, 0)); err != nil {
			return fmt.Errorf("deleting items: %w", err)
		}
		return nil
	})
}

// dropAppend removes the items of a failed append (token), those beyond
// the batch's total, and ends the append.
func (s *Store) dropAppend(ctx context.Context, key int64, token string) error {
	return s.writeTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE batches SET ingesting = 0, ingest_token = NULL
			WHERE bkey = ? AND ingesting = 2 AND ingest_token = ?`, key, token)
		if err != nil {
			return fmt.Errorf("ending append: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return err // someone else ended it already
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM items
			WHERE ikey > ? + (SELECT total FROM batches WHERE bkey = ?) AND ikey < ?`, ikey(key, 0), key, ikey(key+1, 0)); err != nil {
			return fmt.Errorf("deleting items: %w", err)
		}
		return nil
	})
}

// dropStaleIngests removes ingests whose process died: hidden batches and
// appended items beyond a draft's total, idle for longer than staleIngest.
func (s *Store) dropStaleIngests(ctx context.Context, now time.Time) error {
	rows, err := s.r.QueryContext(ctx, `SELECT bkey, ingesting, ingest_token FROM batches WHERE ingesting <> 0 AND updated_at < ?`,
		ms(now.Add(-staleIngest)))
	if err != nil {
		return fmt.Errorf("finding stale ingests: %w", err)
	}
	type stale struct {
		key       int64
		ingesting int
		token     string
	}
	var found []stale
	for rows.Next() {
		var st stale
		if err := rows.Scan(&st.key, &st.ingesting, &st.token); err != nil {
			rows.Close()
			return fmt.Errorf("finding stale ingests: %w", err)
		}
		found = append(found, st)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("finding stale ingests: %w", err)
	}
	for _, st := range found {
		var err error
		if st.ingesting == ingestCreating {
			err = s.dropCreate(ctx, st.key, st.token)
		} else {
			err = s.dropAppend(ctx, st.key, st.token)
		}
		if err != nil {
			return err
		}
		s.logger.WarnContext(ctx, "removed an ingest that stopped without finishing", slog.Int64("batch_key", st.key))
	}
	return nil
}

// BatchItemsAppend implements batchsender.Store. Only one append to a
// batch runs at a time; a second one meanwhile is a conflict.
func (s *Store) BatchItemsAppend(ctx context.Context, p batchsender.BatchItemsAppendParams) (batchsender.Batch, error) {
	// Refuse early, before reading any item.
	ref, err := batchRefGet(ctx, s.r, p.ProjectID, p.BatchID)
	if err != nil {
		return batchsender.Batch{}, err
	}
	if err := appendable(ref); err != nil {
		return batchsender.Batch{}, err
	}
	g := s.startIngest(ctx, p.Items)
	defer g.close()
	if err := g.fill(); err != nil {
		return batchsender.Batch{}, err
	}
	now := ms(s.now())
	token := batchsender.NewID("ing")
	var base int64 // seqs continue after the total (items are never deleted)
	// begin checks again under the write lock and numbers from there.
	begin := func(tx *sql.Tx) error {
		var err error
		if ref, err = batchRefGet(ctx, tx, p.ProjectID, p.BatchID); err != nil {
			return err
		}
		if err := appendable(ref); err != nil {
			return err
		}
		base = ref.total
		return nil
	}
	var b batchsender.Batch
	finish := func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE batches SET total = total + ?, pending = pending + ?, updated_at = ?,
			ingesting = 0, ingest_token = NULL WHERE bkey = ?`, g.n, g.n, now, ref.key); err != nil {
			return fmt.Errorf("counting items: %w", err)
		}
		var err error
		b, err = batchGet(ctx, tx, p.ProjectID, p.BatchID)
		return err
	}
	if g.done {
		err := s.writeTx(ctx, func(tx *sql.Tx) error {
			if err := begin(tx); err != nil {
				return err
			}
			if err := g.write(ctx, s, tx, ref.key, base, now); err != nil {
				return err
			}
			return finish(tx)
		})
		if err != nil {
			return batchsender.Batch{}, err
		}
		return b, nil
	}
	err = s.writeTx(ctx, func(tx *sql.Tx) error {
		if err := begin(tx); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE batches SET ingesting = 2, ingest_token = ?, updated_at = ? WHERE bkey = ?`,
			token, now, ref.key); err != nil {
			return fmt.Errorf("starting append: %w", err)
		}
		return g.write(ctx, s, tx, ref.key, base, now)
	})
	if err != nil {
		return batchsender.Batch{}, err
	}
	if err := s.ingestRest(ctx, g, ref.key, token, base, now, finish); err != nil {
		cctx, cancel := cleanupContext(ctx)
		defer cancel()
		if cerr := s.dropAppend(cctx, ref.key, token); cerr != nil {
			s.logger.ErrorContext(ctx, "removing a failed append", slog.String("batch_id", p.BatchID), slog.Any("error", cerr))
		}
		return batchsender.Batch{}, err
	}
	return b, nil
}

// appendable refuses appends to anything but a draft without an append
// in progress.
func appendable(ref batchRef) error {
	if ref.status != batchsender.BatchDraft {
		return batchsender.Errorf(batchsender.ECONFLICT, "items can only be added to a draft batch; batch %s is %s", ref.id, ref.status)
	}
	if ref.ingesting != ingestNone {
		return batchsender.Errorf(batchsender.ECONFLICT, "another item upload to batch %s is in progress", ref.id)
	}
	return nil
}
