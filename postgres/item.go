package postgres

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/batchsender/batchsender"
	"github.com/jackc/pgx/v5"
)

const itemColumns = `id, batch_id, project_id, seq, data, status, attempts, next_attempt_at, last_error,
	provider_message_id, coalesce(lease_owner, ''), lease_expires_at, updated_at`

func scanItem(row pgx.Row) (batchsender.Item, error) {
	var it batchsender.Item
	var data string
	if err := row.Scan(&it.ID, &it.BatchID, &it.ProjectID, &it.Seq, &data, &it.Status, &it.Attempts, &it.NextAttemptAt,
		&it.LastError, &it.ProviderMessageID, &it.LeaseOwner, &it.LeaseExpiresAt, &it.UpdatedAt); err != nil {
		return batchsender.Item{}, err
	}
	it.Data = []byte(data)
	it.NextAttemptAt, it.UpdatedAt = utc(it.NextAttemptAt), utc(it.UpdatedAt)
	it.LeaseExpiresAt = utcPtr(it.LeaseExpiresAt)
	return it, nil
}

func collectItems(rows pgx.Rows) ([]batchsender.Item, error) {
	defer rows.Close()
	out := []batchsender.Item{}
	for rows.Next() {
		it, err := scanItem(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, it)
	}
	return out, rows.Err()
}

// ItemList returns a page of the project's batch's items in seq order.
// ENOTFOUND if the batch is not the project's.
func (s *Store) ItemList(ctx context.Context, p batchsender.ItemListParams) ([]batchsender.Item, error) {
	var one int
	if err := s.pool.QueryRow(ctx, `SELECT 1 FROM batches WHERE id = $1 AND project_id = $2`, p.BatchID, p.ProjectID).Scan(&one); err != nil {
		return nil, notFound(err, "batch", "listing items")
	}
	// The status goes into the SQL text as a literal (it is one of the
	// known constants), so the planner can match it to the partial indexes
	// whatever plan it caches.
	filter := ""
	if p.Status != "" {
		st, err := batchsender.ParseItemStatus(string(p.Status))
		if err != nil {
			return nil, err
		}
		filter = ` AND status = '` + string(st) + `'`
		if st == batchsender.ItemFailed || st == batchsender.ItemUnknown {
			// Through items_problems.
			filter = ` AND problem` + filter
		}
	}
	rows, err := s.pool.Query(ctx, `SELECT `+itemColumns+` FROM items
		WHERE batch_id = $1 AND seq > $2`+filter+`
		ORDER BY seq LIMIT $3`, p.BatchID, p.AfterSeq, limit(p.Limit, 100, 10_000))
	if err != nil {
		return nil, fmt.Errorf("listing items: %w", err)
	}
	out, err := collectItems(rows)
	if err != nil {
		return nil, fmt.Errorf("listing items: %w", err)
	}
	return out, nil
}

// ItemAttemptList returns the attempts made at one item, oldest first.
// ENOTFOUND if the item is not the project's.
func (s *Store) ItemAttemptList(ctx context.Context, projectID, itemID string) ([]batchsender.Attempt, error) {
	var one int
	if err := s.pool.QueryRow(ctx, `SELECT 1 FROM items WHERE id = $1 AND project_id = $2`, itemID, projectID).Scan(&one); err != nil {
		return nil, notFound(err, "item", "listing attempts")
	}
	// The attempts table first, then the item's own log (migration 0006).
	rows, err := s.pool.Query(ctx, `SELECT number, started_at, latency_ns, outcome, status_code, response, error FROM (
			SELECT 0 AS part, id AS ord, number, started_at, latency_ns, outcome, status_code, response, error
			FROM attempts WHERE item_id = $1
			UNION ALL
			SELECT 1, a.ord, a.number, a.started_at, a.latency_ns, a.outcome, a.status_code, a.response, a.error
			FROM items i, unnest(i.attempt_log) WITH ORDINALITY AS a(number, started_at, latency_ns, outcome, status_code, response, error, ord)
			WHERE i.id = $1
		) x ORDER BY part, ord`, itemID)
	if err != nil {
		return nil, fmt.Errorf("listing attempts: %w", err)
	}
	defer rows.Close()
	out := []batchsender.Attempt{}
	for rows.Next() {
		a := batchsender.Attempt{ItemID: itemID}
		var latency int64
		if err := rows.Scan(&a.Number, &a.StartedAt, &latency, &a.Outcome, &a.StatusCode, &a.Response, &a.Error); err != nil {
			return nil, fmt.Errorf("listing attempts: %w", err)
		}
		a.Latency = time.Duration(latency)
		a.StartedAt = utc(a.StartedAt)
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing attempts: %w", err)
	}
	return out, nil
}

// ChunkClaim claims up to Limit due pending items of one running batch.
//
// It locks the batch row first (see the package doc), then takes the due
// items in claim order, counting the attempt, recording the lease and moving
// the counts and the batch's claim cursor in the same statement; nothing
// when the batch is not running.
func (s *Store) ChunkClaim(ctx context.Context, p batchsender.ChunkClaimParams) ([]batchsender.Item, error) {
	if p.Limit <= 0 {
		return []batchsender.Item{}, nil
	}
	if p.Owner == "" {
		return nil, batchsender.Errorf(batchsender.EINVALID, "a claim needs an owner")
	}
	// Both statements go in one pipeline, which PostgreSQL runs as one
	// implicit transaction: one round trip per claim. The first takes the
	// batch lock; the second, with a fresh snapshot taken after it, claims
	// only if the batch is running.
	b := &pgx.Batch{}
	b.Queue(`SELECT 1 FROM batches WHERE id = $1 FOR NO KEY UPDATE`, p.BatchID)
	b.Queue(claimSQL, p.BatchID, p.Owner, ms(p.LeaseUntil), ms(p.Now), p.Limit)
	br := s.pool.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return nil, fmt.Errorf("claiming items: locking batch: %w", err)
	}
	rows, err := br.Query()
	if err != nil {
		return nil, fmt.Errorf("claiming items: %w", err)
	}
	out, err := collectClaimed(rows, p)
	if err != nil {
		return nil, fmt.Errorf("claiming items: %w", err)
	}
	if err := br.Close(); err != nil {
		return nil, fmt.Errorf("claiming items: %w", err)
	}
	return out, nil
}

// claimedColumns are the columns a claim returns: only those it did not
// just set (collectClaimed fills in the rest), which spares decoding a
// batch ID, a status, an owner and two timestamps per item.
const claimedColumns = `id, project_id, seq, data, attempts, next_attempt_at, last_error, provider_message_id`

// collectClaimed reads the rows of a claim.
func collectClaimed(rows pgx.Rows, p batchsender.ChunkClaimParams) ([]batchsender.Item, error) {
	defer rows.Close()
	until, now := ms(p.LeaseUntil), ms(p.Now)
	out := make([]batchsender.Item, 0, min(p.Limit, 1024)) // usually all claimed
	for rows.Next() {
		until := until // each item its own, callers may change them
		it := batchsender.Item{BatchID: p.BatchID, Status: batchsender.ItemInFlight, LeaseOwner: p.Owner,
			LeaseExpiresAt: &until, UpdatedAt: now}
		// data straight into the []byte: pgx copies it once.
		if err := rows.Scan(&it.ID, &it.ProjectID, &it.Seq, &it.Data, &it.Attempts, &it.NextAttemptAt,
			&it.LastError, &it.ProviderMessageID); err != nil {
			return nil, err
		}
		it.NextAttemptAt = utc(it.NextAttemptAt)
		out = append(out, it)
	}
	return out, rows.Err()
}

// claimSQL claims due items of one running batch, oldest due first, from
// two sources (see migration 0005): first attempts in seq order behind the
// batch's cursor claim_seq, and items due again through items_retry. It
// updates the items without touching any indexed column of a first attempt,
// so those updates are HOT; records the claim as one leases row; and moves
// the counts and the cursor on the batch row.
//
// Every item above the cursor is a first attempt: the cursor passes every
// item a claim took in seq order, and an item comes back to pending only
// after a claim, with retry_at set. So the next $5 first attempts are the
// items numbered claim_seq+1 .. claim_seq+$5, and the statement reads that
// range of the (batch_id, seq) index rather than "seq > claim_seq ORDER BY
// seq LIMIT $5", which a planner without statistics of a new batch's items
// runs as a bitmap scan of the whole rest of the batch.
//
// The merge takes the first $5 of both sources by (next_attempt_at, seq),
// but claims the first attempts as a prefix in seq order whatever their
// times (which rise with seq anyway: they are stamped at ingest), so that
// the cursor can move to the highest seq claimed without leaving a first
// attempt behind it. For the same reason the first attempts stop at the
// first one not yet due, and are not read with SKIP LOCKED, which could skip
// a row the cursor then moves past, never to be claimed. They need no row
// locks at all: every writer of a batch's items holds the batch row's lock,
// taken by the statement before this one, whose snapshot this statement
// postdates; a row lock would only cost a WAL record per item. Should the
// range hold anything but first attempts, the cursor still moves to its end
// once every first attempt in it is claimed, so it never stalls.
const claimSQL = `WITH run AS (
		SELECT claim_seq FROM batches WHERE id = $1 AND status = 'running'
	), ahead AS (
		SELECT ctid, seq, next_attempt_at, status = 'pending' AND retry_at IS NULL AS first FROM items
		WHERE batch_id = $1 AND seq > (SELECT claim_seq FROM run) AND seq <= (SELECT claim_seq FROM run) + $5
	), fresh_due AS (
		SELECT ctid, seq, next_attempt_at FROM ahead
		WHERE first AND seq < coalesce((SELECT min(seq) FROM ahead WHERE first AND next_attempt_at > $4), 9223372036854775807)
	), retry AS (
		-- Only pending items carry retry_at (items_retry_only_pending).
		SELECT ctid, seq, next_attempt_at FROM items
		WHERE batch_id = $1 AND retry_at <= $4 AND EXISTS (SELECT 1 FROM run)
		ORDER BY retry_at, seq
		LIMIT $5
		FOR UPDATE SKIP LOCKED
	), merged AS (
		SELECT true AS first, seq, next_attempt_at FROM fresh_due
		UNION ALL
		SELECT false, seq, next_attempt_at FROM retry
		ORDER BY next_attempt_at, seq
		LIMIT $5
	), picked AS (
		(SELECT ctid, seq, true AS first FROM fresh_due ORDER BY seq
			LIMIT (SELECT count(*) FROM merged WHERE first))
		UNION ALL
		(SELECT ctid, seq, false FROM retry ORDER BY next_attempt_at, seq
			LIMIT (SELECT count(*) FROM merged WHERE NOT first))
	), lease AS (
		SELECT nextval('leases_id_seq') AS id
	), claimed AS (
		UPDATE items SET status = 'in_flight', attempts = attempts + 1, retry_at = NULL,
			lease_owner = $2, lease_expires_at = $3, lease_id = (SELECT id FROM lease), updated_at = $4
		-- By ctid: a TID scan of exactly the rows just locked. The ctids
		-- are stable: the rows are locked, and the batch lock taken before
		-- this statement keeps every other writer of this batch's items out.
		WHERE ctid = ANY(ARRAY(SELECT ctid FROM picked))
		RETURNING ` + claimedColumns + `
	), leased AS (
		INSERT INTO leases (id, batch_id, owner, expires_at, live, first_seq, last_seq, seqs)
		SELECT (SELECT id FROM lease), $1, $2, $3, count(*),
			(SELECT min(seq) FROM picked WHERE first), (SELECT max(seq) FROM picked WHERE first),
			ARRAY(SELECT seq FROM picked WHERE NOT first)
		FROM claimed
		HAVING count(*) > 0
	), counted AS (
		UPDATE batches SET count_pending = count_pending - c.n, count_in_flight = count_in_flight + c.n,
			claim_seq = greatest(claim_seq, CASE
				WHEN (SELECT count(*) FROM picked WHERE first) = (SELECT count(*) FROM ahead WHERE first)
				THEN (SELECT max(seq) FROM ahead)
				ELSE (SELECT max(seq) FROM picked WHERE first) END), updated_at = $4
		FROM (SELECT count(*) AS n FROM claimed) c
		WHERE id = $1 AND (c.n > 0 OR (EXISTS (SELECT 1 FROM ahead) AND NOT EXISTS (SELECT 1 FROM ahead WHERE first)))
	)
	SELECT * FROM claimed ORDER BY next_attempt_at, seq`

// leasesLeftSQL keeps the leases rows in step with items leaving flight (a
// result, a release): each row counts its items still in flight under it
// (live), and goes when the last one leaves, so that the leases table holds
// only the claims with items in flight and LeasesRescue looks up only items
// that are actually stuck. It expects a CTE named updated returning the
// lease each item left as left_lease; lease_id is negated, not cleared, when
// an item leaves its lease, because RETURNING sees only the new row. Every
// writer of a batch's leases rows holds the batch lock, so the counts are
// exact.
const leasesLeftSQL = `, left_leases AS (
		SELECT left_lease AS id, count(*) AS n FROM updated GROUP BY left_lease
	), leases_ended AS (
		DELETE FROM leases l USING left_leases x WHERE l.id = x.id AND l.live <= x.n
	), leases_kept AS (
		UPDATE leases l SET live = l.live - x.n FROM left_leases x WHERE l.id = x.id AND l.live > x.n
	)`

// The batch locks, in ID order.
const (
	lockBatchesSQL   = `SELECT 1 FROM batches WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE`
	lockBatchesOfSQL = `SELECT 1 FROM batches WHERE id IN (SELECT DISTINCT batch_id FROM items WHERE id = ANY($1))
		ORDER BY id FOR NO KEY UPDATE`
)

// lockBatchesOf locks, in ID order, the rows of the batches the given items
// belong to.
func lockBatchesOf(ctx context.Context, tx pgx.Tx, itemIDs []string) error {
	_, err := tx.Exec(ctx, lockBatchesOfSQL, itemIDs)
	if err != nil {
		return fmt.Errorf("locking batches: %w", err)
	}
	return nil
}

// lockBatches locks the given batches' rows in ID order.
func lockBatches(ctx context.Context, tx pgx.Tx, batchIDs []string) error {
	_, err := tx.Exec(ctx, lockBatchesSQL, batchIDs)
	if err != nil {
		return fmt.Errorf("locking batches: %w", err)
	}
	return nil
}

// applyCountsSQL is the tail of every statement that moves items out of
// in_flight: it sums the moves per batch and updates each batch row once,
// completing running batches left without live items. It expects a CTE
// named moved with columns (batch_id, to_status) and the parameter $now.
const applyCountsSQL = `, deltas AS (
		SELECT batch_id, count(*) AS moved,
			count(*) FILTER (WHERE to_status = 'pending') AS pending,
			count(*) FILTER (WHERE to_status = 'succeeded') AS succeeded,
			count(*) FILTER (WHERE to_status = 'failed') AS failed,
			count(*) FILTER (WHERE to_status = 'cancelled') AS cancelled,
			count(*) FILTER (WHERE to_status = 'skipped') AS skipped,
			count(*) FILTER (WHERE to_status = 'unknown') AS unknown
		FROM moved GROUP BY batch_id
	), counted AS (
		UPDATE batches b SET
			count_pending = b.count_pending + d.pending,
			count_in_flight = b.count_in_flight - d.moved,
			count_succeeded = b.count_succeeded + d.succeeded,
			count_failed = b.count_failed + d.failed,
			count_cancelled = b.count_cancelled + d.cancelled,
			count_skipped = b.count_skipped + d.skipped,
			count_unknown = b.count_unknown + d.unknown,
			status = CASE WHEN b.status = 'running' AND b.count_pending + d.pending + b.count_in_flight - d.moved = 0
				THEN 'completed' ELSE b.status END,
			completed_at = CASE WHEN b.status = 'running' AND b.count_pending + d.pending + b.count_in_flight - d.moved = 0
				THEN $now ELSE b.completed_at END,
			updated_at = $now
		FROM deltas d WHERE b.id = d.batch_id
	)
	SELECT count(*) FROM moved`

// resultsSQL writes a set of results, each item at most once, in one
// statement: the results travel as arrays and are unnested, applied to the
// items still in flight under their owner, each attempt appended to its
// item's attempt_log (numbered by the item's own attempt count, raised at
// claim; see migration 0006), and summed into one
// counts update per batch. A retry result for an item of a cancelled batch
// cancels the item, since nothing would claim it again; the cancelled ones
// among the batches $15 are looked up once, not joined to every item.
var resultsSQL = `WITH r AS (
		SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::int[],
			$8::timestamptz[], $9::bigint[], $10::text[], $11::int[], $12::text[], $13::text[])
			AS r(item_id, owner, status, next_at, error, msg_id, units, started_at, latency, outcome, code, response, att_error)
	), cancelled AS (
		SELECT coalesce(array_agg(id), '{}') AS ids FROM batches WHERE id = ANY($15::text[]) AND status = 'cancelled'
	), updated AS (
		UPDATE items i SET
			status = CASE WHEN r.status = 'pending' AND i.batch_id = ANY((SELECT ids FROM cancelled)::text[]) THEN 'cancelled' ELSE r.status END,
			next_attempt_at = CASE WHEN r.status = 'pending' THEN r.next_at ELSE i.next_attempt_at END,
			-- A retry is claimed again through items_retry. A success
			-- leaves retry_at and problem as they were (NULL, false), so
			-- its update changes no indexed column and is HOT.
			retry_at = CASE WHEN r.status = 'pending' AND NOT i.batch_id = ANY((SELECT ids FROM cancelled)::text[]) THEN r.next_at END,
			problem = r.status IN ('failed', 'unknown'),
			last_error = r.error,
			provider_message_id = CASE WHEN r.msg_id <> '' THEN r.msg_id ELSE i.provider_message_id END,
			units = i.units + r.units,
			attempt_log = array_append(i.attempt_log,
				ROW(i.attempts, r.started_at, r.latency, r.outcome, r.code, r.response, r.att_error)::attempt_entry),
			lease_owner = NULL, lease_expires_at = NULL, lease_id = -i.lease_id, updated_at = $14
		FROM r
		-- "In flight under the owner" is said as lease_owner = owner alone
		-- (the items_lease_iff_in_flight constraint makes them the same), so
		-- the planner fetches each result's item by primary key.
		WHERE i.id = ANY($1::text[]) AND i.id = r.item_id AND i.lease_owner = r.owner
		RETURNING i.batch_id, i.status AS to_status, -i.lease_id AS left_lease
	)` + leasesLeftSQL + `, moved AS (
		SELECT batch_id, to_status FROM updated
	)` + nowParam(applyCountsSQL, "$14")

// ItemResultsWriteMany writes many attempt outcomes in one transaction.
// Results whose item is no longer in flight under their owner are ignored.
// When the same item appears more than once, the results are applied in
// rounds in the order given, so the first one that still holds the lease
// wins and the later ones find it gone, as with SQLite.
func (s *Store) ItemResultsWriteMany(ctx context.Context, results []batchsender.ItemResult) (int, error) {
	if len(results) == 0 {
		return 0, nil
	}
	seen := make(map[string]int, len(results))
	batchIDs := make([]string, 0, 4)
	seenBatch := map[string]bool{}
	allNamed, repeated := true, false
	for _, r := range results {
		if r.Status != batchsender.ItemPending && !r.Status.Terminal() {
			return 0, batchsender.Errorf(batchsender.EINVALID, "item result status %q is not pending or terminal", r.Status)
		}
		k := seen[r.ItemID]
		seen[r.ItemID] = k + 1
		repeated = repeated || k > 0
		allNamed = allNamed && r.BatchID != ""
		if r.BatchID != "" && !seenBatch[r.BatchID] {
			seenBatch[r.BatchID] = true
			batchIDs = append(batchIDs, r.BatchID)
		}
	}
	// Each item at most once per round (nearly always a single round).
	rounds := [][]batchsender.ItemResult{results}
	if repeated {
		rounds = rounds[:0]
		nth := make(map[string]int, len(results))
		for _, r := range results {
			k := nth[r.ItemID]
			nth[r.ItemID] = k + 1
			if k == len(rounds) {
				rounds = append(rounds, make([]batchsender.ItemResult, 0, len(results)))
			}
			rounds[k] = append(rounds[k], r)
		}
	}
	now := s.stamp()
	// Results normally name their batch; only when one does not are the
	// batches looked up through the items (an item never changes batch).
	if !allNamed {
		rows, err := s.pool.Query(ctx, `SELECT DISTINCT batch_id FROM items WHERE id = ANY($1)`, slices.Collect(maps.Keys(seen)))
		if err != nil {
			return 0, fmt.Errorf("writing item results: %w", err)
		}
		if batchIDs, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return 0, fmt.Errorf("writing item results: %w", err)
		}
	}
	// One pipeline, run by PostgreSQL as one implicit transaction: one
	// round trip per call. It locks the batches in ID order first (see the
	// package doc).
	b := &pgx.Batch{}
	b.Queue(lockBatchesSQL, batchIDs)
	for _, round := range rounds {
		b.Queue(resultsSQL, append(resultArgs(round, now), batchIDs)...)
	}
	br := s.pool.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return 0, fmt.Errorf("writing item results: locking batches: %w", err)
	}
	written := 0
	for range rounds {
		var n int
		if err := br.QueryRow().Scan(&n); err != nil {
			return 0, fmt.Errorf("writing item results: %w", err)
		}
		written += n
	}
	if err := br.Close(); err != nil {
		return 0, fmt.Errorf("writing item results: %w", err)
	}
	return written, nil
}

// resultArgs turns results into the column arrays resultsSQL unnests.
func resultArgs(rs []batchsender.ItemResult, now time.Time) []any {
	n := len(rs)
	ids, owners, statuses, errs, msgIDs := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	outcomes, responses, attErrs := make([]string, n), make([]string, n), make([]string, n)
	nextAts, startedAts := make([]time.Time, n), make([]time.Time, n)
	units, codes := make([]int32, n), make([]int32, n)
	latencies := make([]int64, n)
	for i, r := range rs {
		ids[i], owners[i], statuses[i], errs[i], msgIDs[i] = r.ItemID, r.Owner, string(r.Status), r.Error, r.ProviderMessageID
		nextAts[i], units[i] = ms(r.NextAttemptAt), int32(r.Units)
		if r.NextAttemptAt.IsZero() {
			nextAts[i] = now
		}
		a := r.Attempt
		startedAts[i], latencies[i], outcomes[i], codes[i], responses[i], attErrs[i] =
			ms(a.StartedAt), int64(a.Latency), a.Outcome, int32(a.StatusCode), a.Response, a.Error
		if a.StartedAt.IsZero() {
			startedAts[i] = now
		}
	}
	return []any{ids, owners, statuses, nextAts, errs, msgIDs, units, startedAts, latencies, outcomes, codes, responses, attErrs, now}
}

// ItemsRelease gives claimed, unsent items back: in_flight → pending with
// the attempt counted at claim taken back. Only items still leased by owner
// change; items of a batch cancelled meanwhile become cancelled.
func (s *Store) ItemsRelease(ctx context.Context, owner string, itemIDs []string) (int, error) {
	if len(itemIDs) == 0 {
		return 0, nil
	}
	var n int
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if err := lockBatchesOf(ctx, tx, itemIDs); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `WITH updated AS (
				UPDATE items i SET
					status = CASE WHEN b.status = 'cancelled' THEN 'cancelled' ELSE 'pending' END,
					-- Due as it was when claimed, so claimed again first;
					-- through items_retry, since the batch's cursor has
					-- passed it.
					retry_at = CASE WHEN b.status = 'cancelled' THEN NULL ELSE i.next_attempt_at END,
					attempts = greatest(i.attempts - 1, 0),
					lease_owner = NULL, lease_expires_at = NULL, lease_id = -i.lease_id, updated_at = $3
				FROM batches b
				-- lease_owner alone means in flight; see resultsSQL.
				WHERE i.id = ANY($1) AND b.id = i.batch_id AND i.lease_owner = $2
				RETURNING i.batch_id, i.status AS to_status, -i.lease_id AS left_lease
			)`+leasesLeftSQL+`, moved AS (
				SELECT batch_id, to_status FROM updated
			)`+nowParam(applyCountsSQL, "$3"), itemIDs, owner, s.stamp()).Scan(&n); err != nil {
			return fmt.Errorf("releasing items: %w", err)
		}
		if n > 0 {
			return s.notifyTx(ctx, tx)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// LeasesRescue returns in-flight items whose lease expired before the given
// time to pending, or to failed once they have used all their batch's
// attempts, so an item that crashes its worker cannot loop forever. Items of
// a cancelled batch become cancelled.
//
// It finds them through the leases rows of the expired claims (there is no
// index on the items' lease columns; see migration 0005) and deletes those
// rows. Every item in flight holds a lease from exactly one claim, whose row
// expires when the item's lease does, so the expired rows name every item
// with an expired lease.
func (s *Store) LeasesRescue(ctx context.Context, expiredBefore time.Time) (int, error) {
	expiredBefore = ms(expiredBefore)
	var n int
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT DISTINCT batch_id FROM leases WHERE expires_at < $1`, expiredBefore)
		if err != nil {
			return fmt.Errorf("rescuing leases: %w", err)
		}
		batchIDs, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("rescuing leases: %w", err)
		}
		if len(batchIDs) == 0 {
			return nil
		}
		if err := lockBatches(ctx, tx, batchIDs); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, rescueSQL, batchIDs, s.stamp(), expiredBefore).Scan(&n); err != nil {
			return fmt.Errorf("rescuing leases: %w", err)
		}
		if n > 0 {
			return s.notifyTx(ctx, tx)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// rescueSQL deletes the expired leases rows of the locked batches $1 and
// puts back the items still in flight under those leases. The rows are read
// again under the batch locks: results may have been written, and claims
// made, since the first look.
var rescueSQL = `WITH gone AS (
		DELETE FROM leases WHERE expires_at < $3 AND batch_id = ANY($1)
		RETURNING id, batch_id, first_seq, last_seq, seqs
	), leased AS (
		-- Should the run of first attempts hold items claimed otherwise,
		-- lease_id below leaves them alone.
		SELECT g.id, g.batch_id, s.seq FROM gone g, generate_series(g.first_seq, g.last_seq) AS s(seq)
		UNION ALL
		SELECT g.id, g.batch_id, s.seq FROM gone g, unnest(g.seqs) AS s(seq)
	), updated AS (
		UPDATE items i SET
			status = CASE
				WHEN b.status = 'cancelled' THEN 'cancelled'
				WHEN i.attempts >= b.max_attempts THEN 'failed'
				ELSE 'pending' END,
			retry_at = CASE WHEN b.status <> 'cancelled' AND i.attempts < b.max_attempts THEN i.next_attempt_at END,
			problem = b.status <> 'cancelled' AND i.attempts >= b.max_attempts,
			last_error = CASE
				WHEN b.status = 'cancelled' THEN i.last_error
				WHEN i.attempts >= b.max_attempts
				THEN 'lease expired on attempt ' || i.attempts || ' of ' || b.max_attempts || ' (worker stopped or crashed); no attempts left'
				ELSE 'lease expired on attempt ' || i.attempts || ' (worker stopped or crashed)' END,
			lease_owner = NULL, lease_expires_at = NULL, lease_id = -i.lease_id, updated_at = $2
		FROM leased l, batches b
		-- Through the (batch_id, seq) index; lease_id says the item is still
		-- in flight under this very claim (items_lease_iff_in_flight).
		WHERE i.batch_id = l.batch_id AND i.seq = l.seq AND i.lease_id = l.id AND b.id = i.batch_id
		RETURNING i.batch_id, i.status AS to_status
	), moved AS (
		SELECT batch_id, to_status FROM updated
	)` + nowParam(applyCountsSQL, "$2")

// nowParam puts the statement's parameter for "now" into applyCountsSQL.
func nowParam(sql, param string) string {
	out := make([]byte, 0, len(sql))
	for i := 0; i < len(sql); {
		if i+4 <= len(sql) && sql[i:i+4] == "$now" {
			out = append(out, param...)
			i += 4
			continue
		}
		out = append(out, sql[i])
		i++
	}
	return string(out)
}
