package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/batchsender/batchsender"
)

const itemColumns = `id, batch_id, project_id, seq, data, status, attempts, next_attempt_at, last_error,
	provider_message_id, lease_owner, lease_expires_at, updated_at`

func scanItem(row interface{ Scan(...any) error }) (batchsender.Item, error) {
	var it batchsender.Item
	var data string
	var next, updated int64
	var owner sql.NullString
	var expires sql.NullInt64
	if err := row.Scan(&it.ID, &it.BatchID, &it.ProjectID, &it.Seq, &data, &it.Status, &it.Attempts, &next,
		&it.LastError, &it.ProviderMessageID, &owner, &expires, &updated); err != nil {
		return it, err
	}
	it.Data = json.RawMessage(data)
	it.NextAttemptAt, it.UpdatedAt = fromMS(next), fromMS(updated)
	it.LeaseOwner = owner.String
	it.LeaseExpiresAt = fromNullMS(expires)
	return it, nil
}

func collectItems(rows *sql.Rows) ([]batchsender.Item, error) {
	defer rows.Close()
	out := []batchsender.Item{}
	for rows.Next() {
		it, err := scanItem(rows)
		if err != nil {
			return nil, fmt.Errorf("reading item: %w", err)
		}
		out = append(out, it)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading items: %w", err)
	}
	return out, nil
}

// ItemList implements batchsender.Store. A Limit of 0 means 100; at most
// 10,000 items come back.
func (s *Store) ItemList(ctx context.Context, p batchsender.ItemListParams) ([]batchsender.Item, error) {
	var one int
	err := s.r.QueryRowContext(ctx, `SELECT 1 FROM batches WHERE id = ? AND project_id = ?`, p.BatchID, p.ProjectID).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, batchsender.Errorf(batchsender.ENOTFOUND, "batch %q not found", p.BatchID)
	}
	if err != nil {
		return nil, fmt.Errorf("reading batch: %w", err)
	}
	n := limit(p.Limit, 100, 10_000)
	var rows *sql.Rows
	if p.Status == "" {
		// A range of the (batch_id, seq) primary key.
		rows, err = s.r.QueryContext(ctx, `SELECT `+itemColumns+` FROM items
			WHERE batch_id = ? AND seq > ? ORDER BY seq LIMIT ?`, p.BatchID, p.AfterSeq, n)
	} else {
		// A range of items_batch_status.
		rows, err = s.r.QueryContext(ctx, `SELECT `+itemColumns+` FROM items INDEXED BY items_batch_status
			WHERE batch_id = ? AND status = ? AND seq > ? ORDER BY seq LIMIT ?`, p.BatchID, p.Status, p.AfterSeq, n)
	}
	if err != nil {
		return nil, fmt.Errorf("listing items: %w", err)
	}
	return collectItems(rows)
}

// ItemAttemptList implements batchsender.Store.
func (s *Store) ItemAttemptList(ctx context.Context, projectID, itemID string) ([]batchsender.Attempt, error) {
	var one int
	err := s.r.QueryRowContext(ctx, `SELECT 1 FROM items WHERE id = ? AND project_id = ?`, itemID, projectID).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, batchsender.Errorf(batchsender.ENOTFOUND, "item %q not found", itemID)
	}
	if err != nil {
		return nil, fmt.Errorf("reading item: %w", err)
	}
	// rowid order is insertion order: oldest attempt first.
	rows, err := s.r.QueryContext(ctx, `SELECT item_id, number, started_at, latency_ns, outcome, status_code, response, error
		FROM attempts WHERE item_id = ? ORDER BY rowid`, itemID)
	if err != nil {
		return nil, fmt.Errorf("listing attempts: %w", err)
	}
	defer rows.Close()
	out := []batchsender.Attempt{}
	for rows.Next() {
		var a batchsender.Attempt
		var started, latency int64
		if err := rows.Scan(&a.ItemID, &a.Number, &started, &latency, &a.Outcome, &a.StatusCode, &a.Response, &a.Error); err != nil {
			return nil, fmt.Errorf("reading attempt: %w", err)
		}
		a.StartedAt, a.Latency = fromMS(started), time.Duration(latency)
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing attempts: %w", err)
	}
	return out, nil
}

// claimSQL claims due items of one running batch in one statement. The
// subquery walks items_claim (partial on pending) from the oldest due item,
// so its cost is the number of items claimed, not the batch size; the batch
// check sits in the same statement so a paused or cancelled batch yields
// nothing. It is PostgreSQL's
// "UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)" without the
// locking clause: SQLite's single writer already serialises claims.
const claimSQL = `UPDATE items SET status = 'in_flight', attempts = attempts + 1,
	lease_owner = ?, lease_expires_at = ?, updated_at = ?
WHERE batch_id = ? AND seq IN (
	SELECT seq FROM items INDEXED BY items_claim
	WHERE batch_id = ? AND status = 'pending' AND next_attempt_at <= ?
	  AND EXISTS (SELECT 1 FROM batches WHERE id = ? AND status = 'running')
	ORDER BY next_attempt_at, seq
	LIMIT ?)
RETURNING ` + itemColumns

// ChunkClaim implements batchsender.Store.
func (s *Store) ChunkClaim(ctx context.Context, p batchsender.ChunkClaimParams) ([]batchsender.Item, error) {
	if p.Limit <= 0 {
		return []batchsender.Item{}, nil
	}
	if p.Owner == "" {
		return nil, batchsender.Errorf(batchsender.EINVALID, "a claim needs an owner")
	}
	now := ms(p.Now)
	var items []batchsender.Item
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, claimSQL, p.Owner, ms(p.LeaseUntil), now, p.BatchID, p.BatchID, now, p.BatchID, p.Limit)
		if err != nil {
			return fmt.Errorf("claiming items: %w", err)
		}
		if items, err = collectItems(rows); err != nil {
			return fmt.Errorf("claiming items: %w", err)
		}
		if len(items) == 0 {
			return nil
		}
		if _, err := tx.ExecContext(ctx, `UPDATE batches SET pending = pending - ?, in_flight = in_flight + ?, updated_at = ?
			WHERE id = ?`, len(items), len(items), now, p.BatchID); err != nil {
			return fmt.Errorf("counting claimed items: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// RETURNING order is unspecified: give the items back in claim order.
	slices.SortFunc(items, func(a, b batchsender.Item) int {
		if c := a.NextAttemptAt.Compare(b.NextAttemptAt); c != 0 {
			return c
		}
		return int(a.Seq - b.Seq)
	})
	return items, nil
}

// resultRows is how many results one UPDATE ... FROM (VALUES ...) statement
// carries, and resultCols the values bound per result.
const (
	resultRows = 250
	resultCols = 7
)

// resultSQL writes up to n results in one statement. Only items still in
// flight under the result's owner change (a rescued lease makes the late
// result stale); the RETURNING rows are the ones that did. A retry result
// for an item of a cancelled batch makes it cancelled, since nothing will
// claim it again.
func resultSQL(n int) string {
	var sb strings.Builder
	sb.WriteString(`UPDATE items SET updated_at = ?,
	status = CASE WHEN v.column3 = 'pending'
	              AND (SELECT status FROM batches WHERE id = items.batch_id) = 'cancelled'
	         THEN 'cancelled' ELSE v.column3 END,
	next_attempt_at = CASE WHEN v.column3 = 'pending' THEN v.column4 ELSE items.next_attempt_at END,
	last_error = v.column5,
	provider_message_id = CASE WHEN v.column6 <> '' THEN v.column6 ELSE items.provider_message_id END,
	units = items.units + v.column7,
	lease_owner = NULL, lease_expires_at = NULL
FROM (VALUES `)
	for i := range n {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString("(?,?,?,?,?,?,?)")
	}
	sb.WriteString(`) AS v
WHERE items.id = v.column1 AND items.status = 'in_flight' AND items.lease_owner = v.column2
RETURNING items.id, items.batch_id, items.project_id, items.status, items.attempts`)
	return sb.String()
}

// attemptRows and attemptCols size the multi-row attempt insert.
const (
	attemptRows = 250
	attemptCols = 10
)

func attemptInsertSQL(n int) string {
	var sb strings.Builder
	sb.WriteString(`INSERT INTO attempts (item_id, batch_id, project_id, number, started_at, latency_ns, outcome,
		status_code, response, error) VALUES `)
	for i := range n {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString("(?,?,?,?,?,?,?,?,?,?)")
	}
	return sb.String()
}

// countDelta accumulates per-batch count changes within one transaction.
type countDelta map[string]*batchsender.Counts

func (d countDelta) add(batchID string, st batchsender.ItemStatus, n int64) {
	c := d[batchID]
	if c == nil {
		c = &batchsender.Counts{}
		d[batchID] = c
	}
	c.Add(st, n)
}

// apply writes the count changes, then completes every running batch that
// has no live item left.
func (d countDelta) apply(ctx context.Context, tx *sql.Tx, now int64) error {
	for id, c := range d {
		if _, err := tx.ExecContext(ctx, `UPDATE batches SET pending = pending + ?, in_flight = in_flight + ?,
			succeeded = succeeded + ?, failed = failed + ?, cancelled = cancelled + ?, skipped = skipped + ?,
			unknown = unknown + ?, updated_at = ? WHERE id = ?`,
			c.Pending, c.InFlight, c.Succeeded, c.Failed, c.Cancelled, c.Skipped, c.Unknown, now, id); err != nil {
			return fmt.Errorf("updating batch counts: %w", err)
		}
		if c.InFlight < 0 || c.Pending < 0 {
			if _, err := tx.ExecContext(ctx, `UPDATE batches SET status = 'completed', completed_at = ?, updated_at = ?
				WHERE id = ? AND status = 'running' AND pending = 0 AND in_flight = 0`, now, now, id); err != nil {
				return fmt.Errorf("completing batch: %w", err)
			}
		}
	}
	return nil
}

// ItemResultsWriteMany implements batchsender.Store.
func (s *Store) ItemResultsWriteMany(ctx context.Context, results []batchsender.ItemResult) (int, error) {
	if len(results) == 0 {
		return 0, nil
	}
	// Results are written in rounds in which each item appears once, so a
	// row the UPDATE returns names exactly one result. One round unless the
	// caller repeats an item (a stale and a fresh result for it, say).
	var rounds [][]batchsender.ItemResult
	seen := make(map[string]int, len(results))
	for _, r := range results {
		if r.Status != batchsender.ItemPending && !r.Status.Terminal() {
			return 0, batchsender.Errorf(batchsender.EINVALID, "item result status %q is not pending or terminal", r.Status)
		}
		k := seen[r.ItemID]
		seen[r.ItemID] = k + 1
		if k == len(rounds) {
			rounds = append(rounds, make([]batchsender.ItemResult, 0, len(results)))
		}
		rounds[k] = append(rounds[k], r)
	}
	now := ms(s.now())
	applied := 0
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		delta := countDelta{}
		attemptArgs := make([]any, 0, attemptRows*attemptCols)
		flushAttempts := func() error {
			if len(attemptArgs) == 0 {
				return nil
			}
			if _, err := tx.ExecContext(ctx, attemptInsertSQL(len(attemptArgs)/attemptCols), attemptArgs...); err != nil {
				return fmt.Errorf("recording attempts: %w", err)
			}
			attemptArgs = attemptArgs[:0]
			return nil
		}
		args := make([]any, 0, 1+resultRows*resultCols)
		for _, round := range rounds {
			byID := make(map[string]*batchsender.ItemResult, len(round))
			for i := range round {
				byID[round[i].ItemID] = &round[i]
			}
			for chunk := range slices.Chunk(round, resultRows) {
				args = append(args[:0], now)
				for i := range chunk {
					r := &chunk[i]
					next := ms(r.NextAttemptAt)
					if r.NextAttemptAt.IsZero() {
						next = now
					}
					args = append(args, r.ItemID, r.Owner, string(r.Status), next, r.Error, r.ProviderMessageID, r.Units)
				}
				rows, err := tx.QueryContext(ctx, resultSQL(len(chunk)), args...)
				if err != nil {
					return fmt.Errorf("writing item results: %w", err)
				}
				for rows.Next() {
					var id, batchID, projectID string
					var st batchsender.ItemStatus
					var attempts int
					if err := rows.Scan(&id, &batchID, &projectID, &st, &attempts); err != nil {
						rows.Close()
						return fmt.Errorf("reading written result: %w", err)
					}
					applied++
					delta.add(batchID, batchsender.ItemInFlight, -1)
					delta.add(batchID, st, 1)
					a := byID[id].Attempt
					// The item's own attempt count is the truth about which
					// attempt this was; it was raised at claim.
					attemptArgs = append(attemptArgs, id, batchID, projectID, attempts, ms(a.StartedAt), int64(a.Latency),
						a.Outcome, a.StatusCode, a.Response, a.Error)
					if len(attemptArgs) == cap(attemptArgs) {
						if err := flushAttempts(); err != nil {
							rows.Close()
							return err
						}
					}
				}
				if err := rows.Close(); err != nil {
					return fmt.Errorf("writing item results: %w", err)
				}
				if err := rows.Err(); err != nil {
					return fmt.Errorf("writing item results: %w", err)
				}
			}
		}
		if err := flushAttempts(); err != nil {
			return err
		}
		return delta.apply(ctx, tx, now)
	})
	if err != nil {
		return 0, err
	}
	return applied, nil
}

// ItemsRelease implements batchsender.Store.
func (s *Store) ItemsRelease(ctx context.Context, owner string, itemIDs []string) (int, error) {
	if len(itemIDs) == 0 {
		return 0, nil
	}
	ids, err := json.Marshal(itemIDs)
	if err != nil {
		return 0, fmt.Errorf("encoding item ids: %w", err)
	}
	now := ms(s.now())
	n := 0
	err = s.writeTx(ctx, func(tx *sql.Tx) error {
		// The IDs travel as one JSON array (json_each), whatever their
		// number; each is an items_id lookup. Items of a cancelled batch
		// become cancelled, since nothing would claim them again.
		rows, err := tx.QueryContext(ctx, `UPDATE items SET updated_at = ?,
			status = CASE WHEN (SELECT status FROM batches WHERE id = items.batch_id) = 'cancelled'
			         THEN 'cancelled' ELSE 'pending' END,
			attempts = attempts - 1, lease_owner = NULL, lease_expires_at = NULL
			WHERE id IN (SELECT value FROM json_each(?)) AND status = 'in_flight' AND lease_owner = ?
			RETURNING batch_id, status`, now, string(ids), owner)
		if err != nil {
			return fmt.Errorf("releasing items: %w", err)
		}
		delta, err := collectMoves(rows)
		if err != nil {
			return fmt.Errorf("releasing items: %w", err)
		}
		for _, c := range delta {
			n -= int(c.InFlight)
		}
		return delta.apply(ctx, tx, now)
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// collectMoves reads (batch_id, new status) rows of items that left
// in_flight into count changes.
func collectMoves(rows *sql.Rows) (countDelta, error) {
	defer rows.Close()
	delta := countDelta{}
	for rows.Next() {
		var batchID string
		var st batchsender.ItemStatus
		if err := rows.Scan(&batchID, &st); err != nil {
			return nil, err
		}
		delta.add(batchID, batchsender.ItemInFlight, -1)
		delta.add(batchID, st, 1)
	}
	return delta, rows.Err()
}

// LeasesRescue implements batchsender.Store.
func (s *Store) LeasesRescue(ctx context.Context, expiredBefore time.Time) (int, error) {
	now := ms(s.now())
	n := 0
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		// items_lease (partial on in_flight) finds the expired leases. An
		// item that has used all its attempts fails rather than loops; the
		// attempt was counted at claim, so a crash counts as one.
		rows, err := tx.QueryContext(ctx, `UPDATE items SET updated_at = ?,
			status = CASE WHEN b.status = 'cancelled' THEN 'cancelled'
			              WHEN items.attempts >= b.max_attempts THEN 'failed'
			              ELSE 'pending' END,
			last_error = CASE WHEN b.status = 'cancelled' THEN items.last_error
			              WHEN items.attempts >= b.max_attempts
			              THEN 'lease expired on attempt ' || items.attempts || ' of ' || b.max_attempts || ' (worker stopped or crashed); no attempts left'
			              ELSE 'lease expired on attempt ' || items.attempts || ' (worker stopped or crashed)' END,
			lease_owner = NULL, lease_expires_at = NULL
			FROM batches AS b
			WHERE b.id = items.batch_id AND items.status = 'in_flight' AND items.lease_expires_at < ?
			RETURNING items.batch_id, items.status`, now, ms(expiredBefore))
		if err != nil {
			return fmt.Errorf("rescuing leases: %w", err)
		}
		delta, err := collectMoves(rows)
		if err != nil {
			return fmt.Errorf("rescuing leases: %w", err)
		}
		for _, c := range delta {
			n -= int(c.InFlight)
		}
		return delta.apply(ctx, tx, now)
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}
