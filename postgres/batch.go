package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"iter"
	"strings"
	"time"

	"github.com/batchsender/batchsender"
	"github.com/jackc/pgx/v5"
)

const batchColumns = `id, project_id, module, connection_id, provider, status, status_reason, template, options,
	total, count_pending, count_in_flight, count_succeeded, count_failed, count_cancelled, count_skipped, count_unknown,
	created_at, updated_at, started_at, completed_at, coalesce(idempotency_key, ''), request_hash`

func scanBatch(row pgx.Row) (batchsender.Batch, error) {
	var b batchsender.Batch
	var template *string
	var options string
	c := &b.Counts
	if err := row.Scan(&b.ID, &b.ProjectID, &b.Module, &b.ConnectionID, &b.Provider, &b.Status, &b.StatusReason, &template, &options,
		&b.Total, &c.Pending, &c.InFlight, &c.Succeeded, &c.Failed, &c.Cancelled, &c.Skipped, &c.Unknown,
		&b.CreatedAt, &b.UpdatedAt, &b.StartedAt, &b.CompletedAt, &b.IdempotencyKey, &b.RequestHash); err != nil {
		return batchsender.Batch{}, err
	}
	if template != nil {
		b.Template = json.RawMessage(*template)
	}
	if err := json.Unmarshal([]byte(options), &b.Options); err != nil {
		return batchsender.Batch{}, fmt.Errorf("decoding options of batch %s: %w", b.ID, err)
	}
	if b.Options.SendAt != nil {
		b.Options.SendAt = utcPtr(b.Options.SendAt)
	}
	b.CreatedAt, b.UpdatedAt = utc(b.CreatedAt), utc(b.UpdatedAt)
	b.StartedAt, b.CompletedAt = utcPtr(b.StartedAt), utcPtr(b.CompletedAt)
	return b, nil
}

func collectBatches(rows pgx.Rows) ([]batchsender.Batch, error) {
	defer rows.Close()
	out := []batchsender.Batch{}
	for rows.Next() {
		b, err := scanBatch(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, rows.Err()
}

// BatchCreate creates a batch and streams its items into PostgreSQL with
// COPY inside one transaction: memory stays bounded whatever the number of
// items, and an error from the iterator aborts the copy and rolls everything
// back. ECONFLICT if IdempotencyKey is already used in the project.
func (s *Store) BatchCreate(ctx context.Context, p batchsender.BatchCreateParams) (batchsender.Batch, error) {
	switch p.Status {
	case batchsender.BatchDraft, batchsender.BatchScheduled, batchsender.BatchRunning:
	default:
		return batchsender.Batch{}, batchsender.Errorf(batchsender.EINVALID, "a new batch cannot be %q", p.Status)
	}
	options, err := json.Marshal(p.Options)
	if err != nil {
		return batchsender.Batch{}, fmt.Errorf("encoding batch options: %w", err)
	}
	now := s.stamp()
	var idem *string
	if p.IdempotencyKey != "" {
		idem = &p.IdempotencyKey
	}
	var startedAt *time.Time
	if p.Status == batchsender.BatchRunning {
		startedAt = &now
	}
	var sendAt *time.Time
	if p.Options.SendAt != nil {
		t := ms(*p.Options.SendAt)
		sendAt = &t
	}
	id := batchsender.NewID("bat")
	var b batchsender.Batch
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO batches (id, project_id, module, connection_id, provider, status, template, options,
			max_attempts, send_at, idempotency_key, request_hash, created_at, updated_at, started_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14)`,
			id, p.ProjectID, p.Module, p.ConnectionID, p.Provider, p.Status, rawText(p.Template), string(options),
			p.Options.WithDefaults().MaxAttempts, sendAt, idem, p.RequestHash, now, startedAt)
		switch pgCode(err) {
		case "":
		case pgUniqueViolation:
			return batchsender.Errorf(batchsender.ECONFLICT, "idempotency key %q was already used for another batch", p.IdempotencyKey)
		case pgForeignKeyViolation:
			return batchsender.Errorf(batchsender.ENOTFOUND, "project not found")
		default:
			return fmt.Errorf("creating batch: %w", err)
		}
		n, err := copyItems(ctx, tx, id, p.ProjectID, 0, p.Items, now)
		if err != nil {
			return err
		}
		b, err = scanBatch(tx.QueryRow(ctx, `UPDATE batches SET total = $2::bigint, count_pending = $2::bigint,
			status = CASE WHEN status = 'running' AND $2 = 0 THEN 'completed' ELSE status END,
			completed_at = CASE WHEN status = 'running' AND $2 = 0 THEN updated_at END
			WHERE id = $1 RETURNING `+batchColumns, id, n))
		if err != nil {
			return fmt.Errorf("creating batch: %w", err)
		}
		if b.Status == batchsender.BatchRunning {
			return s.notifyTx(ctx, tx)
		}
		return nil
	})
	if err != nil {
		return batchsender.Batch{}, err
	}
	return b, nil
}

// itemSource feeds COPY from the ingest iterator, numbering items as it
// goes. It remembers the iterator's own error so that BatchCreate can return
// exactly that error, not COPY's wrapping of it.
type itemSource struct {
	next      func() (batchsender.NewItem, error, bool)
	batchID   string
	projectID string
	seq       int64
	now       time.Time
	row       []any
	err       error
}

func (src *itemSource) Next() bool {
	it, err, ok := src.next()
	if !ok {
		return false
	}
	if err != nil {
		src.err = err
		return false
	}
	src.seq++
	data := string(it.Data)
	if data == "" {
		data = "{}"
	}
	src.row = []any{batchsender.NewID("itm"), src.batchID, src.projectID, src.seq, data,
		string(batchsender.ItemPending), int32(0), src.now, src.now}
	return true
}

func (src *itemSource) Values() ([]any, error) { return src.row, nil }
func (src *itemSource) Err() error             { return src.err }

var itemCopyColumns = []string{"id", "batch_id", "project_id", "seq", "data", "status", "attempts", "next_attempt_at", "updated_at"}

// copyItems streams items into the batch after seq `after` and returns how
// many it wrote. New items are due at once: their next attempt is now.
func copyItems(ctx context.Context, tx pgx.Tx, batchID, projectID string, after int64, items iter.Seq2[batchsender.NewItem, error], now time.Time) (int64, error) {
	if items == nil {
		return 0, nil
	}
	next, stop := iter.Pull2(items)
	defer stop()
	src := &itemSource{next: next, batchID: batchID, projectID: projectID, seq: after, now: now}
	n, err := tx.CopyFrom(ctx, pgx.Identifier{"items"}, itemCopyColumns, src)
	if src.err != nil {
		return 0, src.err
	}
	if err != nil {
		return 0, fmt.Errorf("copying items: %w", err)
	}
	return n, nil
}

// BatchGetByID returns the project's batch, ENOTFOUND if none.
func (s *Store) BatchGetByID(ctx context.Context, projectID, id string) (batchsender.Batch, error) {
	b, err := scanBatch(s.pool.QueryRow(ctx, `SELECT `+batchColumns+` FROM batches WHERE id = $1 AND project_id = $2`, id, projectID))
	if err != nil {
		return batchsender.Batch{}, notFound(err, "batch", "getting batch")
	}
	return b, nil
}

// BatchGetByIdempotencyKey returns the project's batch created with key,
// ENOTFOUND if none.
func (s *Store) BatchGetByIdempotencyKey(ctx context.Context, projectID, key string) (batchsender.Batch, error) {
	b, err := scanBatch(s.pool.QueryRow(ctx, `SELECT `+batchColumns+` FROM batches WHERE project_id = $1 AND idempotency_key = $2`, projectID, key))
	if err != nil {
		return batchsender.Batch{}, notFound(err, "batch", "getting batch")
	}
	return b, nil
}

// BatchList returns the project's batches, newest first (IDs are
// time-ordered), after the cursor when one is given.
func (s *Store) BatchList(ctx context.Context, p batchsender.BatchListParams) ([]batchsender.Batch, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+batchColumns+` FROM batches
		WHERE project_id = $1 AND ($2 = '' OR id < $2)
		ORDER BY id DESC LIMIT $3`, p.ProjectID, p.Cursor, limit(p.Limit, 100, 1000))
	if err != nil {
		return nil, fmt.Errorf("listing batches: %w", err)
	}
	out, err := collectBatches(rows)
	if err != nil {
		return nil, fmt.Errorf("listing batches: %w", err)
	}
	return out, nil
}

// limit clamps a page size: def when unset, never more than max.
func limit(n, def, max int) int {
	if n <= 0 {
		return def
	}
	return min(n, max)
}

// lockBatch locks the project's batch row for the rest of the transaction
// and returns it. ENOTFOUND if the project has no such batch.
func lockBatch(ctx context.Context, tx pgx.Tx, projectID, id string) (batchsender.Batch, error) {
	b, err := scanBatch(tx.QueryRow(ctx, `SELECT `+batchColumns+` FROM batches WHERE id = $1 AND project_id = $2 FOR NO KEY UPDATE`, id, projectID))
	if err != nil {
		return batchsender.Batch{}, notFound(err, "batch", "locking batch")
	}
	return b, nil
}

// BatchItemsAppend appends items to a draft batch with COPY, numbering them
// after the existing ones, all in one transaction. ECONFLICT unless draft.
func (s *Store) BatchItemsAppend(ctx context.Context, p batchsender.BatchItemsAppendParams) (batchsender.Batch, error) {
	var b batchsender.Batch
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		cur, err := lockBatch(ctx, tx, p.ProjectID, p.BatchID)
		if err != nil {
			return err
		}
		if cur.Status != batchsender.BatchDraft {
			return batchsender.Errorf(batchsender.ECONFLICT, "items can only be added to a draft batch; this one is %s", cur.Status)
		}
		now := s.stamp()
		n, err := copyItems(ctx, tx, cur.ID, cur.ProjectID, cur.Total, p.Items, now)
		if err != nil {
			return err
		}
		b, err = scanBatch(tx.QueryRow(ctx, `UPDATE batches SET total = total + $2, count_pending = count_pending + $2, updated_at = $3
			WHERE id = $1 RETURNING `+batchColumns, cur.ID, n, now))
		if err != nil {
			return fmt.Errorf("appending items: %w", err)
		}
		return nil
	})
	if err != nil {
		return batchsender.Batch{}, err
	}
	return b, nil
}

// BatchTransition applies a life-cycle action under the batch's row lock.
func (s *Store) BatchTransition(ctx context.Context, p batchsender.BatchTransitionParams) (batchsender.Batch, error) {
	now := ms(p.Now)
	if p.Now.IsZero() {
		now = s.stamp()
	}
	var b batchsender.Batch
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		cur, err := lockBatch(ctx, tx, p.ProjectID, p.BatchID)
		if err != nil {
			return err
		}
		next, reason, d, err := s.transition(ctx, tx, cur, p, now)
		if err != nil {
			return err
		}
		b, err = scanBatch(tx.QueryRow(ctx, `UPDATE batches SET `+d.setClause(2)+`,
				status = $9::text,
				status_reason = $10::text,
				updated_at = $11::timestamptz,
				started_at = CASE WHEN $9::text = 'running' THEN coalesce(started_at, $11) ELSE started_at END,
				completed_at = CASE WHEN $9::text IN ('completed', 'cancelled') THEN $11 END
			WHERE id = $1 RETURNING `+batchColumns, d.args(cur.ID, string(next), reason, now)...))
		if err != nil {
			return fmt.Errorf("updating batch: %w", err)
		}
		if b.Status == batchsender.BatchRunning && (cur.Status != batchsender.BatchRunning || d.Pending > 0) {
			return s.notifyTx(ctx, tx)
		}
		return nil
	})
	if err != nil {
		return batchsender.Batch{}, err
	}
	return b, nil
}

// transition decides an action on the locked batch cur, changes its items
// as the action requires, and returns the batch's next status and reason
// and the change to its counts.
func (s *Store) transition(ctx context.Context, tx pgx.Tx, cur batchsender.Batch, p batchsender.BatchTransitionParams, now time.Time) (batchsender.BatchStatus, string, countsDelta, error) {
	var d countsDelta
	notApplicable := func() (batchsender.BatchStatus, string, countsDelta, error) {
		return "", "", d, batchsender.Errorf(batchsender.ECONFLICT, "cannot %s a %s batch", strings.ReplaceAll(string(p.Action), "_", " "), cur.Status)
	}
	// runOrSchedule is where start and resume lead: scheduled while send_at
	// lies ahead, otherwise running, or completed with no live item left.
	runOrSchedule := func() batchsender.BatchStatus {
		switch {
		case cur.Options.SendAt != nil && ms(*cur.Options.SendAt).After(now):
			return batchsender.BatchScheduled
		case cur.Counts.Live() == 0:
			return batchsender.BatchCompleted
		}
		return batchsender.BatchRunning
	}
	switch p.Action {
	case batchsender.ActionStart:
		if cur.Status != batchsender.BatchDraft {
			return notApplicable()
		}
		if cur.Total == 0 {
			return "", "", d, batchsender.Errorf(batchsender.ECONFLICT, "batch has no items")
		}
		return runOrSchedule(), "", d, nil
	case batchsender.ActionPause:
		if cur.Status != batchsender.BatchScheduled && cur.Status != batchsender.BatchRunning {
			return notApplicable()
		}
		return batchsender.BatchPaused, p.Reason, d, nil
	case batchsender.ActionResume:
		if cur.Status != batchsender.BatchPaused {
			return notApplicable()
		}
		return runOrSchedule(), "", d, nil
	case batchsender.ActionCancel:
		if cur.Status.Terminal() {
			return notApplicable()
		}
		// In-flight items are left to finish; only waiting ones stop. The
		// pending items are the first attempts behind the claim cursor and
		// the items waiting in items_retry (see migration 0005); two
		// statements, so that each walks its own index.
		var cancelled int64
		for _, q := range []string{
			`UPDATE items SET status = 'cancelled', updated_at = $2
				WHERE batch_id = $1 AND seq > (SELECT claim_seq FROM batches WHERE id = $1) AND status = 'pending' AND retry_at IS NULL`,
			`UPDATE items SET status = 'cancelled', retry_at = NULL, updated_at = $2
				WHERE batch_id = $1 AND retry_at IS NOT NULL`,
		} {
			tag, err := tx.Exec(ctx, q, cur.ID, now)
			if err != nil {
				return "", "", d, fmt.Errorf("cancelling items: %w", err)
			}
			cancelled += tag.RowsAffected()
		}
		d.add(batchsender.ItemPending, -cancelled)
		d.add(batchsender.ItemCancelled, cancelled)
		return batchsender.BatchCancelled, p.Reason, d, nil
	case batchsender.ActionRetryFailed:
		if cur.Status == batchsender.BatchCancelled {
			return notApplicable()
		}
		if cur.Counts.Failed+cur.Counts.Unknown == 0 {
			return "", "", d, batchsender.Errorf(batchsender.ECONFLICT, "batch has no failed or unknown items to retry")
		}
		// Fresh attempts: the count starts again from zero and the items
		// are due at once, claimed through items_retry since the batch's
		// claim cursor has passed them. The batch row is locked, so its
		// counts of failed and unknown items are exactly what moves.
		if _, err := tx.Exec(ctx, `UPDATE items SET status = 'pending', problem = false, attempts = 0,
				next_attempt_at = $2, retry_at = $2, updated_at = $2
			WHERE batch_id = $1 AND problem`, cur.ID, now); err != nil {
			return "", "", d, fmt.Errorf("retrying failed items: %w", err)
		}
		d.add(batchsender.ItemFailed, -cur.Counts.Failed)
		d.add(batchsender.ItemUnknown, -cur.Counts.Unknown)
		d.add(batchsender.ItemPending, cur.Counts.Failed+cur.Counts.Unknown)
		if cur.Status == batchsender.BatchCompleted {
			return batchsender.BatchRunning, "", d, nil
		}
		return cur.Status, cur.StatusReason, d, nil
	}
	return "", "", d, batchsender.Errorf(batchsender.EINVALID, "unknown batch action %q", p.Action)
}

// BatchesRunnable returns up to limit running batches with pending items.
func (s *Store) BatchesRunnable(ctx context.Context, limit int) ([]batchsender.Batch, error) {
	if limit <= 0 {
		return []batchsender.Batch{}, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT `+batchColumns+` FROM batches WHERE status = 'running' AND count_pending > 0 LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("listing runnable batches: %w", err)
	}
	out, err := collectBatches(rows)
	if err != nil {
		return nil, fmt.Errorf("listing runnable batches: %w", err)
	}
	return out, nil
}

// BatchesActivateDue moves scheduled batches whose send_at has come to
// running (or straight to completed when they have no live items) and
// wakes the workers.
func (s *Store) BatchesActivateDue(ctx context.Context, now time.Time) (int, error) {
	var n int64
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE batches SET
				status = CASE WHEN count_pending + count_in_flight = 0 THEN 'completed' ELSE 'running' END,
				completed_at = CASE WHEN count_pending + count_in_flight = 0 THEN $1 END,
				started_at = coalesce(started_at, $1),
				updated_at = $1
			WHERE id IN (
				-- Lock in ID order, as every other writer of batch rows does.
				SELECT id FROM batches WHERE status = 'scheduled' AND (send_at IS NULL OR send_at <= $1)
				ORDER BY id FOR NO KEY UPDATE
			)`, ms(now))
		if err != nil {
			return fmt.Errorf("activating scheduled batches: %w", err)
		}
		n = tag.RowsAffected()
		if n > 0 {
			return s.notifyTx(ctx, tx)
		}
		return nil
	})
	return int(n), err
}

// countsDelta is a change to a batch's per-status counts.
type countsDelta struct{ batchsender.Counts }

func (d *countsDelta) add(st batchsender.ItemStatus, n int64) { d.Counts.Add(st, n) }

// setClause returns the SET list adding the delta's seven counts, taken
// from parameters $first .. $first+6 in the order of batchsender.ItemStatuses.
func (d countsDelta) setClause(first int) string {
	return fmt.Sprintf(`count_pending = count_pending + $%d, count_in_flight = count_in_flight + $%d,
		count_succeeded = count_succeeded + $%d, count_failed = count_failed + $%d,
		count_cancelled = count_cancelled + $%d, count_skipped = count_skipped + $%d,
		count_unknown = count_unknown + $%d`, first, first+1, first+2, first+3, first+4, first+5, first+6)
}

// args returns id, the seven counts of the delta, then more.
func (d countsDelta) args(id string, more ...any) []any {
	c := d.Counts
	return append([]any{id, c.Pending, c.InFlight, c.Succeeded, c.Failed, c.Cancelled, c.Skipped, c.Unknown}, more...)
}
