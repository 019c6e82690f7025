// Package webhook is the webhook.http provider: each item becomes one HTTP
// request to its URL, signed per the Standard Webhooks specification
// (webhook-id, webhook-timestamp, webhook-signature).
//
// Every connection goes through the host's guarded dialer (the SSRF guard in
// package netguard), checked on the resolved address, and redirects are
// never followed, so a receiver cannot bounce a request into the internal
// network. URLs are also checked at ingest for literal internal addresses,
// odd IP spellings and localhost names, so such items are refused early with
// a clear reason.
//
// Not yet good: one signing secret per connection (no second secret during
// rotation, though receivers would accept several signatures); no
// asymmetric (v1a, ed25519) signatures; HTTP/2 is used only for https
// receivers that offer it.
package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/batchsender/batchsender/netguard"
	"github.com/batchsender/batchsender/sdk"
)

// ID is the provider ID.
const ID = "webhook.http"

// Defaults of the connection config.
const (
	DefaultTimeout     = 10 * time.Second
	DefaultMaxPerHost  = 64
	DefaultConcurrency = 128
	DefaultUserAgent   = "BatchSender-Webhooks/1.0"
)

func init() {
	sdk.Register(sdk.Registration{ID: ID, New: func() sdk.Provider { return new(Provider) }})
}

// Config is a webhook.http connection's configuration.
type Config struct {
	// Timeout bounds one request from dial to the end of the response
	// headers and the kept part of the body. Default 10s, at most 5m.
	Timeout Duration `json:"timeout,omitempty"`
	// MaxPerHost is the most requests in flight to one destination host
	// (host:port) at once. Default 64.
	MaxPerHost int `json:"max_per_host,omitempty"`
	// RatePerSecond caps requests per second for the connection, enforced
	// by the provider on top of the engine's limit. 0: unlimited.
	RatePerSecond float64 `json:"rate_per_second,omitempty"`
	// Concurrency caps requests in flight for the connection, enforced by
	// the provider on top of the engine's limit. 0: the engine's limit
	// alone (Info.DefaultConcurrency unless the batch lowers it).
	Concurrency int `json:"concurrency,omitempty"`
	// UserAgent replaces the default User-Agent header.
	UserAgent string `json:"user_agent,omitempty"`
}

// Secrets are a webhook.http connection's secrets.
type Secrets struct {
	// SigningSecret is the Standard Webhooks secret: "whsec_" + base64 of
	// 24 to 64 random bytes (the prefix is optional).
	SigningSecret string `json:"signing_secret"`
}

// Duration is a time.Duration written in JSON as a string such as "10s".
type Duration time.Duration

// durationError is a Duration decoding failure; the JSON decoder does not
// say which field failed, so Provision adds it.
type durationError struct{ msg string }

func (e *durationError) Error() string { return e.msg }

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return &durationError{`must be a duration string like "10s"`}
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return &durationError{fmt.Sprintf(`%q is not a duration like "10s"`, s)}
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// Provider is one webhook.http connection. Its zero value is ready for
// Provision.
type Provider struct {
	cfg          Config
	key          []byte
	allowPrivate bool
	now          func() time.Time
	log          *slog.Logger
	transport    *http.Transport
	hosts        *hostLimiter
	inflight     chan struct{} // nil: no provider-level concurrency cap
	limiter      *rate.Limiter // nil: no provider-level rate cap
	macs         sync.Pool     // *signer for key: one HMAC state per concurrent send
	deadlines    sharedDeadlines
}

// Info implements sdk.Provider.
//
// MaxChunk is 1: each item is its own HTTP request, usually to its own
// receiver, so carrying several items in one Send call would save nothing
// on the wire; with one item per call the engine's concurrency limit maps
// one-to-one onto requests in flight and each result is written as soon as
// its request ends, not held back by the slowest receiver of a chunk. The
// engine still claims and records items in large chunks.
func (p *Provider) Info() sdk.Info {
	return sdk.Info{
		ID:                 ID,
		Title:              "HTTP webhooks (Standard Webhooks signatures)",
		MaxChunk:           1,
		DefaultRate:        0,
		DefaultConcurrency: DefaultConcurrency,
		BillableUnit:       "request",
		ConfigSchema:       json.RawMessage(configSchema),
		SecretsSchema:      json.RawMessage(secretsSchema),
		ItemSchema:         json.RawMessage(itemSchema),
	}
}

// Provision implements sdk.Provider.
func (p *Provider) Provision(ctx context.Context, env sdk.Env) error {
	var cfg Config
	if err := sdk.DecodeStrict(env.Config, &cfg); err != nil {
		var de *durationError
		if errors.As(err, &de) {
			// Timeout is the config's only duration.
			return fmt.Errorf("config: timeout: %s", de.msg)
		}
		return fmt.Errorf("config: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	if err := cfg.withDefaults().validate(); err != nil {
		return err
	}
	cfg = cfg.withDefaults()
	var sec Secrets
	if err := sdk.DecodeStrict(env.Secrets, &sec); err != nil {
		// The decoder's message names fields, never values.
		return fmt.Errorf("secrets: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	key, err := parseSigningSecret(sec.SigningSecret)
	if err != nil {
		return err
	}

	p.cfg, p.key, p.allowPrivate = cfg, key, env.AllowPrivateNetworks
	p.now = env.Now
	if p.now == nil {
		p.now = time.Now
	}
	p.log = env.Logger
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	dial := env.Dialer
	if dial == nil {
		dial = netguard.Dialer(env.AllowPrivateNetworks, time.Duration(cfg.Timeout))
	}
	p.transport = &http.Transport{
		// Never a proxy from the environment: the guard must judge the
		// receiver's address, not a proxy's.
		Proxy:       nil,
		DialContext: netguard.CheckRemote(dial, env.AllowPrivateNetworks),
		// A custom DialContext turns HTTP/2 off unless forced.
		ForceAttemptHTTP2: true,
		// At most MaxPerHost requests run per host, so that many idle
		// connections per host are enough to reuse every one.
		MaxIdleConns:           4096,
		MaxIdleConnsPerHost:    cfg.MaxPerHost,
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    time.Duration(cfg.Timeout),
		ResponseHeaderTimeout:  time.Duration(cfg.Timeout),
		MaxResponseHeaderBytes: 64 << 10,
		// Only the first 1 KiB of answers is kept; compression would
		// cost CPU for nothing.
		DisableCompression: true,
	}
	p.hosts = newHostLimiter(cfg.MaxPerHost)
	if cfg.Concurrency > 0 {
		p.inflight = make(chan struct{}, cfg.Concurrency)
	}
	if cfg.RatePerSecond > 0 {
		burst := max(1, int(cfg.RatePerSecond/10))
		p.limiter = rate.NewLimiter(rate.Limit(cfg.RatePerSecond), burst)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Timeout == 0 {
		c.Timeout = Duration(DefaultTimeout)
	}
	if c.MaxPerHost == 0 {
		c.MaxPerHost = DefaultMaxPerHost
	}
	if c.UserAgent == "" {
		c.UserAgent = DefaultUserAgent
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.Timeout <= 0 || time.Duration(c.Timeout) > 5*time.Minute:
		return errors.New("timeout: must be more than 0s and at most 5m")
	case c.MaxPerHost < 1 || c.MaxPerHost > 10000:
		return errors.New("max_per_host: must be between 1 and 10000")
	case c.RatePerSecond < 0 || c.RatePerSecond > 1e6:
		return errors.New("rate_per_second: must be between 0 (unlimited) and 1000000")
	case c.Concurrency < 0 || c.Concurrency > 10000:
		return errors.New("concurrency: must be between 0 (engine default) and 10000")
	case len(c.UserAgent) > 256 || strings.ContainsAny(c.UserAgent, "\r\n\x00"):
		return errors.New("user_agent: must be at most 256 characters on one line")
	}
	return nil
}

func parseSigningSecret(s string) ([]byte, error) {
	if s == "" {
		return nil, errors.New("secrets: signing_secret is required (\"whsec_\" + base64 of 24 to 64 random bytes)")
	}
	key, err := DecodeSecret(s)
	if err != nil {
		return nil, fmt.Errorf("secrets: signing_secret: %w", err)
	}
	if len(key) < 24 || len(key) > 64 {
		return nil, fmt.Errorf("secrets: signing_secret decodes to %d bytes; it must be 24 to 64 random bytes", len(key))
	}
	return key, nil
}

// Compile implements sdk.Provider: it checks the batch template (url,
// method, headers, payload; all optional) once.
func (p *Provider) Compile(template json.RawMessage) (sdk.Sender, error) {
	t, err := decodeFields(template, "template")
	if err != nil {
		return nil, err
	}
	s := &sender{p: p, tmpl: t}
	if t.URL != "" {
		u, err := parseURL(t.URL, p.allowPrivate)
		if err != nil {
			return nil, fmt.Errorf("template url: %w", err)
		}
		s.tmplURL = u
		s.tmplHost = hostKey(u)
	}
	if s.tmpl.Method == "" {
		s.tmpl.Method = http.MethodPost
	}
	return s, nil
}

// Close implements sdk.Provider.
func (p *Provider) Close() error {
	if p.transport != nil {
		p.transport.CloseIdleConnections()
	}
	return nil
}

var (
	_ sdk.Provider = (*Provider)(nil)
	_ sdk.Sender   = (*sender)(nil)
)
