// Package chatwebhook is a complete example of a BatchSender provider
// written against the public SDK the way a third party would: the
// chat.slack_webhook provider posts one message per item to a Slack
// incoming webhook, its text rendered from the batch template with the
// item's fields.
//
// It is not part of the standard binary. Adding it is one import line in
// cmd/batchsender/providers.go:
//
//	_ "github.com/batchsender/batchsender/examples/chatwebhook" // chat.slack_webhook
//
// Connection:
//
//	config:   {"base_url": "http://127.0.0.1:8080", "timeout": "10s"}   (both optional)
//	secrets:  {"webhook_url": "https://hooks.slack.com/services/T000/B000/XXXX"}
//	template: {"text": "Hi {{ name }}, your order {{ order }} has shipped"}
//	item:     {"name": "Ann", "order": "A-17"}   (the template's variables)
//
// Slack's incoming webhook answers 200 "ok", 429 with Retry-After, 400,
// 403, 404 and 410 with a plain-text reason ("invalid_payload",
// "no_service", ...), and 5xx when it fails. It takes no idempotency key,
// so a request that timed out after it left is reported as Unknown rather
// than retried into a duplicate message.
package chatwebhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/batchsender/batchsender/sdk"
	"github.com/batchsender/batchsender/tmpl"
)

// ID is the provider ID.
const ID = "chat.slack_webhook"

// DefaultTimeout bounds one request when the config sets none.
const DefaultTimeout = 10 * time.Second

func init() {
	sdk.Register(sdk.Registration{ID: ID, New: func() sdk.Provider { return new(Provider) }})
}

// Config is the connection's configuration.
type Config struct {
	// BaseURL replaces the scheme and host of the webhook URL, for tests
	// and proxies ("http://127.0.0.1:8080").
	BaseURL string `json:"base_url,omitempty"`
	// Timeout is a Go duration ("10s"); default 10s, at most 1m.
	Timeout string `json:"timeout,omitempty"`
}

// Secrets are the connection's secrets: the webhook URL is the credential.
type Secrets struct {
	WebhookURL string `json:"webhook_url"`
}

// Provider is one Slack incoming webhook. Its zero value is ready for
// Provision.
type Provider struct {
	endpoint string // the webhook URL, base_url applied
	timeout  time.Duration
	client   *http.Client
	now      func() time.Time
}

// Info implements sdk.Provider.
func (p *Provider) Info() sdk.Info {
	return sdk.Info{
		ID:    ID,
		Title: "Slack incoming webhook (example provider)",
		// One message per request: Slack webhooks take one message.
		MaxChunk: 1,
		// Slack allows about one message per second per webhook.
		DefaultRate:        1,
		DefaultConcurrency: 1,
		BillableUnit:       "message",
		ConfigSchema: json.RawMessage(`{"type":"object","additionalProperties":false,"properties":{
			"base_url":{"type":"string","description":"Replaces scheme and host of the webhook URL"},
			"timeout":{"type":"string","default":"10s"}}}`),
		SecretsSchema: json.RawMessage(`{"type":"object","additionalProperties":false,"required":["webhook_url"],"properties":{
			"webhook_url":{"type":"string","writeOnly":true,"description":"https://hooks.slack.com/services/..."}}}`),
		ItemSchema: json.RawMessage(`{"type":"object","description":"The template's variables"}`),
	}
}

// Provision implements sdk.Provider. Errors name fields, never values: the
// webhook URL is a secret.
func (p *Provider) Provision(_ context.Context, env sdk.Env) error {
	var cfg Config
	if err := sdk.DecodeStrict(env.Config, &cfg); err != nil {
		return fmt.Errorf("config: %v", err)
	}
	var sec Secrets
	if err := sdk.DecodeStrict(env.Secrets, &sec); err != nil {
		return fmt.Errorf("secrets: %v", err)
	}
	p.timeout = DefaultTimeout
	if cfg.Timeout != "" {
		d, err := time.ParseDuration(cfg.Timeout)
		if err != nil || d <= 0 || d > time.Minute {
			return errors.New(`config.timeout: must be a duration like "10s", at most 1m`)
		}
		p.timeout = d
	}
	u, err := url.Parse(sec.WebhookURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return errors.New("secrets.webhook_url: required, the https URL Slack shows for the incoming webhook")
	}
	if cfg.BaseURL != "" {
		b, err := url.Parse(cfg.BaseURL)
		if err != nil || (b.Scheme != "https" && b.Scheme != "http") || b.Host == "" {
			return errors.New("config.base_url: must be an http or https URL with a host")
		}
		u.Scheme, u.Host = b.Scheme, b.Host
	}
	p.endpoint = u.String()
	p.now = env.Now
	if p.now == nil {
		p.now = time.Now
	}
	// Every connection goes through the host's dialer: it enforces the
	// operator's network policy.
	p.client = &http.Client{
		Transport: &http.Transport{DialContext: env.Dialer, ResponseHeaderTimeout: p.timeout},
		// Slack does not redirect webhook posts; following one could
		// only lead somewhere unexpected.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return nil
}

// template is the batch template.
type template struct {
	Text string `json:"text"`
}

// Compile implements sdk.Provider: the text template is parsed once.
func (p *Provider) Compile(raw json.RawMessage) (sdk.Sender, error) {
	var t template
	if err := sdk.DecodeStrict(raw, &t); err != nil {
		return nil, fmt.Errorf("template: %v", err)
	}
	if strings.TrimSpace(t.Text) == "" {
		return nil, errors.New("template.text: required, the message (a Liquid template such as \"Hi {{ name }}\")")
	}
	text, err := tmpl.Parse(t.Text)
	if err != nil {
		return nil, fmt.Errorf("template.text: %w", err)
	}
	return &sender{p: p, text: text}, nil
}

// Close implements sdk.Provider.
func (p *Provider) Close() error {
	if p.client != nil {
		p.client.CloseIdleConnections()
	}
	return nil
}

type sender struct {
	p    *Provider
	text *tmpl.Template
}

// render returns the request body of one item: {"text": ...}.
func (s *sender) render(data json.RawMessage) ([]byte, error) {
	vars, err := tmpl.DecodeVars(data)
	if err != nil {
		return nil, err
	}
	text, err := s.text.Render(vars, false)
	if err != nil {
		return nil, fmt.Errorf("text: %w", err)
	}
	if strings.TrimSpace(text) == "" {
		return nil, errors.New("text: renders empty; Slack refuses empty messages")
	}
	// Slack takes <, > and & as written (it has its own escaping), so
	// they are not turned into \u003c and friends.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(map[string]string{"text": text}); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// ValidateItem implements sdk.Sender: a missing variable is found here, at
// ingest, not when sending.
func (s *sender) ValidateItem(data json.RawMessage) error {
	_, err := s.render(data)
	return err
}

// Preview implements sdk.Previewer: the request body the item becomes.
func (s *sender) Preview(data json.RawMessage) (json.RawMessage, error) {
	return s.render(data)
}

// Send implements sdk.Sender. MaxChunk is 1, but a longer chunk is sent
// item by item all the same.
func (s *sender) Send(ctx context.Context, items []sdk.Item) []sdk.Result {
	out := make([]sdk.Result, len(items))
	for i, it := range items {
		out[i] = s.sendOne(ctx, it)
	}
	return out
}

func (s *sender) sendOne(ctx context.Context, it sdk.Item) sdk.Result {
	if err := ctx.Err(); err != nil {
		return sdk.Retry(fmt.Errorf("not sent: %w", err))
	}
	body, err := s.render(it.Data)
	if err != nil {
		return sdk.Permanent(err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.p.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.p.endpoint, bytes.NewReader(body))
	if err != nil {
		// The URL is a secret: say what failed, not the error text.
		return sdk.Permanent(errors.New("building the request to the webhook URL failed"))
	}
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	resp, err := s.p.client.Do(req)
	if err != nil {
		// *url.Error texts contain the webhook URL, a secret: never
		// pass them on. Slack takes no idempotency key, so once the
		// request may have left, a retry could post twice.
		if ctx.Err() != nil {
			return sdk.Unknown(errors.New("no answer from Slack before the timeout or cancellation; the message may have been posted"))
		}
		return sdk.Retry(errors.New("could not reach the Slack webhook"))
	}
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	_ = resp.Body.Close()
	r := classify(resp, strings.TrimSpace(string(answer)), it.ID, s.p.now())
	r.StatusCode, r.Response, r.Latency = resp.StatusCode, string(answer), time.Since(start)
	return r
}

// classify maps Slack's answer to an outcome.
func classify(resp *http.Response, answer, itemID string, now time.Time) sdk.Result {
	code := resp.StatusCode
	why := fmt.Errorf("slack answered %d %s", code, answer)
	switch {
	case code == http.StatusOK:
		// Slack gives no message ID; the item's ID identifies it.
		return sdk.OK(itemID)
	case code == http.StatusTooManyRequests || code >= 500:
		if v := resp.Header.Get("Retry-After"); v != "" {
			if n, err := strconv.Atoi(v); err == nil && n >= 0 {
				return sdk.RetryAfter(time.Duration(n)*time.Second, why)
			}
			if t, err := http.ParseTime(v); err == nil && t.After(now) {
				return sdk.RetryAfter(t.Sub(now), why)
			}
		}
		return sdk.Retry(why)
	}
	// 400 invalid_payload, 403 invalid_token/action_prohibited, 404
	// no_service/channel_not_found, 410 channel_is_archived: no retry
	// fixes them.
	return sdk.Permanent(why)
}

var (
	_ sdk.Provider  = (*Provider)(nil)
	_ sdk.Sender    = (*sender)(nil)
	_ sdk.Previewer = (*sender)(nil)
)
