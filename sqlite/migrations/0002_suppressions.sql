-- 0002: suppressions, per project and channel. Addresses are stored
-- normalized (trimmed, lower-case), so the primary key is the match.
-- WITHOUT ROWID clusters a project's channel in address order: the list
-- pages and the engine's per-chunk match read one key range.
CREATE TABLE suppressions (
    project_id TEXT NOT NULL REFERENCES projects (id),
    channel    TEXT NOT NULL,
    address    TEXT NOT NULL,
    reason     TEXT NOT NULL,
    source     TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    PRIMARY KEY (project_id, channel, address)
) WITHOUT ROWID;
