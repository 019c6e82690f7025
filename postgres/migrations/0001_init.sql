-- 0001: the whole first schema, the same tables as the SQLite store's. Times
-- are timestamptz kept at millisecond precision, as SQLite keeps them. JSON documents (item data, templates,
-- configs, options) are kept as text, not jsonb: jsonb reorders keys and
-- drops duplicates, and an item's data must come back byte for byte as it
-- was ingested. Cast with ::json to query them.

CREATE TABLE projects (
    id         text PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL
);

CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    project_id  text NOT NULL REFERENCES projects (id),
    name        text NOT NULL,
    role        text NOT NULL,
    secret_hash bytea NOT NULL,
    created_at  timestamptz NOT NULL
);

CREATE TABLE connections (
    id             text PRIMARY KEY,
    project_id     text NOT NULL REFERENCES projects (id),
    provider       text NOT NULL,
    name           text NOT NULL,
    config         text NOT NULL,
    secrets_sealed bytea,
    secret_names   text NOT NULL, -- JSON array of names
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    UNIQUE (project_id, name)
);

-- The batch row is the hot row of the design: every transaction that changes
-- items also updates the counts here, once per statement with summed deltas.
CREATE TABLE batches (
    id              text PRIMARY KEY,
    project_id      text NOT NULL REFERENCES projects (id),
    module          text NOT NULL,
    connection_id   text NOT NULL,
    provider        text NOT NULL,
    status          text NOT NULL,
    status_reason   text NOT NULL DEFAULT '',
    template        text,
    options         text NOT NULL,
    -- max_attempts and send_at are copied out of options so that lease
    -- rescue and scheduling can work in SQL.
    max_attempts    integer NOT NULL,
    send_at         timestamptz,
    total           bigint NOT NULL DEFAULT 0,
    count_pending   bigint NOT NULL DEFAULT 0,
    count_in_flight bigint NOT NULL DEFAULT 0,
    count_succeeded bigint NOT NULL DEFAULT 0,
    count_failed    bigint NOT NULL DEFAULT 0,
    count_cancelled bigint NOT NULL DEFAULT 0,
    count_skipped   bigint NOT NULL DEFAULT 0,
    count_unknown   bigint NOT NULL DEFAULT 0,
    idempotency_key text,
    request_hash    text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    started_at      timestamptz,
    completed_at    timestamptz
);

-- Listing a project's batches newest first pages on (project_id, id).
CREATE INDEX batches_project_id ON batches (project_id, id);
CREATE UNIQUE INDEX batches_idempotency ON batches (project_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- The engine's two scans: runnable batches and schedules that came due.
CREATE INDEX batches_runnable ON batches (id) WHERE status = 'running' AND count_pending > 0;
CREATE INDEX batches_scheduled ON batches (send_at) WHERE status = 'scheduled';

-- items and attempts are the hot tables: they carry no foreign keys (a
-- per-row trigger that would cost ingest and result writes dearly); the
-- store writes them only together with their batch.
CREATE TABLE items (
    id                  text PRIMARY KEY,
    batch_id            text NOT NULL,
    project_id          text NOT NULL,
    seq                 bigint NOT NULL,
    data                text NOT NULL,
    status              text NOT NULL,
    attempts            integer NOT NULL DEFAULT 0,
    next_attempt_at     timestamptz NOT NULL,
    last_error          text NOT NULL DEFAULT '',
    provider_message_id text NOT NULL DEFAULT '',
    lease_owner         text,
    lease_expires_at    timestamptz,
    units               integer NOT NULL DEFAULT 0, -- billable units used over all attempts
    updated_at          timestamptz NOT NULL,
    UNIQUE (batch_id, seq),
    -- A lease exists exactly while the item is in flight. Result writes and
    -- releases rely on it: they find their items by ID and lease owner
    -- alone, so the planner fetches them through the primary key.
    CONSTRAINT items_lease_iff_in_flight CHECK ((status = 'in_flight') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL))
);

-- ChunkClaim walks this index in claim order and takes the first due rows.
CREATE INDEX items_due ON items (batch_id, next_attempt_at, seq) WHERE status = 'pending';
-- LeasesRescue finds expired leases without scanning finished items.
CREATE INDEX items_lease ON items (lease_expires_at) WHERE status = 'in_flight';
-- ItemList of the items that need attention (failed, unknown) pages on seq
-- without walking the whole batch. Partial, so that the claim and result
-- updates of all other items skip it: every index on items costs an entry
-- on each of those updates. Listing other statuses walks (batch_id, seq).
CREATE INDEX items_problems ON items (batch_id, seq) WHERE status IN ('failed', 'unknown');

-- One row per attempt at an item; retry_failed restarts the attempt
-- numbers, so (item_id, number) is not unique over an item's life.
-- id orders an item's attempts; it needs no index of its own.
CREATE TABLE attempts (
    id          bigserial NOT NULL,
    item_id     text NOT NULL,
    batch_id    text NOT NULL,
    project_id  text NOT NULL,
    number      integer NOT NULL,
    started_at  timestamptz NOT NULL,
    latency_ns  bigint NOT NULL,
    outcome     text NOT NULL,
    status_code integer NOT NULL DEFAULT 0,
    response    text NOT NULL DEFAULT '',
    error       text NOT NULL DEFAULT ''
);

CREATE INDEX attempts_item ON attempts (item_id, id);
