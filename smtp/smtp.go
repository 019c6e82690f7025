// Package smtp is the email.smtp provider: it sends a batch's rendered
// messages (package email) over SMTP submission, with implicit TLS or
// STARTTLS, AUTH PLAIN or LOGIN, and a pool of connections that each carry
// many messages.
//
// Connection config (JSON, unknown fields are errors):
//
//	{"host": "smtp.example.com", "port": 587, "tls": "starttls",
//	 "helo": "mailer.example.com", "pool_size": 4,
//	 "max_messages_per_connection": 100, "timeout": "30s",
//	 "ca_pem": "-----BEGIN CERTIFICATE-----...", "unsubscribe_mailto": "unsub@example.com"}
//
// tls is "none", "starttls" (the default, and the default for port 587) or
// "tls" (implicit TLS, the default for port 465). Certificates are verified
// against the system roots, plus ca_pem when given (for a private CA or a
// self-signed test server); verification cannot be turned off. Secrets are
// {"username", "password"}; credentials are never sent over a connection
// without TLS unless the host is a loopback address.
//
// Sending: each item becomes one message to its "to" address. The client
// (client.go) is this package's own: with PIPELINING (RFC 2920) MAIL, RCPT
// and DATA leave in one write, so a message costs two round trips on a
// pooled session; without it commands go one at a time. A Send call
// spreads its chunk over up to pool_size connections; a connection is kept
// for the next message and chunk until it has carried
// max_messages_per_connection messages or idled for 30s. RSET is sent only
// after a failed transaction (a completed DATA already resets the session).
//
// Classification (RFC 5321 reply codes):
//   - 250 after the final "." → OK; MessageID is our Message-ID
//     (<itemID@from-domain>, the same on every attempt, so receivers can
//     drop duplicates).
//   - 4xx at any stage → Retry (421 also drops the connection).
//   - 5xx → Permanent (550 mailbox unavailable, 554 rejected, 535 auth
//     failed, ...).
//   - a network error, timeout or cancellation before the message's final
//     "." was written → Retry: the server cannot have accepted a message it
//     did not receive in full.
//   - a timeout, cancellation or connection loss after the final "." was
//     written but before the reply → Unknown: the server may have queued
//     the message, and SMTP has no idempotency key, so a blind retry could
//     send it twice. The host decides (the batch's at-least-once option).
//   - an item whose template cannot be rendered → Permanent.
//
// When one message of a chunk times out, the rest of the chunk that has not
// started is returned as Retry instead of waiting for the same timeout again.
package smtp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/batchsender/batchsender/email"
	"github.com/batchsender/batchsender/sdk"
)

// ID is the provider ID.
const ID = "email.smtp"

func init() {
	sdk.Register(sdk.Registration{ID: ID, New: func() sdk.Provider { return new(Provider) }})
}

// Defaults.
const (
	DefaultPoolSize          = 4
	DefaultMaxPerConnection  = 100
	DefaultTimeout           = 30 * time.Second
	idleTimeout              = 30 * time.Second
	maxChunk                 = 100
	responseLimit            = 512
	tlsNone, tlsStart, tlsOn = "none", "starttls", "tls"
)

// Config is the connection config.
type Config struct {
	Host string `json:"host"`
	Port int    `json:"port"`
	// TLS is "none", "starttls" or "tls".
	TLS string `json:"tls"`
	// HELO is the name announced in EHLO ("localhost" when empty).
	HELO string `json:"helo"`
	// PoolSize is the most connections open at once.
	PoolSize int `json:"pool_size"`
	// MaxMessagesPerConnection closes a connection after this many messages.
	MaxMessagesPerConnection int `json:"max_messages_per_connection"`
	// Timeout bounds dialing, each command and the wait for the final reply,
	// as a Go duration ("30s").
	Timeout string `json:"timeout"`
	// CAPEM adds PEM certificates to the trusted roots.
	CAPEM string `json:"ca_pem"`
	// UnsubscribeMailto is added to List-Unsubscribe next to the URL.
	UnsubscribeMailto string `json:"unsubscribe_mailto"`
}

// Secrets are the connection secrets.
type Secrets struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

var configSchema = json.RawMessage(`{
  "type": "object",
  "required": ["host"],
  "additionalProperties": false,
  "properties": {
    "host": {"type": "string", "description": "SMTP server host name or IP"},
    "port": {"type": "integer", "minimum": 1, "maximum": 65535, "description": "465 for implicit TLS, 587 for STARTTLS (default by tls)"},
    "tls": {"type": "string", "enum": ["none", "starttls", "tls"], "default": "starttls"},
    "helo": {"type": "string", "description": "Name announced in EHLO"},
    "pool_size": {"type": "integer", "minimum": 1, "maximum": 64, "default": 4},
    "max_messages_per_connection": {"type": "integer", "minimum": 1, "default": 100},
    "timeout": {"type": "string", "default": "30s", "description": "Go duration for dial, commands and the final reply"},
    "ca_pem": {"type": "string", "description": "Extra trusted CA certificates (PEM)"},
    "unsubscribe_mailto": {"type": "string", "description": "Address added to List-Unsubscribe"}
  }
}`)

var secretsSchema = json.RawMessage(`{
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "username": {"type": "string"},
    "password": {"type": "string", "writeOnly": true}
  }
}`)

// Provider is the email.smtp provider.
type Provider struct {
	cfg     Config
	secrets Secrets
	timeout time.Duration
	addr    string
	tlsConf *tls.Config
	env     sdk.Env
	opts    email.Options
	log     *slog.Logger
	pool    *pool
}

// Info describes the provider.
func (p *Provider) Info() sdk.Info {
	return sdk.Info{
		ID:                 ID,
		Title:              "SMTP",
		MaxChunk:           maxChunk,
		DefaultConcurrency: 1,
		BillableUnit:       "message",
		ConfigSchema:       configSchema,
		SecretsSchema:      secretsSchema,
		ItemSchema:         email.ItemSchema,
	}
}

// Provision decodes and checks the config and secrets.
func (p *Provider) Provision(ctx context.Context, env sdk.Env) error {
	if err := sdk.DecodeStrict(env.Config, &p.cfg); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if err := sdk.DecodeStrict(env.Secrets, &p.secrets); err != nil {
		// The decoder's message may quote a value: never show it.
		return errors.New("secrets: invalid, expected {\"username\": string, \"password\": string}")
	}
	c := &p.cfg
	if c.Host = strings.TrimSpace(c.Host); c.Host == "" || strings.ContainsAny(c.Host, " /:@") && net.ParseIP(c.Host) == nil {
		return errors.New("config.host: required, a host name or IP address")
	}
	if c.TLS == "" {
		c.TLS = tlsStart
		if c.Port == 465 {
			c.TLS = tlsOn
		}
	}
	switch c.TLS {
	case tlsNone, tlsStart, tlsOn:
	default:
		return fmt.Errorf("config.tls: %q, want \"none\", \"starttls\" or \"tls\"", c.TLS)
	}
	if c.Port == 0 {
		c.Port = 587
		if c.TLS == tlsOn {
			c.Port = 465
		}
	}
	if c.Port < 1 || c.Port > 65535 {
		return fmt.Errorf("config.port: %d out of range", c.Port)
	}
	if c.PoolSize == 0 {
		c.PoolSize = DefaultPoolSize
	}
	if c.PoolSize < 1 || c.PoolSize > 64 {
		return fmt.Errorf("config.pool_size: %d, want 1 to 64", c.PoolSize)
	}
	if c.MaxMessagesPerConnection == 0 {
		c.MaxMessagesPerConnection = DefaultMaxPerConnection
	}
	if c.MaxMessagesPerConnection < 1 {
		return fmt.Errorf("config.max_messages_per_connection: %d, want at least 1", c.MaxMessagesPerConnection)
	}
	p.timeout = DefaultTimeout
	if c.Timeout != "" {
		d, err := time.ParseDuration(c.Timeout)
		if err != nil || d <= 0 || d > 10*time.Minute {
			return fmt.Errorf("config.timeout: %q, want a duration like \"30s\" up to 10m", c.Timeout)
		}
		p.timeout = d
	}
	if c.HELO == "" {
		c.HELO = "localhost"
	}
	if strings.ContainsAny(c.HELO, " \r\n") {
		return errors.New("config.helo: must be a host name")
	}
	opts, err := email.ProviderOptions(&env, c.UnsubscribeMailto)
	if err != nil {
		return fmt.Errorf("config.%w", err)
	}
	p.tlsConf = &tls.Config{ServerName: c.Host, MinVersion: tls.VersionTLS12}
	if c.CAPEM != "" {
		roots, err := x509.SystemCertPool()
		if err != nil || roots == nil {
			roots = x509.NewCertPool()
		}
		if !roots.AppendCertsFromPEM([]byte(c.CAPEM)) {
			return errors.New("config.ca_pem: no PEM certificate found")
		}
		p.tlsConf.RootCAs = roots
	}
	if p.secrets.Username != "" && c.TLS == tlsNone && !isLoopback(c.Host) {
		return errors.New("config.tls: \"none\" would send the password in clear text; use \"starttls\" or \"tls\"")
	}
	if !env.AllowPrivateNetworks && isPrivateLiteral(c.Host) {
		return fmt.Errorf("config.host: %s is a private or loopback address, which this server's network policy forbids", c.Host)
	}
	if env.Dialer == nil {
		env.Dialer = (&net.Dialer{}).DialContext
	}
	if env.Logger == nil {
		env.Logger = slog.New(slog.DiscardHandler)
	}
	p.env = env
	p.opts = opts
	p.log = env.Logger
	p.addr = net.JoinHostPort(c.Host, strconv.Itoa(c.Port))
	p.pool = &pool{p: p, sem: make(chan struct{}, c.PoolSize)}
	return nil
}

// Compile compiles the batch's email template.
func (p *Provider) Compile(template json.RawMessage) (sdk.Sender, error) {
	c, err := email.Compile(template, p.opts)
	if err != nil {
		return nil, err
	}
	return &Sender{p: p, tmpl: c}, nil
}

// Close closes the idle pooled connections. Connections in use close when
// their Send ends.
func (p *Provider) Close() error {
	if p.pool != nil {
		p.pool.close()
	}
	return nil
}

// Sender sends one batch's messages.
type Sender struct {
	p    *Provider
	tmpl *email.Compiled
}

// ValidateItem renders the item without sending it.
func (s *Sender) ValidateItem(data json.RawMessage) error { return s.tmpl.ValidateItem(data) }

// Send sends each item as one message over the pool and returns one result
// per item, in order.
func (s *Sender) Send(ctx context.Context, items []sdk.Item) []sdk.Result {
	res := make([]sdk.Result, len(items))
	// Workers render and send, so rendering overlaps the network waits.
	workers := min(s.p.cfg.PoolSize, len(items))
	var (
		next    atomic.Int64
		stalled atomic.Bool // a message timed out: do not start more
		wg      sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			var c *conn
			defer func() {
				if c != nil {
					s.p.pool.put(c)
				}
			}()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(items) {
					return
				}
				m, err := s.tmpl.Render(items[i].ID, items[i].Data)
				var raw []byte
				if err == nil {
					raw, err = m.Bytes()
				}
				if err != nil {
					res[i] = sdk.Permanent(fmt.Errorf("rendering message: %w", err))
					continue
				}
				if err := ctx.Err(); err != nil {
					res[i] = sdk.Retry(fmt.Errorf("not sent: %w", err))
					continue
				}
				if stalled.Load() {
					res[i] = sdk.Retry(errors.New("not sent: an earlier message of this chunk timed out"))
					continue
				}
				start := time.Now()
				var r sdk.Result
				c, r = s.p.sendOne(ctx, c, m, raw)
				r.Latency = time.Since(start)
				if r.Outcome == sdk.OutcomeUnknown || isTimeout(r.Err) {
					stalled.Store(true)
				}
				res[i] = r
			}
		})
	}
	wg.Wait()
	return res
}

// sendOne sends one message, on c when it is usable, else on a new pooled
// connection. It returns the connection to keep using (nil when it was
// dropped) and the result.
func (p *Provider) sendOne(ctx context.Context, c *conn, m *email.Message, raw []byte) (*conn, sdk.Result) {
	for try := 0; ; try++ {
		if c == nil {
			var err error
			if c, err = p.pool.get(ctx); err != nil {
				if ctx.Err() == nil {
					// Server replies and network errors only: never the
					// credentials, which no error here carries.
					p.log.Warn("smtp connect failed", slog.String("addr", p.addr), slog.String("error", err.Error()))
				}
				return nil, classifyDial(err)
			}
		}
		reused := c.sent > 0 || c.failed
		r, stage := c.send(ctx, p.timeout, m, raw)
		if r.Outcome == sdk.OutcomeOK {
			c.sent++
			if c.sent >= p.cfg.MaxMessagesPerConnection {
				p.pool.put(c)
				c = nil
			}
			return c, r
		}
		started := c.inData
		if stage == stageBroken {
			p.pool.drop(c)
			c = nil
		} else {
			c.failed = true
		}
		// A connection that sat in the pool may have been closed by the
		// server: one fresh try when it broke before the message started.
		if try == 0 && reused && stage == stageBroken && r.Outcome == sdk.OutcomeRetry && r.StatusCode == 0 && !started && !isTimeout(r.Err) && ctx.Err() == nil {
			continue
		}
		return c, r
	}
}

// classifyDial turns a connection setup error into a result: an SMTP
// error reply (535 auth failed, 554 no service) by its code, anything
// else (network, TLS) as Retry.
func classifyDial(err error) sdk.Result {
	var re *replyError
	if errors.As(err, &re) {
		return smtpResult("connecting", re)
	}
	return sdk.Retry(fmt.Errorf("connecting: %w", err))
}

// smtpResult classifies an SMTP error reply: 5xx permanent, else retry.
func smtpResult(step string, re *replyError) sdk.Result {
	text := re.Error()
	err := fmt.Errorf("%s: smtp %s", step, text)
	var r sdk.Result
	if re.Code >= 500 {
		r = sdk.Permanent(err)
	} else {
		r = sdk.Retry(err)
	}
	r.StatusCode = re.Code
	r.Response = truncate(text, responseLimit)
	return r
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func isTimeout(err error) bool {
	var ne net.Error
	return err != nil && errors.As(err, &ne) && ne.Timeout()
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// isPrivateLiteral reports IP literals the SSRF policy forbids; names are
// left to the host's dialer, which checks the resolved addresses.
func isPrivateLiteral(host string) bool {
	ip := net.ParseIP(host)
	return ip != nil && (ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() ||
		ip.IsLinkLocalMulticast() || ip.IsUnspecified() || ip.IsInterfaceLocalMulticast())
}

var (
	_ sdk.Provider = (*Provider)(nil)
	_ sdk.Sender   = (*Sender)(nil)
	_ io.Closer    = (*Provider)(nil)
)
