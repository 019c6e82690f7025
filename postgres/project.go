package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/batchsender/batchsender"
	"github.com/jackc/pgx/v5"
)

// ProjectCreate creates a project. ECONFLICT if the name is taken.
func (s *Store) ProjectCreate(ctx context.Context, name string) (batchsender.Project, error) {
	p := batchsender.Project{ID: batchsender.NewID("prj"), Name: name, CreatedAt: s.stamp()}
	_, err := s.pool.Exec(ctx, `INSERT INTO projects (id, name, created_at) VALUES ($1, $2, $3)`, p.ID, p.Name, p.CreatedAt)
	if pgCode(err) == pgUniqueViolation {
		return batchsender.Project{}, batchsender.Errorf(batchsender.ECONFLICT, "project %q already exists", name)
	}
	if err != nil {
		return batchsender.Project{}, fmt.Errorf("creating project: %w", err)
	}
	return p, nil
}

// ProjectGetByName returns the project named name, ENOTFOUND if none.
func (s *Store) ProjectGetByName(ctx context.Context, name string) (batchsender.Project, error) {
	var p batchsender.Project
	err := s.pool.QueryRow(ctx, `SELECT id, name, created_at FROM projects WHERE name = $1`, name).Scan(&p.ID, &p.Name, &p.CreatedAt)
	if err != nil {
		return batchsender.Project{}, notFound(err, "project", "getting project")
	}
	p.CreatedAt = utc(p.CreatedAt)
	return p, nil
}

// APIKeyCreate stores a new key. ECONFLICT if the ID exists; ENOTFOUND if
// the project does not.
func (s *Store) APIKeyCreate(ctx context.Context, p batchsender.APIKeyCreateParams) (batchsender.APIKey, error) {
	k := batchsender.APIKey{ID: p.ID, ProjectID: p.ProjectID, Name: p.Name, Role: p.Role, SecretHash: p.SecretHash, CreatedAt: s.stamp()}
	_, err := s.pool.Exec(ctx, `INSERT INTO api_keys (id, project_id, name, role, secret_hash, created_at) VALUES ($1, $2, $3, $4, $5, $6)`,
		k.ID, k.ProjectID, k.Name, k.Role, nonNilBytes(k.SecretHash), k.CreatedAt)
	switch pgCode(err) {
	case "":
	case pgUniqueViolation:
		return batchsender.APIKey{}, batchsender.Errorf(batchsender.ECONFLICT, "API key %q already exists", p.ID)
	case pgForeignKeyViolation:
		return batchsender.APIKey{}, batchsender.Errorf(batchsender.ENOTFOUND, "project not found")
	}
	if err != nil {
		return batchsender.APIKey{}, fmt.Errorf("creating API key: %w", err)
	}
	return k, nil
}

// APIKeyGetByID returns the key with that public ID, ENOTFOUND if none.
func (s *Store) APIKeyGetByID(ctx context.Context, id string) (batchsender.APIKey, error) {
	var k batchsender.APIKey
	err := s.pool.QueryRow(ctx, `SELECT id, project_id, name, role, secret_hash, created_at FROM api_keys WHERE id = $1`, id).
		Scan(&k.ID, &k.ProjectID, &k.Name, &k.Role, &k.SecretHash, &k.CreatedAt)
	if err != nil {
		return batchsender.APIKey{}, notFound(err, "API key", "getting API key")
	}
	k.CreatedAt = utc(k.CreatedAt)
	return k, nil
}

const connectionColumns = `id, project_id, provider, name, config, secrets_sealed, secret_names, created_at, updated_at`

func scanConnection(row pgx.Row) (batchsender.Connection, error) {
	var c batchsender.Connection
	var config, names string
	if err := row.Scan(&c.ID, &c.ProjectID, &c.Provider, &c.Name, &config, &c.SecretsSealed, &names, &c.CreatedAt, &c.UpdatedAt); err != nil {
		return batchsender.Connection{}, err
	}
	c.Config = json.RawMessage(config)
	if err := json.Unmarshal([]byte(names), &c.SecretNames); err != nil {
		return batchsender.Connection{}, fmt.Errorf("decoding secret names of connection %s: %w", c.ID, err)
	}
	c.CreatedAt, c.UpdatedAt = utc(c.CreatedAt), utc(c.UpdatedAt)
	return c, nil
}

// ConnectionCreate stores a connection. ECONFLICT if the project already
// has one of that name; ENOTFOUND if the project does not exist.
func (s *Store) ConnectionCreate(ctx context.Context, p batchsender.ConnectionCreateParams) (batchsender.Connection, error) {
	now := s.stamp()
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
	_, err = s.pool.Exec(ctx, `INSERT INTO connections (`+connectionColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
		c.ID, c.ProjectID, c.Provider, c.Name, string(c.Config), c.SecretsSealed, string(names), c.CreatedAt, c.UpdatedAt)
	switch pgCode(err) {
	case "":
	case pgUniqueViolation:
		return batchsender.Connection{}, batchsender.Errorf(batchsender.ECONFLICT, "a connection named %q already exists", p.Name)
	case pgForeignKeyViolation:
		return batchsender.Connection{}, batchsender.Errorf(batchsender.ENOTFOUND, "project not found")
	}
	if err != nil {
		return batchsender.Connection{}, fmt.Errorf("creating connection: %w", err)
	}
	return c, nil
}

// ConnectionGet returns the project's connection whose ID or name is
// idOrName, ENOTFOUND if none. An ID match wins over a name match.
func (s *Store) ConnectionGet(ctx context.Context, projectID, idOrName string) (batchsender.Connection, error) {
	c, err := scanConnection(s.pool.QueryRow(ctx, `SELECT `+connectionColumns+` FROM connections
		WHERE project_id = $1 AND (id = $2 OR name = $2)
		ORDER BY id = $2 DESC LIMIT 1`, projectID, idOrName))
	if err != nil {
		return batchsender.Connection{}, notFound(err, "connection", "getting connection")
	}
	return c, nil
}

// ConnectionGetByID returns a connection of any project, ENOTFOUND if none.
func (s *Store) ConnectionGetByID(ctx context.Context, id string) (batchsender.Connection, error) {
	c, err := scanConnection(s.pool.QueryRow(ctx, `SELECT `+connectionColumns+` FROM connections WHERE id = $1`, id))
	if err != nil {
		return batchsender.Connection{}, notFound(err, "connection", "getting connection")
	}
	return c, nil
}

// ConnectionList returns the project's connections, oldest first.
func (s *Store) ConnectionList(ctx context.Context, projectID string) ([]batchsender.Connection, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+connectionColumns+` FROM connections WHERE project_id = $1 ORDER BY id`, projectID)
	if err != nil {
		return nil, fmt.Errorf("listing connections: %w", err)
	}
	defer rows.Close()
	out := []batchsender.Connection{}
	for rows.Next() {
		c, err := scanConnection(rows)
		if err != nil {
			return nil, fmt.Errorf("listing connections: %w", err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing connections: %w", err)
	}
	return out, nil
}

// stamp returns the store clock's time as the store keeps times.
func (s *Store) stamp() time.Time { return ms(s.now()) }

// ms returns t in UTC at millisecond precision. Every time the store writes
// goes through it: the SQLite store keeps milliseconds, and both stores must
// compare and return the same instants.
func ms(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC().Truncate(time.Millisecond)
}

// rawText turns a JSON document into a nullable text value: empty is NULL.
func rawText(b []byte) *string {
	if len(b) == 0 {
		return nil
	}
	str := string(b)
	return &str
}

func nonNilBytes(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}
