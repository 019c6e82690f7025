package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/batchsender/batchsender"
)

// matchBatch bounds the addresses of one IN list: SQLite's default limit on
// bound parameters is 32766, and a chunk is far smaller anyway.
const matchBatch = 500

// SuppressionsAdd implements batchsender.Store.
func (s *Store) SuppressionsAdd(ctx context.Context, projectID string, sups []batchsender.Suppression) (int, error) {
	if len(sups) == 0 {
		return 0, nil
	}
	now := ms(s.now())
	added := 0
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		if err := projectExists(ctx, tx, projectID); err != nil {
			return err
		}
		st, err := tx.PrepareContext(ctx, `INSERT INTO suppressions (project_id, channel, address, reason, source, created_at)
			VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`)
		if err != nil {
			return fmt.Errorf("adding suppressions: %w", err)
		}
		defer st.Close()
		for _, sup := range sups {
			at := now
			if !sup.CreatedAt.IsZero() {
				at = ms(sup.CreatedAt)
			}
			res, err := st.ExecContext(ctx, projectID, sup.Channel, batchsender.NormalizeAddress(sup.Address),
				string(sup.Reason), sup.Source, at)
			if err != nil {
				return fmt.Errorf("adding suppression: %w", err)
			}
			n, err := res.RowsAffected()
			if err != nil {
				return fmt.Errorf("adding suppression: %w", err)
			}
			added += int(n)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return added, nil
}

// SuppressionList implements batchsender.Store. A Limit of 0 means 100; at
// most 1000.
func (s *Store) SuppressionList(ctx context.Context, p batchsender.SuppressionListParams) ([]batchsender.Suppression, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT channel, address, reason, source, created_at FROM suppressions
		WHERE project_id = ? AND channel = ? AND address > ? ORDER BY address LIMIT ?`,
		p.ProjectID, p.Channel, p.Cursor, limit(p.Limit, 100, 1000))
	if err != nil {
		return nil, fmt.Errorf("listing suppressions: %w", err)
	}
	defer rows.Close()
	out := []batchsender.Suppression{}
	for rows.Next() {
		var sup batchsender.Suppression
		var at int64
		if err := rows.Scan(&sup.Channel, &sup.Address, &sup.Reason, &sup.Source, &at); err != nil {
			return nil, fmt.Errorf("reading suppression: %w", err)
		}
		sup.CreatedAt = fromMS(at)
		out = append(out, sup)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing suppressions: %w", err)
	}
	return out, nil
}

// SuppressionDelete implements batchsender.Store.
func (s *Store) SuppressionDelete(ctx context.Context, projectID, channel, address string) error {
	var n int64
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM suppressions WHERE project_id = ? AND channel = ? AND address = ?`,
			projectID, channel, batchsender.NormalizeAddress(address))
		if err != nil {
			return fmt.Errorf("deleting suppression: %w", err)
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return err
	}
	if n == 0 {
		return batchsender.Errorf(batchsender.ENOTFOUND, "%s is not suppressed on %s", address, channel)
	}
	return nil
}

// SuppressionsMatch implements batchsender.Store.
func (s *Store) SuppressionsMatch(ctx context.Context, projectID, channel string, addresses []string) (map[string]batchsender.SuppressionReason, error) {
	out := map[string]batchsender.SuppressionReason{}
	for len(addresses) > 0 {
		part := addresses[:min(len(addresses), matchBatch)]
		addresses = addresses[len(part):]
		args := make([]any, 0, len(part)+2)
		args = append(args, projectID, channel)
		for _, a := range part {
			args = append(args, a)
		}
		rows, err := s.r.QueryContext(ctx, `SELECT address, reason FROM suppressions
			WHERE project_id = ? AND channel = ? AND address IN (?`+strings.Repeat(", ?", len(part)-1)+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("matching suppressions: %w", err)
		}
		for rows.Next() {
			var a string
			var r batchsender.SuppressionReason
			if err := rows.Scan(&a, &r); err != nil {
				rows.Close()
				return nil, fmt.Errorf("reading suppression: %w", err)
			}
			out[a] = r
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("matching suppressions: %w", err)
		}
	}
	return out, nil
}
