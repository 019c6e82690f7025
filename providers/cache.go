// Package providers turns stored connections into provisioned sdk.Provider
// instances and keeps them, one per connection, for the engine and the API.
package providers

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/sdk"
	"github.com/batchsender/batchsender/unsubscribe"
)

// Unsealer opens a connection's sealed secrets.
type Unsealer interface {
	Open(sealed []byte) ([]byte, error)
}

// Config is what every provisioned provider shares.
type Config struct {
	Unsealer             Unsealer
	Logger               *slog.Logger
	Dialer               func(ctx context.Context, network, address string) (net.Conn, error)
	AllowPrivateNetworks bool
	PublicURL            string
	Now                  func() time.Time
	// Unsubscribe signs the one-click unsubscribe links providers put into
	// messages (sdk.Env.UnsubscribeURL). Nil, or a signer without a public
	// URL, leaves the links out.
	Unsubscribe *unsubscribe.Signer
}

// Cache provisions each connection's provider once and reuses it until the
// connection changes (its UpdatedAt moves).
type Cache struct {
	cfg Config
	mu  sync.Mutex
	m   map[string]entry
}

type entry struct {
	updated time.Time
	p       sdk.Provider
}

// NewCache returns an empty cache.
func NewCache(cfg Config) *Cache {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Dialer == nil {
		cfg.Dialer = (&net.Dialer{Timeout: 10 * time.Second}).DialContext
	}
	return &Cache{cfg: cfg, m: map[string]entry{}}
}

// Provision builds a provider for a connection that is not stored yet, to
// check its config and secrets (plain JSON) before it is saved. The caller
// closes the returned provider.
func (c *Cache) Provision(ctx context.Context, providerID string, config, secrets json.RawMessage) (sdk.Provider, error) {
	return c.provision(ctx, providerID, config, secrets, nil)
}

// unsubscribeURL returns the link maker of a stored connection's messages:
// each link unsubscribes one address from the connection's project and
// module.
func (c *Cache) unsubscribeURL(conn batchsender.Connection) func(itemID, recipient string) string {
	if !c.cfg.Unsubscribe.Links() {
		return nil
	}
	signer, project, channel := c.cfg.Unsubscribe, conn.ProjectID, conn.Module()
	return func(itemID, recipient string) string {
		return signer.URL(unsubscribe.Token{ProjectID: project, Channel: channel,
			Address: batchsender.NormalizeAddress(recipient), ItemID: itemID})
	}
}

func (c *Cache) provision(ctx context.Context, providerID string, config, secrets json.RawMessage, unsub func(itemID, recipient string) string) (sdk.Provider, error) {
	reg, ok := sdk.Lookup(providerID)
	if !ok {
		return nil, batchsender.Errorf(batchsender.EINVALID, "unknown provider %q", providerID)
	}
	p := reg.New()
	env := sdk.Env{
		Config:               withoutHostLimits(withoutEvents(config), p.Info().ConfigSchema),
		Secrets:              withoutEvents(secrets),
		Logger:               c.cfg.Logger.With(slog.String("provider", providerID)),
		Dialer:               c.cfg.Dialer,
		AllowPrivateNetworks: c.cfg.AllowPrivateNetworks,
		PublicURL:            c.cfg.PublicURL,
		Now:                  c.cfg.Now,
		UnsubscribeURL:       unsub,
	}
	if err := p.Provision(ctx, env); err != nil {
		return nil, batchsender.Errorf(batchsender.EINVALID, "%s connection: %v", providerID, err)
	}
	return p, nil
}

// Get returns the provisioned provider of a stored connection.
func (c *Cache) Get(ctx context.Context, conn batchsender.Connection) (sdk.Provider, error) {
	c.mu.Lock()
	e, ok := c.m[conn.ID]
	c.mu.Unlock()
	if ok && e.updated.Equal(conn.UpdatedAt) {
		return e.p, nil
	}
	secrets, err := c.Secrets(conn)
	if err != nil {
		return nil, err
	}
	p, err := c.provision(ctx, conn.Provider, conn.Config, secrets, c.unsubscribeURL(conn))
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.m[conn.ID]; ok {
		if old.updated.Equal(conn.UpdatedAt) {
			// Another caller won the race; keep theirs.
			_ = p.Close()
			return old.p, nil
		}
		_ = old.p.Close()
	}
	c.m[conn.ID] = entry{updated: conn.UpdatedAt, p: p}
	return p, nil
}

// Secrets returns a stored connection's secrets as the JSON object they
// were given in ("{}" when none), for the few host features that need them
// outside a provider, such as verifying a provider's event webhooks.
func (c *Cache) Secrets(conn batchsender.Connection) (json.RawMessage, error) {
	if len(conn.SecretsSealed) == 0 {
		return json.RawMessage("{}"), nil
	}
	secrets, err := c.cfg.Unsealer.Open(conn.SecretsSealed)
	if err != nil {
		return nil, fmt.Errorf("opening secrets of connection %s: %w", conn.ID, err)
	}
	return secrets, nil
}

// EventsKey is the key of a connection's config and secrets reserved for
// the host's event webhook settings (see package events): providers never
// see it.
const EventsKey = "events"

// withoutEvents returns a JSON object without its EventsKey member, or raw
// unchanged when it has none (or is not an object; the provider says so).
func withoutEvents(raw json.RawMessage) json.RawMessage {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return raw
	}
	if _, ok := m[EventsKey]; !ok {
		return raw
	}
	delete(m, EventsKey)
	out, err := json.Marshal(m)
	if err != nil {
		return raw
	}
	return out
}

// HostLimitKeys are the top-level keys of a connection's config that the
// engine reads for every provider (the connection's rate and concurrency
// limits). A provider sees them only when its config schema declares them,
// so that providers decoding their config strictly do not refuse them.
var HostLimitKeys = []string{"rate_per_second", "concurrency"}

// withoutHostLimits returns a config object without the HostLimitKeys its
// provider's schema does not declare, or raw unchanged when it has none.
func withoutHostLimits(raw, schema json.RawMessage) json.RawMessage {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return raw
	}
	var declared struct {
		Properties map[string]json.RawMessage `json:"properties"`
	}
	_ = json.Unmarshal(schema, &declared)
	changed := false
	for _, k := range HostLimitKeys {
		if _, ok := m[k]; ok {
			if _, ok := declared.Properties[k]; !ok {
				delete(m, k)
				changed = true
			}
		}
	}
	if !changed {
		return raw
	}
	out, err := json.Marshal(m)
	if err != nil {
		return raw
	}
	return out
}

// EventSettings returns the EventsKey objects of a stored connection's
// config and secrets (nil when absent), for verifying its provider's event
// webhooks.
func (c *Cache) EventSettings(conn batchsender.Connection) (config, secrets json.RawMessage, err error) {
	member := func(raw json.RawMessage) json.RawMessage {
		var m map[string]json.RawMessage
		if json.Unmarshal(raw, &m) != nil {
			return nil
		}
		return m[EventsKey]
	}
	s, err := c.Secrets(conn)
	if err != nil {
		return nil, nil, err
	}
	return member(conn.Config), member(s), nil
}

// Close closes every provider.
func (c *Cache) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, e := range c.m {
		_ = e.p.Close()
		delete(c.m, id)
	}
	return nil
}
