package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
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
	b, err := scanBatch(q.QueryRowContext(ctx, `SELECT `+batchColumns+` FROM batches WHERE id = ? AND project_id = ? AND ingesting <> 1`, id, projectID))
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
	total     int64 // items beyond it belong to an append in progress
	ingesting int
}

// batchRefGet looks a visible batch up by ID; projectID "" matches any
// project.
func batchRefGet(ctx context.Context, q queryer, projectID, id string) (batchRef, error) {
	return scanBatchRef(q.QueryRowContext(ctx, batchRefSQL, id, projectID, projectID), id)
}

// batchRefSQL reads a batchRef (id, project ID or "", project ID again).
const batchRefSQL = `SELECT bkey, project_id, status, total, ingesting FROM batches
		WHERE id = ? AND (? = '' OR project_id = ?) AND ingesting <> 1`

// scanBatchRef reads the row of batchRefSQL for the batch id.
func scanBatchRef(row *sql.Row, id string) (batchRef, error) {
	r := batchRef{id: id}
	err := row.Scan(&r.key, &r.projectID, &r.status, &r.total, &r.ingesting)
	if errors.Is(err, sql.ErrNoRows) {
		return r, batchsender.Errorf(batchsender.ENOTFOUND, "batch %q not found", id)
	}
	if err != nil {
		return r, fmt.Errorf("reading batch: %w", err)
	}
	return r, nil
}

// BatchGetByID implements batchsender.Store.
func (s *Store) BatchGetByID(ctx context.Context, projectID, id string) (batchsender.Batch, error) {
	return batchGet(ctx, s.r, projectID, id)
}

// BatchGetByIdempotencyKey implements batchsender.Store.
func (s *Store) BatchGetByIdempotencyKey(ctx context.Context, projectID, key string) (batchsender.Batch, error) {
	b, err := scanBatch(s.r.QueryRowContext(ctx, `SELECT `+batchColumns+` FROM batches
		WHERE project_id = ? AND idempotency_key = ? AND ingesting <> 1`, projectID, key))
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
		WHERE project_id = ? AND (? = '' OR id < ?) AND ingesting <> 1
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
		if ref.ingesting != ingestNone {
			return batchsender.Errorf(batchsender.ECONFLICT, "an item upload to batch %s is in progress", ref.id)
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
			WHERE ikey >= ? AND ikey < ? AND status IN ('failed', 'unknown')`, now, now, ikey(key, 0), ikey(key+1, 0))
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
		WHERE batch_key = ? AND status = 'pending'`, now, key) // through items_claim
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
	WHERE status = 'running' AND pending > 0 AND ingesting = 0 LIMIT ?`

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
	WHERE status = 'scheduled' AND (send_at IS NULL OR send_at <= ?) AND ingesting = 0`

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
