// Package resend is the email.resend provider: it sends a chunk of up to 100
// rendered messages in one call to Resend's batch endpoint
// (POST /emails/batch) in permissive validation mode, so that one invalid
// message fails alone, and maps the answer back to one result per item:
// 1,000 items take 10 API calls.
//
// Idempotency. Resend keeps an Idempotency-Key for 24 hours and replays the
// original answer when the same key comes with the same payload; a batch
// call's key covers the whole request. The engine does not retry a chunk as
// it was: retried items come back in other chunks. So:
//
//   - An item's first attempt goes in a batch call under
//     BatchKey(its chunk's first-attempt item IDs). When the answer is lost
//     (a transport failure after the request left, or Resend's 409
//     concurrent_idempotent_requests), the provider repeats that very call
//     with the same key and body, up to twice, within the same Send: a
//     replay returns the original answer, so a batch that was taken is
//     neither lost nor sent twice. If no try gets an answer, the items are
//     Unknown (the host retries them only when the batch chose
//     at-least-once), because no later call carries that key.
//   - Every later attempt of an item (sdk.Item.Attempt > 1), and every
//     message with attachments (which the batch endpoint does not take),
//     goes alone to POST /emails under ItemKey(item ID) = "bs-item-" + ID:
//     the same key on every such attempt, so a lost answer there is Retry
//     and the next attempt replays instead of sending again.
//
// The cost: retries go one request per email, paced by
// requests_per_second (2 a second by default), rather than 100 per request.
// Limits: a Send cut off (process stop, lease end) after its batch left,
// and a first attempt retried under at-least-once, can send twice, as
// with any provider without a key. Every message also carries the item ID
// as the tag batchsender_item, which Resend echoes in its webhooks.
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
	opts    email.Options
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
	opts, err := email.ProviderOptions(&env, cfg.UnsubscribeMailto)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if cfg.RequestsPerSecond < 0 || cfg.RequestsPerSecond > 1000 {
		return errors.New("config: requests_per_second: must be between 0 (default 2) and 1000")
	}
	if cfg.RequestsPerSecond == 0 {
		cfg.RequestsPerSecond = DefaultRequestsPerSecond
	}
	p.limiter = rate.NewLimiter(rate.Limit(cfg.RequestsPerSecond), 1)
	p.timeout = cfg.Timeout.Or(DefaultTimeout)
	p.cfg, p.key, p.url, p.env = cfg, sec.APIKey, u.String(), env
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

// BatchKey returns the Idempotency-Key of a batch call carrying the first
// attempts of items with these IDs, in this order: "bs-batch-" and 32 hex
// digits of SHA-256 over the IDs joined by newlines. It replays only a
// repeat of the same call (the provider repeats a call whose answer was
// lost); later attempts go alone under ItemKey.
func BatchKey(ids []string) string {
	h := sha256.Sum256([]byte(strings.Join(ids, "\n")))
	return "bs-batch-" + hex.EncodeToString(h[:16])
}

// ItemKey returns the Idempotency-Key of a single-email call for an item,
// the same on every attempt: "bs-item-" + its ID (hashed if that would pass
// Resend's 256 characters).
func ItemKey(id string) string {
	if len(id) > 240 {
		h := sha256.Sum256([]byte(id))
		return "bs-item-" + hex.EncodeToString(h[:])
	}
	return "bs-item-" + id
}

// Send implements sdk.Sender. First attempts without attachments share one
// batch call; retries and messages with attachments go one per call under
// their item's key (see the package doc).
func (s *sender) Send(ctx context.Context, items []sdk.Item) []sdk.Result {
	res := make([]sdk.Result, len(items))
	var (
		idx     []int
		ids     []string
		batch   []message
		singles []int
		msgs    = make([]message, len(items))
	)
	for i, it := range items {
		m, err := s.build(it)
		if err != nil {
			res[i] = sdk.Permanent(fmt.Errorf("rendering: %w", err))
			continue
		}
		if len(m.Attachments) > 0 || it.Attempt > 1 {
			// The batch endpoint takes no attachments; a retry keeps
			// its item's key (an earlier attempt may have been a
			// single call under it).
			msgs[i], singles = m, append(singles, i)
			continue
		}
		idx, ids, batch = append(idx, i), append(ids, it.ID), append(batch, m)
	}
	// The batch first: one request for up to 100 emails is the best use
	// of the request rate while ctx lasts.
	if len(batch) > 0 {
		s.batch(ctx, batch, ids, idx, res)
	}
	for _, i := range singles {
		res[i] = s.single(ctx, items[i].ID, msgs[i])
	}
	return res
}

// request makes one call with its idempotency key, after waiting for the
// connection's request rate.
func (s *sender) request(ctx context.Context, path, key string, body []byte) httpsend.Answer {
	if err := s.p.limiter.Wait(ctx); err != nil {
		// Waiting would pass ctx's deadline, or ctx ended: not sent.
		return httpsend.Answer{Err: fmt.Errorf("waiting for the request rate: %w", err)}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.p.url+path, bytes.NewReader(body))
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

// errorOf reads Resend's error body: its name (such as
// "invalid_idempotent_request") and a message for the result.
func errorOf(a httpsend.Answer) (name, msg string) {
	var e apiError
	msg = http.StatusText(a.Status)
	if json.Unmarshal(a.Body, &e) == nil && e.Message != "" {
		msg = e.Name + ": " + e.Message
	}
	return e.Name, msg
}

// failure classifies a non-200 answer. A 409 for a concurrent request with
// the same key is transient. A 409 for a different payload under the same
// key means an earlier attempt with this key reached Resend (and was
// probably sent) while this one differs: Unknown, neither sent-again nor
// failed. It happens when a retry's payload changes, for instance if the
// host's unsubscribe links are not deterministic per item.
func (s *sender) failure(a httpsend.Answer) sdk.Result {
	name, msg := errorOf(a)
	if a.Status == http.StatusConflict {
		switch name {
		case "concurrent_idempotent_requests":
			return httpsend.WithAnswer(sdk.RetryAfter(httpsend.RetryAfter(a.Header, s.p.env.Now()), fmt.Errorf("HTTP 409: %s", msg)), a)
		case "invalid_idempotent_request":
			return httpsend.WithAnswer(sdk.Unknown(fmt.Errorf("HTTP 409: %s (an earlier attempt with this idempotency key reached Resend)", msg)), a)
		}
	}
	return httpsend.StatusResult(a, s.p.env.Now(), msg)
}

// single sends one email to /emails under ItemKey(itemID), the key every
// single call for the item carries, so a retry after a lost answer
// replays instead of sending again.
func (s *sender) single(ctx context.Context, itemID string, m message) sdk.Result {
	if err := ctx.Err(); err != nil {
		return sdk.Retry(fmt.Errorf("not sent: %w", err))
	}
	body, _ := json.Marshal(m)
	a := s.request(ctx, "/emails", ItemKey(itemID), body)
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
		// Accepted, but a retry would replay the same answer.
		return httpsend.WithAnswer(sdk.Unknown(errors.New("HTTP 200 without an email id")), a)
	}
	return httpsend.OK(out.ID, a)
}

// Replays of a batch call whose answer was lost.
const (
	// batchReplays is how many times a batch call is repeated, with the
	// same key and body, after its answer was lost.
	batchReplays = 2
	// maxReplayWait caps the wait before a replay when Resend says the
	// first request is still in progress.
	maxReplayWait = 2 * time.Second
)

// ambiguous reports whether a call may have been taken without its answer
// telling: a transport failure after the request left, or Resend still
// working on an earlier request with the same key.
func ambiguous(a httpsend.Answer) bool {
	if a.Err != nil {
		return a.Left
	}
	name, _ := errorOf(a)
	return a.Status == http.StatusConflict && name == "concurrent_idempotent_requests"
}

// batchCall makes a batch call, replaying it in place (same key, same
// body) while its answer is lost: the batch key only replays this very
// call, because a retry by the host goes out differently (one call per
// item). maybeSent says that some try may have been taken while the
// returned answer does not say so.
func (s *sender) batchCall(ctx context.Context, key string, body []byte) (a httpsend.Answer, maybeSent bool) {
	for try := 0; ; try++ {
		a = s.request(ctx, "/emails/batch", key, body)
		if !ambiguous(a) {
			return a, maybeSent
		}
		maybeSent = true
		if try == batchReplays {
			return a, true
		}
		wait := time.Duration(0)
		if a.Err == nil { // Resend is still working on the first try
			wait = min(max(httpsend.RetryAfter(a.Header, s.p.env.Now()), 200*time.Millisecond), maxReplayWait)
		}
		if !sleep(ctx, wait) {
			return a, true
		}
	}
}

// sleep waits d or until ctx ends; false when ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// batch sends first attempts as one /emails/batch call under
// BatchKey(ids) and maps the answer back to the items.
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
	body, _ := json.Marshal(batch)
	a, maybeSent := s.batchCall(ctx, BatchKey(ids), body)
	if maybeSent && a.Status != http.StatusOK {
		// An earlier try may have been taken, and the host's retry would
		// not carry this call's key: Unknown, not Retry.
		what := "answer lost"
		if a.Err != nil {
			what = a.Err.Error()
		} else {
			_, what = errorOf(a)
		}
		r := sdk.Unknown(fmt.Errorf("posting /emails/batch: %s after %d tries; the batch may have been accepted (its idempotency key only replays this call)", what, batchReplays+1))
		if a.Err == nil {
			r = httpsend.WithAnswer(r, a)
		}
		r.Latency = a.Latency
		set(r)
		return
	}
	if a.Err != nil {
		// Not sent: the request never left.
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
		// Accepted, but which emails were created is not readable.
		set(httpsend.WithAnswer(sdk.Unknown(fmt.Errorf("HTTP 200 with an unreadable batch answer for %d emails", len(batch))), a))
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
		res[i] = httpsend.OK(out.Data[d].ID, a)
		d++
	}
}
