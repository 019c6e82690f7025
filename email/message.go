// Package email is the message model shared by every email provider: it
// compiles a batch's email template once, renders one Message per item and
// builds RFC 5322 / MIME bytes for providers that send raw messages (SMTP,
// SES raw) or reads the rendered fields for providers with JSON APIs.
//
// What a built message looks like:
//
//   - multipart/alternative with text/plain and text/html parts (the text is
//     derived from the HTML when the template gives none), wrapped in
//     multipart/mixed when there are attachments (base64);
//   - text parts in UTF-8, quoted-printable; subjects, display names and
//     other header values with non-ASCII text as RFC 2047 encoded words;
//   - a deterministic Message-ID, <itemID@from-domain>, the same on every
//     attempt so that receivers can drop duplicates, and MIME boundaries
//     derived from it, so that two attempts differ only in Date;
//   - List-Unsubscribe with the host's unsubscribe URL (and an optional
//     mailto) and List-Unsubscribe-Post: List-Unsubscribe=One-Click
//     (RFC 8058) when the host supplies Options.UnsubscribeURL;
//   - custom headers from the template, refusing those that would change
//     the message's routing or structure, and refusing CR or LF in any
//     rendered value (header injection).
package email

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"strings"
	"time"
)

// Header is one custom header.
type Header struct {
	Name  string
	Value string
}

// Attachment is a file attached to the message.
type Attachment struct {
	// Filename is the name shown to the recipient.
	Filename string `json:"filename"`
	// ContentType is the MIME type, "application/octet-stream" when empty.
	ContentType string `json:"content_type,omitempty"`
	// Content is the file's bytes (base64 in JSON).
	Content []byte `json:"content"`
}

// Message is one rendered email.
type Message struct {
	From    mail.Address
	To      []mail.Address
	ReplyTo []mail.Address
	Subject string
	// Text and HTML are the bodies; at least one is set.
	Text string
	HTML string
	// Headers are custom headers, already validated.
	Headers     []Header
	Attachments []Attachment
	// MessageID is the Message-ID including angle brackets.
	MessageID string
	// Date is the Date header; zero leaves it out.
	Date time.Time
	// ListUnsubscribe is the one-click unsubscribe URL (https in
	// production); ListUnsubscribeMailto an optional mailto address.
	ListUnsubscribe       string
	ListUnsubscribeMailto string
}

// Recipients returns the bare addresses of To, for SMTP RCPT TO.
func (m *Message) Recipients() []string {
	out := make([]string, len(m.To))
	for i, a := range m.To {
		out[i] = a.Address
	}
	return out
}

// forbiddenHeaders may not be set as custom headers: they are set by this
// package or change routing, identity or structure.
var forbiddenHeaders = map[string]bool{
	"From": true, "To": true, "Cc": true, "Bcc": true, "Subject": true, "Date": true,
	"Message-Id": true, "Reply-To": true, "Sender": true, "Return-Path": true,
	"Received": true, "Mime-Version": true, "Content-Type": true,
	"Content-Transfer-Encoding": true, "Content-Disposition": true,
	"List-Unsubscribe": true, "List-Unsubscribe-Post": true, "Dkim-Signature": true,
	"Arc-Seal": true, "Arc-Message-Signature": true, "Arc-Authentication-Results": true,
	"Authentication-Results": true, "Delivered-To": true, "Errors-To": true,
	"Disposition-Notification-To": true, "Return-Receipt-To": true,
}

// CheckHeaderName reports whether name may be used as a custom header.
func CheckHeaderName(name string) error {
	if name == "" || len(name) > 76 {
		return fmt.Errorf("header name %q: must be 1 to 76 characters", name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c >= 127 || c == ':' {
			return fmt.Errorf("header name %q: only printable ASCII without ':' or spaces", name)
		}
	}
	canon := textproto.CanonicalMIMEHeaderKey(name)
	if forbiddenHeaders[canon] || strings.HasPrefix(canon, "Resent-") || strings.HasPrefix(canon, "Content-") {
		return fmt.Errorf("header %q may not be set", name)
	}
	return nil
}

// CheckHeaderValue refuses control characters, CR and LF above all, which
// would let item data add headers or a body (header injection).
func CheckHeaderValue(name, value string) error {
	for _, r := range value {
		if r == '\r' || r == '\n' || (r < ' ' && r != '\t') || r == 0x7f {
			return fmt.Errorf("header %s: line breaks and control characters are not allowed", name)
		}
	}
	if len(value) > 2000 {
		return fmt.Errorf("header %s: longer than 2000 bytes", name)
	}
	return nil
}

// Bytes builds the RFC 5322 message.
func (m *Message) Bytes() ([]byte, error) {
	var b bytes.Buffer
	b.Grow(len(m.Text) + len(m.HTML)*2 + 1024)
	if err := m.write(&b); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// WriteTo writes the RFC 5322 message to w.
func (m *Message) WriteTo(w io.Writer) (int64, error) {
	raw, err := m.Bytes()
	if err != nil {
		return 0, err
	}
	n, err := w.Write(raw)
	return int64(n), err
}

// UnsubscribeHeaders returns the RFC 8058 headers of the message:
// List-Unsubscribe (the URL, and the mailto address when set) and
// List-Unsubscribe-Post, or none when the message has no unsubscribe URL.
// API providers pass them as custom headers; the MIME writer writes them.
func (m *Message) UnsubscribeHeaders() []Header {
	if m.ListUnsubscribe == "" {
		return nil
	}
	v := "<" + m.ListUnsubscribe + ">"
	if m.ListUnsubscribeMailto != "" {
		v += ", <mailto:" + m.ListUnsubscribeMailto + ">"
	}
	return []Header{
		{Name: "List-Unsubscribe", Value: v},
		{Name: "List-Unsubscribe-Post", Value: "List-Unsubscribe=One-Click"},
	}
}

// Bodies returns the text and HTML to send: the text alternative is
// derived from the HTML when the template gives none.
func (m *Message) Bodies() (text, html string) {
	text, html = m.Text, m.HTML
	if text == "" && html != "" {
		text = HTMLToText(html)
	}
	return text, html
}

func (m *Message) write(b *bytes.Buffer) error {
	if len(m.To) == 0 {
		return errors.New("message has no recipient")
	}
	if m.Text == "" && m.HTML == "" {
		return errors.New("message has no body")
	}
	if m.MessageID == "" {
		return errors.New("message has no Message-ID")
	}
	for _, s := range []string{m.Subject, m.ListUnsubscribe, m.ListUnsubscribeMailto, m.MessageID} {
		if err := CheckHeaderValue("value", s); err != nil {
			return err
		}
	}
	writeHeader(b, "From", m.From.String())
	writeHeader(b, "To", joinAddresses(m.To))
	if len(m.ReplyTo) > 0 {
		writeHeader(b, "Reply-To", joinAddresses(m.ReplyTo))
	}
	if m.Subject != "" {
		writeHeader(b, "Subject", encodeText(m.Subject))
	}
	if !m.Date.IsZero() {
		writeHeader(b, "Date", m.Date.Format(time.RFC1123Z))
	}
	writeHeader(b, "Message-ID", m.MessageID)
	for _, h := range m.UnsubscribeHeaders() {
		writeHeader(b, h.Name, h.Value)
	}
	for _, h := range m.Headers {
		if err := CheckHeaderName(h.Name); err != nil {
			return err
		}
		if err := CheckHeaderValue(h.Name, h.Value); err != nil {
			return err
		}
		writeHeader(b, h.Name, encodeText(h.Value))
	}
	writeHeader(b, "MIME-Version", "1.0")

	seed := sha256.Sum256([]byte(m.MessageID))
	boundary := func(level string) string {
		return "bs-" + level + "-" + hex.EncodeToString(seed[:12])
	}
	text, _ := m.Bodies()

	writeAlt := func(w io.Writer, header func(string, string)) error {
		if m.HTML == "" {
			header("Content-Type", "text/plain; charset=utf-8")
			header("Content-Transfer-Encoding", "quoted-printable")
			return writeQP(w, text)
		}
		mw := multipart.NewWriter(w)
		if err := mw.SetBoundary(boundary("alt")); err != nil {
			return err
		}
		header("Content-Type", "multipart/alternative; boundary=\""+mw.Boundary()+"\"")
		for _, p := range []struct{ ctype, body string }{
			{"text/plain; charset=utf-8", text},
			{"text/html; charset=utf-8", m.HTML},
		} {
			pw, err := mw.CreatePart(textproto.MIMEHeader{
				"Content-Type":              {p.ctype},
				"Content-Transfer-Encoding": {"quoted-printable"},
			})
			if err != nil {
				return err
			}
			if err := writeQP(pw, p.body); err != nil {
				return err
			}
		}
		return mw.Close()
	}

	if len(m.Attachments) == 0 {
		var body bytes.Buffer
		if err := writeAlt(&body, func(k, v string) { writeHeader(b, k, v) }); err != nil {
			return fmt.Errorf("building body: %w", err)
		}
		b.WriteString("\r\n")
		b.Write(body.Bytes())
		return nil
	}

	mixed := multipart.NewWriter(b)
	if err := mixed.SetBoundary(boundary("mixed")); err != nil {
		return err
	}
	writeHeader(b, "Content-Type", "multipart/mixed; boundary=\""+mixed.Boundary()+"\"")
	b.WriteString("\r\n")
	var altHeader = textproto.MIMEHeader{}
	var alt bytes.Buffer
	if err := writeAlt(&alt, func(k, v string) { altHeader.Set(k, v) }); err != nil {
		return fmt.Errorf("building body: %w", err)
	}
	pw, err := mixed.CreatePart(altHeader)
	if err != nil {
		return err
	}
	pw.Write(alt.Bytes())
	for _, a := range m.Attachments {
		ctype := a.ContentType
		if ctype == "" {
			ctype = "application/octet-stream"
		}
		pw, err := mixed.CreatePart(textproto.MIMEHeader{
			"Content-Type":              {ctype},
			"Content-Transfer-Encoding": {"base64"},
			"Content-Disposition":       {mime.FormatMediaType("attachment", map[string]string{"filename": a.Filename})},
		})
		if err != nil {
			return err
		}
		writeBase64(pw, a.Content)
	}
	return mixed.Close()
}

func joinAddresses(as []mail.Address) string {
	parts := make([]string, len(as))
	for i := range as {
		parts[i] = as[i].String()
	}
	return strings.Join(parts, ", ")
}

// encodeText returns s as is when it is printable ASCII, else as RFC 2047
// encoded words.
func encodeText(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return mime.QEncoding.Encode("utf-8", s)
		}
	}
	return s
}

// writeHeader writes "Name: value" folded at spaces so that lines stay
// near 78 characters (RFC 5322 2.1.1); encoded words are separated by
// spaces, so they fold too.
func writeHeader(b *bytes.Buffer, name, value string) {
	line := len(name) + 2
	b.WriteString(name)
	b.WriteString(": ")
	words := strings.Split(value, " ")
	for i, w := range words {
		if i > 0 {
			if line+1+len(w) > 78 && line > 1 {
				b.WriteString("\r\n ")
				line = 1
			} else {
				b.WriteByte(' ')
				line++
			}
		}
		b.WriteString(w)
		line += len(w)
	}
	b.WriteString("\r\n")
}

func writeQP(w io.Writer, s string) error {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = strings.ReplaceAll(s, "\n", "\r\n")
	qp := quotedprintable.NewWriter(w)
	if _, err := io.WriteString(qp, s); err != nil {
		return err
	}
	return qp.Close()
}

func writeBase64(w io.Writer, data []byte) {
	enc := base64.StdEncoding.EncodeToString(data)
	for len(enc) > 76 {
		io.WriteString(w, enc[:76])
		io.WriteString(w, "\r\n")
		enc = enc[76:]
	}
	io.WriteString(w, enc)
	io.WriteString(w, "\r\n")
}
