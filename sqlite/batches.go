package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"strings"
	"time"

	"github.com/batchsender/batchsender"
)

const batchColumns = `id, project_id, module, connection_id, provider, status, status_reason, template, options,
	idempotency_key, request_hash, total, pending, in_flight, succeeded, failed, cancelled, skipped, unknown,
	created_at, updated_at, started_at, completed_at`

// queryer is what reads need from *sql.DB and *sql.Tx alike.
type queryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func scanBatch(row interface{ Scan(...any) error }) (batchsender.Batch, error) {
	var b batchsender.Batch
	var template sql.NullString
	var options string
	var idem sql.NullString
	var created, updated int64
	var started, completed sql.NullInt64
	c := &b.Counts
	if err := row.Scan(&b.ID, &b.ProjectID, &b.Module, &b.ConnectionID, &b.Provider, &b.Status, &b.StatusReason,
		&template, &options, &idem, &b.RequestHash, &b.Total,
		&c.Pending, &c.InFlight, &c.Succeeded, &c.Failed, &c.Cancelled, &c.Skipped, &c.Unknown,
		&created, &updated, &started, &completed); err != nil {
		return b, err
	}
	if template.Valid {
		b.Template = json.RawMessage(template.String)
	}
	if err := json.Unmarshal([]byte(options), &b.Options); err != nil {
		return b, fmt.Errorf("decoding options of batch %s: %w", b.ID, err)
	}
	if b.Options.SendAt != nil {
		t := b.Options.SendAt.UTC()
		b.Options.SendAt = &t
	}
	b.IdempotencyKey = idem.String
	b.CreatedAt, b.UpdatedAt = fromMS(created), fromMS(updated)
	b.StartedAt, b.CompletedAt = fromNullMS(started), fromNullMS(completed)
	return b, nil
}

// batchGet reads the project's batch through q (the reader pool, or the
// writer's transaction to see its own changes).
func batchGet(ctx context.Context, q queryer, projectID, id string) (batchsender.Batch, error) {
	b, err := scanBatch(q.QueryRowContext(ctx, `SELECT `+batchColumns+` FROM batches WHERE id = ? AND project_id = ?`, id, projectID))
	if errors.Is(err, sql.ErrNoRows) {
		return b, batchsender.Errorf(batchsender.ENOTFOUND, "batch %q not found", id)
	}
	if err != nil {
		return b, fmt.Errorf("reading batch: %w", err)
	}
	return b, nil
}

// batchRef is what the item paths need to know of a batch.
type batchRef struct {
	key       int64
	id        string
	projectID string
	status    batchsender.BatchStatus
}

// batchRefGet looks a batch up by ID; projectID "" matches any project.
func batchRefGet(ctx context.Context, q queryer, projectID, id string) (batchRef, error) {
	r := batchRef{id: id}
	err := q.QueryRowContext(ctx, `SELECT bkey, project_id, status FROM batches WHERE id = ? AND (? = '' OR project_id = ?)`,
		id, projectID, projectID).Scan(&r.key, &r.projectID, &r.status)
	if errors.Is(err, sql.ErrNoRows) {
		return r, batchsender.Errorf(batchsender.ENOTFOUND, "batch %q not found", id)
	}
	if err != nil {
		return r, fmt.Errorf("reading batch: %w", err)
	}
	return r, nil
}

// BatchCreate implements batchsender.Store. The batch row and every item are
// written in one transaction, items streamed from the iterator in
// multi-row inserts, so memory stays bounded whatever the batch size.
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
	var template any
	if len(p.Template) > 0 {
		template = string(p.Template)
	}
	var idem any
	if p.IdempotencyKey != "" {
		idem = p.IdempotencyKey
	}
	now := ms(s.now())
	var started any
	if p.Status == batchsender.BatchRunning {
		started = now
	}
	id := batchsender.NewID("bat")
	var b batchsender.Batch
	err = s.writeTx(ctx, func(tx *sql.Tx) error {
		if err := projectExists(ctx, tx, p.ProjectID); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `INSERT INTO batches (id, project_id, module, connection_id, provider, status,
			template, options, max_attempts, send_at, idempotency_key, request_hash, created_at, updated_at, started_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			id, p.ProjectID, p.Module, p.ConnectionID, p.Provider, p.Status, template, string(options),
			p.Options.WithDefaults().MaxAttempts, nullMS(p.Options.SendAt), idem, p.RequestHash, now, now, started)
		if isUnique(err) {
			return batchsender.Errorf(batchsender.ECONFLICT, "idempotency key %q was already used", p.IdempotencyKey)
		}
		if err != nil {
			return fmt.Errorf("creating batch: %w", err)
		}
		key, err := res.LastInsertId()
		if err != nil {
			return fmt.Errorf("creating batch: %w", err)
		}
		n, err := s.insertItems(ctx, tx, key, 0, now, p.Items)
		if err != nil {
			return err
		}
		// A running batch with nothing to do is complete at once.
		if _, err := tx.ExecContext(ctx, `UPDATE batches SET total = ?, pending = ?,
			status = CASE WHEN ? = 0 AND status = 'running' THEN 'completed' ELSE status END,
			completed_at = CASE WHEN ? = 0 AND status = 'running' THEN ? END
			WHERE bkey = ?`, n, n, n, n, now, key); err != nil {
			return fmt.Errorf("counting items: %w", err)
		}
		b, err = batchGet(ctx, tx, p.ProjectID, id)
		return err
	})
	if err != nil {
		return batchsender.Batch{}, err
	}
	return b, nil
}

// itemInsertRows is how many items one INSERT statement carries. Fewer
// statements mean fewer trips through the driver; 500 rows of 6 values
// stay far below SQLite's limit of 32766 bound parameters.
const itemInsertRows = 500

// itemInsertCols is the number of values bound per item row.
const itemInsertCols = 6

// itemInsertSQL returns a multi-row insert of n items.
func itemInsertSQL(n int) string {
	return `INSERT INTO items (batch_key, seq, id, data, next_attempt_at, updated_at) VALUES ` + valuesList(n, itemInsertCols)
}

// valuesList returns n rows of cols placeholders: "(?,?),(?,?)".
func valuesList(n, cols int) string {
	row := "(?" + strings.Repeat(",?", cols-1) + ")"
	return row + strings.Repeat(","+row, n-1)
}

// insertItems streams items into the batch in multi-row inserts, numbering
// them after seq, and returns how many it wrote. An error yielded by the
// iterator is returned as it is.
func (s *Store) insertItems(ctx context.Context, tx *sql.Tx, batchKey int64, seq int64, now int64, items iter.Seq2[batchsender.NewItem, error]) (int64, error) {
	if items == nil {
		return 0, nil
	}
	full := tx.StmtContext(ctx, s.st.insertItems)
	defer full.Close()
	args := make([]any, 0, itemInsertRows*itemInsertCols)
	var n int64
	flush := func() error {
		rows := len(args) / itemInsertCols
		if rows == 0 {
			return nil
		}
		var err error
		if rows == itemInsertRows {
			_, err = full.ExecContext(ctx, args...)
		} else {
			_, err = tx.ExecContext(ctx, itemInsertSQL(rows), args...)
		}
		if err != nil {
			return fmt.Errorf("inserting items: %w", err)
		}
		args = args[:0]
		return nil
	}
	for it, err := range items {
		if err != nil {
			return 0, err
		}
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("inserting items: %w", err)
		}
		seq++
		n++
		data := string(it.Data)
		if data == "" {
			data = "{}"
		}
		args = append(args, batchKey, seq, batchsender.NewID("itm"), data, now, now)
		if len(args) == cap(args) {
			if err := flush(); err != nil {
				return 0, err
			}
		}
	}
	if err := flush(); err != nil {
		return 0, err
	}
	return n, nil
}

// BatchGetByID implements batchsender.Store.
func (s *Store) BatchGetByID(ctx context.Context, projectID, id string) (batchsender.Batch, error) {
	return batchGet(ctx, s.r, projectID, id)
}

// BatchGetByIdempotencyKey implements batchsender.Store.
func (s *Store) BatchGetByIdempotencyKey(ctx context.Context, projectID, key string) (batchsender.Batch, error) {
	b, err := scanBatch(s.r.QueryRowContext(ctx, `SELECT `+batchColumns+` FROM batches
		WHERE project_id = ? AND idempotency_key = ?`, projectID, key))
	if errors.Is(err, sql.ErrNoRows) {
		return b, batchsender.Errorf(batchsender.ENOTFOUND, "no batch with that idempotency key")
	}
	if err != nil {
		return b, fmt.Errorf("reading batch: %w", err)
	}
	return b, nil
}

// BatchList implements batchsender.Store. A Limit of 0 means 100; at most
// 1000 batches come back.
func (s *Store) BatchList(ctx context.Context, p batchsender.BatchListParams) ([]batchsender.Batch, error) {
	// IDs are time-ordered, so "newest first after the cursor" is a range
	// scan of batches_project_id backwards from the cursor.
	rows, err := s.r.QueryContext(ctx, `SELECT `+batchColumns+` FROM batches
		WHERE project_id = ? AND (? = '' OR id < ?)
		ORDER BY id DESC LIMIT ?`, p.ProjectID, p.Cursor, p.Cursor, limit(p.Limit, 100, 1000))
	if err != nil {
		return nil, fmt.Errorf("listing batches: %w", err)
	}
	return collectBatches(rows)
}

func collectBatches(rows *sql.Rows) ([]batchsender.Batch, error) {
	defer rows.Close()
	out := []batchsender.Batch{}
	for rows.Next() {
		b, err := scanBatch(rows)
		if err != nil {
			return nil, fmt.Errorf("reading batch: %w", err)
		}
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing batches: %w", err)
	}
	return out, nil
}

// BatchItemsAppend implements batchsender.Store.
func (s *Store) BatchItemsAppend(ctx context.Context, p batchsender.BatchItemsAppendParams) (batchsender.Batch, error) {
	var b batchsender.Batch
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var err error
		b, err = batchGet(ctx, tx, p.ProjectID, p.BatchID)
		if err != nil {
			return err
		}
		if b.Status != batchsender.BatchDraft {
			return batchsender.Errorf(batchsender.ECONFLICT, "items can only be added to a draft batch; batch %s is %s", b.ID, b.Status)
		}
		now := ms(s.now())
		// Seqs run 1..total without gaps (items are never deleted), so the
		// new ones continue after total.
		ref, err := batchRefGet(ctx, tx, p.ProjectID, p.BatchID)
		if err != nil {
			return err
		}
		n, err := s.insertItems(ctx, tx, ref.key, b.Total, now, p.Items)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE batches SET total = total + ?, pending = pending + ?, updated_at = ?
			WHERE bkey = ?`, n, n, now, ref.key); err != nil {
			return fmt.Errorf("counting items: %w", err)
		}
		b, err = batchGet(ctx, tx, p.ProjectID, p.BatchID)
		return err
	})
	if err != nil {
		return batchsender.Batch{}, err
	}
	return b, nil
}

// BatchTransition implements batchsender.Store.
func (s *Store) BatchTransition(ctx context.Context, p batchsender.BatchTransitionParams) (batchsender.Batch, error) {
	now := p.Now
	if now.IsZero() {
		now = s.now()
	}
	nowMS := ms(now)
	var b batchsender.Batch
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var err error
		b, err = batchGet(ctx, tx, p.ProjectID, p.BatchID)
		if err != nil {
			return err
		}
		ref, err := batchRefGet(ctx, tx, p.ProjectID, p.BatchID)
		if err != nil {
			return err
		}
		if err := s.transition(ctx, tx, ref.key, b, p, nowMS); err != nil {
			return err
		}
		b, err = batchGet(ctx, tx, p.ProjectID, p.BatchID)
		return err
	})
	if err != nil {
		return batchsender.Batch{}, err
	}
	return b, nil
}

func notApplicable(a batchsender.BatchAction, b batchsender.Batch) error {
	return batchsender.Errorf(batchsender.ECONFLICT, "cannot %s a %s batch", strings.ReplaceAll(string(a), "_", " "), b.Status)
}

// transition applies one action inside the writer's transaction.
func (s *Store) transition(ctx context.Context, tx *sql.Tx, key int64, b batchsender.Batch, p batchsender.BatchTransitionParams, now int64) error {
	// runOrSchedule is the status a batch takes when it may go: scheduled
	// while send_at lies ahead, otherwise running (or completed when it has
	// no live item left).
	runOrSchedule := func() batchsender.BatchStatus {
		switch {
		case b.Options.SendAt != nil && ms(*b.Options.SendAt) > now:
			return batchsender.BatchScheduled
		case b.Counts.Live() == 0:
			return batchsender.BatchCompleted
		}
		return batchsender.BatchRunning
	}
	setStatus := func(st batchsender.BatchStatus, reason string) error {
		_, err := tx.ExecContext(ctx, `UPDATE batches SET status = ?, status_reason = ?, updated_at = ?,
			started_at = CASE WHEN ? = 'running' THEN COALESCE(started_at, ?) ELSE started_at END,
			completed_at = CASE WHEN ? IN ('completed', 'cancelled') THEN ? ELSE NULL END
			WHERE bkey = ?`, st, reason, now, st, now, st, now, key)
		if err != nil {
			return fmt.Errorf("changing batch status: %w", err)
		}
		return nil
	}
	switch p.Action {
	case batchsender.ActionStart:
		if b.Status != batchsender.BatchDraft {
			return notApplicable(p.Action, b)
		}
		if b.Total == 0 {
			return batchsender.Errorf(batchsender.ECONFLICT, "batch has no items")
		}
		return setStatus(runOrSchedule(), "")
	case batchsender.ActionPause:
		if b.Status != batchsender.BatchScheduled && b.Status != batchsender.BatchRunning {
			return notApplicable(p.Action, b)
		}
		return setStatus(batchsender.BatchPaused, p.Reason)
	case batchsender.ActionResume:
		if b.Status != batchsender.BatchPaused {
			return notApplicable(p.Action, b)
		}
		return setStatus(runOrSchedule(), "")
	case batchsender.ActionCancel:
		if b.Status.Terminal() {
			return notApplicable(p.Action, b)
		}
		if err := cancelPending(ctx, tx, key, now); err != nil {
			return err
		}
		return setStatus(batchsender.BatchCancelled, p.Reason)
	case batchsender.ActionRetryFailed:
		if b.Status == batchsender.BatchCancelled {
			return notApplicable(p.Action, b)
		}
		if b.Counts.Failed+b.Counts.Unknown == 0 {
			return batchsender.Errorf(batchsender.ECONFLICT, "batch has no failed or unknown items to retry")
		}
		// Fresh attempts: the attempt count starts again from zero, and
		// the items are due at once.
		res, err := tx.ExecContext(ctx, `UPDATE items SET status = 'pending', attempts = 0, next_attempt_at = ?, updated_at = ?
			WHERE batch_key = ? AND status IN ('failed', 'unknown')`, now, now, key)
		if err != nil {
			return fmt.Errorf("retrying failed items: %w", err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return fmt.Errorf("retrying failed items: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE batches SET pending = pending + ?, failed = 0, unknown = 0, updated_at = ?
			WHERE bkey = ?`, n, now, key); err != nil {
			return fmt.Errorf("counting retried items: %w", err)
		}
		if b.Status == batchsender.BatchCompleted {
			return setStatus(batchsender.BatchRunning, "")
		}
		return nil
	}
	return batchsender.Errorf(batchsender.EINVALID, "unknown batch action %q", p.Action)
}

// cancelPending turns the batch's pending items into cancelled ones and
// moves the counts along.
func cancelPending(ctx context.Context, tx *sql.Tx, key int64, now int64) error {
	res, err := tx.ExecContext(ctx, `UPDATE items SET status = 'cancelled', updated_at = ?
		WHERE batch_key = ? AND status = 'pending'`, now, key)
	if err != nil {
		return fmt.Errorf("cancelling items: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("cancelling items: %w", err)
	}
	if n == 0 {
		return nil
	}
	if _, err := tx.ExecContext(ctx, `UPDATE batches SET pending = pending - ?, cancelled = cancelled + ?, updated_at = ?
		WHERE bkey = ?`, n, n, now, key); err != nil {
		return fmt.Errorf("counting cancelled items: %w", err)
	}
	return nil
}

// runnableSQL lists running batches with pending items (limit). The
// partial index batches_running holds only running batches.
const runnableSQL = `SELECT ` + batchColumns + ` FROM batches INDEXED BY batches_running
	WHERE status = 'running' AND pending > 0 LIMIT ?`

// BatchesRunnable implements batchsender.Store.
func (s *Store) BatchesRunnable(ctx context.Context, limit int) ([]batchsender.Batch, error) {
	if limit <= 0 {
		return []batchsender.Batch{}, nil
	}
	rows, err := s.r.QueryContext(ctx, runnableSQL, limit)
	if err != nil {
		return nil, fmt.Errorf("listing runnable batches: %w", err)
	}
	return collectBatches(rows)
}

// activateSQL starts scheduled batches whose send_at has come (completed_at,
// started_at, updated_at, now), through the partial index
// batches_scheduled.
const activateSQL = `UPDATE batches SET
	status = CASE WHEN pending + in_flight = 0 THEN 'completed' ELSE 'running' END,
	completed_at = CASE WHEN pending + in_flight = 0 THEN ? END,
	started_at = COALESCE(started_at, ?), updated_at = ?
	WHERE status = 'scheduled' AND (send_at IS NULL OR send_at <= ?)`

// BatchesActivateDue implements batchsender.Store.
func (s *Store) BatchesActivateDue(ctx context.Context, now time.Time) (int, error) {
	nowMS := ms(now)
	res, err := s.w.ExecContext(ctx, activateSQL, nowMS, nowMS, nowMS, nowMS)
	if err != nil {
		return 0, fmt.Errorf("activating scheduled batches: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("activating scheduled batches: %w", err)
	}
	return int(n), nil
}
