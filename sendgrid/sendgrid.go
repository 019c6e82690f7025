// Package sendgrid is the email.sendgrid provider: it sends a chunk of up to
// 1,000 rendered messages as one SendGrid v3 Mail Send call
// (POST /v3/mail/send) with one personalization per item, so 1,000 items
// take one API call.
//
// How per-item content fits one call: each personalization carries its
// item's recipient, subject, headers (List-Unsubscribe, custom headers) and
// custom_args.batchsender_item_id (echoed in SendGrid's events). When the
// items' bodies differ, the request's content is a placeholder and each
// personalization's substitutions carry its rendered HTML and text; SendGrid
// allows 10,000 bytes of substitutions per personalization, so items whose
// bodies are larger share a call only with items of identical bodies (a
// newsletter without personalized body: one call; a large body that
// differs per item: one call per item, a known limit). SendGrid also refuses
// an address twice in one request, so a repeated recipient goes to the next
// call. Items with a different sender (per-item "from" or "reply_to") are
// sent in separate calls.
//
// SendGrid answers 202 for the whole request: every item of an accepted
// call gets the call's X-Message-Id (events carry sg_message_id starting
// with it); a rejected call fails all its items. There is no idempotency
// key: a timeout after the request left is Unknown.
package sendgrid

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/batchsender/batchsender/email"
	"github.com/batchsender/batchsender/sdk"
)

// ID is the provider ID.
const ID = "email.sendgrid"

// Defaults and limits.
const (
	DefaultBaseURL = "https://api.sendgrid.com"
	DefaultTimeout = 30 * time.Second
	// MaxPersonalizations is SendGrid's limit of personalizations (and of
	// recipients) per Mail Send call.
	MaxPersonalizations = 1000
	// MaxSubstitutionBytes is SendGrid's limit on one personalization's
	// substitutions.
	MaxSubstitutionBytes = 10000
	// CustomArgKey is the custom_args field carrying the item ID.
	CustomArgKey = "batchsender_item_id"
	// Substitution tags standing for an item's bodies.
	htmlTag = "-bs_html_body-"
	textTag = "-bs_text_body-"
	// maxRequestBytes keeps a call under SendGrid's 30 MB message limit.
	maxRequestBytes = 28 << 20
)

func init() {
	sdk.Register(sdk.Registration{ID: ID, New: func() sdk.Provider { return new(Provider) }})
}

// Config is an email.sendgrid connection's configuration.
type Config struct {
	// BaseURL overrides the API endpoint (default https://api.sendgrid.com;
	// EU subusers: https://api.eu.sendgrid.com).
	BaseURL string `json:"base_url,omitempty"`
	// Timeout bounds one API call (default 30s, at most 5m).
	Timeout Duration `json:"timeout,omitempty"`
	// Categories are set on every message (at most 10).
	Categories []string `json:"categories,omitempty"`
	// SandboxMode makes SendGrid validate without sending.
	SandboxMode bool `json:"sandbox_mode,omitempty"`
	// UnsubscribeMailto is an optional address added to List-Unsubscribe.
	UnsubscribeMailto string `json:"unsubscribe_mailto,omitempty"`
}

// Secrets are an email.sendgrid connection's secrets.
type Secrets struct {
	// APIKey is the SendGrid API key with Mail Send permission.
	APIKey string `json:"api_key"`
}

// Provider is one email.sendgrid connection.
type Provider struct {
	cfg     Config
	key     string
	url     string
	timeout time.Duration
	client  *http.Client
	env     sdk.Env
}

// Info implements sdk.Provider. SendGrid documents no request limit for
// Mail Send (other v3 endpoints: 600/min); 10 calls per second is 10,000
// messages per second.
func (p *Provider) Info() sdk.Info {
	return sdk.Info{
		ID:                 ID,
		Title:              "SendGrid (v3 Mail Send, personalizations)",
		MaxChunk:           MaxPersonalizations,
		DefaultRate:        10,
		DefaultConcurrency: 4,
		BillableUnit:       "message",
		ConfigSchema: json.RawMessage(`{"type":"object","additionalProperties":false,"properties":{
  "base_url":{"type":"string","format":"uri","description":"API endpoint override (default https://api.sendgrid.com)"},
  "timeout":{"type":"string","description":"Per-call timeout, e.g. \"30s\""},
  "categories":{"type":"array","maxItems":10,"items":{"type":"string","maxLength":255}},
  "sandbox_mode":{"type":"boolean"},
  "unsubscribe_mailto":{"type":"string","description":"Address added to List-Unsubscribe"}}}`),
		SecretsSchema: json.RawMessage(`{"type":"object","required":["api_key"],"additionalProperties":false,"properties":{
  "api_key":{"type":"string","description":"SendGrid API key (Mail Send permission)"}}}`),
		ItemSchema: email.ItemSchema,
	}
}

// Provision implements sdk.Provider.
func (p *Provider) Provision(ctx context.Context, env sdk.Env) error {
	var cfg Config
	if err := sdk.DecodeStrict(env.Config, &cfg); err != nil {
		return decodeErr("config", err)
	}
	var sec Secrets
	if err := sdk.DecodeStrict(env.Secrets, &sec); err != nil {
		return decodeErr("secrets", err)
	}
	if sec.APIKey == "" {
		return errors.New("secrets: api_key is required")
	}
	u, err := parseBaseURL(cfg.BaseURL, DefaultBaseURL, env.AllowPrivateNetworks)
	if err != nil {
		return err
	}
	if len(cfg.Categories) > 10 {
		return errors.New("config: categories: at most 10")
	}
	if cfg.UnsubscribeMailto != "" {
		if _, err := email.ParseAddress(cfg.UnsubscribeMailto); err != nil {
			return fmt.Errorf("config: unsubscribe_mailto: %w", err)
		}
	}
	p.timeout = time.Duration(cfg.Timeout)
	if p.timeout == 0 {
		p.timeout = DefaultTimeout
	}
	if env.Now == nil {
		env.Now = time.Now
	}
	p.cfg, p.key, p.url, p.env = cfg, sec.APIKey, u.String(), env
	p.client = newClient(env, p.timeout)
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

type address struct {
	Email string `json:"email"`
	Name  string `json:"name,omitempty"`
}

type personalization struct {
	To            []address         `json:"to"`
	Subject       string            `json:"subject"`
	Headers       map[string]string `json:"headers,omitempty"`
	Substitutions map[string]string `json:"substitutions,omitempty"`
	CustomArgs    map[string]string `json:"custom_args"`
}

type content struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

type attachment struct {
	Content     []byte `json:"content"`
	Type        string `json:"type,omitempty"`
	Filename    string `json:"filename"`
	Disposition string `json:"disposition"`
}

type mailSend struct {
	Personalizations []personalization `json:"personalizations"`
	From             address           `json:"from"`
	ReplyTo          *address          `json:"reply_to,omitempty"`
	Content          []content         `json:"content"`
	Attachments      []attachment      `json:"attachments,omitempty"`
	Categories       []string          `json:"categories,omitempty"`
	MailSettings     *mailSettings     `json:"mail_settings,omitempty"`
}

type mailSettings struct {
	SandboxMode struct {
		Enable bool `json:"enable"`
	} `json:"sandbox_mode"`
}

// rendered is one item ready to go.
type rendered struct {
	i    int
	id   string
	m    *email.Message
	text string
	html string
}

// call is one Mail Send request being assembled.
type call struct {
	items []rendered
	addrs map[string]bool
	size  int
}

// groupKey says which items may share a call: the same sender and, for
// items whose bodies are too large to be substitutions, the same bodies
// (sent as the call's content).
func groupKey(r rendered) string {
	k := r.m.From.String()
	for _, a := range r.m.ReplyTo {
		k += "\x00" + a.String()
	}
	if len(r.html)+len(r.text)+len(htmlTag)+len(textTag) > MaxSubstitutionBytes {
		sum := sha256.Sum256([]byte(r.html + "\x00" + r.text))
		k += "\x00body:" + hex.EncodeToString(sum[:])
	}
	return k
}

// plan groups a chunk's items into as few calls as SendGrid allows.
func plan(items []rendered) []*call {
	var calls []*call
	groups := map[string][]*call{}
	for _, r := range items {
		addr := strings.ToLower(r.m.To[0].Address)
		size := len(r.html) + len(r.text) + len(r.m.Subject) + 512
		for _, h := range r.m.Headers {
			size += len(h.Name) + len(h.Value)
		}
		k := groupKey(r)
		var target *call
		for _, c := range groups[k] {
			if !c.addrs[addr] && len(c.items) < MaxPersonalizations && c.size+size <= maxRequestBytes {
				target = c
				break
			}
		}
		if target == nil {
			target = &call{addrs: map[string]bool{}}
			groups[k] = append(groups[k], target)
			calls = append(calls, target)
		}
		target.items = append(target.items, r)
		target.addrs[addr] = true
		target.size += size
	}
	return calls
}

// request builds a call's body.
func (s *sender) request(c *call) mailSend {
	first := c.items[0]
	req := mailSend{From: address{Email: first.m.From.Address, Name: first.m.From.Name}, Categories: s.p.cfg.Categories}
	if len(first.m.ReplyTo) > 0 {
		req.ReplyTo = &address{Email: first.m.ReplyTo[0].Address, Name: first.m.ReplyTo[0].Name}
	}
	if s.p.cfg.SandboxMode {
		req.MailSettings = &mailSettings{}
		req.MailSettings.SandboxMode.Enable = true
	}
	same := true
	for _, r := range c.items[1:] {
		if r.html != first.html || r.text != first.text {
			same = false
			break
		}
	}
	if same {
		req.Content = bodyContent(first.text, first.html)
	} else {
		req.Content = bodyContent(textTag, htmlTag)
		if first.html == "" {
			req.Content = bodyContent(textTag, "")
		}
	}
	for _, r := range c.items {
		p := personalization{
			To:         []address{{Email: r.m.To[0].Address, Name: r.m.To[0].Name}},
			Subject:    r.m.Subject,
			CustomArgs: map[string]string{CustomArgKey: r.id},
		}
		for _, h := range append(unsubscribeHeaders(r.m), r.m.Headers...) {
			if p.Headers == nil {
				p.Headers = map[string]string{}
			}
			p.Headers[h.Name] = h.Value
		}
		if !same {
			p.Substitutions = map[string]string{textTag: r.text}
			if first.html != "" {
				p.Substitutions[htmlTag] = r.html
			}
		}
		req.Personalizations = append(req.Personalizations, p)
	}
	for _, a := range first.m.Attachments {
		req.Attachments = append(req.Attachments, attachment{Content: a.Content, Type: a.ContentType, Filename: a.Filename, Disposition: "attachment"})
	}
	return req
}

// bodyContent lists text/plain first, as SendGrid requires.
func bodyContent(text, html string) []content {
	out := []content{{Type: "text/plain", Value: text}}
	if html != "" {
		out = append(out, content{Type: "text/html", Value: html})
	}
	return out
}

// Send implements sdk.Sender.
func (s *sender) Send(ctx context.Context, items []sdk.Item) []sdk.Result {
	res := make([]sdk.Result, len(items))
	var ready []rendered
	for i, it := range items {
		m, err := s.tmpl.Render(it.ID, it.Data)
		if err != nil {
			res[i] = sdk.Permanent(fmt.Errorf("rendering: %w", err))
			continue
		}
		text, html := bodies(m)
		// Bodies with both parts differing between items need an html
		// placeholder in every personalization of a call: an item
		// without HTML in a batch with HTML gets its text as HTML.
		ready = append(ready, rendered{i: i, id: it.ID, m: m, text: text, html: html})
	}
	hasHTML := false
	for _, r := range ready {
		hasHTML = hasHTML || r.html != ""
	}
	for k := range ready {
		if hasHTML && ready[k].html == "" {
			ready[k].html = "<pre>" + htmlEscape(ready[k].text) + "</pre>"
		}
	}
	for _, c := range plan(ready) {
		s.send(ctx, c, res)
	}
	return res
}

func htmlEscape(s string) string {
	var b bytes.Buffer
	for _, r := range s {
		switch r {
		case '<':
			b.WriteString("&lt;")
		case '>':
			b.WriteString("&gt;")
		case '&':
			b.WriteString("&amp;")
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

type apiErrors struct {
	Errors []struct {
		Message string  `json:"message"`
		Field   *string `json:"field"`
	} `json:"errors"`
}

func (s *sender) send(ctx context.Context, c *call, res []sdk.Result) {
	set := func(r sdk.Result) {
		for _, it := range c.items {
			res[it.i] = r
		}
	}
	if err := ctx.Err(); err != nil {
		set(sdk.Retry(fmt.Errorf("not sent: %w", err)))
		return
	}
	body, _ := json.Marshal(s.request(c))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.p.url+"/v3/mail/send", bytes.NewReader(body))
	if err != nil {
		set(sdk.Permanent(fmt.Errorf("building the request: %w", err)))
		return
	}
	req.Header.Set("Authorization", "Bearer "+s.p.key)
	req.Header.Set("Content-Type", "application/json")
	a := do(ctx, s.p.client, s.p.timeout, req)
	if a.err != nil {
		set(transportResult(a, "posting /v3/mail/send", false))
		return
	}
	if a.status != http.StatusAccepted && a.status != http.StatusOK {
		var e apiErrors
		msg := http.StatusText(a.status)
		if json.Unmarshal(a.body, &e) == nil && len(e.Errors) > 0 {
			var parts []string
			for _, x := range e.Errors {
				if x.Field != nil && *x.Field != "" {
					parts = append(parts, *x.Field+": "+x.Message)
				} else {
					parts = append(parts, x.Message)
				}
			}
			msg = strings.Join(parts, "; ")
		}
		r := statusResult(a, s.p.env.Now(), msg)
		if r.Outcome == sdk.OutcomeRetry && r.RetryAfter == 0 && a.status == http.StatusTooManyRequests {
			r.RetryAfter = resetAfter(a.header, s.p.env.Now())
		}
		set(r)
		return
	}
	id := a.header.Get("X-Message-Id")
	if id == "" {
		// 200 in sandbox mode carries no id; the item ID still
		// correlates through custom_args.
		id = "sandbox"
	}
	for _, it := range c.items {
		r := sdk.OK(id)
		r.StatusCode, r.Latency = a.status, a.latency
		res[it.i] = r
	}
}

// resetAfter reads X-RateLimit-Reset (unix seconds), SendGrid's way of
// saying when a 429 ends.
func resetAfter(h http.Header, now time.Time) time.Duration {
	v, err := strconv.ParseInt(strings.TrimSpace(h.Get("X-RateLimit-Reset")), 10, 64)
	if err != nil {
		return 0
	}
	d := time.Unix(v, 0).Sub(now)
	if d <= 0 || d > 24*time.Hour {
		return 0
	}
	return d
}
