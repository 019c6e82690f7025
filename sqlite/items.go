package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/batchsender/batchsender"
)

// itemColumns are the item columns every item read returns; the batch's
// ID and project come from the batch.
const itemColumns = `seq, id, data, status, attempts, next_attempt_at, last_error,
	provider_message_id, lease_owner, lease_expires_at, updated_at`

func scanItem(row interface{ Scan(...any) error }, b batchRef) (batchsender.Item, error) {
	it := batchsender.Item{BatchID: b.id, ProjectID: b.projectID}
	var data string
	var next, updated int64
	var owner sql.NullString
	var expires sql.NullInt64
	if err := row.Scan(&it.Seq, &it.ID, &data, &it.Status, &it.Attempts, &next,
		&it.LastError, &it.ProviderMessageID, &owner, &expires, &updated); err != nil {
		return it, err
	}
	it.Data = json.RawMessage(data)
	it.NextAttemptAt, it.UpdatedAt = fromMS(next), fromMS(updated)
	it.LeaseOwner = owner.String
	it.LeaseExpiresAt = fromNullMS(expires)
	return it, nil
}

func collectItems(rows *sql.Rows, b batchRef) ([]batchsender.Item, error) {
	defer rows.Close()
	out := []batchsender.Item{}
	for rows.Next() {
		it, err := scanItem(rows, b)
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

// itemListByRareStatus lists items of a usually rare status through the
// partial index items_rare_status. The status is a literal in the text,
// because SQLite uses a partial index only when the query's WHERE clause
// visibly implies the index's.
var itemListByRareStatus = func() map[batchsender.ItemStatus]string {
	m := map[batchsender.ItemStatus]string{}
	for _, st := range []batchsender.ItemStatus{batchsender.ItemFailed, batchsender.ItemUnknown, batchsender.ItemSkipped} {
		m[st] = `SELECT ` + itemColumns + ` FROM items INDEXED BY items_rare_status
			WHERE batch_key = ? AND status = '` + string(st) + `' AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?`
	}
	return m
}()

// itemListSQL lists a rowid range of items (first excluded, last
// included), filtered by status unless that is empty.
const itemListSQL = `SELECT ` + itemColumns + ` FROM items
	WHERE ikey > ? AND ikey <= ? AND (? = '' OR status = ?) ORDER BY ikey LIMIT ?`

// ItemList implements batchsender.Store. A Limit of 0 means 100; at most
// 10,000 items come back.
func (s *Store) ItemList(ctx context.Context, p batchsender.ItemListParams) ([]batchsender.Item, error) {
	ref, err := batchRefGet(ctx, s.r, p.ProjectID, p.BatchID)
	if err != nil {
		return nil, err
	}
	if p.Status != "" {
		if _, err := batchsender.ParseItemStatus(string(p.Status)); err != nil {
			return nil, err
		}
	}
	n := limit(p.Limit, 100, 10_000)
	var rows *sql.Rows
	if q, ok := itemListByRareStatus[p.Status]; ok {
		rows, err = s.r.QueryContext(ctx, q, ref.key, p.AfterSeq, ref.total, n)
	} else {
		// A range of rowids (the batch's items in seq order), filtered by
		// status when one is given: the statuses without an index are the
		// ones that are usually dense. Items beyond total belong to an
		// append still in progress.
		rows, err = s.r.QueryContext(ctx, itemListSQL,
			ikey(ref.key, max(p.AfterSeq, 0)), ikey(ref.key, ref.total), p.Status, p.Status, n)
	}
	if err != nil {
		return nil, fmt.Errorf("listing items: %w", err)
	}
	return collectItems(rows, ref)
}

// ItemAttemptList implements batchsender.Store.
func (s *Store) ItemAttemptList(ctx context.Context, projectID, itemID string) ([]batchsender.Attempt, error) {
	var one int
	err := s.r.QueryRowContext(ctx, `SELECT 1 FROM items JOIN batches ON batches.bkey = items.batch_key
		WHERE items.id = ? AND batches.project_id = ?`, itemID, projectID).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, batchsender.Errorf(batchsender.ENOTFOUND, "item %q not found", itemID)
	}
	if err != nil {
		return nil, fmt.Errorf("reading item: %w", err)
	}
	// The primary key range of the item, oldest attempt first.
	rows, err := s.r.QueryContext(ctx, `SELECT item_id, number, started_at, latency_ns, outcome, status_code, response, error
		FROM attempts WHERE item_id = ? ORDER BY started_at, number`, itemID)
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

// claimSQL claims due items of one batch in one statement. The subquery
// walks items_claim (partial on pending) from the oldest due item, so its
// cost is the number of items claimed, not the batch size. It is
// PostgreSQL's "UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)" without the locking clause: SQLite's single writer already
// serialises claims. ChunkClaim checks in the same transaction that the
// batch is running. OR ROLLBACK (here and on the other hot statements):
// a failure fails the whole transaction anyway, and it spares SQLite the
// statement journal.
const claimSQL = `UPDATE OR ROLLBACK items SET status = 'in_flight', attempts = attempts + 1,
	lease_owner = ?, lease_expires_at = ?, updated_at = ?
WHERE ikey IN (
	SELECT ikey FROM items INDEXED BY items_claim
	WHERE batch_key = ? AND status = 'pending' AND next_attempt_at <= ?
	ORDER BY next_attempt_at, seq
	LIMIT ?)
RETURNING seq, id, data, attempts, next_attempt_at, last_error, provider_message_id`

// ChunkClaim implements batchsender.Store.
func (s *Store) ChunkClaim(ctx context.Context, p batchsender.ChunkClaimParams) ([]batchsender.Item, error) {
	if p.Limit <= 0 {
		return []batchsender.Item{}, nil
	}
	if p.Owner == "" {
		return nil, batchsender.Errorf(batchsender.EINVALID, "a claim needs an owner")
	}
	now := ms(p.Now)
	items := []batchsender.Item{}
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		refStmt := tx.StmtContext(ctx, s.st.batchRef)
		defer refStmt.Close()
		ref, err := scanBatchRef(refStmt.QueryRowContext(ctx, p.BatchID, "", ""), p.BatchID)
		if batchsender.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if ref.status != batchsender.BatchRunning {
			return nil
		}
		claim := tx.StmtContext(ctx, s.st.claim)
		defer claim.Close()
		rows, err := claim.QueryContext(ctx, p.Owner, ms(p.LeaseUntil), now, ref.key, now, p.Limit)
		if err != nil {
			return fmt.Errorf("claiming items: %w", err)
		}
		if items, err = collectClaimed(rows, ref, p.Owner, fromMS(ms(p.LeaseUntil)), fromMS(now)); err != nil {
			return fmt.Errorf("claiming items: %w", err)
		}
		if len(items) == 0 {
			return nil
		}
		counts := tx.StmtContext(ctx, s.st.counts)
		defer counts.Close()
		if _, err := counts.ExecContext(ctx, -len(items), len(items), 0, 0, 0, 0, 0, now, ref.key); err != nil {
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

// collectClaimed reads the rows claimSQL returns: only the columns the
// claim did not just set, since those are known.
func collectClaimed(rows *sql.Rows, b batchRef, owner string, leaseUntil, now time.Time) ([]batchsender.Item, error) {
	defer rows.Close()
	out := []batchsender.Item{}
	for rows.Next() {
		until := leaseUntil // each item its own, callers may change them
		it := batchsender.Item{BatchID: b.id, ProjectID: b.projectID, Status: batchsender.ItemInFlight,
			LeaseOwner: owner, LeaseExpiresAt: &until, UpdatedAt: now}
		var data string
		var next int64
		if err := rows.Scan(&it.Seq, &it.ID, &data, &it.Attempts, &next, &it.LastError, &it.ProviderMessageID); err != nil {
			return nil, fmt.Errorf("reading item: %w", err)
		}
		it.Data = json.RawMessage(data)
		it.NextAttemptAt = fromMS(next)
		out = append(out, it)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading items: %w", err)
	}
	return out, nil
}

// resultRows is how many results one UPDATE ... FROM (VALUES ...) statement
// carries, and resultCols the values bound per result.
const (
	resultRows = 250
	resultCols = 7
)

// resultSQL writes up to n results in one statement: the VALUES rows are
// joined to items through items_id. Only items still in flight under the
// result's owner change (a rescued lease makes a late result stale); the
// RETURNING rows are the ones that did. A retry result for an item of a
// cancelled batch makes it cancelled, since nothing will claim it again.
func resultSQL(n int) string {
	return `UPDATE OR ROLLBACK items SET updated_at = ?,
	status = CASE WHEN v.column3 = 'pending'
	              AND (SELECT status FROM batches WHERE bkey = items.batch_key) = 'cancelled'
	         THEN 'cancelled' ELSE v.column3 END,
	next_attempt_at = CASE WHEN v.column3 = 'pending' THEN v.column4 ELSE items.next_attempt_at END,
	last_error = v.column5,
	provider_message_id = CASE WHEN v.column6 <> '' THEN v.column6 ELSE items.provider_message_id END,
	units = items.units + v.column7,
	lease_owner = NULL, lease_expires_at = NULL
FROM (VALUES ` + valuesList(n, resultCols) + `) AS v
WHERE items.id = v.column1 AND items.status = 'in_flight' AND items.lease_owner = v.column2
RETURNING items.id, items.batch_key, items.status, items.attempts`
}

// attemptRows and attemptCols size the multi-row attempt insert.
const (
	attemptRows = 250
	attemptCols = 9
)

// attemptInsertSQL records up to n attempts; rows whose item ID is empty
// are padding and skipped. OR REPLACE: the same attempt written twice (same
// item, start and number) is kept once.
func attemptInsertSQL(n int) string {
	return `INSERT OR REPLACE INTO attempts (item_id, started_at, number, batch_key, latency_ns, outcome,
		status_code, response, error) SELECT * FROM (VALUES ` + valuesList(n, attemptCols) + `) WHERE column1 <> ''`
}

// countDelta accumulates per-batch count changes within one transaction,
// by batch key.
type countDelta map[int64]*batchsender.Counts

func (d countDelta) add(key int64, st batchsender.ItemStatus, n int64) {
	c := d[key]
	if c == nil {
		c = &batchsender.Counts{}
		d[key] = c
	}
	c.Add(st, n)
}

// apply writes the count changes, then completes every running batch that
// has no live item left.
func (s *Store) applyCounts(ctx context.Context, tx *sql.Tx, d countDelta, now int64) error {
	if len(d) == 0 {
		return nil
	}
	counts := tx.StmtContext(ctx, s.st.counts)
	defer counts.Close()
	complete := tx.StmtContext(ctx, s.st.complete)
	defer complete.Close()
	for key, c := range d {
		if _, err := counts.ExecContext(ctx, c.Pending, c.InFlight, c.Succeeded, c.Failed, c.Cancelled, c.Skipped, c.Unknown, now, key); err != nil {
			return fmt.Errorf("updating batch counts: %w", err)
		}
		if c.Live() < 0 {
			if _, err := complete.ExecContext(ctx, now, now, key); err != nil {
				return fmt.Errorf("completing batch: %w", err)
			}
		}
	}
	return nil
}

// countsSQL adds deltas to a batch's counts (pending, in_flight,
// succeeded, failed, cancelled, skipped, unknown, updated_at, bkey).
const countsSQL = `UPDATE batches SET pending = pending + ?, in_flight = in_flight + ?,
	succeeded = succeeded + ?, failed = failed + ?, cancelled = cancelled + ?, skipped = skipped + ?,
	unknown = unknown + ?, updated_at = ? WHERE bkey = ?`

// completeSQL completes a running batch with no live item left.
const completeSQL = `UPDATE batches SET status = 'completed', completed_at = ?, updated_at = ?
	WHERE bkey = ? AND status = 'running' AND pending = 0 AND in_flight = 0`

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
		w := resultWriter{s: s, tx: tx, now: now, delta: countDelta{}}
		defer w.close()
		for _, round := range rounds {
			n, err := w.writeRound(ctx, round)
			if err != nil {
				return err
			}
			applied += n
		}
		return s.applyCounts(ctx, tx, w.delta, now)
	})
	if err != nil {
		return 0, err
	}
	return applied, nil
}

// resultWriter writes the results of one ItemResultsWriteMany call inside
// its transaction, with the prepared full-size statements.
type resultWriter struct {
	s           *Store
	tx          *sql.Tx
	now         int64
	delta       countDelta
	args        []any
	attemptArgs []any
	results     [len(writeSizes)]*sql.Stmt // transaction-bound s.st.results
	attempts    [len(writeSizes)]*sql.Stmt // transaction-bound s.st.attempts
}

func (w *resultWriter) close() {
	for _, st := range append(w.results[:], w.attempts[:]...) {
		if st != nil {
			_ = st.Close()
		}
	}
}

// writeRound writes results of distinct items and returns how many applied.
func (w *resultWriter) writeRound(ctx context.Context, round []batchsender.ItemResult) (int, error) {
	byID := make(map[string]*batchsender.ItemResult, len(round))
	for i := range round {
		byID[round[i].ItemID] = &round[i]
	}
	applied := 0
	for chunk := range slices.Chunk(round, resultRows) {
		w.args = append(w.args[:0], w.now)
		for i := range chunk {
			r := &chunk[i]
			next := ms(r.NextAttemptAt)
			if r.NextAttemptAt.IsZero() {
				next = w.now
			}
			w.args = append(w.args, r.ItemID, r.Owner, string(r.Status), next, r.Error, r.ProviderMessageID, r.Units)
		}
		// Padding rows name no item, so they match nothing.
		k := writeSize(len(chunk))
		for range writeSizes[k] - len(chunk) {
			w.args = append(w.args, "", "", string(batchsender.ItemPending), w.now, "", "", 0)
		}
		if w.results[k] == nil {
			w.results[k] = w.tx.StmtContext(ctx, w.s.st.results[k])
		}
		rows, err := w.results[k].QueryContext(ctx, w.args...)
		if err != nil {
			return 0, fmt.Errorf("writing item results: %w", err)
		}
		n, err := w.collect(rows, byID)
		if err != nil {
			return 0, err
		}
		applied += n
		// At most one chunk of attempts (resultRows == attemptRows), written
		// once the UPDATE's rows are closed.
		if err := w.flushAttempts(ctx); err != nil {
			return 0, err
		}
	}
	return applied, nil
}

// collect reads the rows a result UPDATE returned: counts and attempts.
func (w *resultWriter) collect(rows *sql.Rows, byID map[string]*batchsender.ItemResult) (int, error) {
	defer rows.Close()
	n := 0
	for rows.Next() {
		var id string
		var key int64
		var st batchsender.ItemStatus
		var attempts int
		if err := rows.Scan(&id, &key, &st, &attempts); err != nil {
			return 0, fmt.Errorf("reading written result: %w", err)
		}
		n++
		w.delta.add(key, batchsender.ItemInFlight, -1)
		w.delta.add(key, st, 1)
		a := byID[id].Attempt
		// The item's own attempt count, raised at claim, is the truth
		// about which attempt this was.
		w.attemptArgs = append(w.attemptArgs, id, ms(a.StartedAt), attempts, key, int64(a.Latency),
			a.Outcome, a.StatusCode, a.Response, a.Error)
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("writing item results: %w", err)
	}
	return n, nil
}

// flushAttempts inserts the attempt records collected so far.
func (w *resultWriter) flushAttempts(ctx context.Context) error {
	rows := len(w.attemptArgs) / attemptCols
	if rows == 0 {
		return nil
	}
	// Padding rows have an empty item ID, which the statement skips.
	k := writeSize(rows)
	for range writeSizes[k] - rows {
		w.attemptArgs = append(w.attemptArgs, "", 0, 0, 0, 0, "", 0, "", "")
	}
	if w.attempts[k] == nil {
		w.attempts[k] = w.tx.StmtContext(ctx, w.s.st.attempts[k])
	}
	_, err := w.attempts[k].ExecContext(ctx, w.attemptArgs...)
	if err != nil {
		return fmt.Errorf("recording attempts: %w", err)
	}
	w.attemptArgs = w.attemptArgs[:0]
	return nil
}

// releaseSQL gives leased items back (updated_at, JSON array of IDs,
// owner). The IDs travel as one JSON array (json_each), whatever their
// number; each is an items_id lookup. Items of a cancelled batch become
// cancelled, since nothing would claim them again.
const releaseSQL = `UPDATE items SET updated_at = ?,
	status = CASE WHEN (SELECT status FROM batches WHERE bkey = items.batch_key) = 'cancelled'
	         THEN 'cancelled' ELSE 'pending' END,
	attempts = attempts - 1, lease_owner = NULL, lease_expires_at = NULL
	WHERE id IN (SELECT value FROM json_each(?)) AND status = 'in_flight' AND lease_owner = ?
	RETURNING batch_key, status`

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
		rows, err := tx.QueryContext(ctx, releaseSQL, now, string(ids), owner)
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
		return s.applyCounts(ctx, tx, delta, now)
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// collectMoves reads (batch_key, new status) rows of items that left
// in_flight into count changes.
func collectMoves(rows *sql.Rows) (countDelta, error) {
	defer rows.Close()
	delta := countDelta{}
	for rows.Next() {
		var key int64
		var st batchsender.ItemStatus
		if err := rows.Scan(&key, &st); err != nil {
			return nil, err
		}
		delta.add(key, batchsender.ItemInFlight, -1)
		delta.add(key, st, 1)
	}
	return delta, rows.Err()
}

// rescueSQL ends expired leases (updated_at, expired before). items_lease
// (partial on in_flight) finds them. An item that has used all its attempts
// fails rather than loops; the attempt was counted at claim, so a crash
// counts as one.
const rescueSQL = `UPDATE items SET updated_at = ?,
	status = CASE WHEN b.status = 'cancelled' THEN 'cancelled'
	              WHEN items.attempts >= b.max_attempts THEN 'failed'
	              ELSE 'pending' END,
	last_error = CASE WHEN b.status = 'cancelled' THEN items.last_error
	              WHEN items.attempts >= b.max_attempts
	              THEN 'lease expired on attempt ' || items.attempts || ' of ' || b.max_attempts || ' (worker stopped or crashed); no attempts left'
	              ELSE 'lease expired on attempt ' || items.attempts || ' (worker stopped or crashed)' END,
	lease_owner = NULL, lease_expires_at = NULL
	FROM batches AS b
	WHERE b.bkey = items.batch_key AND items.status = 'in_flight' AND items.lease_expires_at < ?
	RETURNING items.batch_key, items.status`

// LeasesRescue implements batchsender.Store. It also removes ingests that
// stopped without finishing (see ingest.go), judged by the store's clock.
func (s *Store) LeasesRescue(ctx context.Context, expiredBefore time.Time) (int, error) {
	if err := s.dropStaleIngests(ctx, s.now()); err != nil {
		return 0, err
	}
	now := ms(s.now())
	n := 0
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, rescueSQL, now, ms(expiredBefore))
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
		return s.applyCounts(ctx, tx, delta, now)
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}
