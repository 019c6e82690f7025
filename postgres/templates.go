package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/batchsender/batchsender"
	"github.com/jackc/pgx/v5"
)

// TemplateCreate implements batchsender.Store. Two nodes creating a
// version of the same name at once collide on the primary key; the loser
// tries again with the next number.
func (s *Store) TemplateCreate(ctx context.Context, p batchsender.TemplateCreateParams) (batchsender.Template, error) {
	t := batchsender.Template{Name: p.Name, Module: p.Module, Template: p.Template, CreatedAt: s.stamp()}
	for try := 0; ; try++ {
		var module *string
		var latest int
		err := s.pool.QueryRow(ctx, `SELECT version, module FROM templates WHERE project_id = $1 AND name = $2
			ORDER BY version DESC LIMIT 1`, p.ProjectID, p.Name).Scan(&latest, &module)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return batchsender.Template{}, fmt.Errorf("reading template versions: %w", err)
		}
		if module != nil && *module != p.Module {
			return batchsender.Template{}, batchsender.Errorf(batchsender.ECONFLICT, "template %q is a template of module %q, not %q; choose another name", p.Name, *module, p.Module)
		}
		t.Version = latest + 1
		_, err = s.pool.Exec(ctx, `INSERT INTO templates (project_id, name, version, module, template, created_at)
			VALUES ($1, $2, $3, $4, $5, $6)`, p.ProjectID, p.Name, t.Version, p.Module, string(p.Template), t.CreatedAt)
		switch pgCode(err) {
		case "":
			if err != nil {
				return batchsender.Template{}, fmt.Errorf("creating template: %w", err)
			}
			return t, nil
		case pgUniqueViolation:
			if try < 5 {
				continue
			}
			return batchsender.Template{}, batchsender.Errorf(batchsender.ECONFLICT, "template %q is being changed concurrently; try again", p.Name)
		case pgForeignKeyViolation:
			return batchsender.Template{}, batchsender.Errorf(batchsender.ENOTFOUND, "project not found")
		}
		return batchsender.Template{}, fmt.Errorf("creating template: %w", err)
	}
}

const templateColumns = `name, version, module, template, created_at`

func scanTemplate(row pgx.Row) (batchsender.Template, error) {
	var t batchsender.Template
	var body string
	if err := row.Scan(&t.Name, &t.Version, &t.Module, &body, &t.CreatedAt); err != nil {
		return batchsender.Template{}, err
	}
	t.Template, t.CreatedAt = []byte(body), utc(t.CreatedAt)
	return t, nil
}

// TemplateGet implements batchsender.Store.
func (s *Store) TemplateGet(ctx context.Context, projectID, name string, version int) (batchsender.Template, error) {
	var row pgx.Row
	if version == 0 {
		row = s.pool.QueryRow(ctx, `SELECT `+templateColumns+` FROM templates WHERE project_id = $1 AND name = $2
			ORDER BY version DESC LIMIT 1`, projectID, name)
	} else {
		row = s.pool.QueryRow(ctx, `SELECT `+templateColumns+` FROM templates WHERE project_id = $1 AND name = $2 AND version = $3`,
			projectID, name, version)
	}
	t, err := scanTemplate(row)
	if errors.Is(err, pgx.ErrNoRows) {
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
	n := p.Limit
	if n <= 0 {
		n = 100
	}
	n = min(n, 1000)
	rows, err := s.pool.Query(ctx, `SELECT DISTINCT ON (name) `+templateColumns+` FROM templates
		WHERE project_id = $1 AND name > $2 ORDER BY name, version DESC LIMIT $3`, p.ProjectID, p.Cursor, n)
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
