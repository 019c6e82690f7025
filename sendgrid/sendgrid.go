// Package sendgrid is the email.sendgrid provider: it sends a chunk of up to
// 1,000 rendered messages as one SendGrid v3 Mail Send call
// (POST /v3/mail/send) with one personalization per item, so 1,000 items
// take one API call.
//
// How per-item content fits one call: each personalization carries its
// item's recipient, subject, headers (List-Unsubscribe, custom headers) and
// custom_args.batchsender_item_id (echoed in SendGrid's events). The bodies
// are cut into segments after every '>' and line break; the segments that
// are the same for every item of the call stay in the request's content,
// and each run of segments that differs becomes a substitution tag whose
// per-personalization value is that item's text. A 30 KB newsletter
// personalized with a name and an unsubscribe link thus needs only a few
// hundred bytes of substitutions per item. SendGrid allows 10,000 bytes of
// substitutions per personalization: an item over it shares a call only
// with items of identical bodies (at worst a call of its own). SendGrid also refuses
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
	"github.com/batchsender/batchsender/internal/httpsend"
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
	// maxRequestBytes keeps a call under SendGrid's 30 MB message limit.
	maxRequestBytes = 28 << 20
)

func init() {
	sdk.Register(sdk.Registration{ID: ID, New: func() sdk.Provider { return new(Provider) }})
}

// Duration is the JSON form of the per-call timeout, a string such as "10s"
// between 0 and 5m.
type Duration = httpsend.Duration

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
	opts    email.Options
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
	if len(cfg.Categories) > 10 {
		return errors.New("config: categories: at most 10")
	}
	opts, err := email.ProviderOptions(&env, cfg.UnsubscribeMailto)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
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
	// hseg and tseg are the bodies cut into segments (see segments).
	hseg, tseg []string
}

// segments cuts a body after every '>' and line break: the places where
// template text and substituted values usually meet, in HTML (also
// minified) and in text.
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

// span is a run of segments [from, to) that differs between the items of a
// group; it becomes one substitution tag.
type span struct{ from, to int }

// diffSpans returns the runs of segment positions where any item differs
// from the first.
func diffSpans(items []rendered, seg func(rendered) []string) []span {
	first := seg(items[0])
	differs := make([]bool, len(first))
	for _, r := range items[1:] {
		for k, x := range seg(r) {
			if x != first[k] {
				differs[k] = true
			}
		}
	}
	var out []span
	for k := 0; k < len(differs); k++ {
		if !differs[k] {
			continue
		}
		from := k
		for k < len(differs) && differs[k] {
			k++
		}
		out = append(out, span{from, k})
	}
	return out
}

// group is items that share a sender and a body skeleton: the segments
// outside its spans are the same for all of them.
type group struct {
	items  []rendered
	hspans []span
	tspans []span
}

func tag(kind byte, k int) string { return fmt.Sprintf("-bs_%c%d-", kind, k) }

// skeleton is a body with the group's spans replaced by tags.
func skeleton(segs []string, spans []span, kind byte) string {
	var b strings.Builder
	k, next := 0, 0
	for next < len(spans) || k < len(segs) {
		if next < len(spans) && k == spans[next].from {
			b.WriteString(tag(kind, next))
			k = spans[next].to
			next++
			continue
		}
		if k >= len(segs) {
			break
		}
		b.WriteString(segs[k])
		k++
	}
	return b.String()
}

// substitutions are an item's values for a group's tags.
func (g *group) substitutions(r rendered) map[string]string {
	if len(g.hspans)+len(g.tspans) == 0 {
		return nil
	}
	out := map[string]string{}
	for k, sp := range g.hspans {
		out[tag('h', k)] = strings.Join(r.hseg[sp.from:sp.to], "")
	}
	for k, sp := range g.tspans {
		out[tag('t', k)] = strings.Join(r.tseg[sp.from:sp.to], "")
	}
	return out
}

func substitutionSize(m map[string]string) int {
	n := 0
	for k, v := range m {
		n += len(k) + len(v)
	}
	return n
}

// call is one Mail Send request being assembled.
type call struct {
	g     *group
	items []rendered
	addrs map[string]bool
	size  int
}

// grouping returns the groups of a chunk: items with the same sender and
// the same number of segments share a skeleton; items whose substitutions
// would pass SendGrid's limit form groups of identical bodies instead (a
// large body that differs per item: a group of one).
func grouping(items []rendered) []*group {
	var order []string
	byKey := map[string][]rendered{}
	for _, r := range items {
		k := r.m.From.String()
		for _, a := range r.m.ReplyTo {
			k += "\x00" + a.String()
		}
		k += fmt.Sprintf("\x00%d/%d", len(r.hseg), len(r.tseg))
		if _, ok := byKey[k]; !ok {
			order = append(order, k)
		}
		byKey[k] = append(byKey[k], r)
	}
	var out []*group
	for _, k := range order {
		rs := byKey[k]
		g := &group{hspans: diffSpans(rs, func(r rendered) []string { return r.hseg }),
			tspans: diffSpans(rs, func(r rendered) []string { return r.tseg })}
		big := map[string]*group{}
		var bigOrder []string
		for _, r := range rs {
			if substitutionSize(g.substitutions(r)) <= MaxSubstitutionBytes {
				g.items = append(g.items, r)
				continue
			}
			sum := sha256.Sum256([]byte(r.html + "\x00" + r.text))
			bk := hex.EncodeToString(sum[:])
			if big[bk] == nil {
				big[bk] = &group{}
				bigOrder = append(bigOrder, bk)
			}
			big[bk].items = append(big[bk].items, r)
		}
		if len(g.items) > 0 {
			out = append(out, g)
		}
		for _, bk := range bigOrder {
			out = append(out, big[bk])
		}
	}
	return out
}

// plan cuts a chunk's groups into as few calls as SendGrid allows: at most
// 1,000 personalizations, each address once, under the size limit.
func plan(items []rendered) []*call {
	var calls []*call
	for _, g := range grouping(items) {
		var open []*call
		for _, r := range g.items {
			addr := strings.ToLower(r.m.To[0].Address)
			size := substitutionSize(g.substitutions(r)) + len(r.m.Subject) + 512
			for _, h := range r.m.Headers {
				size += len(h.Name) + len(h.Value)
			}
			var target *call
			for _, c := range open {
				if !c.addrs[addr] && len(c.items) < MaxPersonalizations && c.size+size <= maxRequestBytes {
					target = c
					break
				}
			}
			if target == nil {
				target = &call{g: g, addrs: map[string]bool{}, size: len(r.html) + len(r.text)}
				open = append(open, target)
				calls = append(calls, target)
			}
			target.items = append(target.items, r)
			target.addrs[addr] = true
			target.size += size
		}
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
	// The group's first item is the skeleton's model: outside the spans
	// every item of the group has the same segments.
	model := c.g.items[0]
	req.Content = bodyContent(skeleton(model.tseg, c.g.tspans, 't'), skeleton(model.hseg, c.g.hspans, 'h'))
	for _, r := range c.items {
		p := personalization{
			To:            []address{{Email: r.m.To[0].Address, Name: r.m.To[0].Name}},
			Subject:       r.m.Subject,
			CustomArgs:    map[string]string{CustomArgKey: r.id},
			Substitutions: c.g.substitutions(r),
		}
		for _, h := range append(r.m.UnsubscribeHeaders(), r.m.Headers...) {
			if p.Headers == nil {
				p.Headers = map[string]string{}
			}
			p.Headers[h.Name] = h.Value
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
		text, html := m.Bodies()
		ready = append(ready, rendered{i: i, id: it.ID, m: m, text: text, html: html,
			hseg: segments(html), tseg: segments(text)})
	}
	for _, c := range plan(ready) {
		s.send(ctx, c, res)
	}
	return res
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
	a := httpsend.Do(ctx, s.p.client, s.p.timeout, req)
	if a.Err != nil {
		set(httpsend.TransportResult(a, "posting /v3/mail/send", false))
		return
	}
	if a.Status != http.StatusAccepted && a.Status != http.StatusOK {
		var e apiErrors
		msg := http.StatusText(a.Status)
		if json.Unmarshal(a.Body, &e) == nil && len(e.Errors) > 0 {
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
		r := httpsend.StatusResult(a, s.p.env.Now(), msg)
		if r.Outcome == sdk.OutcomeRetry && r.RetryAfter == 0 && a.Status == http.StatusTooManyRequests {
			r.RetryAfter = resetAfter(a.Header, s.p.env.Now())
		}
		set(r)
		return
	}
	id := a.Header.Get("X-Message-Id")
	if id == "" {
		// 200 in sandbox mode carries no id; the item ID still
		// correlates through custom_args.
		id = "sandbox"
	}
	for _, it := range c.items {
		r := httpsend.OK(id, a)
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
