// Package postmark is the email.postmark provider: it sends a chunk of up to
// 500 rendered messages in one call to Postmark's batch endpoint
// (POST /email/batch) and reads the per-message answers (ErrorCode 0 is
// success), so 1,000 items take 2 API calls.
//
// Postmark has no idempotency key: a call that timed out after the request
// left ends as Unknown for its items. Each message carries the item's ID as
// Metadata (batchsender_item_id, echoed in Postmark's webhooks) and its
// deterministic Message-ID header.
package postmark

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/batchsender/batchsender/email"
	"github.com/batchsender/batchsender/internal/httpsend"
	"github.com/batchsender/batchsender/sdk"
)

// ID is the provider ID.
const ID = "email.postmark"

// Defaults and limits.
const (
	DefaultBaseURL = "https://api.postmarkapp.com"
	DefaultTimeout = 30 * time.Second
	// MaxBatch is Postmark's limit of messages per /email/batch call.
	MaxBatch = 500
	// MaxBatchBytes is Postmark's 50 MB payload limit per batch, with a
	// margin for JSON framing.
	MaxBatchBytes = 48 << 20
	// MetadataKey is the Metadata field carrying the item ID.
	MetadataKey = "batchsender_item_id"
)

func init() {
	sdk.Register(sdk.Registration{ID: ID, New: func() sdk.Provider { return new(Provider) }})
}

// Duration is the JSON form of the per-call timeout, a string such as "10s"
// between 0 and 5m.
type Duration = httpsend.Duration

// Config is an email.postmark connection's configuration.
type Config struct {
	// BaseURL overrides the API endpoint (default https://api.postmarkapp.com).
	BaseURL string `json:"base_url,omitempty"`
	// MessageStream is the stream to send through ("outbound" when empty;
	// Postmark wants bulk mail on a broadcast stream).
	MessageStream string `json:"message_stream,omitempty"`
	// Tag is an optional tag set on every message.
	Tag string `json:"tag,omitempty"`
	// Timeout bounds one API call (default 30s, at most 5m).
	Timeout Duration `json:"timeout,omitempty"`
	// UnsubscribeMailto is an optional address added to List-Unsubscribe.
	UnsubscribeMailto string `json:"unsubscribe_mailto,omitempty"`
}

// Secrets are an email.postmark connection's secrets.
type Secrets struct {
	// ServerToken is the Postmark server API token.
	ServerToken string `json:"server_token"`
}

// Provider is one email.postmark connection.
type Provider struct {
	cfg     Config
	token   string
	url     string
	timeout time.Duration
	client  *http.Client
	env     sdk.Env
	opts    email.Options
	log     *slog.Logger
}

// Info implements sdk.Provider. DefaultRate: Postmark publishes no fixed
// request rate; 10 batch calls per second is 5,000 messages/s.
func (p *Provider) Info() sdk.Info {
	return sdk.Info{
		ID:                 ID,
		Title:              "Postmark (batch API)",
		MaxChunk:           MaxBatch,
		DefaultRate:        10,
		DefaultConcurrency: 4,
		BillableUnit:       "message",
		ConfigSchema: json.RawMessage(`{"type":"object","additionalProperties":false,"properties":{
  "base_url":{"type":"string","format":"uri","description":"API endpoint override (default https://api.postmarkapp.com)"},
  "message_stream":{"type":"string","description":"Message stream ID (default outbound)"},
  "tag":{"type":"string","maxLength":1000},
  "timeout":{"type":"string","description":"Per-call timeout, e.g. \"30s\""},
  "unsubscribe_mailto":{"type":"string","description":"Address added to List-Unsubscribe"}}}`),
		SecretsSchema: json.RawMessage(`{"type":"object","required":["server_token"],"additionalProperties":false,"properties":{
  "server_token":{"type":"string","description":"Server API token (X-Postmark-Server-Token)"}}}`),
		ItemSchema: email.ItemSchema,
	}
}

// Provision implements sdk.Provider.
func (p *Provider) Provision(ctx context.Context, env sdk.Env) error {
	var cfg Config
	var sec Secrets
	if err := httpsend.Decode(env, &cfg, &sec); err != nil {
		return err
	}
	if sec.ServerToken == "" {
		return errors.New("secrets: server_token is required")
	}
	u, err := httpsend.ParseBaseURL(cfg.BaseURL, DefaultBaseURL, env.AllowPrivateNetworks)
	if err != nil {
		return err
	}
	opts, err := email.ProviderOptions(&env, cfg.UnsubscribeMailto)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	p.timeout = cfg.Timeout.Or(DefaultTimeout)
	p.log = env.Logger
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	p.cfg, p.token, p.url, p.env = cfg, sec.ServerToken, u.String(), env
	p.opts = opts
	p.client = httpsend.NewClient(env, p.timeout)
	return nil
}

// Compile implements sdk.Provider.
func (p *Provider) Compile(template json.RawMessage) (sdk.Sender, error) {
	c, err := email.Compile(template, p.opts)
	if err != nil {
		return nil, err
	}
	return &sender{p: p, tmpl: c}, nil
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
	tmpl *email.Compiled
}

// ValidateItem renders the item without sending it.
func (s *sender) ValidateItem(data json.RawMessage) error { return s.tmpl.ValidateItem(data) }

// message is Postmark's message object.
type message struct {
	From          string            `json:"From"`
	To            string            `json:"To"`
	ReplyTo       string            `json:"ReplyTo,omitempty"`
	Subject       string            `json:"Subject"`
	HTMLBody      string            `json:"HtmlBody,omitempty"`
	TextBody      string            `json:"TextBody,omitempty"`
	Headers       []header          `json:"Headers,omitempty"`
	Tag           string            `json:"Tag,omitempty"`
	Metadata      map[string]string `json:"Metadata,omitempty"`
	MessageStream string            `json:"MessageStream,omitempty"`
	Attachments   []attachment      `json:"Attachments,omitempty"`
}

type header struct {
	Name  string `json:"Name"`
	Value string `json:"Value"`
}

type attachment struct {
	Name        string `json:"Name"`
	Content     []byte `json:"Content"`
	ContentType string `json:"ContentType"`
}

// response is one element of a batch answer, and the body of error answers.
type response struct {
	ErrorCode int    `json:"ErrorCode"`
	Message   string `json:"Message"`
	MessageID string `json:"MessageID"`
	To        string `json:"To"`
}

func (s *sender) build(it sdk.Item) (message, error) {
	m, err := s.tmpl.Render(it.ID, it.Data)
	if err != nil {
		return message{}, err
	}
	text, html := m.Bodies()
	pm := message{
		From: m.From.String(), To: m.To[0].String(), Subject: m.Subject,
		HTMLBody: html, TextBody: text, Tag: s.p.cfg.Tag,
		Metadata:      map[string]string{MetadataKey: it.ID},
		MessageStream: s.p.cfg.MessageStream,
	}
	if len(m.ReplyTo) > 0 {
		pm.ReplyTo = m.ReplyTo[0].String()
	}
	pm.Headers = append(pm.Headers, header{"Message-ID", m.MessageID})
	for _, h := range append(m.UnsubscribeHeaders(), m.Headers...) {
		pm.Headers = append(pm.Headers, header{h.Name, h.Value})
	}
	for _, a := range m.Attachments {
		ct := a.ContentType
		if ct == "" {
			ct = "application/octet-stream"
		}
		pm.Attachments = append(pm.Attachments, attachment{Name: a.Filename, Content: a.Content, ContentType: ct})
	}
	return pm, nil
}

// Send implements sdk.Sender: one /email/batch call per 500 messages or
// 48 MB, usually one call per chunk.
func (s *sender) Send(ctx context.Context, items []sdk.Item) []sdk.Result {
	res := make([]sdk.Result, len(items))
	var (
		idx   []int
		batch []json.RawMessage
		size  int
	)
	flush := func() {
		if len(batch) > 0 {
			s.call(ctx, batch, idx, res)
		}
		idx, batch, size = nil, nil, 0
	}
	for i, it := range items {
		m, err := s.build(it)
		if err != nil {
			res[i] = sdk.Permanent(fmt.Errorf("rendering: %w", err))
			continue
		}
		raw, err := json.Marshal(m)
		if err != nil {
			res[i] = sdk.Permanent(fmt.Errorf("encoding: %w", err))
			continue
		}
		if len(raw) > MaxBatchBytes {
			res[i] = sdk.Permanent(fmt.Errorf("message of %d bytes is larger than Postmark's 50 MB limit", len(raw)))
			continue
		}
		if len(batch) == MaxBatch || size+len(raw) > MaxBatchBytes {
			flush()
		}
		idx, batch, size = append(idx, i), append(batch, raw), size+len(raw)+1
	}
	flush()
	return res
}

// call posts one batch and sets the results of the items at idx.
func (s *sender) call(ctx context.Context, batch []json.RawMessage, idx []int, res []sdk.Result) {
	set := func(r sdk.Result) {
		for _, i := range idx {
			res[i] = r
		}
	}
	if err := ctx.Err(); err != nil {
		set(sdk.Retry(fmt.Errorf("not sent: %w", err)))
		return
	}
	body, _ := json.Marshal(batch)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.p.url+"/email/batch", bytes.NewReader(body))
	if err != nil {
		set(sdk.Permanent(fmt.Errorf("building the request: %w", err)))
		return
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Postmark-Server-Token", s.p.token)
	a := httpsend.Do(ctx, s.p.client, s.p.timeout, req)
	if a.Err != nil {
		set(httpsend.TransportResult(a, "posting /email/batch", false))
		return
	}
	if a.Status != http.StatusOK {
		var e response
		msg := http.StatusText(a.Status)
		if json.Unmarshal(a.Body, &e) == nil && e.Message != "" {
			msg = fmt.Sprintf("ErrorCode %d: %s", e.ErrorCode, e.Message)
		}
		set(httpsend.StatusResult(a, s.p.env.Now(), msg))
		return
	}
	var out []response
	if err := json.Unmarshal(a.Body, &out); err != nil || len(out) != len(idx) {
		// Postmark answered 200 but we cannot tell which messages it took.
		set(httpsend.WithAnswer(sdk.Unknown(fmt.Errorf("unreadable batch answer for %d messages", len(idx))), a))
		return
	}
	for k, i := range idx {
		r := out[k]
		if r.ErrorCode == 0 {
			ok := httpsend.OK(r.MessageID, a)
			res[i] = ok
			continue
		}
		e := fmt.Errorf("ErrorCode %d: %s", r.ErrorCode, r.Message)
		var out sdk.Result
		if retryableCode(r.ErrorCode) {
			out = sdk.Retry(e)
		} else {
			out = sdk.Permanent(e)
		}
		out.StatusCode, out.Latency = a.Status, a.Latency
		out.Response = fmt.Sprintf(`{"ErrorCode":%d,"Message":%q}`, r.ErrorCode, r.Message)
		res[i] = out
	}
}

// retryableCode reports per-message error codes worth a retry: 100
// (maintenance) and 429 (rate limit). Everything else (300 invalid request,
// 406 inactive recipient, 4xx account problems) needs a human.
func retryableCode(code int) bool { return code == 100 || code == 429 }
