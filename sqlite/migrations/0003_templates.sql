-- 0003: stored, versioned batch templates. A version is never changed; a
-- new one gets the next number. WITHOUT ROWID clusters a name's versions,
-- so "latest" is the last entry of one key range.
CREATE TABLE templates (
    project_id TEXT NOT NULL REFERENCES projects (id),
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    module     TEXT NOT NULL,
    template   TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (project_id, name, version)
) WITHOUT ROWID;
