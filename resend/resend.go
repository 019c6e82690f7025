// Package resend is the email.resend provider: it sends a chunk of up to 100
// rendered messages in one call to Resend's batch endpoint
// (POST /emails/batch) in permissive validation mode, so that one invalid
// message fails alone, and maps the answer back to one result per item:
// 1,000 items take 10 API calls.
//
// Idempotency. Resend keeps an Idempotency-Key for 24 hours and replays the
// original answer when the same key comes with the same payload. A batch
// call's key is per request, so it is derived from the chunk:
// "bs-batch-" + the first 32 hex digits of SHA-256 over the chunk's item IDs
// in order, joined by newlines. The engine retries a failed chunk with the
// same items in the same order, so a retry after a timeout replays instead
// of sending twice, and timeouts after the request left are therefore
// Retry, not Unknown. A chunk regrouped differently gets a different key
// (documented limit). Messages with attachments, which the batch endpoint
// does not take, go one per call to POST /emails with the key
// "bs-item-" + item ID. Every message also carries the item ID as the tag
// batchsender_item, which Resend echoes in its webhooks.
package resend

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/batchsender/batchsender/email"
	"github.com/batchsender/batchsender/internal/httpsend"
	"github.com/batchsender/batchsender/sdk"
)

// ID is the provider ID.
const ID = "email.resend"

// Defaults and limits.
const (
	DefaultBaseURL = "https://api.resend.com"
	DefaultTimeout = 30 * time.Second
	// MaxBatch is Resend's limit of emails per /emails/batch call.
	MaxBatch = 100
	// DefaultRequestsPerSecond is Resend's default limit per team.
	DefaultRequestsPerSecond = 2
	// TagName is the tag carrying the item ID.
	TagName = "batchsender_item"
)

func init() {
	sdk.Register(sdk.Registration{ID: ID, New: func() sdk.Provider { return new(Provider) }})
}

// Duration is the JSON form of the per-call timeout, a string such as "10s"
// between 0 and 5m.
type Duration = httpsend.Duration

// Config is an email.resend connection's configuration.
type Config struct {
	// BaseURL overrides the API endpoint (default https://api.resend.com).
	BaseURL string `json:"base_url,omitempty"`
	// Timeout bounds one API call (default 30s, at most 5m).
	Timeout Duration `json:"timeout,omitempty"`
	// RequestsPerSecond paces this connection's API requests (default 2,
	// Resend's default team limit). The host limits Send calls; this also
	// holds when one Send makes several requests (messages with
	// attachments go one per request).
	RequestsPerSecond float64 `json:"requests_per_second,omitempty"`
	// UnsubscribeMailto is an optional address added to List-Unsubscribe.
	UnsubscribeMailto string `json:"unsubscribe_mailto,omitempty"`
}

// Secrets are an email.resend connection's secrets.
type Secrets struct {
	// APIKey is the Resend API key ("re_...").
	APIKey string `json:"api_key"`
}

// Provider is one email.resend connection.
type Provider struct {
	cfg     Config
	key     string
	url     string
	timeout time.Duration
	client  *http.Client
	env     sdk.Env
	limiter *rate.Limiter
}

// Info implements sdk.Provider. DefaultRate is Resend's documented default
// of 2 requests per second per team.
func (p *Provider) Info() sdk.Info {
	return sdk.Info{
		ID:                 ID,
		Title:              "Resend (batch API, idempotency keys)",
		MaxChunk:           MaxBatch,
		DefaultRate:        2,
		DefaultConcurrency: 2,
		BillableUnit:       "message",
		ConfigSchema: json.RawMessage(`{"type":"object","additionalProperties":false,"properties":{
  "base_url":{"type":"string","format":"uri","description":"API endpoint override (default https://api.resend.com)"},
  "timeout":{"type":"string","description":"Per-call timeout, e.g. \"30s\""},
  "requests_per_second":{"type":"number","exclusiveMinimum":0,"description":"Request pacing (default 2, Resend's team limit)"},
  "unsubscribe_mailto":{"type":"string","description":"Address added to List-Unsubscribe"}}}`),
		SecretsSchema: json.RawMessage(`{"type":"object","required":["api_key"],"additionalProperties":false,"properties":{
  "api_key":{"type":"string","description":"Resend API key (re_...)"}}}`),
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
	if sec.APIKey == "" {
		return errors.New("secrets: api_key is required")
	}
	u, err := httpsend.ParseBaseURL(cfg.BaseURL, DefaultBaseURL, env.AllowPrivateNetworks)
	if err != nil {
		return err
	}
	if cfg.UnsubscribeMailto != "" {
		if _, err := email.ParseAddress(cfg.UnsubscribeMailto); err != nil {
			return fmt.Errorf("config: unsubscribe_mailto: %w", err)
		}
	}
	if cfg.RequestsPerSecond < 0 || cfg.RequestsPerSecond > 1000 {
		return errors.New("config: requests_per_second: must be between 0 (default 2) and 1000")
	}
	if cfg.RequestsPerSecond == 0 {
		cfg.RequestsPerSecond = DefaultRequestsPerSecond
	}
	p.limiter = rate.NewLimiter(rate.Limit(cfg.RequestsPerSecond), 1)
	p.timeout = cfg.Timeout.Or(DefaultTimeout)
	if env.Now == nil {
		env.Now = time.Now
	}
	p.cfg, p.key, p.url, p.env = cfg, sec.APIKey, u.String(), env
	p.client = httpsend.NewClient(env, p.timeout)
	return nil
}

// Compile implements sdk.Provider.
func (p *Provider) Compile(template json.RawMessage) (sdk.Sender, error) {
	c, err := email.Compile(template, email.Options{
		UnsubscribeURL:    p.env.UnsubscribeURL,
		UnsubscribeMailto: p.cfg.UnsubscribeMailto,
		Now:               p.env.Now,
	})
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

// message is Resend's email object.
type message struct {
	From        string            `json:"from"`
	To          []string          `json:"to"`
	Subject     string            `json:"subject"`
	HTML        string            `json:"html,omitempty"`
	Text        string            `json:"text,omitempty"`
	ReplyTo     []string          `json:"reply_to,omitempty"`
	Headers     map[string]string `json:"headers,omitempty"`
	Tags        []tag             `json:"tags,omitempty"`
	Attachments []attachment      `json:"attachments,omitempty"`
}

type tag struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

type attachment struct {
	Filename    string `json:"filename"`
	Content     []byte `json:"content"`
	ContentType string `json:"content_type,omitempty"`
}

// apiError is Resend's error body.
type apiError struct {
	StatusCode int    `json:"statusCode"`
	Name       string `json:"name"`
	Message    string `json:"message"`
}

func (s *sender) build(it sdk.Item) (message, error) {
	m, err := s.tmpl.Render(it.ID, it.Data)
	if err != nil {
		return message{}, err
	}
	text, html := m.Bodies()
	rm := message{From: m.From.String(), To: []string{m.To[0].String()}, Subject: m.Subject, HTML: html, Text: text}
	for _, a := range m.ReplyTo {
		rm.ReplyTo = append(rm.ReplyTo, a.String())
	}
	for _, h := range append(m.UnsubscribeHeaders(), m.Headers...) {
		if rm.Headers == nil {
			rm.Headers = map[string]string{}
		}
		rm.Headers[h.Name] = h.Value
	}
	// Tag values allow ASCII letters, digits, '_' and '-': item IDs are
	// made of those.
	rm.Tags = []tag{{Name: TagName, Value: tagValue(it.ID)}}
	for _, a := range m.Attachments {
		rm.Attachments = append(rm.Attachments, attachment{Filename: a.Filename, Content: a.Content, ContentType: a.ContentType})
	}
	return rm, nil
}

func tagValue(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c == '_' || c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			b[i] = '_'
		}
	}
	if len(b) > 256 {
		b = b[:256]
	}
	return string(b)
}

// BatchKey returns the Idempotency-Key of a batch call carrying items with
// these IDs, in this order.
func BatchKey(ids []string) string {
	h := sha256.Sum256([]byte(strings.Join(ids, "\n")))
	return "bs-batch-" + hex.EncodeToString(h[:16])
}

// ItemKey returns the Idempotency-Key of a single-email call for an item:
// "bs-item-" + its ID (hashed if that would pass Resend's 256 characters).
func ItemKey(id string) string {
	if len(id) > 240 {
		h := sha256.Sum256([]byte(id))
		return "bs-item-" + hex.EncodeToString(h[:])
	}
	return "bs-item-" + id
}

// Send implements sdk.Sender.
func (s *sender) Send(ctx context.Context, items []sdk.Item) []sdk.Result {
	res := make([]sdk.Result, len(items))
	var (
		idx   []int
		ids   []string
		batch []message
	)
	for i, it := range items {
		m, err := s.build(it)
		if err != nil {
			res[i] = sdk.Permanent(fmt.Errorf("rendering: %w", err))
			continue
		}
		if len(m.Attachments) > 0 {
			// The batch endpoint takes no attachments.
			res[i] = s.single(ctx, it.ID, m)
			continue
		}
		idx, ids, batch = append(idx, i), append(ids, it.ID), append(batch, m)
	}
	if len(batch) > 0 {
		s.batch(ctx, batch, ids, idx, res)
	}
	return res
}

func (s *sender) request(ctx context.Context, path, key string, body any) httpsend.Answer {
	if err := s.p.limiter.Wait(ctx); err != nil {
		// Waiting would pass ctx's deadline, or ctx ended: not sent.
		return httpsend.Answer{Err: fmt.Errorf("waiting for the request rate: %w", err)}
	}
	raw, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.p.url+path, bytes.NewReader(raw))
	if err != nil {
		return httpsend.Answer{Err: fmt.Errorf("building the request: %w", err)}
	}
	req.Header.Set("Authorization", "Bearer "+s.p.key)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	if path == "/emails/batch" {
		req.Header.Set("x-batch-validation", "permissive")
	}
	return httpsend.Do(ctx, s.p.client, s.p.timeout, req)
}

// failure classifies a non-200 answer. A 409 for a concurrent request with
// the same key is transient. A 409 for a different payload under the same
// key means an earlier attempt with this key reached Resend (and was
// probably sent) while this one differs: Unknown, neither sent-again nor
// failed. It happens when a retry's payload changes, for instance if the
// host's unsubscribe links are not deterministic per item.
func (s *sender) failure(a httpsend.Answer) sdk.Result {
	var e apiError
	msg := http.StatusText(a.Status)
	if json.Unmarshal(a.Body, &e) == nil && e.Message != "" {
		msg = e.Name + ": " + e.Message
	}
	if a.Status == http.StatusConflict {
		switch e.Name {
		case "concurrent_idempotent_requests":
			return httpsend.WithAnswer(sdk.RetryAfter(httpsend.RetryAfter(a.Header, s.p.env.Now()), fmt.Errorf("HTTP 409: %s", msg)), a)
		case "invalid_idempotent_request":
			return httpsend.WithAnswer(sdk.Unknown(fmt.Errorf("HTTP 409: %s (an earlier attempt with this idempotency key reached Resend)", msg)), a)
		}
	}
	return httpsend.StatusResult(a, s.p.env.Now(), msg)
}

func (s *sender) single(ctx context.Context, itemID string, m message) sdk.Result {
	if err := ctx.Err(); err != nil {
		return sdk.Retry(fmt.Errorf("not sent: %w", err))
	}
	a := s.request(ctx, "/emails", ItemKey(itemID), m)
	if a.Err != nil {
		return httpsend.TransportResult(a, "posting /emails", true)
	}
	if a.Status != http.StatusOK {
		return s.failure(a)
	}
	var out struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(a.Body, &out); err != nil || out.ID == "" {
		return httpsend.WithAnswer(sdk.Retry(errors.New("unreadable answer (a retry with the same idempotency key is safe)")), a)
	}
	r := httpsend.OK(out.ID, a)
	return r
}

func (s *sender) batch(ctx context.Context, batch []message, ids []string, idx []int, res []sdk.Result) {
	set := func(r sdk.Result) {
		for _, i := range idx {
			res[i] = r
		}
	}
	if err := ctx.Err(); err != nil {
		set(sdk.Retry(fmt.Errorf("not sent: %w", err)))
		return
	}
	a := s.request(ctx, "/emails/batch", BatchKey(ids), batch)
	if a.Err != nil {
		set(httpsend.TransportResult(a, "posting /emails/batch", true))
		return
	}
	if a.Status != http.StatusOK {
		set(s.failure(a))
		return
	}
	var out struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
		Errors []struct {
			Index   int    `json:"index"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	failed := map[int]string{}
	err := json.Unmarshal(a.Body, &out)
	if err == nil {
		for _, e := range out.Errors {
			if e.Index < 0 || e.Index >= len(batch) {
				err = fmt.Errorf("error index %d out of range", e.Index)
				break
			}
			failed[e.Index] = e.Message
		}
	}
	if err != nil || len(out.Data)+len(failed) != len(batch) {
		// Retrying with the same key replays the answer: safe.
		set(httpsend.WithAnswer(sdk.Retry(fmt.Errorf("unreadable batch answer for %d emails", len(batch))), a))
		return
	}
	// data lists the created emails in request order, skipping the
	// failed ones.
	d := 0
	for k, i := range idx {
		if msg, bad := failed[k]; bad {
			r := sdk.Permanent(fmt.Errorf("rejected: %s", msg))
			r.StatusCode, r.Latency = a.Status, a.Latency
			res[i] = r
			continue
		}
		r := httpsend.OK(out.Data[d].ID, a)
		res[i] = r
		d++
	}
}
