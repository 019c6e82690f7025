package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/batchsender/batchsender"
)

// TemplateCreate implements batchsender.Store. The write transaction
// serializes creators, so the next version number is taken safely.
func (s *Store) TemplateCreate(ctx context.Context, p batchsender.TemplateCreateParams) (batchsender.Template, error) {
	t := batchsender.Template{Name: p.Name, Module: p.Module, Template: p.Template, CreatedAt: fromMS(ms(s.now()))}
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		if err := projectExists(ctx, tx, p.ProjectID); err != nil {
			return err
		}
		var latest int
		var module sql.NullString
		err := tx.QueryRowContext(ctx, `SELECT version, module FROM templates WHERE project_id = ? AND name = ?
			ORDER BY version DESC LIMIT 1`, p.ProjectID, p.Name).Scan(&latest, &module)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("reading template versions: %w", err)
		}
		if module.Valid && module.String != p.Module {
			return batchsender.Errorf(batchsender.ECONFLICT, "template %q is a template of module %q, not %q; choose another name", p.Name, module.String, p.Module)
		}
		t.Version = latest + 1
		if _, err := tx.ExecContext(ctx, `INSERT INTO templates (project_id, name, version, module, template, created_at)
			VALUES (?, ?, ?, ?, ?, ?)`, p.ProjectID, p.Name, t.Version, p.Module, string(p.Template), ms(t.CreatedAt)); err != nil {
			return fmt.Errorf("creating template: %w", err)
		}
		return nil
	})
	if err != nil {
		return batchsender.Template{}, err
	}
	return t, nil
}

const templateColumns = `name, version, module, template, created_at`

func scanTemplate(row interface{ Scan(...any) error }) (batchsender.Template, error) {
	var t batchsender.Template
	var body string
	var at int64
	if err := row.Scan(&t.Name, &t.Version, &t.Module, &body, &at); err != nil {
		return t, err
	}
	t.Template, t.CreatedAt = []byte(body), fromMS(at)
	return t, nil
}

// TemplateGet implements batchsender.Store.
func (s *Store) TemplateGet(ctx context.Context, projectID, name string, version int) (batchsender.Template, error) {
	var row *sql.Row
	if version == 0 {
		row = s.r.QueryRowContext(ctx, `SELECT `+templateColumns+` FROM templates WHERE project_id = ? AND name = ?
			ORDER BY version DESC LIMIT 1`, projectID, name)
	} else {
		row = s.r.QueryRowContext(ctx, `SELECT `+templateColumns+` FROM templates WHERE project_id = ? AND name = ? AND version = ?`,
			projectID, name, version)
	}
	t, err := scanTemplate(row)
	if errors.Is(err, sql.ErrNoRows) {
		if version == 0 {
			return t, batchsender.Errorf(batchsender.ENOTFOUND, "template %q not found", name)
		}
		return t, batchsender.Errorf(batchsender.ENOTFOUND, "template %q has no version %d", name, version)
	}
	if err != nil {
		return t, fmt.Errorf("reading template: %w", err)
	}
	return t, nil
}

// TemplateList implements batchsender.Store. A Limit of 0 means 100; at
// most 1000.
func (s *Store) TemplateList(ctx context.Context, p batchsender.TemplateListParams) ([]batchsender.Template, error) {
	// SQLite returns the bare columns of the row that holds MAX(version).
	rows, err := s.r.QueryContext(ctx, `SELECT name, MAX(version), module, template, created_at FROM templates
		WHERE project_id = ? AND name > ? GROUP BY name ORDER BY name LIMIT ?`, p.ProjectID, p.Cursor, limit(p.Limit, 100, 1000))
	if err != nil {
		return nil, fmt.Errorf("listing templates: %w", err)
	}
	defer rows.Close()
	out := []batchsender.Template{}
	for rows.Next() {
		t, err := scanTemplate(rows)
		if err != nil {
			return nil, fmt.Errorf("reading template: %w", err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing templates: %w", err)
	}
	return out, nil
}
