// Package emailflow is the email module's end-to-end check, the "Done
// when" of the email issue: the real batchsender binary sends a templated
// batch through email.smtp to a real SMTP server started here, a recipient
// unsubscribes through the one-click link found in the List-Unsubscribe
// header of the message they received, and the next batch to the same
// recipients skips them: not sent, counted as skipped.
package emailflow

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/mail"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"
	"go.uber.org/goleak"

	"github.com/batchsender/batchsender/e2e"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	smtpUser     = "mailer"
	smtpPassword = "correct-horse-battery"
)

// mailbox is a real SMTP server (emersion/go-smtp) on loopback that keeps
// every message it accepts.
type mailbox struct {
	mu   sync.Mutex
	msgs []delivered
}

type delivered struct {
	to  []string
	raw []byte
}

func (mb *mailbox) NewSession(*gosmtp.Conn) (gosmtp.Session, error) { return &session{mb: mb}, nil }

func (mb *mailbox) received() []delivered {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	return append([]delivered(nil), mb.msgs...)
}

type session struct {
	mb     *mailbox
	authed bool
	to     []string
}

func (s *session) AuthMechanisms() []string { return []string{sasl.Plain} }
func (s *session) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if user != smtpUser || pass != smtpPassword {
			return gosmtp.ErrAuthFailed
		}
		s.authed = true
		return nil
	}), nil
}
func (s *session) Mail(string, *gosmtp.MailOptions) error {
	if !s.authed {
		return gosmtp.ErrAuthRequired
	}
	return nil
}
func (s *session) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	s.to = append(s.to, to)
	return nil
}
func (s *session) Data(r io.Reader) error {
	raw, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.mb.mu.Lock()
	s.mb.msgs = append(s.mb.msgs, delivered{to: s.to, raw: raw})
	s.mb.mu.Unlock()
	s.to = nil
	return nil
}
func (s *session) Reset()        { s.to = nil }
func (s *session) Logout() error { return nil }

func startMailbox(t *testing.T) (*mailbox, int) {
	t.Helper()
	mb := &mailbox{}
	srv := gosmtp.NewServer(mb)
	srv.Domain = "mailbox.test"
	srv.AllowInsecureAuth = true
	srv.ReadTimeout, srv.WriteTimeout = 30*time.Second, 30*time.Second
	srv.ErrorLog = log.New(io.Discard, "", 0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		_ = ln.Close()
		<-done
	})
	return mb, ln.Addr().(*net.TCPAddr).Port
}

func startServer(t *testing.T) (*e2e.Server, *e2e.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	bin, err := e2e.BuildBinary(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := e2e.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	s := &e2e.Server{
		Bin: bin, DataDir: filepath.Join(dir, "data"), Addr: addr, Key: "bsk_emailflow_bootstrap_key_0123456789",
		LogPath: filepath.Join(dir, "server.log"),
		// The SMTP server listens on loopback, which the SSRF guard
		// forbids unless lifted. BATCHSENDER_PUBLIC_URL is left unset: its
		// default, http:// plus the listen address, must make the links.
		Env: []string{"BATCHSENDER_ALLOW_PRIVATE_NETWORKS=true"},
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	c := e2e.NewClient(s.URL(), s.Key)
	t.Cleanup(func() {
		c.Close()
		if !s.Stop(10 * time.Second) {
			t.Error("server did not exit within 10s of SIGTERM")
		}
		if t.Failed() {
			t.Logf("server log:\n%s", s.Log())
		}
	})
	return s, c
}

func must(t *testing.T, r e2e.Response, err error, status int) e2e.Response {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != status {
		t.Fatalf("got %s, want status %d", r, status)
	}
	return r
}

var recipients = []map[string]any{
	{"to": "Ann Example <ann@example.com>", "first_name": "Ann"},
	{"to": "bob@example.com", "first_name": "Bob"},
	{"to": "Zoë <zoe@example.com>", "first_name": "Zoë"},
}

func batchDoc() map[string]any {
	return map[string]any{
		"module": "email", "connection": "smtp",
		"template": map[string]any{
			"from": "News <news@example.com>", "subject": "Hi {{ first_name }}",
			"html": "<p>Hello {{ first_name }}</p>", "text": "Hello {{ first_name }}",
		},
		"items": recipients,
	}
}

func runBatch(t *testing.T, ctx context.Context, c *e2e.Client) e2e.Batch {
	t.Helper()
	return runBatchDoc(t, ctx, c, batchDoc())
}

func runBatchDoc(t *testing.T, ctx context.Context, c *e2e.Client, doc map[string]any) e2e.Batch {
	t.Helper()
	b, err := c.CreateBatch(ctx, doc)
	if err != nil {
		t.Fatal(err)
	}
	b, err = c.WaitBatch(ctx, b.ID, time.Minute, func(b e2e.Batch) bool { return b.Status == "completed" })
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSendUnsubscribeSkip(t *testing.T) {
	mb, port := startMailbox(t)
	s, c := startServer(t)
	ctx := context.Background()

	r, err := c.JSON(ctx, "POST", "/v1/connections", map[string]any{
		"provider": "email.smtp", "name": "smtp",
		"config":  map[string]any{"host": "127.0.0.1", "port": port, "tls": "none"},
		"secrets": map[string]any{"username": smtpUser, "password": smtpPassword},
	})
	must(t, r, err, http.StatusCreated)

	// The first batch reaches everyone.
	first := runBatch(t, ctx, c)
	if first.Counts.Succeeded != 3 || first.Counts.Skipped != 0 {
		t.Fatalf("first batch counts %+v", first.Counts)
	}
	msgs := mb.received()
	if len(msgs) != 3 {
		t.Fatalf("the mailbox got %d messages, want 3", len(msgs))
	}

	// Bob's message, read with a real MIME parser, carries the one-click
	// unsubscribe headers pointing at this server.
	var bobMsg *mail.Message
	for _, d := range msgs {
		if len(d.to) == 1 && d.to[0] == "bob@example.com" {
			if bobMsg, err = mail.ReadMessage(bytes.NewReader(d.raw)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if bobMsg == nil {
		t.Fatalf("no message to bob among %d", len(msgs))
	}
	if got := bobMsg.Header.Get("Subject"); got != "Hi Bob" {
		t.Fatalf("Subject %q", got)
	}
	checkMultipart(t, bobMsg)
	if got := bobMsg.Header.Get("List-Unsubscribe-Post"); got != "List-Unsubscribe=One-Click" {
		t.Fatalf("List-Unsubscribe-Post %q", got)
	}
	lu := bobMsg.Header.Get("List-Unsubscribe")
	link, ok := strings.CutPrefix(lu, "<"+s.URL()+"/u/")
	if !ok || !strings.HasSuffix(link, ">") {
		t.Fatalf("List-Unsubscribe %q does not point at %s/u/", lu, s.URL())
	}
	link = s.URL() + "/u/" + strings.TrimSuffix(link, ">")

	// What a mailbox provider does on "unsubscribe": the RFC 8058 POST,
	// without any API key.
	anon := e2e.NewClient("", "")
	defer anon.Close()
	r, err = anon.Do(ctx, "POST", link, "application/x-www-form-urlencoded", strings.NewReader("List-Unsubscribe=One-Click"), nil)
	must(t, r, err, http.StatusOK)
	var sups struct {
		Data []struct {
			Address string `json:"address"`
			Reason  string `json:"reason"`
		} `json:"data"`
	}
	r, err = c.JSON(ctx, "GET", "/v1/suppressions?channel=email", nil)
	must(t, r, err, http.StatusOK)
	if err := r.Decode(&sups); err != nil {
		t.Fatal(err)
	}
	if len(sups.Data) != 1 || sups.Data[0].Address != "bob@example.com" || sups.Data[0].Reason != "unsubscribe" {
		t.Fatalf("suppressions %s", r)
	}

	// The second batch to the same recipients, from a stored template,
	// skips Bob.
	tmpl := batchDoc()["template"].(map[string]any)
	tmpl["subject"] = "Again, {{ first_name }}"
	r, err = c.JSON(ctx, "POST", "/v1/templates", map[string]any{"name": "news", "module": "email", "template": tmpl})
	must(t, r, err, http.StatusCreated)
	doc := batchDoc()
	delete(doc, "template")
	doc["template_ref"] = map[string]any{"name": "news"}
	second := runBatchDoc(t, ctx, c, doc)
	if second.Counts.Succeeded != 2 || second.Counts.Skipped != 1 || second.Total != 3 {
		t.Fatalf("second batch counts %+v, want 2 succeeded and 1 skipped", second.Counts)
	}
	msgs = mb.received()
	if len(msgs) != 5 {
		t.Fatalf("the mailbox has %d messages, want 3 + 2", len(msgs))
	}
	for _, d := range msgs[3:] {
		if strings.Contains(strings.Join(d.to, ","), "bob@") {
			t.Fatal("a message went to bob after he unsubscribed")
		}
		m, err := mail.ReadMessage(bytes.NewReader(d.raw))
		if err != nil {
			t.Fatal(err)
		}
		if subj, _ := new(mime.WordDecoder).DecodeHeader(m.Header.Get("Subject")); !strings.HasPrefix(subj, "Again, ") {
			t.Fatalf("second batch subject %q, want the stored template's", subj)
		}
	}
	skipped, err := c.ListItems(ctx, second.ID, "skipped")
	if err != nil {
		t.Fatal(err)
	}
	if len(skipped) != 1 || !strings.Contains(string(skipped[0].Data), "bob@example.com") || !strings.Contains(skipped[0].LastError, "unsubscribe") {
		t.Fatalf("skipped items %+v", skipped)
	}
}

// checkMultipart checks the message is multipart/alternative with a text
// and an HTML part that read as the template rendered.
func checkMultipart(t *testing.T, m *mail.Message) {
	t.Helper()
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/alternative" {
		t.Fatalf("Content-Type %q: %v", m.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	var types []string
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(p) // decodes quoted-printable
		if err != nil {
			t.Fatal(err)
		}
		ct, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		types = append(types, ct)
		if !strings.Contains(string(body), "Hello Bob") {
			t.Fatalf("%s part %q does not greet Bob", ct, body)
		}
	}
	if fmt.Sprint(types) != "[text/plain text/html]" {
		t.Fatalf("parts %v", types)
	}
}
