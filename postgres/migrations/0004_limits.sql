-- 0004: cluster-wide connection limits (see limits.go).
-- One token bucket per rate limit, kept as GCRA: tat is the theoretical
-- arrival time (seconds since the epoch, the database's clock) of the next
-- free call slot; granted is how many slots the last take reserved, so that
-- one INSERT ... ON CONFLICT DO UPDATE ... RETURNING can say so.
CREATE TABLE rate_buckets (
    key     text PRIMARY KEY,
    tat     double precision NOT NULL,
    granted integer NOT NULL
);

-- The concurrency slots of a limit, leased to nodes: a node runs a call only
-- on a slot it holds, so the limit holds whatever the nodes do; a dead
-- node's slots come free when their lease expires.
CREATE TABLE conc_slots (
    key        text NOT NULL,
    slot       integer NOT NULL,
    owner      text,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (key, slot)
);

-- Which nodes want slots of a limit, for their fair shares.
CREATE TABLE conc_demand (
    key   text NOT NULL,
    owner text NOT NULL,
    until timestamptz NOT NULL,
    PRIMARY KEY (key, owner)
);
