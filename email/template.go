package email

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/mail"
	"sort"
	"strings"
	"time"

	"github.com/batchsender/batchsender/sdk"
	"github.com/batchsender/batchsender/tmpl"
)

// Spec is the email module's batch template, the batch's "template" object:
//
//	{"from": "News <news@example.com>", "subject": "Hi {{ first_name }}",
//	 "html": "<p>Hello {{ first_name }}</p>", "text": "Hello {{ first_name }}",
//	 "reply_to": "help@example.com", "headers": {"X-Campaign": "{{ campaign }}"},
//	 "attachments": [{"filename": "a.pdf", "content_type": "application/pdf", "content": "<base64>"}]}
//
// Every string but attachments is a template (see package tmpl) rendered
// with the item's fields; html is rendered with HTML escaping. At least one
// of html and text is required; text is derived from html when absent.
type Spec struct {
	From        string            `json:"from"`
	Subject     string            `json:"subject"`
	HTML        string            `json:"html,omitempty"`
	Text        string            `json:"text,omitempty"`
	ReplyTo     string            `json:"reply_to,omitempty"`
	Headers     map[string]string `json:"headers,omitempty"`
	Attachments []Attachment      `json:"attachments,omitempty"`
}

// TemplateSchema is the JSON Schema of Spec.
var TemplateSchema = json.RawMessage(`{
  "type": "object",
  "required": ["from", "subject"],
  "additionalProperties": false,
  "properties": {
    "from": {"type": "string", "description": "Sender, \"Name <addr>\" or addr; a template"},
    "subject": {"type": "string", "description": "Subject template"},
    "html": {"type": "string", "description": "HTML body template (output is HTML-escaped)"},
    "text": {"type": "string", "description": "Text body template; derived from html when absent"},
    "reply_to": {"type": "string", "description": "Reply-To address template"},
    "headers": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Custom headers (templates)"},
    "attachments": {"type": "array", "items": {"type": "object", "required": ["filename", "content"],
      "additionalProperties": false,
      "properties": {"filename": {"type": "string"}, "content_type": {"type": "string"},
        "content": {"type": "string", "contentEncoding": "base64"}}}}
  }
}`)

// ItemSchema is the JSON Schema of an email item: "to" plus the template's
// variables. "subject", "from" and "reply_to", when an item has them, are
// used as they are instead of the template's (and are variables too).
var ItemSchema = json.RawMessage(`{
  "type": "object",
  "required": ["to"],
  "additionalProperties": true,
  "properties": {
    "to": {"type": "string", "description": "Recipient, \"Name <addr>\" or addr"},
    "subject": {"type": "string", "description": "Overrides the template's subject"},
    "from": {"type": "string", "description": "Overrides the template's from"},
    "reply_to": {"type": "string", "description": "Overrides the template's reply_to"}
  }
}`)

// DefaultMaxAttachmentBytes is the default limit on the total size of a
// message's attachments (before base64).
const DefaultMaxAttachmentBytes = 10 << 20

// Options are what the host and provider add to a compiled template.
type Options struct {
	// UnsubscribeURL returns the one-click unsubscribe URL for an item
	// (BatchSender's public URL with a signed token; signing is the host's
	// job). Nil leaves List-Unsubscribe out. The URL is also the template
	// variable unsubscribe_url.
	UnsubscribeURL func(itemID, recipient string) string
	// UnsubscribeMailto is an optional address added to List-Unsubscribe.
	UnsubscribeMailto string
	// MaxAttachmentBytes limits the attachments' total size
	// (DefaultMaxAttachmentBytes when 0).
	MaxAttachmentBytes int
	// Now is the clock for the Date header (time.Now when nil).
	Now func() time.Time
}

// ProviderOptions returns the Options every email provider compiles its
// batches' templates with: the host's unsubscribe URL and clock from env and
// the connection's unsubscribe_mailto, checked here (the error starts
// "unsubscribe_mailto: "). It sets env.Now to time.Now when the host gives
// no clock, so that the provider and its templates share one.
func ProviderOptions(env *sdk.Env, unsubscribeMailto string) (Options, error) {
	if unsubscribeMailto != "" {
		if _, err := ParseAddress(unsubscribeMailto); err != nil {
			return Options{}, fmt.Errorf("unsubscribe_mailto: %w", err)
		}
	}
	if env.Now == nil {
		env.Now = time.Now
	}
	return Options{UnsubscribeURL: env.UnsubscribeURL, UnsubscribeMailto: unsubscribeMailto, Now: env.Now}, nil
}

// Compiled is a batch's email template, parsed once and rendered per item.
// It is safe for concurrent use.
type Compiled struct {
	opts        Options
	from        *tmpl.Template
	subject     *tmpl.Template
	html        *tmpl.Template
	text        *tmpl.Template
	replyTo     *tmpl.Template
	headers     []compiledHeader
	attachments []Attachment
}

type compiledHeader struct {
	name string
	t    *tmpl.Template
}

// Compile checks a batch template and compiles it. Errors name the field.
func Compile(raw json.RawMessage, opts Options) (*Compiled, error) {
	var s Spec
	if err := sdk.DecodeStrict(raw, &s); err != nil {
		return nil, fmt.Errorf("email template: %w", err)
	}
	return CompileSpec(s, opts)
}

// CompileSpec is Compile for a decoded Spec.
func CompileSpec(s Spec, opts Options) (*Compiled, error) {
	if opts.MaxAttachmentBytes == 0 {
		opts.MaxAttachmentBytes = DefaultMaxAttachmentBytes
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.UnsubscribeMailto != "" {
		if _, err := mail.ParseAddress(opts.UnsubscribeMailto); err != nil {
			return nil, fmt.Errorf("unsubscribe mailto: %w", err)
		}
	}
	c := &Compiled{opts: opts}
	if strings.TrimSpace(s.From) == "" {
		return nil, errors.New("template.from: required")
	}
	if strings.TrimSpace(s.Subject) == "" {
		return nil, errors.New("template.subject: required")
	}
	if s.HTML == "" && s.Text == "" {
		return nil, errors.New("template: html or text is required")
	}
	var err error
	for _, f := range []struct {
		name string
		src  string
		dst  **tmpl.Template
	}{
		{"from", s.From, &c.from}, {"subject", s.Subject, &c.subject}, {"html", s.HTML, &c.html},
		{"text", s.Text, &c.text}, {"reply_to", s.ReplyTo, &c.replyTo},
	} {
		if f.src == "" {
			continue
		}
		if *f.dst, err = tmpl.Parse(f.src); err != nil {
			return nil, fmt.Errorf("template.%s: %w", f.name, err)
		}
	}
	names := make([]string, 0, len(s.Headers))
	for name := range s.Headers {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := CheckHeaderName(name); err != nil {
			return nil, fmt.Errorf("template.headers: %w", err)
		}
		t, err := tmpl.Parse(s.Headers[name])
		if err != nil {
			return nil, fmt.Errorf("template.headers.%s: %w", name, err)
		}
		c.headers = append(c.headers, compiledHeader{name: name, t: t})
	}
	total := 0
	for i, a := range s.Attachments {
		if a.Filename == "" || strings.ContainsAny(a.Filename, "\r\n/\\") {
			return nil, fmt.Errorf("template.attachments[%d].filename: required, without path or line breaks", i)
		}
		if a.ContentType != "" {
			if _, _, err := mime.ParseMediaType(a.ContentType); err != nil {
				return nil, fmt.Errorf("template.attachments[%d].content_type: %w", i, err)
			}
		}
		if len(a.Content) == 0 {
			return nil, fmt.Errorf("template.attachments[%d].content: empty", i)
		}
		total += len(a.Content)
	}
	if total > opts.MaxAttachmentBytes {
		return nil, fmt.Errorf("template.attachments: %d bytes in total, more than the limit of %d", total, opts.MaxAttachmentBytes)
	}
	c.attachments = s.Attachments
	return c, nil
}

// Variables returns the sorted names of the variables the templates use.
func (c *Compiled) Variables() []string {
	seen := map[string]bool{}
	for _, t := range c.templates() {
		for _, v := range t.Variables() {
			seen[v] = true
		}
	}
	out := make([]string, 0, len(seen))
	for v := range seen {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}

func (c *Compiled) templates() []*tmpl.Template {
	ts := []*tmpl.Template{c.from, c.subject}
	for _, t := range []*tmpl.Template{c.html, c.text, c.replyTo} {
		if t != nil {
			ts = append(ts, t)
		}
	}
	for _, h := range c.headers {
		ts = append(ts, h.t)
	}
	return ts
}

// ValidateItem renders an item without sending it, so that every problem
// (missing "to", invalid address, missing variable, line break in a
// header) is found at ingest. Errors name the field or variable.
func (c *Compiled) ValidateItem(data json.RawMessage) error {
	_, err := c.render("", data, true)
	return err
}

// Preview renders an item as ValidateItem does and returns the message,
// for template previews: the Message-ID is <preview@domain> and the
// unsubscribe URL a placeholder.
func (c *Compiled) Preview(data json.RawMessage) (*Message, error) {
	return c.render("", data, true)
}

// Render renders the message of one item. itemID is the item's stable ID:
// it makes the Message-ID, so every attempt carries the same one.
func (c *Compiled) Render(itemID string, data json.RawMessage) (*Message, error) {
	if itemID == "" {
		return nil, errors.New("item ID required")
	}
	return c.render(itemID, data, false)
}

func (c *Compiled) render(itemID string, data json.RawMessage, preview bool) (*Message, error) {
	vars, err := tmpl.DecodeVars(data)
	if err != nil {
		return nil, err
	}
	toRaw, ok := vars["to"].(string)
	if !ok || strings.TrimSpace(toRaw) == "" {
		return nil, errors.New("to: required, a string with an email address")
	}
	to, err := ParseAddress(toRaw)
	if err != nil {
		return nil, fmt.Errorf("to: %w", err)
	}
	unsub := ""
	if c.opts.UnsubscribeURL != nil {
		if preview {
			unsub = "https://unsubscribe.invalid/u/preview"
		} else {
			unsub = c.opts.UnsubscribeURL(itemID, to.Address)
		}
		if _, set := vars["unsubscribe_url"]; !set {
			vars["unsubscribe_url"] = unsub
		}
	}
	field := func(name string, t *tmpl.Template, html bool) (string, error) {
		if v, ok := vars[name].(string); ok && (name == "subject" || name == "from" || name == "reply_to") {
			return v, nil
		}
		if t == nil {
			return "", nil
		}
		out, err := t.Render(vars, html)
		if err != nil {
			return "", fmt.Errorf("%s: %w", name, err)
		}
		return out, nil
	}
	m := &Message{To: []mail.Address{*to}, ListUnsubscribe: unsub}
	if unsub != "" {
		m.ListUnsubscribeMailto = c.opts.UnsubscribeMailto
	}
	fromS, err := field("from", c.from, false)
	if err != nil {
		return nil, err
	}
	from, err := ParseAddress(fromS)
	if err != nil {
		return nil, fmt.Errorf("from: %w", err)
	}
	m.From = *from
	if m.Subject, err = field("subject", c.subject, false); err != nil {
		return nil, err
	}
	if err := CheckHeaderValue("subject", m.Subject); err != nil {
		return nil, fmt.Errorf("subject: %w", err)
	}
	if m.HTML, err = field("html", c.html, true); err != nil {
		return nil, err
	}
	if m.Text, err = field("text", c.text, false); err != nil {
		return nil, err
	}
	replyTo, err := field("reply_to", c.replyTo, false)
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(replyTo) != "" {
		rt, err := ParseAddress(replyTo)
		if err != nil {
			return nil, fmt.Errorf("reply_to: %w", err)
		}
		m.ReplyTo = []mail.Address{*rt}
	}
	for _, h := range c.headers {
		v, err := h.t.Render(vars, false)
		if err != nil {
			return nil, fmt.Errorf("headers.%s: %w", h.name, err)
		}
		if err := CheckHeaderValue(h.name, v); err != nil {
			return nil, fmt.Errorf("headers.%s: %w", h.name, err)
		}
		m.Headers = append(m.Headers, Header{Name: h.name, Value: v})
	}
	m.Attachments = c.attachments
	if preview {
		itemID = "preview"
	}
	m.MessageID = MessageID(itemID, from.Address)
	m.Date = c.opts.Now()
	return m, nil
}

// MessageID returns the deterministic Message-ID of an item:
// <itemID@domain of the from address>.
func MessageID(itemID, fromAddr string) string {
	domain := "batchsender.invalid"
	if at := strings.LastIndexByte(fromAddr, '@'); at >= 0 && at < len(fromAddr)-1 {
		domain = fromAddr[at+1:]
	}
	var b strings.Builder
	for _, r := range itemID {
		// Keep the left part a dot-atom: IDs are [a-z0-9_] in practice.
		if r < 0x80 && (r == '-' || r == '_' || r == '.' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	return "<" + b.String() + "@" + domain + ">"
}

// ParseAddress parses one address, "addr" or "Name <addr>", with errors
// that say what is wrong.
func ParseAddress(s string) (*mail.Address, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("empty address")
	}
	if strings.ContainsAny(s, "\r\n") {
		return nil, fmt.Errorf("address %q contains a line break", s)
	}
	a, err := mail.ParseAddress(s)
	if err != nil {
		return nil, fmt.Errorf("invalid address %q: %v", s, err)
	}
	at := strings.LastIndexByte(a.Address, '@')
	if at <= 0 || !strings.Contains(a.Address[at+1:], ".") && a.Address[at+1:] != "localhost" {
		return nil, fmt.Errorf("invalid address %q: the domain needs a dot", s)
	}
	return a, nil
}
