-- 0002: suppressions, per project and channel. Addresses are stored
-- normalized (trimmed, lower-case), so the primary key is the match and the
-- engine's per-chunk lookup is one index range.
CREATE TABLE suppressions (
    project_id text NOT NULL REFERENCES projects (id),
    channel    text NOT NULL,
    address    text NOT NULL,
    reason     text NOT NULL,
    source     text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL,
    PRIMARY KEY (project_id, channel, address)
);
