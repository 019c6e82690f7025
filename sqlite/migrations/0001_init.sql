-- 0001: the whole first schema. Times are UTC Unix milliseconds (INTEGER);
-- JSON documents are TEXT; absent optional values are NULL or ''.

CREATE TABLE projects (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects (id),
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE connections (
    id             TEXT PRIMARY KEY,
    project_id     TEXT NOT NULL REFERENCES projects (id),
    provider       TEXT NOT NULL,
    name           TEXT NOT NULL,
    config         TEXT NOT NULL,
    secrets_sealed BLOB,
    secret_names   TEXT NOT NULL, -- JSON array of names
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    UNIQUE (project_id, name)
);

-- The per-status counts are kept current in the same transaction as every
-- item change, so progress reads never count items. max_attempts and send_at
-- are copies of the options the maintenance queries need in SQL. bkey is the
-- rowid: items refer to their batch by this small integer rather than by the
-- 30-character ID, which keeps every item row and index entry short and
-- their comparisons cheap.
CREATE TABLE batches (
    bkey            INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused
    id              TEXT NOT NULL UNIQUE,
    project_id      TEXT NOT NULL REFERENCES projects (id),
    module          TEXT NOT NULL,
    connection_id   TEXT NOT NULL,
    provider        TEXT NOT NULL,
    status          TEXT NOT NULL,
    status_reason   TEXT NOT NULL DEFAULT '',
    template        TEXT,
    options         TEXT NOT NULL,
    max_attempts    INTEGER NOT NULL,
    send_at         INTEGER,
    idempotency_key TEXT,
    request_hash    TEXT NOT NULL DEFAULT '',
    total           INTEGER NOT NULL DEFAULT 0,
    pending         INTEGER NOT NULL DEFAULT 0,
    in_flight       INTEGER NOT NULL DEFAULT 0,
    succeeded       INTEGER NOT NULL DEFAULT 0,
    failed          INTEGER NOT NULL DEFAULT 0,
    cancelled       INTEGER NOT NULL DEFAULT 0,
    skipped         INTEGER NOT NULL DEFAULT 0,
    unknown         INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    started_at      INTEGER,
    completed_at    INTEGER,
    -- 1 while BatchCreate writes the items of this still hidden batch in
    -- several transactions; 2 while BatchItemsAppend writes items beyond
    -- total; ingest_token names that ingest. See sqlite/ingest.go.
    ingesting       INTEGER NOT NULL DEFAULT 0,
    ingest_token    TEXT
);

-- BatchList: a project's batches newest first (IDs are time-ordered).
CREATE INDEX batches_project_id ON batches (project_id, id);
-- Idempotency-Key replays; NULL keys never collide.
CREATE UNIQUE INDEX batches_idempotency ON batches (project_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- BatchesRunnable and BatchesActivateDue look only at the few live batches.
CREATE INDEX batches_running ON batches (bkey) WHERE status = 'running';
CREATE INDEX batches_scheduled ON batches (send_at) WHERE status = 'scheduled';

-- Items are clustered by batch and seq: the rowid ikey is
-- batch_key << 32 | seq, so a batch's items sit together in upload order,
-- ingest appends at the right edge of the table (SQLite's cheapest insert,
-- which only rowid tables get), ItemList reads one rowid range, and every
-- row lookup compares one integer. batch_key and seq are kept as columns
-- too, for the indexes below. Every index costs time on the hot paths
-- (ingest, claim, result), so there are only the ones those paths and the
-- tenant-facing lists need. The project is the batch's, not repeated here.
-- batch_key has no REFERENCES clause on purpose: the store writes items only
-- in the transaction that holds their batch, and a foreign key would cost a
-- parent lookup per ingested row and a statement journal per insert.
CREATE TABLE items (
    ikey                INTEGER PRIMARY KEY,
    batch_key           INTEGER NOT NULL,
    seq                 INTEGER NOT NULL,
    id                  TEXT NOT NULL,
    data                TEXT NOT NULL,
    status              TEXT NOT NULL DEFAULT 'pending',
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     INTEGER NOT NULL,
    last_error          TEXT NOT NULL DEFAULT '',
    provider_message_id TEXT NOT NULL DEFAULT '',
    lease_owner         TEXT,
    lease_expires_at    INTEGER,
    units               INTEGER NOT NULL DEFAULT 0,
    updated_at          INTEGER NOT NULL
);

-- Result writes, releases and attempt lists find items by ID.
CREATE UNIQUE INDEX items_id ON items (id);
-- The claim path: due pending items of one batch, oldest due first. Partial,
-- so only pending items cost anything here and the scan starts at the first
-- due item. The same shape as PostgreSQL's claim index under SKIP LOCKED.
CREATE INDEX items_claim ON items (batch_key, next_attempt_at, seq)
    WHERE status = 'pending';
-- LeasesRescue: only in-flight items, by lease expiry.
CREATE INDEX items_lease ON items (lease_expires_at)
    WHERE status = 'in_flight';
-- ItemList filtered by a status that is usually rare (the failures a user
-- looks for), in seq order. Partial so that ingest, claims and successes
-- never touch it; lists of the usually dense statuses (pending, in_flight,
-- succeeded, cancelled) scan the primary key range instead. Queries name
-- the status as a literal so the planner can prove the index applies.
CREATE INDEX items_rare_status ON items (batch_key, status, seq)
    WHERE status = 'failed' OR status = 'unknown' OR status = 'skipped';

-- One row per attempt at an item, clustered by item and start time so an
-- item's attempts are one range, oldest first. number is part of the key
-- because retry_failed starts the numbering again.
CREATE TABLE attempts (
    item_id     TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    number      INTEGER NOT NULL,
    batch_key   INTEGER NOT NULL,
    latency_ns  INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    status_code INTEGER NOT NULL DEFAULT 0,
    response    TEXT NOT NULL DEFAULT '',
    error       TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (item_id, started_at, number)
) WITHOUT ROWID;
