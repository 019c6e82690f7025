-- 0006: an item's attempts are kept in the item's own row.
--
-- Up to 0005 every result inserted a row into attempts and an entry into
-- attempts_item: two more WAL records and a heap and an index insert per
-- item delivered, about a third of the result statement's cost. From here
-- on a result appends its attempt to items.attempt_log in the same update
-- that records the outcome, which stays HOT (no index refers to the log).
-- Nearly every item has one attempt, a retried one a few: max_attempts is
-- small and a response is kept to 1 KB.
--
-- The attempts table stays and is still read: it holds the attempts written
-- before this migration, by a node still running an older binary (so nodes
-- can be upgraded one at a time) and by migrate-store. An item's attempts
-- are listed as its rows there, oldest first, then its log. That is the
-- order they were made in, except for an item retried by an old node after
-- a new one during a rolling upgrade: its old node's attempts come first.
CREATE TYPE attempt_entry AS (
    number      integer,
    started_at  timestamptz,
    latency_ns  bigint,
    outcome     text,
    status_code integer,
    response    text,
    error       text
);

ALTER TABLE items ADD COLUMN attempt_log attempt_entry[];

-- A result's version of an item is now longer than the claim's by its
-- attempt (about 100 bytes), and a flush of results often takes every row
-- of a page in one transaction, so the page must hold both versions of them
-- all: at fillfactor 50 one result update in six was no longer HOT (an
-- update that is not HOT inserts into both unique indexes), at 40 one in
-- twenty. New pages are filled to 40 %; the items table takes about a
-- quarter more space than at 50 while its items are live.
ALTER TABLE items SET (fillfactor = 40);
