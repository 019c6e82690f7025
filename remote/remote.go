// Package remote is the remote.http provider: it carries a batch out
// through an out-of-process module that speaks BatchSender's remote module
// protocol over HTTP/JSON, so a module can be written in any language and
// added without rebuilding BatchSender. docs/modules.md specifies the
// protocol; in short:
//
//	GET  <url>/info      the module's id, title, max_chunk and schemas
//	POST <url>/validate  {"template":{...},"items":[{"data":{...}}]} → {"template_error","errors":[...]}
//	POST <url>/preview   optional: {"template":{...},"items":[{"data":{...}}]} → {"results":[{"rendered"|"error"}]}
//	POST <url>/send      {"template":{...},"items":[{"id","seq","attempt","data"}]}
//	                     → {"results":[{"outcome","message_id","retry_after_seconds","error","units"}]}
//
// Every request is signed with the connection's Standard Webhooks secret
// (webhook-id, webhook-timestamp, webhook-signature over the body, the
// scheme of webhook.http), so the module can tell BatchSender's calls from
// anybody else's. Items carry their stable ID, the module's idempotency
// key: a retried call repeats the same IDs.
//
// Connections go through the host's guarded dialer: a module on loopback
// or a private network needs the operator's
// BATCHSENDER_ALLOW_PRIVATE_NETWORKS=true.
//
// Not yet good: Info is static (the module's own schemas from /info are
// used for checks but not listed by GET /v1/modules, and batches name the
// module "remote"); /validate is called once per item at ingest, because
// the SDK validates item by item, although the protocol is batch-shaped.
package remote

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/batchsender/batchsender/netguard"
	"github.com/batchsender/batchsender/sdk"
	"github.com/batchsender/batchsender/webhook"
)

// ID is the provider ID.
const ID = "remote.http"

// Limits and defaults of the connection config.
const (
	// MaxChunk is the most items one Send call takes; Send splits it into
	// calls of the connection's max_chunk.
	MaxChunk           = 500
	DefaultMaxChunk    = 100
	DefaultTimeout     = 10 * time.Second
	DefaultConcurrency = 8
	// UserAgent is sent on every request.
	UserAgent = "BatchSender-Remote/1"
)

func init() {
	sdk.Register(sdk.Registration{ID: ID, New: func() sdk.Provider { return new(Provider) }})
}

// Config is a remote.http connection's configuration.
type Config struct {
	// URL is the module's base URL; the protocol's paths are appended.
	URL string `json:"url"`
	// Timeout bounds one call to the module. Default 10s, at most 5m.
	Timeout Duration `json:"timeout,omitempty"`
	// MaxChunk is the most items per /send call. Default 100, at most
	// 500; the module's /info max_chunk lowers it.
	MaxChunk int `json:"max_chunk,omitempty"`
	// RatePerSecond caps calls per second to the module (0: unlimited).
	RatePerSecond float64 `json:"rate_per_second,omitempty"`
	// Concurrency caps calls in flight to the module (0: the engine's
	// limit alone).
	Concurrency int `json:"concurrency,omitempty"`
}

// Secrets are a remote.http connection's secrets.
type Secrets struct {
	// SigningSecret is the Standard Webhooks secret ("whsec_" + base64 of
	// 24 to 64 random bytes) the module verifies requests with.
	SigningSecret string `json:"signing_secret"`
}

// Duration is a time.Duration written in JSON as a string such as "10s".
type Duration time.Duration

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New(`timeout must be a duration string like "10s"`)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf(`timeout %q is not a duration like "10s"`, s)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// Provider is one remote.http connection. Its zero value is ready for
// Provision.
type Provider struct {
	cfg       Config
	base      *url.URL
	key       []byte
	chunk     int // effective items per call
	module    InfoResponse
	schema    itemChecks
	now       func() time.Time
	log       *slog.Logger
	transport *http.Transport
	client    *http.Client
	inflight  chan struct{} // nil: no provider-level cap
	limiter   *rate.Limiter // nil: no provider-level rate
}

// Info implements sdk.Provider. It is the same for every connection: what
// a connection's module accepts comes from its /info at Provision.
func (p *Provider) Info() sdk.Info {
	return sdk.Info{
		ID:                 ID,
		Title:              "Remote module over HTTP/JSON (any language)",
		MaxChunk:           MaxChunk,
		DefaultConcurrency: DefaultConcurrency,
		BillableUnit:       "unit",
		ConfigSchema:       json.RawMessage(configSchema),
		SecretsSchema:      json.RawMessage(secretsSchema),
		ItemSchema:         json.RawMessage(itemSchema),
	}
}

// Module returns what the module said about itself at Provision.
func (p *Provider) Module() InfoResponse { return p.module }

var moduleIDRE = regexp.MustCompile(`^[a-z][a-z0-9]*\.[a-z][a-z0-9_.-]*$`)

// Provision implements sdk.Provider: it checks config and secrets and asks
// the module for its /info, so a connection to a module that is not there
// or does not speak the protocol is refused at once. (A batch whose module
// is unreachable when a worker first uses the connection is paused with
// the reason and can be resumed.)
func (p *Provider) Provision(ctx context.Context, env sdk.Env) error {
	var cfg Config
	if err := sdk.DecodeStrict(env.Config, &cfg); err != nil {
		return fmt.Errorf("config: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	cfg = cfg.withDefaults()
	base, err := cfg.validate(env.AllowPrivateNetworks)
	if err != nil {
		return err
	}
	var sec Secrets
	if err := sdk.DecodeStrict(env.Secrets, &sec); err != nil {
		return fmt.Errorf("secrets: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	if sec.SigningSecret == "" {
		return errors.New("secrets: signing_secret is required (\"whsec_\" + base64 of 24 to 64 random bytes)")
	}
	key, err := webhook.DecodeSecret(sec.SigningSecret)
	if err != nil {
		return fmt.Errorf("secrets: signing_secret: %w", err)
	}
	if len(key) < 24 || len(key) > 64 {
		return fmt.Errorf("secrets: signing_secret decodes to %d bytes; it must be 24 to 64 random bytes", len(key))
	}
	p.cfg, p.base, p.key = cfg, base, key
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
		Proxy:                  nil, // the guard must judge the module's address, not a proxy's
		DialContext:            netguard.CheckRemote(dial, env.AllowPrivateNetworks),
		ForceAttemptHTTP2:      true,
		MaxIdleConnsPerHost:    64,
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    time.Duration(cfg.Timeout),
		ResponseHeaderTimeout:  time.Duration(cfg.Timeout),
		MaxResponseHeaderBytes: 64 << 10,
	}
	p.client = &http.Client{
		Transport:     p.transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	if cfg.Concurrency > 0 {
		p.inflight = make(chan struct{}, cfg.Concurrency)
	}
	if cfg.RatePerSecond > 0 {
		p.limiter = rate.NewLimiter(rate.Limit(cfg.RatePerSecond), max(1, int(cfg.RatePerSecond/10)))
	}
	if err := p.fetchInfo(ctx); err != nil {
		p.transport.CloseIdleConnections()
		return err
	}
	p.chunk = cfg.MaxChunk
	if m := p.module.MaxChunk; m > 0 && m < p.chunk {
		p.chunk = m
	}
	p.log.Debug("remote module provisioned", slog.String("module", p.module.ID), slog.Int("max_chunk", p.chunk))
	return nil
}

// fetchInfo reads and checks the module's GET /info.
func (p *Provider) fetchInfo(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(p.cfg.Timeout))
	defer cancel()
	ans, err := p.call(ctx, http.MethodGet, "info", nil)
	if err != nil {
		return fmt.Errorf("asking the module for its /info: %w", err)
	}
	if ans.status != http.StatusOK {
		return fmt.Errorf("asking the module for its /info: %s", ans.describe())
	}
	var info InfoResponse
	if err := json.Unmarshal(ans.body, &info); err != nil {
		return fmt.Errorf("module /info: not the expected JSON object: %v", err)
	}
	switch {
	case info.Protocol != 0 && info.Protocol != ProtocolVersion:
		return fmt.Errorf("module /info: protocol %d; this BatchSender speaks %d", info.Protocol, ProtocolVersion)
	case !moduleIDRE.MatchString(info.ID):
		return fmt.Errorf("module /info: id %q is not \"module.name\" in lower case", info.ID)
	case info.MaxChunk < 0:
		return fmt.Errorf("module /info: negative max_chunk %d", info.MaxChunk)
	}
	checks, err := parseItemSchema(info.ItemSchema)
	if err != nil {
		return fmt.Errorf("module /info: item_schema: %w", err)
	}
	p.module, p.schema = info, checks
	return nil
}

func (c Config) withDefaults() Config {
	if c.Timeout == 0 {
		c.Timeout = Duration(DefaultTimeout)
	}
	if c.MaxChunk == 0 {
		c.MaxChunk = DefaultMaxChunk
	}
	return c
}

func (c Config) validate(allowPrivate bool) (*url.URL, error) {
	switch {
	case c.Timeout <= 0 || time.Duration(c.Timeout) > 5*time.Minute:
		return nil, errors.New("config: timeout: must be more than 0s and at most 5m")
	case c.MaxChunk < 1 || c.MaxChunk > MaxChunk:
		return nil, fmt.Errorf("config: max_chunk: must be between 1 and %d", MaxChunk)
	case c.RatePerSecond < 0 || c.RatePerSecond > 1e6:
		return nil, errors.New("config: rate_per_second: must be between 0 (unlimited) and 1000000")
	case c.Concurrency < 0 || c.Concurrency > 10000:
		return nil, errors.New("config: concurrency: must be between 0 (engine default) and 10000")
	case c.URL == "":
		return nil, errors.New("config: url: is required, the module's base URL such as https://module.example.com/batchsender")
	}
	u, err := url.Parse(c.URL)
	switch {
	case err != nil:
		return nil, fmt.Errorf("config: url: %q is not a valid URL", c.URL)
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("config: url: scheme must be http or https, got %q", u.Scheme)
	case u.Host == "" || u.Opaque != "":
		return nil, errors.New("config: url: must be absolute with a host")
	case u.User != nil:
		return nil, errors.New("config: url: must not contain user info; the signing secret authenticates BatchSender")
	case u.RawQuery != "" || u.Fragment != "":
		return nil, errors.New("config: url: must not have a query or fragment; the protocol appends /info, /validate and /send")
	}
	if err := netguard.CheckHost(u.Hostname(), allowPrivate); err != nil {
		return nil, fmt.Errorf("config: url: %w", err)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

// Close implements sdk.Provider.
func (p *Provider) Close() error {
	if p.transport != nil {
		p.transport.CloseIdleConnections()
	}
	return nil
}

var (
	_ sdk.Provider  = (*Provider)(nil)
	_ sdk.Sender    = (*sender)(nil)
	_ sdk.Previewer = previewSender{}
)
