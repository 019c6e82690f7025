package postgres

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/batchsender/batchsender"
)

// Cluster-wide connection limits (batchsender.LimitStore).
//
// Rates are a GCRA token bucket per key in one row (rate_buckets): tat is
// when the next call slot falls due; a take moves it on by the slots it
// grants, in one INSERT ... ON CONFLICT DO UPDATE ... RETURNING, so a node
// pays one round trip for a group of calls. Slots are spaced 1/rate apart
// in the database's time (burst one), so the limit also holds in every
// window of one second, whichever nodes use the slots.
//
// Concurrency is a table of leased slots (conc_slots), one row per slot: a
// node runs a call only on a slot it holds, so the limit is never exceeded
// whatever the number of nodes, even when there are more nodes than slots
// (some then hold none). Per-node shares computed from a node count would
// overshoot while a new node starts on its share before the others have
// shrunk to theirs. The share only keeps nodes fair: each node that asked
// for slots recently (conc_demand) may hold limit/nodes of them, rounded up.
// A dead node's slots come free when their lease expires.

// rateTakeSQL reserves slots ($1 key, $2 rate per second, $3 want, $4
// horizon in seconds). Slots are granted from max(tat, now) on, as many as
// fall due within the horizon.
const rateTakeSQL = `WITH c AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS now)
INSERT INTO rate_buckets AS b (key, tat, granted)
SELECT $1, c.now + LEAST($3::int, floor($4::float8 * $2::float8)::int + 1) / $2::float8,
       LEAST($3::int, floor($4::float8 * $2::float8)::int + 1)
FROM c
ON CONFLICT (key) DO UPDATE SET
  granted = LEAST($3::int, GREATEST(0, floor(((SELECT now FROM c) + $4::float8 - GREATEST(b.tat, (SELECT now FROM c))) * $2::float8)::int + 1)),
  tat = GREATEST(b.tat, (SELECT now FROM c))
        + LEAST($3::int, GREATEST(0, floor(((SELECT now FROM c) + $4::float8 - GREATEST(b.tat, (SELECT now FROM c))) * $2::float8)::int + 1)) / $2::float8
RETURNING tat, granted, (SELECT now FROM c)`

// RateTake implements batchsender.LimitStore.
func (s *Store) RateTake(ctx context.Context, key string, perSecond float64, want int, horizon time.Duration) (int, time.Duration, error) {
	if perSecond <= 0 || math.IsInf(perSecond, 0) || math.IsNaN(perSecond) {
		return 0, 0, batchsender.Errorf(batchsender.EINVALID, "rate must be a positive number, got %v", perSecond)
	}
	want = max(want, 1)
	var tat, now float64
	var granted int
	if err := s.pool.QueryRow(ctx, rateTakeSQL, key, perSecond, want, horizon.Seconds()).Scan(&tat, &granted, &now); err != nil {
		return 0, 0, fmt.Errorf("taking rate tokens: %w", err)
	}
	start := tat - float64(granted)/perSecond
	wait := time.Duration(max(0, start-now) * float64(time.Second))
	return granted, wait, nil
}

// Concurrency slot statements: $1 key, $2 owner, $3 limit, then per
// statement.
const (
	slotsInitSQL = `INSERT INTO conc_slots (key, slot, owner, expires_at)
SELECT $1, g, NULL, '-infinity' FROM generate_series(0, $2::int - 1) g ON CONFLICT DO NOTHING`

	// $4 ttl in milliseconds.
	demandSQL = `INSERT INTO conc_demand (key, owner, until)
VALUES ($1, $2, clock_timestamp() + $3::float8 * interval '1 millisecond')
ON CONFLICT (key, owner) DO UPDATE SET until = excluded.until`

	// shareSQL is the fair share of an owner: the limit divided among the
	// owners with live demand, rounded up, at least one.
	shareSQL = `(SELECT GREATEST(1, ceil($3::float8 / GREATEST(count(*), 1)))::int
	FROM conc_demand WHERE key = $1 AND until > clock_timestamp())`

	// $4 want, $5 ttl in milliseconds. Free slots: no owner or an expired
	// lease; SKIP LOCKED so that nodes leasing at once do not queue.
	slotsAcquireSQL = `WITH held AS (
	SELECT count(*) AS n FROM conc_slots
	WHERE key = $1 AND owner = $2 AND slot < $3 AND expires_at > clock_timestamp()),
pick AS (
	SELECT slot FROM conc_slots
	WHERE key = $1 AND slot < $3 AND (owner IS NULL OR expires_at <= clock_timestamp())
	ORDER BY slot
	LIMIT (SELECT LEAST($4::int, GREATEST(0, ` + shareSQL + ` - held.n)) FROM held)
	FOR UPDATE SKIP LOCKED),
upd AS (
	UPDATE conc_slots c SET owner = $2, expires_at = clock_timestamp() + $5::float8 * interval '1 millisecond'
	FROM pick WHERE c.key = $1 AND c.slot = pick.slot
	RETURNING 1)
SELECT (SELECT count(*) FROM upd)::int, ` + shareSQL

	// $4 ttl in milliseconds. The owner's slots are renewed even if their
	// lease ran out: while the owner column names it, nobody else took them.
	slotsRenewSQL = `WITH upd AS (
	UPDATE conc_slots SET expires_at = clock_timestamp() + $4::float8 * interval '1 millisecond'
	WHERE key = $1 AND owner = $2 AND slot < $3
	RETURNING 1)
SELECT (SELECT count(*) FROM upd)::int, ` + shareSQL

	// $3 how many (NULL: all).
	slotsReleaseSQL = `UPDATE conc_slots SET owner = NULL, expires_at = '-infinity'
WHERE key = $1 AND slot IN (
	SELECT slot FROM conc_slots WHERE key = $1 AND owner = $2 ORDER BY slot DESC LIMIT $3)`
)

// slotsInited remembers which slot rows a store has created, so that only
// the first lease of a limit pays for creating them.
var slotsInited sync.Map // of slotInit

type slotInit struct {
	s     *Store
	key   string
	limit int
}

// SlotsAcquire implements batchsender.LimitStore.
func (s *Store) SlotsAcquire(ctx context.Context, key, owner string, limit, want int, ttl time.Duration) (int, int, error) {
	if limit < 1 {
		return 0, 0, batchsender.Errorf(batchsender.EINVALID, "a concurrency limit must be at least 1, got %d", limit)
	}
	ttlMS := float64(ttl.Milliseconds())
	// One pipeline, one implicit transaction, one round trip.
	b := &pgx.Batch{}
	k := slotInit{s, key, limit}
	_, inited := slotsInited.Load(k)
	if !inited {
		b.Queue(slotsInitSQL, key, limit)
	}
	b.Queue(demandSQL, key, owner, ttlMS)
	b.Queue(slotsAcquireSQL, key, owner, limit, max(want, 0), ttlMS)
	br := s.pool.SendBatch(ctx, b)
	defer br.Close()
	if !inited {
		if _, err := br.Exec(); err != nil {
			return 0, 0, fmt.Errorf("creating concurrency slots: %w", err)
		}
	}
	if _, err := br.Exec(); err != nil {
		return 0, 0, fmt.Errorf("registering demand for slots: %w", err)
	}
	var got, share int
	if err := br.QueryRow().Scan(&got, &share); err != nil {
		return 0, 0, fmt.Errorf("leasing concurrency slots: %w", err)
	}
	if err := br.Close(); err != nil {
		return 0, 0, fmt.Errorf("leasing concurrency slots: %w", err)
	}
	if !inited {
		slotsInited.Store(k, true)
	}
	return got, share, nil
}

// SlotsRenew implements batchsender.LimitStore.
func (s *Store) SlotsRenew(ctx context.Context, key, owner string, limit int, ttl time.Duration) (int, int, error) {
	ttlMS := float64(ttl.Milliseconds())
	b := &pgx.Batch{}
	b.Queue(demandSQL, key, owner, ttlMS)
	b.Queue(slotsRenewSQL, key, owner, max(limit, 1), ttlMS)
	br := s.pool.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return 0, 0, fmt.Errorf("registering demand for slots: %w", err)
	}
	var held, share int
	if err := br.QueryRow().Scan(&held, &share); err != nil {
		return 0, 0, fmt.Errorf("renewing concurrency slots: %w", err)
	}
	if err := br.Close(); err != nil {
		return 0, 0, fmt.Errorf("renewing concurrency slots: %w", err)
	}
	return held, share, nil
}

// SlotsRelease implements batchsender.LimitStore.
func (s *Store) SlotsRelease(ctx context.Context, key, owner string, n int) error {
	var lim any
	if n > 0 {
		lim = n
	}
	if _, err := s.pool.Exec(ctx, slotsReleaseSQL, key, owner, lim); err != nil {
		return fmt.Errorf("releasing concurrency slots: %w", err)
	}
	if n <= 0 {
		if _, err := s.pool.Exec(ctx, `DELETE FROM conc_demand WHERE key = $1 AND owner = $2`, key, owner); err != nil {
			return fmt.Errorf("withdrawing demand for slots: %w", err)
		}
	}
	return nil
}

var _ batchsender.LimitStore = (*Store)(nil)
