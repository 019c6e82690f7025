-- 0003: stored, versioned batch templates. A version is never changed; a
-- new one gets the next number. The template is text, not jsonb, so it
-- comes back byte for byte.
CREATE TABLE templates (
    project_id text NOT NULL REFERENCES projects (id),
    name       text NOT NULL,
    version    integer NOT NULL,
    module     text NOT NULL,
    template   text NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (project_id, name, version)
);
