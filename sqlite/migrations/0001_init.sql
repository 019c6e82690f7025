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
-- are copies of the options the maintenance queries need in SQL.
CREATE TABLE batches (
    id              TEXT PRIMARY KEY,
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
    completed_at    INTEGER
);

-- BatchList: a project's batches newest first (IDs are time-ordered).
CREATE INDEX batches_project_id ON batches (project_id, id);
-- Idempotency-Key replays; NULL keys never collide.
CREATE UNIQUE INDEX batches_idempotency ON batches (project_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- BatchesRunnable and BatchesActivateDue look only at the few live batches.
CREATE INDEX batches_running ON batches (id) WHERE status = 'running';
CREATE INDEX batches_scheduled ON batches (send_at) WHERE status = 'scheduled';

-- Items are clustered by (batch_id, seq): a batch's items sit together in
-- upload order, so ingest appends to the B-tree and ItemList reads one range.
-- WITHOUT ROWID saves the separate rowid tree (one B-tree fewer per insert).
CREATE TABLE items (
    batch_id            TEXT NOT NULL,
    seq                 INTEGER NOT NULL,
    id                  TEXT NOT NULL,
    project_id          TEXT NOT NULL,
    data                TEXT NOT NULL,
    status              TEXT NOT NULL DEFAULT 'pending',
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     INTEGER NOT NULL,
    last_error          TEXT NOT NULL DEFAULT '',
    provider_message_id TEXT NOT NULL DEFAULT '',
    lease_owner         TEXT,
    lease_expires_at    INTEGER,
    units               INTEGER NOT NULL DEFAULT 0,
    updated_at          INTEGER NOT NULL,
    PRIMARY KEY (batch_id, seq)
) WITHOUT ROWID;

-- Result writes, releases and attempt lists find items by ID.
CREATE UNIQUE INDEX items_id ON items (id);
-- The claim path: due pending items of one batch, oldest due first. Partial,
-- so finished items cost nothing here and the scan starts at the first due
-- item. The same shape as PostgreSQL's claim index under SKIP LOCKED.
CREATE INDEX items_claim ON items (batch_id, next_attempt_at, seq)
    WHERE status = 'pending';
-- ItemList filtered by status, in seq order.
CREATE INDEX items_batch_status ON items (batch_id, status, seq);
-- LeasesRescue: only in-flight items, by lease expiry.
CREATE INDEX items_lease ON items (lease_expires_at)
    WHERE status = 'in_flight';

-- One row per attempt at an item. A rowid table: retry_failed restarts the
-- attempt numbers, so (item_id, number) is not unique over an item's life.
CREATE TABLE attempts (
    item_id     TEXT NOT NULL,
    batch_id    TEXT NOT NULL,
    project_id  TEXT NOT NULL,
    number      INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    latency_ns  INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    status_code INTEGER NOT NULL DEFAULT 0,
    response    TEXT NOT NULL DEFAULT '',
    error       TEXT NOT NULL DEFAULT ''
);

-- ItemAttemptList: one item's attempts in rowid (insertion) order.
CREATE INDEX attempts_item ON attempts (item_id);
