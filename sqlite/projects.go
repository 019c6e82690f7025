package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/batchsender/batchsender"
)

// ProjectCreate implements batchsender.Store.
func (s *Store) ProjectCreate(ctx context.Context, name string) (batchsender.Project, error) {
	p := batchsender.Project{ID: batchsender.NewID("prj"), Name: name, CreatedAt: fromMS(ms(s.now()))}
	_, err := s.w.ExecContext(ctx, `INSERT INTO projects (id, name, created_at) VALUES (?, ?, ?)`,
		p.ID, p.Name, ms(p.CreatedAt))
	if isUnique(err) {
		return batchsender.Project{}, batchsender.Errorf(batchsender.ECONFLICT, "project %q already exists", name)
	}
	if err != nil {
		return batchsender.Project{}, fmt.Errorf("creating project: %w", err)
	}
	return p, nil
}

// ProjectGetByName implements batchsender.Store.
func (s *Store) ProjectGetByName(ctx context.Context, name string) (batchsender.Project, error) {
	var p batchsender.Project
	var created int64
	err := s.r.QueryRowContext(ctx, `SELECT id, name, created_at FROM projects WHERE name = ?`, name).
		Scan(&p.ID, &p.Name, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return p, batchsender.Errorf(batchsender.ENOTFOUND, "project %q not found", name)
	}
	if err != nil {
		return p, fmt.Errorf("reading project: %w", err)
	}
	p.CreatedAt = fromMS(created)
	return p, nil
}

// APIKeyCreate implements batchsender.Store.
func (s *Store) APIKeyCreate(ctx context.Context, p batchsender.APIKeyCreateParams) (batchsender.APIKey, error) {
	k := batchsender.APIKey{
		ID: p.ID, ProjectID: p.ProjectID, Name: p.Name, Role: p.Role,
		SecretHash: p.SecretHash, CreatedAt: fromMS(ms(s.now())),
	}
	if k.SecretHash == nil {
		k.SecretHash = []byte{}
	}
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		if err := projectExists(ctx, tx, p.ProjectID); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO api_keys (id, project_id, name, role, secret_hash, created_at)
			VALUES (?, ?, ?, ?, ?, ?)`, k.ID, k.ProjectID, k.Name, k.Role, k.SecretHash, ms(k.CreatedAt))
		if isUnique(err) {
			return batchsender.Errorf(batchsender.ECONFLICT, "api key %q already exists", p.ID)
		}
		if err != nil {
			return fmt.Errorf("creating api key: %w", err)
		}
		return nil
	})
	if err != nil {
		return batchsender.APIKey{}, err
	}
	return k, nil
}

// APIKeyGetByID implements batchsender.Store.
func (s *Store) APIKeyGetByID(ctx context.Context, id string) (batchsender.APIKey, error) {
	var k batchsender.APIKey
	var created int64
	err := s.r.QueryRowContext(ctx, `SELECT id, project_id, name, role, secret_hash, created_at FROM api_keys WHERE id = ?`, id).
		Scan(&k.ID, &k.ProjectID, &k.Name, &k.Role, &k.SecretHash, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return k, batchsender.Errorf(batchsender.ENOTFOUND, "api key not found")
	}
	if err != nil {
		return k, fmt.Errorf("reading api key: %w", err)
	}
	k.CreatedAt = fromMS(created)
	return k, nil
}

// projectExists returns ENOTFOUND unless the project exists. Checked before
// inserts so a wrong project ID is a clear error, not a foreign key failure.
func projectExists(ctx context.Context, tx *sql.Tx, id string) error {
	var one int
	err := tx.QueryRowContext(ctx, `SELECT 1 FROM projects WHERE id = ?`, id).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return batchsender.Errorf(batchsender.ENOTFOUND, "project %q not found", id)
	}
	if err != nil {
		return fmt.Errorf("reading project: %w", err)
	}
	return nil
}

// ConnectionCreate implements batchsender.Store.
func (s *Store) ConnectionCreate(ctx context.Context, p batchsender.ConnectionCreateParams) (batchsender.Connection, error) {
	now := fromMS(ms(s.now()))
	c := batchsender.Connection{
		ID: batchsender.NewID("con"), ProjectID: p.ProjectID, Provider: p.Provider, Name: p.Name,
		Config: p.Config, SecretsSealed: p.SecretsSealed, SecretNames: p.SecretNames,
		CreatedAt: now, UpdatedAt: now,
	}
	if len(c.Config) == 0 {
		c.Config = json.RawMessage("{}")
	}
	if c.SecretNames == nil {
		c.SecretNames = []string{}
	}
	names, err := json.Marshal(c.SecretNames)
	if err != nil {
		return batchsender.Connection{}, fmt.Errorf("encoding secret names: %w", err)
	}
	err = s.writeTx(ctx, func(tx *sql.Tx) error {
		if err := projectExists(ctx, tx, p.ProjectID); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO connections
			(id, project_id, provider, name, config, secrets_sealed, secret_names, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			c.ID, c.ProjectID, c.Provider, c.Name, string(c.Config), c.SecretsSealed, string(names), ms(now), ms(now))
		if isUnique(err) {
			return batchsender.Errorf(batchsender.ECONFLICT, "a connection named %q already exists", p.Name)
		}
		if err != nil {
			return fmt.Errorf("creating connection: %w", err)
		}
		return nil
	})
	if err != nil {
		return batchsender.Connection{}, err
	}
	return c, nil
}

const connectionColumns = `id, project_id, provider, name, config, secrets_sealed, secret_names, created_at, updated_at`

func scanConnection(row interface{ Scan(...any) error }) (batchsender.Connection, error) {
	var c batchsender.Connection
	var config, names string
	var created, updated int64
	if err := row.Scan(&c.ID, &c.ProjectID, &c.Provider, &c.Name, &config, &c.SecretsSealed, &names, &created, &updated); err != nil {
		return c, err
	}
	c.Config = json.RawMessage(config)
	if err := json.Unmarshal([]byte(names), &c.SecretNames); err != nil {
		return c, fmt.Errorf("decoding secret names of %s: %w", c.ID, err)
	}
	c.CreatedAt, c.UpdatedAt = fromMS(created), fromMS(updated)
	return c, nil
}

// ConnectionGet implements batchsender.Store.
func (s *Store) ConnectionGet(ctx context.Context, projectID, idOrName string) (batchsender.Connection, error) {
	c, err := scanConnection(s.r.QueryRowContext(ctx, `SELECT `+connectionColumns+` FROM connections
		WHERE project_id = ? AND (id = ? OR name = ?)
		ORDER BY id = ? DESC LIMIT 1`, projectID, idOrName, idOrName, idOrName))
	if errors.Is(err, sql.ErrNoRows) {
		return c, batchsender.Errorf(batchsender.ENOTFOUND, "connection %q not found", idOrName)
	}
	if err != nil {
		return c, fmt.Errorf("reading connection: %w", err)
	}
	return c, nil
}

// ConnectionGetByID implements batchsender.Store.
func (s *Store) ConnectionGetByID(ctx context.Context, id string) (batchsender.Connection, error) {
	c, err := scanConnection(s.r.QueryRowContext(ctx, `SELECT `+connectionColumns+` FROM connections WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return c, batchsender.Errorf(batchsender.ENOTFOUND, "connection %q not found", id)
	}
	if err != nil {
		return c, fmt.Errorf("reading connection: %w", err)
	}
	return c, nil
}

// ConnectionList implements batchsender.Store.
func (s *Store) ConnectionList(ctx context.Context, projectID string) ([]batchsender.Connection, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+connectionColumns+` FROM connections WHERE project_id = ? ORDER BY id`, projectID)
	if err != nil {
		return nil, fmt.Errorf("listing connections: %w", err)
	}
	defer rows.Close()
	out := []batchsender.Connection{}
	for rows.Next() {
		c, err := scanConnection(rows)
		if err != nil {
			return nil, fmt.Errorf("reading connection: %w", err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing connections: %w", err)
	}
	return out, nil
}
