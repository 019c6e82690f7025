package email

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"flag"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/batchsender/batchsender/sdk"
)

var update = flag.Bool("update", false, "rewrite golden files")

var fixedNow = func() time.Time { return time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC) }

func unsub(itemID, rcpt string) string {
	return "https://bs.example.com/u/tok-" + itemID
}

func compile(t *testing.T, spec string, opts Options) *Compiled {
	t.Helper()
	if opts.Now == nil {
		opts.Now = fixedNow
	}
	c, err := Compile(json.RawMessage(spec), opts)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return c
}

func build(t *testing.T, c *Compiled, id, item string) []byte {
	t.Helper()
	m, err := c.Render(id, json.RawMessage(item))
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	raw, err := m.Bytes()
	if err != nil {
		t.Fatalf("Bytes: %v", err)
	}
	return raw
}

type part struct {
	ctype, disposition string
	body               string
}

// parse reads a message with net/mail and mime/multipart, decoding
// transfer encodings, and returns its leaf parts depth first.
func parse(t *testing.T, raw []byte) (*mail.Message, []part) {
	t.Helper()
	for i, l := range strings.Split(string(raw), "\r\n") {
		if len(l) > 998 {
			t.Errorf("line %d longer than 998", i)
		}
	}
	if bytes.Contains(bytes.ReplaceAll(raw, []byte("\r\n"), nil), []byte("\n")) {
		t.Errorf("bare LF in message")
	}
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("ReadMessage: %v", err)
	}
	var parts []part
	var walk func(h map[string][]string, body io.Reader)
	walk = func(h map[string][]string, body io.Reader) {
		get := func(k string) string {
			if v := h[k]; len(v) > 0 {
				return v[0]
			}
			return ""
		}
		mt, params, err := mime.ParseMediaType(get("Content-Type"))
		if err != nil {
			t.Fatalf("Content-Type %q: %v", get("Content-Type"), err)
		}
		if strings.HasPrefix(mt, "multipart/") {
			parts = append(parts, part{ctype: mt})
			mr := multipart.NewReader(body, params["boundary"])
			for {
				p, err := mr.NextRawPart()
				if err == io.EOF {
					return
				}
				if err != nil {
					t.Fatalf("NextPart: %v", err)
				}
				walk(p.Header, p)
			}
		}
		var r io.Reader = body
		switch get("Content-Transfer-Encoding") {
		case "quoted-printable":
			r = quotedprintable.NewReader(body)
		case "base64":
			r = base64.NewDecoder(base64.StdEncoding, body)
		default:
			t.Errorf("part %s without transfer encoding", mt)
		}
		b, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("reading %s: %v", mt, err)
		}
		if mt == "text/plain" || mt == "text/html" {
			if params["charset"] != "utf-8" {
				t.Errorf("%s charset %q", mt, params["charset"])
			}
		}
		parts = append(parts, part{ctype: mt, disposition: get("Content-Disposition"), body: string(b)})
	}
	walk(msg.Header, msg.Body)
	return msg, parts
}

const spec = `{"from": "Zoë News <news@example.com>", "subject": "Grüße, {{ first_name }}! Ünïcode subject that is long enough to need folding across lines",
  "html": "<p>Hello {{ first_name }}</p><p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p>",
  "reply_to": "Help <help@example.com>", "headers": {"X-Campaign": "spring-{{ first_name | downcase }}"}}`

func TestBuildsMultipartAlternativeWithEncodedHeaders(t *testing.T) {
	t.Parallel()
	c := compile(t, spec, Options{UnsubscribeURL: unsub, UnsubscribeMailto: "unsub@example.com"})
	raw := build(t, c, "itm_01abc", `{"to": "Ann Müller <ann@example.org>", "first_name": "Ann <&>"}`)
	msg, parts := parse(t, raw)
	dec := new(mime.WordDecoder)
	subj, err := dec.DecodeHeader(msg.Header.Get("Subject"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "Grüße, Ann <&>! Ünïcode subject that is long enough to need folding across lines"; subj != want {
		t.Errorf("Subject = %q, want %q", subj, want)
	}
	if !strings.Contains(msg.Header.Get("Subject"), "=?utf-8?q?") {
		t.Errorf("Subject not RFC 2047 encoded: %q", msg.Header.Get("Subject"))
	}
	from, err := msg.Header.AddressList("From")
	if err != nil || from[0].Name != "Zoë News" || from[0].Address != "news@example.com" {
		t.Errorf("From = %v, %v", from, err)
	}
	to, err := msg.Header.AddressList("To")
	if err != nil || to[0].Name != "Ann Müller" || to[0].Address != "ann@example.org" {
		t.Errorf("To = %v, %v", to, err)
	}
	rt, err := msg.Header.AddressList("Reply-To")
	if err != nil || rt[0].Address != "help@example.com" {
		t.Errorf("Reply-To = %v, %v", rt, err)
	}
	for k, want := range map[string]string{
		"Message-Id":            "<itm_01abc@example.com>",
		"List-Unsubscribe":      "<https://bs.example.com/u/tok-itm_01abc>, <mailto:unsub@example.com>",
		"List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
		"X-Campaign":            "spring-ann <&>",
		"Mime-Version":          "1.0",
		"Date":                  "Fri, 04 Dec 2026 10:00:00 +0000",
	} {
		if got := msg.Header.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if len(parts) != 3 || parts[0].ctype != "multipart/alternative" || parts[1].ctype != "text/plain" || parts[2].ctype != "text/html" {
		t.Fatalf("structure %+v", parts)
	}
	if want := "<p>Hello Ann &lt;&amp;&gt;</p><p><a href=\"https://bs.example.com/u/tok-itm_01abc\">Unsubscribe</a></p>"; parts[2].body != want {
		t.Errorf("html = %q", parts[2].body)
	}
	if want := "Hello Ann <&>\r\n\r\nUnsubscribe (https://bs.example.com/u/tok-itm_01abc)"; parts[1].body != want {
		t.Errorf("text = %q, want %q", parts[1].body, want)
	}
}

func TestMessageIsDeterministicPerItem(t *testing.T) {
	t.Parallel()
	c := compile(t, spec, Options{UnsubscribeURL: unsub})
	item := `{"to": "ann@example.org", "first_name": "Ann"}`
	a, b := build(t, c, "itm_1", item), build(t, c, "itm_1", item)
	if !bytes.Equal(a, b) {
		t.Errorf("two attempts differ")
	}
	other := build(t, c, "itm_2", item)
	ma, _ := parse(t, a)
	mo, _ := parse(t, other)
	if ma.Header.Get("Message-Id") == mo.Header.Get("Message-Id") {
		t.Errorf("two items share a Message-ID")
	}
}

func TestAttachmentsAndTextOnly(t *testing.T) {
	t.Parallel()
	pdf := bytes.Repeat([]byte("%PDF\x00\xff binary "), 50)
	specJSON, _ := json.Marshal(Spec{
		From: "a@example.com", Subject: "Invoice", Text: "Dear {{ name }},\nsee attached. " + strings.Repeat("long line ", 30),
		Attachments: []Attachment{{Filename: "Rechnung März.pdf", ContentType: "application/pdf", Content: pdf}},
	})
	c := compile(t, string(specJSON), Options{})
	raw := build(t, c, "itm_x", `{"to": "b@example.org", "name": "Bo"}`)
	msg, parts := parse(t, raw)
	if msg.Header.Get("List-Unsubscribe") != "" {
		t.Errorf("List-Unsubscribe without a hook")
	}
	if len(parts) != 3 || parts[0].ctype != "multipart/mixed" || parts[1].ctype != "text/plain" || parts[2].ctype != "application/pdf" {
		t.Fatalf("structure %+v", parts)
	}
	if !strings.HasPrefix(parts[1].body, "Dear Bo,\r\nsee attached. long line") {
		t.Errorf("text %q", parts[1].body)
	}
	if parts[2].body != string(pdf) {
		t.Errorf("attachment content differs")
	}
	_, params, err := mime.ParseMediaType(parts[2].disposition)
	if err != nil || params["filename"] != "Rechnung März.pdf" {
		t.Errorf("disposition %q: %v %v", parts[2].disposition, params, err)
	}
}

func TestCompileRejectsBadTemplates(t *testing.T) {
	t.Parallel()
	big := base64.StdEncoding.EncodeToString(make([]byte, 2048))
	for name, s := range map[string]string{
		"no from":          `{"subject":"s","text":"t"}`,
		"no body":          `{"from":"a@example.com","subject":"s"}`,
		"unknown field":    `{"from":"a@example.com","subject":"s","text":"t","bcc":"x@example.com"}`,
		"bad syntax":       `{"from":"a@example.com","subject":"{% if %}","text":"t"}`,
		"forbidden header": `{"from":"a@example.com","subject":"s","text":"t","headers":{"Bcc":"x@example.com"}}`,
		"content header":   `{"from":"a@example.com","subject":"s","text":"t","headers":{"content-type":"text/plain"}}`,
		"header name":      `{"from":"a@example.com","subject":"s","text":"t","headers":{"X Bad":"v"}}`,
		"oversize":         `{"from":"a@example.com","subject":"s","text":"t","attachments":[{"filename":"a.bin","content":"` + big + `"}]}`,
		"path filename":    `{"from":"a@example.com","subject":"s","text":"t","attachments":[{"filename":"../a","content":"AA=="}]}`,
	} {
		if _, err := Compile(json.RawMessage(s), Options{MaxAttachmentBytes: 1024}); err == nil {
			t.Errorf("%s: Compile succeeded", name)
		}
	}
}

func TestValidateItemNamesTheProblem(t *testing.T) {
	t.Parallel()
	c := compile(t, `{"from":"{{ sender }}","subject":"Hi {{ first_name }}","text":"x","headers":{"X-Ref":"{{ ref }}"}}`, Options{UnsubscribeURL: unsub})
	for item, want := range map[string]string{
		`{"first_name":"A","sender":"a@example.com","ref":"1"}`:                                            "to: required",
		`{"to":"not an address","first_name":"A","sender":"a@example.com","ref":"1"}`:                      `to: invalid address`,
		`{"to":"a@nodot","first_name":"A","sender":"a@example.com","ref":"1"}`:                             "domain",
		`{"to":"a@example.org","sender":"a@example.com","ref":"1"}`:                                        `subject: missing variable "first_name"`,
		`{"to":"a@example.org","first_name":"A","sender":"bad","ref":"1"}`:                                 "from: invalid address",
		`{"to":"a@example.org","first_name":"A","sender":"a@example.com","ref":"1\r\nBcc: x@example.com"}`: "headers.X-Ref",
		`{"to":"a@example.org","first_name":"A\nBcc: x@example.com","sender":"a@example.com","ref":"1"}`:   "subject",
		`{"to":"a@example.org","first_name":"A","sender":"a@example.com"}`:                                 `missing variable "ref"`,
		`[1]`: "not a JSON object",
	} {
		err := c.ValidateItem(json.RawMessage(item))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err %v, want %q", item, err, want)
		}
	}
	if err := c.ValidateItem(json.RawMessage(`{"to":"A <a@example.org>","first_name":"A","sender":"S <a@example.com>","ref":"1"}`)); err != nil {
		t.Errorf("valid item: %v", err)
	}
	if got, want := strings.Join(c.Variables(), ","), "first_name,ref,sender"; got != want {
		t.Errorf("Variables = %s, want %s", got, want)
	}
}

func TestItemOverridesSubjectAndFrom(t *testing.T) {
	t.Parallel()
	c := compile(t, `{"from":"a@example.com","subject":"Hi {{ first_name }}","text":"x"}`, Options{})
	m, err := c.Render("itm_1", json.RawMessage(`{"to":"b@example.org","subject":"Custom","from":"Other <o@other.example>"}`))
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != "Custom" || m.From.Address != "o@other.example" || m.MessageID != "<itm_1@other.example>" {
		t.Errorf("overrides not applied: %+v", m)
	}
}

func TestHTMLToText(t *testing.T) {
	t.Parallel()
	in := `<html><head><title>T</title><style>p{color:red}</style></head><body>
<h1>Hello&nbsp;Ann</h1><p>Line one<br>line   two</p><ul><li>a</li><li>b &amp; c</li></ul>
<!-- hidden --><script>var x = "<p>";</script><p><a href="https://x.example/?a=1&amp;b=2">Go</a> <a href="#top">top</a></p></body></html>`
	want := "Hello\u00a0Ann\n\nLine one\nline two\n\n- a\n- b & c\n\nGo (https://x.example/?a=1&b=2) top"
	if got := HTMLToText(in); got != want {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

func TestGoldenMessage(t *testing.T) {
	t.Parallel()
	c := compile(t, spec, Options{UnsubscribeURL: unsub})
	raw := build(t, c, "itm_golden", `{"to": "Ann Müller <ann@example.org>", "first_name": "Ann"}`)
	const gf = "testdata/message.eml"
	if *update {
		if err := os.WriteFile(gf, raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(gf)
	if err != nil {
		t.Fatalf("%v (run with -update)", err)
	}
	if !bytes.Equal(raw, want) {
		t.Errorf("message differs from %s:\n%s", gf, raw)
	}
}

func FuzzRender(f *testing.F) {
	f.Add("Ann", "ann@example.org", "X")
	f.Fuzz(func(t *testing.T, name, to, hdr string) {
		c, err := Compile(json.RawMessage(`{"from":"a@example.com","subject":"Hi {{ n }}","html":"<p>{{ n }}</p>","headers":{"X-H":"{{ h }}"}}`), Options{})
		if err != nil {
			t.Fatal(err)
		}
		item, _ := json.Marshal(map[string]string{"to": to, "n": name, "h": hdr})
		m, err := c.Render("itm_f", item)
		if err != nil {
			return
		}
		raw, err := m.Bytes()
		if err != nil {
			return
		}
		msg, err := mail.ReadMessage(bytes.NewReader(raw))
		if err != nil {
			t.Fatalf("unparseable message: %v\n%s", err, raw)
		}
		if len(msg.Header["Bcc"]) > 0 || len(msg.Header["To"]) != 1 {
			t.Fatalf("header injection:\n%s", raw)
		}
	})
}

func TestPreview(t *testing.T) {
	t.Parallel()
	c := compile(t, spec, Options{UnsubscribeURL: unsub})
	m, err := c.Preview(json.RawMessage(`{"to":"a@example.org","first_name":"Ann"}`))
	if err != nil {
		t.Fatal(err)
	}
	if m.MessageID != "<preview@example.com>" || !strings.Contains(m.HTML, "https://unsubscribe.invalid/u/preview") {
		t.Errorf("preview %+v", m)
	}
}

func TestProviderOptions(t *testing.T) {
	t.Parallel()
	env := sdk.Env{UnsubscribeURL: func(id, _ string) string { return "https://u.example/" + id }}
	opts, err := ProviderOptions(&env, "unsub@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if env.Now == nil || opts.Now == nil || opts.UnsubscribeMailto != "unsub@example.com" || opts.UnsubscribeURL("i", "") != "https://u.example/i" {
		t.Errorf("options %+v, env clock set: %v", opts, env.Now != nil)
	}
	if _, err := ProviderOptions(&env, "not an address"); err == nil || !strings.HasPrefix(err.Error(), "unsubscribe_mailto: ") {
		t.Errorf("bad mailto: %v", err)
	}
}

func TestUnsubscribeHeadersAndBodies(t *testing.T) {
	t.Parallel()
	m := &Message{HTML: "<p>Hi <b>Ann</b></p>"}
	if h := m.UnsubscribeHeaders(); h != nil {
		t.Errorf("no unsubscribe URL: %v", h)
	}
	m.ListUnsubscribe, m.ListUnsubscribeMailto = "https://u.example/1", "unsub@example.com"
	h := m.UnsubscribeHeaders()
	if len(h) != 2 || h[0].Value != "<https://u.example/1>, <mailto:unsub@example.com>" || h[1].Value != "List-Unsubscribe=One-Click" {
		t.Errorf("headers %v", h)
	}
	if text, html := m.Bodies(); text != HTMLToText(m.HTML) || html != m.HTML || text == "" {
		t.Errorf("bodies %q %q", text, html)
	}
	m.Text = "given"
	if text, _ := m.Bodies(); text != "given" {
		t.Errorf("text %q, want the template's", text)
	}
}
