// Package mailgun is the email.mailgun provider: it sends a chunk of up to
// 1,000 rendered messages in one call to Mailgun's Messages API
// (POST /v3/{domain}/messages, multipart/form-data) using batch sending:
// every recipient is a "to" and "recipient-variables" carries each one's
// rendered subject, List-Unsubscribe, custom headers and the parts of the
// bodies that differ between recipients (the bodies are cut after every '>'
// and line break; shared segments stay literal), referenced as
// %recipient.key% in the message, so Mailgun sends an individual message
// per recipient. 1,000 items take one API call; a form over 20 MB is split.
//
// recipient-variables is keyed by address, so a repeated recipient goes to
// the next call; items with a different sender go in separate calls. Each
// message carries the item ID as the custom variable batchsender_item_id
// (v:, echoed in Mailgun's events as user-variables). Mailgun answers one
// id for the whole call, which every item of the call gets; a rejected call
// fails all its items. There is no idempotency key: a timeout after the
// request left is Unknown.
package mailgun

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/batchsender/batchsender/email"
	"github.com/batchsender/batchsender/internal/httpsend"
	"github.com/batchsender/batchsender/sdk"
)

// ID is the provider ID.
const ID = "email.mailgun"

// Defaults and limits.
const (
	DefaultBaseURL = "https://api.mailgun.net"
	DefaultTimeout = 60 * time.Second
	// MaxRecipients is Mailgun's limit of recipients per batch call.
	MaxRecipients = 1000
	// VariableName is the custom variable carrying the item ID.
	VariableName = "batchsender_item_id"
)

// maxCallBytes keeps a call under Mailgun's 25 MB message size (a variable
// for tests).
var maxCallBytes = 20 << 20

func init() {
	sdk.Register(sdk.Registration{ID: ID, New: func() sdk.Provider { return new(Provider) }})
}

// Duration is the JSON form of the per-call timeout, a string such as "10s"
// between 0 and 5m.
type Duration = httpsend.Duration

// Config is an email.mailgun connection's configuration.
type Config struct {
	// BaseURL overrides the API endpoint (default https://api.mailgun.net;
	// EU: https://api.eu.mailgun.net).
	BaseURL string `json:"base_url,omitempty"`
	// Domain is the sending domain (required).
	Domain string `json:"domain"`
	// Tags are set on every message (o:tag, at most 3).
	Tags []string `json:"tags,omitempty"`
	// TestMode makes Mailgun accept without delivering (o:testmode).
	TestMode bool `json:"test_mode,omitempty"`
	// Timeout bounds one API call (default 60s, at most 5m).
	Timeout Duration `json:"timeout,omitempty"`
	// UnsubscribeMailto is an optional address added to List-Unsubscribe.
	UnsubscribeMailto string `json:"unsubscribe_mailto,omitempty"`
}

// Secrets are an email.mailgun connection's secrets.
type Secrets struct {
	// APIKey is the Mailgun API key (HTTP Basic password, user "api").
	APIKey string `json:"api_key"`
}

// Provider is one email.mailgun connection.
type Provider struct {
	cfg     Config
	key     string
	url     string
	timeout time.Duration
	client  *http.Client
	env     sdk.Env
	opts    email.Options
}

// Info implements sdk.Provider. Mailgun publishes no fixed request rate
// for sending; 10 calls per second is up to 10,000 messages per second.
func (p *Provider) Info() sdk.Info {
	return sdk.Info{
		ID:                 ID,
		Title:              "Mailgun (batch sending with recipient variables)",
		MaxChunk:           MaxRecipients,
		DefaultRate:        10,
		DefaultConcurrency: 4,
		BillableUnit:       "message",
		ConfigSchema: json.RawMessage(`{"type":"object","required":["domain"],"additionalProperties":false,"properties":{
  "base_url":{"type":"string","format":"uri","description":"API endpoint override (default https://api.mailgun.net)"},
  "domain":{"type":"string","description":"Sending domain"},
  "tags":{"type":"array","maxItems":3,"items":{"type":"string"}},
  "test_mode":{"type":"boolean"},
  "timeout":{"type":"string","description":"Per-call timeout, e.g. \"60s\""},
  "unsubscribe_mailto":{"type":"string","description":"Address added to List-Unsubscribe"}}}`),
		SecretsSchema: json.RawMessage(`{"type":"object","required":["api_key"],"additionalProperties":false,"properties":{
  "api_key":{"type":"string","description":"Mailgun API key"}}}`),
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
	if cfg.Domain == "" || strings.ContainsAny(cfg.Domain, "/?#% \t\r\n") {
		return errors.New("config: domain is required, a domain name such as mg.example.com")
	}
	if len(cfg.Tags) > 3 {
		return errors.New("config: tags: at most 3")
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
	p.timeout = cfg.Timeout.Or(DefaultTimeout)
	p.cfg, p.key, p.env = cfg, sec.APIKey, env
	p.opts = opts
	p.url = u.String() + "/v3/" + url.PathEscape(cfg.Domain) + "/messages"
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

type rendered struct {
	i  int
	id string
	m  *email.Message
	// hseg and tseg are the bodies cut into segments (see segments).
	hseg, tseg []string
	text       string
	html       string
	headers    []email.Header
}

type call struct {
	items []rendered
	addrs map[string]bool
}

// Send implements sdk.Sender.
func (s *sender) Send(ctx context.Context, items []sdk.Item) []sdk.Result {
	res := make([]sdk.Result, len(items))
	var calls []*call
	groups := map[string][]*call{}
	for i, it := range items {
		m, err := s.tmpl.Render(it.ID, it.Data)
		if err != nil {
			res[i] = sdk.Permanent(fmt.Errorf("rendering: %w", err))
			continue
		}
		text, html := m.Bodies()
		r := rendered{i: i, id: it.ID, m: m, text: text, html: html, headers: append(m.UnsubscribeHeaders(), m.Headers...),
			hseg: segments(html), tseg: segments(text)}
		k := m.From.String()
		for _, a := range m.ReplyTo {
			k += "\x00" + a.String()
		}
		// Items of one call share the custom header names and the
		// bodies' segment counts (one skeleton).
		for _, h := range r.headers {
			k += "\x00" + h.Name
		}
		k += fmt.Sprintf("\x00%d/%d", len(r.hseg), len(r.tseg))
		addr := strings.ToLower(m.To[0].Address)
		var target *call
		for _, c := range groups[k] {
			if !c.addrs[addr] && len(c.items) < MaxRecipients {
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
	}
	for _, c := range calls {
		s.send(ctx, c.items, res)
	}
	return res
}

// segments cuts a body after every '>' and line break: the places where
// template text and substituted values usually meet.
func segments(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '>' || s[i] == '\n' {
			out = append(out, s[start:i+1])
			start = i + 1
		}
	}
	if start < len(s) {
		out = append(out, s[start:])
	}
	return out
}

// skeleton builds a body for a call's items: the segments every item
// shares stay literal and each run of segments that differs becomes a
// recipient variable name_K, so a large personalized newsletter costs only
// its differing bytes per recipient.
func skeleton(items []rendered, vars []map[string]string, name string, seg func(rendered) []string) string {
	first := seg(items[0])
	differs := make([]bool, len(first))
	for _, r := range items[1:] {
		for k, x := range seg(r) {
			if x != first[k] {
				differs[k] = true
			}
		}
	}
	var b strings.Builder
	n := 0
	for k := 0; k < len(first); {
		if !differs[k] {
			b.WriteString(first[k])
			k++
			continue
		}
		from := k
		for k < len(first) && differs[k] {
			k++
		}
		v := name + "_" + strconv.Itoa(n)
		n++
		b.WriteString("%recipient." + v + "%")
		for j, r := range items {
			vars[j][v] = strings.Join(seg(r)[from:k], "")
		}
	}
	return b.String()
}

// field is one form field: the same value for every item, or a
// per-recipient variable.
func field(items []rendered, vars []map[string]string, name string, get func(r rendered) string) string {
	first := get(items[0])
	same := true
	for _, r := range items[1:] {
		if get(r) != first {
			same = false
			break
		}
	}
	if same {
		return first
	}
	for k, r := range items {
		vars[k][name] = get(r)
	}
	return "%recipient." + name + "%"
}

// body builds a call's multipart form.
func (s *sender) body(items []rendered) (*bytes.Buffer, string, error) {
	var buf bytes.Buffer
	w := multipart.NewWriter(&buf)
	add := func(name, value string) {
		_ = w.WriteField(name, value)
	}
	first := items[0]
	vars := make([]map[string]string, len(items))
	for k, r := range items {
		// Every recipient needs variables, even empty, for Mailgun to
		// send individual messages.
		vars[k] = map[string]string{"bs_item": r.id}
	}
	add("from", first.m.From.String())
	// One comma-separated "to" (Mailgun takes both forms): fewer form
	// parts to build and parse.
	to := make([]string, len(items))
	for k, r := range items {
		to[k] = r.m.To[0].String()
	}
	add("to", strings.Join(to, ", "))
	if len(first.m.ReplyTo) > 0 {
		add("h:Reply-To", first.m.ReplyTo[0].String())
	}
	add("subject", field(items, vars, "bs_subject", func(r rendered) string { return r.m.Subject }))
	add("text", skeleton(items, vars, "bs_text", func(r rendered) []string { return r.tseg }))
	if first.html != "" {
		add("html", skeleton(items, vars, "bs_html", func(r rendered) []string { return r.hseg }))
	}
	for j, h := range first.headers {
		add("h:"+h.Name, field(items, vars, "bs_h"+strconv.Itoa(j), func(r rendered) string { return r.headers[j].Value }))
	}
	if len(items) == 1 {
		add("v:"+VariableName, first.id)
	} else {
		add("v:"+VariableName, "%recipient.bs_item%")
	}
	for _, t := range s.p.cfg.Tags {
		add("o:tag", t)
	}
	if s.p.cfg.TestMode {
		add("o:testmode", "yes")
	}
	rv := make(map[string]map[string]string, len(items))
	for k, r := range items {
		rv[r.m.To[0].Address] = vars[k]
	}
	raw, err := json.Marshal(rv)
	if err != nil {
		return nil, "", err
	}
	add("recipient-variables", string(raw))
	for _, a := range first.m.Attachments {
		h := make(textproto.MIMEHeader)
		h.Set("Content-Disposition", fmt.Sprintf(`form-data; name="attachment"; filename=%q`, a.Filename))
		ct := a.ContentType
		if ct == "" {
			ct = "application/octet-stream"
		}
		h.Set("Content-Type", ct)
		part, err := w.CreatePart(h)
		if err != nil {
			return nil, "", err
		}
		_, _ = part.Write(a.Content)
	}
	if err := w.Close(); err != nil {
		return nil, "", err
	}
	return &buf, w.FormDataContentType(), nil
}

// send posts one call's items; a form larger than Mailgun takes is split
// in halves.
func (s *sender) send(ctx context.Context, items []rendered, res []sdk.Result) {
	set := func(r sdk.Result) {
		for _, it := range items {
			res[it.i] = r
		}
	}
	if err := ctx.Err(); err != nil {
		set(sdk.Retry(fmt.Errorf("not sent: %w", err)))
		return
	}
	body, ctype, err := s.body(items)
	if err != nil {
		set(sdk.Permanent(fmt.Errorf("building the form: %w", err)))
		return
	}
	if body.Len() > maxCallBytes {
		if len(items) == 1 {
			set(sdk.Permanent(fmt.Errorf("message of %d bytes is larger than Mailgun's 25 MB limit", body.Len())))
			return
		}
		s.send(ctx, items[:len(items)/2], res)
		s.send(ctx, items[len(items)/2:], res)
		return
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.p.url, body)
	if err != nil {
		set(sdk.Permanent(fmt.Errorf("building the request: %w", err)))
		return
	}
	req.SetBasicAuth("api", s.p.key)
	req.Header.Set("Content-Type", ctype)
	a := httpsend.Do(ctx, s.p.client, s.p.timeout, req)
	if a.Err != nil {
		set(httpsend.TransportResult(a, "posting messages", false))
		return
	}
	var out struct {
		ID      string `json:"id"`
		Message string `json:"message"`
	}
	_ = json.Unmarshal(a.Body, &out)
	if a.Status != http.StatusOK {
		msg := out.Message
		if msg == "" {
			msg = strings.TrimSpace(httpsend.Snippet(a.Body))
		}
		if msg == "" {
			msg = http.StatusText(a.Status)
		}
		set(httpsend.StatusResult(a, s.p.env.Now(), msg))
		return
	}
	if out.ID == "" {
		set(httpsend.WithAnswer(sdk.Unknown(errors.New("answer without a message id")), a))
		return
	}
	id := strings.Trim(out.ID, "<>")
	for _, it := range items {
		r := httpsend.OK(id, a)
		res[it.i] = r
	}
}
