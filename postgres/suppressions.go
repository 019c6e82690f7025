package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/batchsender/batchsender"
)

// SuppressionsAdd implements batchsender.Store: one INSERT of arrays, an
// address already suppressed keeping its first record.
func (s *Store) SuppressionsAdd(ctx context.Context, projectID string, sups []batchsender.Suppression) (int, error) {
	if len(sups) == 0 {
		return 0, nil
	}
	now := s.stamp()
	channels := make([]string, len(sups))
	addrs := make([]string, len(sups))
	reasons := make([]string, len(sups))
	sources := make([]string, len(sups))
	ats := make([]time.Time, len(sups))
	for i, sup := range sups {
		channels[i], addrs[i] = sup.Channel, batchsender.NormalizeAddress(sup.Address)
		reasons[i], sources[i] = string(sup.Reason), sup.Source
		ats[i] = now
		if !sup.CreatedAt.IsZero() {
			ats[i] = ms(sup.CreatedAt)
		}
	}
	tag, err := s.pool.Exec(ctx, `INSERT INTO suppressions (project_id, channel, address, reason, source, created_at)
		SELECT $1::text, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
		ON CONFLICT DO NOTHING`, projectID, channels, addrs, reasons, sources, ats)
	if pgCode(err) == pgForeignKeyViolation {
		return 0, batchsender.Errorf(batchsender.ENOTFOUND, "project not found")
	}
	if err != nil {
		return 0, fmt.Errorf("adding suppressions: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// SuppressionList implements batchsender.Store. A Limit of 0 means 100; at
// most 1000.
func (s *Store) SuppressionList(ctx context.Context, p batchsender.SuppressionListParams) ([]batchsender.Suppression, error) {
	n := p.Limit
	if n <= 0 {
		n = 100
	}
	n = min(n, 1000)
	rows, err := s.pool.Query(ctx, `SELECT channel, address, reason, source, created_at FROM suppressions
		WHERE project_id = $1 AND channel = $2 AND address > $3 ORDER BY address LIMIT $4`,
		p.ProjectID, p.Channel, p.Cursor, n)
	if err != nil {
		return nil, fmt.Errorf("listing suppressions: %w", err)
	}
	defer rows.Close()
	out := []batchsender.Suppression{}
	for rows.Next() {
		var sup batchsender.Suppression
		var reason string
		if err := rows.Scan(&sup.Channel, &sup.Address, &reason, &sup.Source, &sup.CreatedAt); err != nil {
			return nil, fmt.Errorf("reading suppression: %w", err)
		}
		sup.Reason, sup.CreatedAt = batchsender.SuppressionReason(reason), utc(sup.CreatedAt)
		out = append(out, sup)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing suppressions: %w", err)
	}
	return out, nil
}

// SuppressionDelete implements batchsender.Store.
func (s *Store) SuppressionDelete(ctx context.Context, projectID, channel, address string) error {
	tag, err := s.pool.Exec(ctx, `DELETE FROM suppressions WHERE project_id = $1 AND channel = $2 AND address = $3`,
		projectID, channel, batchsender.NormalizeAddress(address))
	if err != nil {
		return fmt.Errorf("deleting suppression: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return batchsender.Errorf(batchsender.ENOTFOUND, "%s is not suppressed on %s", address, channel)
	}
	return nil
}

// SuppressionsMatch implements batchsender.Store.
func (s *Store) SuppressionsMatch(ctx context.Context, projectID, channel string, addresses []string) (map[string]batchsender.SuppressionReason, error) {
	out := map[string]batchsender.SuppressionReason{}
	if len(addresses) == 0 {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT address, reason FROM suppressions
		WHERE project_id = $1 AND channel = $2 AND address = ANY($3::text[])`, projectID, channel, addresses)
	if err != nil {
		return nil, fmt.Errorf("matching suppressions: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var a, r string
		if err := rows.Scan(&a, &r); err != nil {
			return nil, fmt.Errorf("reading suppression: %w", err)
		}
		out[a] = batchsender.SuppressionReason(r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("matching suppressions: %w", err)
	}
	return out, nil
}
