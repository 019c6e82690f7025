// Package batchsender holds the domain of BatchSender: projects, API keys,
// connections, batches, items and their life cycles, the Store interface
// that persists them, and the error type shared by every layer.
//
// The package imports only the standard library. Each outside technology
// (SQLite, PostgreSQL, HTTP, providers) lives in a package of its own and
// meets the others through the types declared here.
package batchsender

import (
	"encoding/json"
	"fmt"
	"time"
)

// Project is a tenant. Every other record belongs to exactly one project.
type Project struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

// Key roles. An admin key may manage keys of its project; a member key may
// use everything else.
const (
	RoleAdmin  = "admin"
	RoleMember = "member"
)

// APIKey is the stored half of an API key. The secret itself is never stored:
// only its SHA-256 hash, compared in constant time (see package auth).
type APIKey struct {
	ID         string    `json:"id"` // public key ID, also the lookup prefix of the key
	ProjectID  string    `json:"project_id"`
	Name       string    `json:"name"`
	Role       string    `json:"role"`
	SecretHash []byte    `json:"-"`
	CreatedAt  time.Time `json:"created_at"`
}

// Connection is a project's configured provider account: which provider
// carries the work out, its plain configuration and its sealed secrets.
type Connection struct {
	ID        string          `json:"id"`
	ProjectID string          `json:"project_id"`
	Provider  string          `json:"provider"` // provider ID, e.g. "webhook.http"
	Name      string          `json:"name"`
	Config    json.RawMessage `json:"config"`
	// SecretsSealed is the AES-GCM sealed JSON object of secrets. It never
	// leaves the process: the API shows only SecretNames.
	SecretsSealed []byte    `json:"-"`
	SecretNames   []string  `json:"secret_names"`
	CreatedAt     time.Time `json:"created_at"`
	UpdatedAt     time.Time `json:"updated_at"`
}

// Module returns the module (channel) part of the provider ID: "webhook" for
// "webhook.http".
func (c Connection) Module() string { return ModuleOf(c.Provider) }

// ModuleOf returns the part of a provider ID before its first dot.
func ModuleOf(providerID string) string {
	for i := 0; i < len(providerID); i++ {
		if providerID[i] == '.' {
			return providerID[:i]
		}
	}
	return providerID
}

// Duration is a time.Duration that reads and writes JSON as "30s" (or as a
// number of nanoseconds when given a number).
type Duration time.Duration

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON accepts "1m30s" or an integer number of nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("invalid duration %q: use a form like \"30s\" or \"5m\"", s)
		}
		*d = Duration(v)
		return nil
	}
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("invalid duration %s: use a form like \"30s\"", b)
	}
	*d = Duration(n)
	return nil
}
