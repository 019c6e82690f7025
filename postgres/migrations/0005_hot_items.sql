-- 0005: claims and results become HOT (heap-only tuple) updates.
--
-- An UPDATE is HOT, and inserts no index entry at all, only when no index
-- of the table refers to a column it changes (as a key column or in a
-- partial index's predicate) and the new row version fits on the same heap
-- page. Up to 0004 every claim (pending -> in_flight) and every result
-- (in_flight -> succeeded) failed the first condition: status and
-- lease_expires_at appear in items_due, items_lease and items_problems, so
-- each update inserted an entry into every index of items, about six index
-- inserts per item delivered, most of PostgreSQL's CPU during a fan-out.
--
-- From here on no index of items refers to a column that a claim or a
-- successful result changes (status, attempts, next_attempt_at, last_error,
-- provider_message_id, lease_*, units, updated_at). Instead:
--
-- * First attempts are claimed in seq order behind a cursor per batch,
--   batches.claim_seq, through the (batch_id, seq) unique index: a pending
--   item with retry_at NULL always has a seq above its batch's claim_seq.
-- * An item that becomes pending again (a retry result, a release, a
--   rescue, retry_failed) carries retry_at = next_attempt_at and is claimed
--   through items_retry. These updates still touch an index, but they are
--   the exception.
-- * Leases are found through one leases row per claim instead of an index
--   on items.lease_expires_at; items.lease_id names the claim an item in
--   flight belongs to (negated once the item has left it).
-- * items_problems is keyed on problem, true exactly while an item is
--   failed or unknown.
--
-- The CHECK constraints pin these invariants. They also make a node still
-- running an older binary fail loudly instead of losing items: its claims
-- set no lease_id, its results and releases leave lease_id set, its
-- retry_failed leaves problem set, its cancel leaves retry_at set, so the
-- database refuses their writes.

ALTER TABLE batches ADD COLUMN claim_seq bigint NOT NULL DEFAULT 0;

-- fillfactor leaves room on each page for the new versions of its rows:
-- HOT needs the new version on the same page. A claim takes a run of
-- consecutive items, often every row of a page, in one transaction, so the
-- page must hold a second (slightly longer) version of all its rows at once;
-- the result that follows finds the claim's old versions dead and prunes
-- them. Claims of 500 with results in flushes of 100 made 97% of the item
-- updates HOT at fillfactor 50, 55% at 70, 15% at 90. It applies to pages
-- written from now on; existing pages make room as their dead versions are
-- pruned.
ALTER TABLE items
    ADD COLUMN retry_at timestamptz,
    ADD COLUMN problem  boolean NOT NULL DEFAULT false,
    ADD COLUMN lease_id bigint,
    SET (fillfactor = 50);

-- One row per claim with items still in flight: which items it leased to
-- whom, until when, and how many of them are still in flight under it
-- (live). The items are the first attempts first_seq..last_seq (a claim
-- takes them as a run) and the items due again listed in seqs, so the row
-- stays small (no TOAST, no compression) and its count updates are cheap.
-- The statements that take items out of flight count them down and delete
-- the row with its last item, so the table stays as small as the work in
-- flight. LeasesRescue takes the expired rows, puts back those of their
-- items still in flight under that very lease (items.lease_id = id) and
-- deletes the rows.
CREATE TABLE leases (
    id         bigserial PRIMARY KEY,
    batch_id   text NOT NULL,
    owner      text NOT NULL,
    expires_at timestamptz NOT NULL,
    live       integer NOT NULL,
    first_seq  bigint,
    last_seq   bigint,
    seqs       bigint[] NOT NULL
);
CREATE INDEX leases_expiry ON leases (expires_at);

-- The live data: one leases row per (batch, owner, expiry) of the items in
-- flight now, found through items_lease while it still exists.
INSERT INTO leases (batch_id, owner, expires_at, live, seqs)
SELECT batch_id, lease_owner, lease_expires_at, count(*), array_agg(seq ORDER BY seq)
FROM items WHERE status = 'in_flight'
GROUP BY batch_id, lease_owner, lease_expires_at
ORDER BY batch_id, lease_owner, lease_expires_at;

UPDATE items i SET lease_id = l.id
FROM leases l
WHERE i.status = 'in_flight' AND i.batch_id = l.batch_id AND i.lease_owner = l.owner AND i.lease_expires_at = l.expires_at;

-- Each batch's cursor stands after the last item that is not a pending
-- first attempt (attempts = 0): in a batch claimed only in seq order that is
-- exactly where its claims got to, so the pending items above it are all
-- claimed through the cursor, and the first claim after the upgrade does not
-- walk the items the batch already finished.
UPDATE batches b SET claim_seq = c.seq
FROM (
    SELECT batch_id, max(seq) AS seq FROM items
    WHERE NOT (status = 'pending' AND attempts = 0)
    GROUP BY batch_id
) c
WHERE b.id = c.batch_id;

-- Every other pending item (a retry waiting for its backoff, or a released
-- or retried item behind the cursor) is claimed through items_retry, due at
-- its next attempt; failed and unknown items are problems.
UPDATE items i SET
    retry_at = CASE WHEN i.status = 'pending' THEN i.next_attempt_at END,
    problem = i.status IN ('failed', 'unknown')
FROM batches b
WHERE b.id = i.batch_id
    AND ((i.status = 'pending' AND (i.attempts > 0 OR i.seq <= b.claim_seq)) OR i.status IN ('failed', 'unknown'));

DROP INDEX items_due;
DROP INDEX items_lease;
DROP INDEX items_problems;

-- ChunkClaim takes due retries in claim order from here.
CREATE INDEX items_retry ON items (batch_id, retry_at, seq) WHERE retry_at IS NOT NULL;
-- ItemList of the items that need attention (failed, unknown) pages on seq
-- without walking the whole batch. Only results that fail an item, and
-- retry_failed, touch it.
CREATE INDEX items_problems ON items (batch_id, seq) WHERE problem;

ALTER TABLE items DROP CONSTRAINT items_lease_iff_in_flight;
-- A lease exists exactly while the item is in flight. Result writes and
-- releases rely on it: they find their items by ID and lease owner alone,
-- so the planner fetches them through the primary key. lease_id is positive
-- exactly then; the statements that take an item out of flight negate it,
-- so that their RETURNING can say which lease the item left.
ALTER TABLE items ADD CONSTRAINT items_lease_iff_in_flight
    CHECK ((status = 'in_flight') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)
        AND (status = 'in_flight') = (coalesce(lease_id, 0) > 0));
-- retry_at is set only on pending items, and then to their next attempt, so
-- that items_retry holds them in claim order (next_attempt_at, seq).
ALTER TABLE items ADD CONSTRAINT items_retry_only_pending
    CHECK (retry_at IS NULL OR (status = 'pending' AND retry_at = next_attempt_at));
ALTER TABLE items ADD CONSTRAINT items_problem_iff_failed_or_unknown
    CHECK (problem = (status IN ('failed', 'unknown')));
