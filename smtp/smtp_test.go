package smtp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"go.uber.org/goleak"

	"github.com/batchsender/batchsender/sdk"
	"github.com/batchsender/batchsender/sdk/sdktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testTemplate = `{"from": "Zoë News <news@example.com>", "subject": "Grüße {{ first_name }}",
  "html": "<p>Hello {{ first_name }}</p><p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p>",
  "reply_to": "help@example.com", "headers": {"X-Campaign": "spring"}}`

func item(i int) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"to": "Rcpt %d <rcpt%d@example.org>", "first_name": "Ann %d"}`, i, i, i))
}

func unsubURL(itemID, rcpt string) string { return "https://bs.example.com/u/" + itemID }

// connConfig returns a connection config for f.
func connConfig(f *fakeServer, extra map[string]any) json.RawMessage {
	cfg := map[string]any{"host": "127.0.0.1", "port": f.port, "tls": f.opts.tls, "timeout": "2s", "pool_size": 2, "helo": "sender.test"}
	if f.certPEM != "" {
		cfg["ca_pem"] = f.certPEM
	}
	for k, v := range extra {
		if v == nil {
			delete(cfg, k)
		} else {
			cfg[k] = v
		}
	}
	raw, _ := json.Marshal(cfg)
	return raw
}

var testSecrets = json.RawMessage(`{"username": "mailer", "password": "hunter2-correct-horse"}`)

// provision returns a provisioned provider for f, closed at cleanup.
func provision(t testing.TB, f *fakeServer, extra map[string]any) *Provider {
	t.Helper()
	p := new(Provider)
	err := p.Provision(context.Background(), sdk.Env{
		Config: connConfig(f, extra), Secrets: testSecrets,
		Dialer: (&net.Dialer{}).DialContext, AllowPrivateNetworks: true,
		UnsubscribeURL: unsubURL,
	})
	if err != nil {
		t.Fatalf("Provision: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func sender(t testing.TB, p *Provider) sdk.Sender {
	t.Helper()
	s, err := p.Compile(json.RawMessage(testTemplate))
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return s
}

func items(n int, prefix string) []sdk.Item {
	out := make([]sdk.Item, n)
	for i := range out {
		out[i] = sdk.Item{ID: fmt.Sprintf("%s_%d", prefix, i), Seq: int64(i + 1), Attempt: 1, Data: item(i)}
	}
	return out
}

func TestConformance(t *testing.T) {
	t.Parallel()
	sdktest.Run(t, sdktest.Harness{
		New:     func() sdk.Provider { return new(Provider) },
		NewFake: func(t *testing.T) sdktest.Fake { return newFake(t, fakeOptions{}) },
		Connection: func(fake sdktest.Fake) (json.RawMessage, json.RawMessage) {
			return connConfig(fake.(*fakeServer), nil), testSecrets
		},
		Template:        json.RawMessage(testTemplate),
		Item:            item,
		InvalidItem:     json.RawMessage(`{"to": "not-an-address", "first_name": "X"}`),
		Secrets:         []string{testPassword},
		IdempotencyKeys: true, // the Message-ID carries the item ID
		RetryAfter:      false,
		Timeout:         2 * time.Second,
		Env:             func(env *sdk.Env) { env.UnsubscribeURL = unsubURL },
	})
}

func TestRegistered(t *testing.T) {
	t.Parallel()
	r, ok := sdk.Lookup(ID)
	if !ok || r.New().Info().ID != "email.smtp" {
		t.Fatalf("email.smtp not registered")
	}
}

// readParts parses a received message with net/mail and mime/multipart and
// returns the decoded text and HTML bodies.
func readParts(t *testing.T, raw []byte) (*mail.Message, string, string) {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("ReadMessage: %v", err)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/alternative" {
		t.Fatalf("Content-Type %q: %v", m.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	var bodies []string
	var types []string
	for {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if p.Header.Get("Content-Transfer-Encoding") != "quoted-printable" {
			t.Errorf("part %s: encoding %q", p.Header.Get("Content-Type"), p.Header.Get("Content-Transfer-Encoding"))
		}
		b, err := io.ReadAll(quotedprintable.NewReader(p))
		if err != nil {
			t.Fatal(err)
		}
		types = append(types, p.Header.Get("Content-Type"))
		bodies = append(bodies, string(b))
	}
	if strings.Join(types, ",") != "text/plain; charset=utf-8,text/html; charset=utf-8" {
		t.Fatalf("parts %v", types)
	}
	return m, bodies[0], bodies[1]
}

func TestDeliversWellFormedMessages(t *testing.T) {
	t.Parallel()
	f := newFake(t, fakeOptions{})
	s := sender(t, provision(t, f, nil))
	its := items(3, "itm_wf")
	res := s.Send(context.Background(), its)
	for i, r := range res {
		if r.Outcome != sdk.OutcomeOK || r.MessageID != fmt.Sprintf("<itm_wf_%d@example.com>", i) || r.StatusCode != 250 {
			t.Fatalf("result %d: %+v", i, r)
		}
	}
	// A second attempt of item 0 carries the same Message-ID.
	again := its[:1]
	again[0].Attempt = 2
	if r := s.Send(context.Background(), again); r[0].Outcome != sdk.OutcomeOK {
		t.Fatalf("second attempt: %+v", r[0])
	}
	msgs := f.messages()
	if len(msgs) != 4 {
		t.Fatalf("fake received %d messages, want 4", len(msgs))
	}
	byID := map[string][]*mail.Message{}
	dec := new(mime.WordDecoder)
	for _, got := range msgs {
		m, text, html := readParts(t, got.raw)
		id := m.Header.Get("Message-Id")
		byID[id] = append(byID[id], m)
		n := strings.TrimSuffix(strings.TrimPrefix(id, "<itm_wf_"), "@example.com>")
		if got.from != "news@example.com" || len(got.to) != 1 || got.to[0] != "rcpt"+n+"@example.org" {
			t.Errorf("envelope %s → %v", got.from, got.to)
		}
		if got.helo != "sender.test" {
			t.Errorf("EHLO name %q", got.helo)
		}
		subj, _ := dec.DecodeHeader(m.Header.Get("Subject"))
		if subj != "Grüße Ann "+n {
			t.Errorf("Subject %q", subj)
		}
		from, err := m.Header.AddressList("From")
		if err != nil || from[0].Name != "Zoë News" {
			t.Errorf("From %v %v", from, err)
		}
		url := "https://bs.example.com/u/itm_wf_" + n
		if got := m.Header.Get("List-Unsubscribe"); got != "<"+url+">" {
			t.Errorf("List-Unsubscribe %q", got)
		}
		if got := m.Header.Get("List-Unsubscribe-Post"); got != "List-Unsubscribe=One-Click" {
			t.Errorf("List-Unsubscribe-Post %q", got)
		}
		if m.Header.Get("Reply-To") != "<help@example.com>" || m.Header.Get("X-Campaign") != "spring" {
			t.Errorf("Reply-To %q X-Campaign %q", m.Header.Get("Reply-To"), m.Header.Get("X-Campaign"))
		}
		if !strings.Contains(html, `<a href="`+url+`">`) || !strings.Contains(text, "Hello Ann "+n) || !strings.Contains(text, url) {
			t.Errorf("bodies:\n%s\n%s", text, html)
		}
	}
	if len(byID["<itm_wf_0@example.com>"]) != 2 {
		t.Errorf("Message-ID not stable across attempts: %v", byID)
	}
}

func TestPoolCarriesManyMessagesPerConnection(t *testing.T) {
	t.Parallel()
	f := newFake(t, fakeOptions{})
	s := sender(t, provision(t, f, map[string]any{"max_messages_per_connection": 10, "pool_size": 2}))
	for round := range 2 {
		res := s.Send(context.Background(), items(25, fmt.Sprintf("itm_pool%d", round)))
		for i, r := range res {
			if r.Outcome != sdk.OutcomeOK {
				t.Fatalf("round %d item %d: %+v", round, i, r)
			}
		}
	}
	per := f.perSession()
	total := 0
	for id, n := range per {
		if n > 10 {
			t.Errorf("session %d carried %d messages, cap is 10", id, n)
		}
		total += n
	}
	// 50 messages at 10 per session: 5 sessions, plus at most one partly
	// used session per worker left when the first chunk ended.
	if total != 50 || len(per) < 5 || len(per) > 7 {
		t.Errorf("%d messages over %d sessions: %v", total, len(per), per)
	}
}

func TestClassifiesReplies(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		hook    func(step string, s *fakeSession) error
		outcome sdk.Outcome
		code    int
	}{
		{"421AtMailIsRetry", failAt("MAIL", &gosmtp.SMTPError{Code: 421, EnhancedCode: gosmtp.EnhancedCode{4, 4, 2}, Message: "closing"}), sdk.OutcomeRetry, 421},
		{"452AtRcptIsRetry", failAt("RCPT", &gosmtp.SMTPError{Code: 452, EnhancedCode: gosmtp.EnhancedCode{4, 5, 3}, Message: "too many"}), sdk.OutcomeRetry, 452},
		{"454ThrottleIsRetry", failAt("MAIL", &gosmtp.SMTPError{Code: 454, EnhancedCode: gosmtp.EnhancedCode{4, 7, 0}, Message: "Throttling failure: Daily message quota exceeded"}), sdk.OutcomeRetry, 454},
		{"550AtRcptIsPermanent", failAt("RCPT", errMailbox), sdk.OutcomePermanent, 550},
		{"554AtDataIsPermanent", failAt("DATA", errPolicy), sdk.OutcomePermanent, 554},
		{"451AtDataIsRetry", failAt("DATA", errServer), sdk.OutcomeRetry, 451},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newFake(t, fakeOptions{})
			s := sender(t, provision(t, f, map[string]any{"pool_size": 1}))
			// Only the second item fails; the others go through on the
			// same or a new session.
			var mails atomic.Int32
			f.setHook(func(step string, sess *fakeSession) error {
				target := false
				switch {
				case step == "MAIL":
					target = mails.Add(1) == 2
				case strings.HasPrefix(step, "RCPT"):
					target = strings.Contains(step, "rcpt1@")
				case step == "DATA":
					target = strings.Contains(sess.to1(), "rcpt1@")
				}
				if target {
					return c.hook(step, sess)
				}
				return nil
			})
			res := s.Send(context.Background(), items(3, "itm_cls"))
			if r := res[1]; r.Outcome != c.outcome || r.StatusCode != c.code || r.Err == nil || !strings.Contains(r.Response, fmt.Sprint(c.code)) {
				t.Errorf("failing item: %+v", r)
			}
			for _, i := range []int{0, 2} {
				if res[i].Outcome != sdk.OutcomeOK {
					t.Errorf("item %d: %+v", i, res[i])
				}
			}
		})
	}
}

// failAt returns a hook failing at one step (MAIL, RCPT, DATA).
func failAt(step string, err error) func(string, *fakeSession) error {
	return func(s string, _ *fakeSession) error {
		if strings.HasPrefix(s, step) {
			return err
		}
		return nil
	}
}

// to1 is the transaction's recipients.
func (s *fakeSession) to1() string { return strings.Join(s.to, ",") }

func TestNoReplyAfterFinalDotIsUnknown(t *testing.T) {
	t.Parallel()
	f := newFake(t, fakeOptions{})
	s := sender(t, provision(t, f, map[string]any{"timeout": "300ms", "pool_size": 1}))
	f.Set(sdktest.Behaviour{Mode: sdktest.Hang})
	start := time.Now()
	res := s.Send(context.Background(), items(3, "itm_hang"))
	if res[0].Outcome != sdk.OutcomeUnknown {
		t.Errorf("first item: %+v, want unknown", res[0])
	}
	for _, r := range res[1:] {
		if r.Outcome != sdk.OutcomeRetry || !strings.Contains(r.Err.Error(), "timed out") {
			t.Errorf("later item: %+v, want retry without waiting", r)
		}
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %v", d)
	}
}

func TestConnectionLostBeforeDataIsRetry(t *testing.T) {
	t.Parallel()
	f := newFake(t, fakeOptions{})
	s := sender(t, provision(t, f, map[string]any{"pool_size": 1}))
	f.setHook(func(step string, sess *fakeSession) error {
		if strings.HasPrefix(step, "RCPT") {
			sess.c.Close()
		}
		return nil
	})
	res := s.Send(context.Background(), items(1, "itm_lost"))
	if res[0].Outcome != sdk.OutcomeRetry {
		t.Errorf("got %+v, want retry", res[0])
	}
}

func TestTLSModes(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{tlsStart, tlsOn} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			f := newFake(t, fakeOptions{tls: mode})
			s := sender(t, provision(t, f, nil))
			res := s.Send(context.Background(), items(2, "itm_tls"))
			for i, r := range res {
				if r.Outcome != sdk.OutcomeOK {
					t.Fatalf("item %d: %+v", i, r)
				}
			}
			for _, m := range f.messages() {
				if !m.tls {
					t.Errorf("message received without TLS")
				}
			}
			// Without the CA, the self-signed certificate is refused.
			s2 := sender(t, provision(t, f, map[string]any{"ca_pem": nil}))
			r := s2.Send(context.Background(), items(1, "itm_tls_noca"))[0]
			if r.Outcome == sdk.OutcomeOK || !strings.Contains(r.Err.Error(), "certificate") {
				t.Errorf("untrusted certificate: %+v", r)
			}
		})
	}
}

func TestAuth(t *testing.T) {
	t.Parallel()
	t.Run("LOGIN", func(t *testing.T) {
		t.Parallel()
		f := newFake(t, fakeOptions{mechs: []string{"LOGIN"}})
		s := sender(t, provision(t, f, nil))
		if r := s.Send(context.Background(), items(1, "itm_login"))[0]; r.Outcome != sdk.OutcomeOK {
			t.Errorf("AUTH LOGIN: %+v", r)
		}
	})
	t.Run("WrongPasswordIsPermanentWithoutSecret", func(t *testing.T) {
		t.Parallel()
		f := newFake(t, fakeOptions{})
		p := new(Provider)
		err := p.Provision(context.Background(), sdk.Env{
			Config: connConfig(f, nil), Secrets: json.RawMessage(`{"username":"mailer","password":"wrong-pass-123"}`),
			AllowPrivateNetworks: true, UnsubscribeURL: unsubURL,
		})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		res := sender(t, p).Send(context.Background(), items(2, "itm_auth"))
		for _, r := range res {
			if r.Outcome != sdk.OutcomePermanent || r.StatusCode != 535 || strings.Contains(r.Err.Error(), "wrong-pass") {
				t.Errorf("got %+v", r)
			}
		}
	})
}

func TestProvisionRejectsBadConfig(t *testing.T) {
	t.Parallel()
	for name, c := range map[string]struct {
		config, secrets string
		private         bool
		want            string
	}{
		"unknown field":    {`{"host":"smtp.example.com","tls_mode":"x"}`, `{}`, true, "unknown field"},
		"no host":          {`{"port":25}`, `{}`, true, "config.host"},
		"bad tls":          {`{"host":"smtp.example.com","tls":"ssl"}`, `{}`, true, "config.tls"},
		"clear password":   {`{"host":"smtp.example.com","tls":"none"}`, `{"username":"u","password":"p"}`, true, "clear text"},
		"bad port":         {`{"host":"smtp.example.com","port":70000}`, `{}`, true, "config.port"},
		"bad timeout":      {`{"host":"smtp.example.com","timeout":"soon"}`, `{}`, true, "config.timeout"},
		"bad pool":         {`{"host":"smtp.example.com","pool_size":1000}`, `{}`, true, "config.pool_size"},
		"bad ca":           {`{"host":"smtp.example.com","ca_pem":"nope"}`, `{}`, true, "config.ca_pem"},
		"private literal":  {`{"host":"10.1.2.3"}`, `{}`, false, "network policy"},
		"secret not shown": {`{"host":"smtp.example.com"}`, `{"username":"u","password":"p","token":"s3cr3t-value"}`, true, "secrets: invalid"},
	} {
		p := new(Provider)
		err := p.Provision(context.Background(), sdk.Env{Config: json.RawMessage(c.config), Secrets: json.RawMessage(c.secrets), AllowPrivateNetworks: c.private})
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("%s: err %v, want %q", name, err, c.want)
		}
	}
	p := new(Provider)
	if err := p.Provision(context.Background(), sdk.Env{Config: json.RawMessage(`{"host":"smtp.example.com","port":465}`)}); err != nil {
		t.Fatal(err)
	}
	if p.cfg.TLS != tlsOn || p.timeout != DefaultTimeout || p.cfg.PoolSize != DefaultPoolSize {
		t.Errorf("defaults: %+v %v", p.cfg, p.timeout)
	}
}

func TestCompileAndValidateErrors(t *testing.T) {
	t.Parallel()
	p := new(Provider)
	if err := p.Provision(context.Background(), sdk.Env{Config: json.RawMessage(`{"host":"smtp.example.com"}`)}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Compile(json.RawMessage(`{"from":"a@example.com","subject":"{% if %}","text":"t"}`)); err == nil {
		t.Error("broken template compiled")
	}
	s, err := p.Compile(json.RawMessage(`{"from":"a@example.com","subject":"Hi {{ first_name }}","text":"t"}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ValidateItem(json.RawMessage(`{"to":"b@example.org"}`)); err == nil || !strings.Contains(err.Error(), `"first_name"`) {
		t.Errorf("missing variable: %v", err)
	}
	// An item that cannot be rendered is a permanent failure at send time
	// and nothing is dialed (the host is not reachable in this test).
	r := s.Send(context.Background(), []sdk.Item{{ID: "itm_bad", Attempt: 1, Data: json.RawMessage(`{"to":"nope"}`)}})
	if r[0].Outcome != sdk.OutcomePermanent {
		t.Errorf("unrenderable item: %+v", r[0])
	}
}

// TestPipelining talks to a scripted server with and without PIPELINING:
// without it each command waits for its reply (the server sees nothing
// buffered after a command line); with it MAIL, RCPT and DATA arrive
// together.
func TestPipelining(t *testing.T) {
	t.Parallel()
	for _, pipelining := range []bool{false, true} {
		t.Run(fmt.Sprint(pipelining), func(t *testing.T) {
			t.Parallel()
			testPipelining(t, pipelining)
		})
	}
}

func testPipelining(t *testing.T, pipelining bool) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type seen struct {
		line     string
		buffered int
	}
	log := make(chan []seen, 1)
	go func() {
		var lines []seen
		defer func() { log <- lines }()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		fmt.Fprint(c, "220 scripted ESMTP\r\n")
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimRight(line, "\r\n")
			lines = append(lines, seen{line, r.Buffered()})
			switch {
			case strings.HasPrefix(line, "EHLO"):
				if pipelining {
					fmt.Fprint(c, "250-scripted\r\n250-PIPELINING\r\n250 AUTH PLAIN LOGIN\r\n")
				} else {
					fmt.Fprint(c, "250-scripted\r\n250 AUTH PLAIN LOGIN\r\n")
				}
			case strings.HasPrefix(line, "AUTH"):
				fmt.Fprint(c, "235 2.7.0 ok\r\n")
			case line == "DATA":
				fmt.Fprint(c, "354 go ahead\r\n")
				for {
					l, err := r.ReadString('\n')
					if err != nil || l == ".\r\n" {
						break
					}
				}
				fmt.Fprint(c, "250 2.0.0 queued as X1\r\n")
			case line == "QUIT":
				fmt.Fprint(c, "221 bye\r\n")
				return
			default:
				fmt.Fprint(c, "250 ok\r\n")
			}
		}
	}()
	p := new(Provider)
	cfg := fmt.Sprintf(`{"host":"127.0.0.1","port":%d,"tls":"none","pool_size":1,"timeout":"5s"}`, ln.Addr().(*net.TCPAddr).Port)
	if err := p.Provision(context.Background(), sdk.Env{Config: json.RawMessage(cfg), Secrets: testSecrets, AllowPrivateNetworks: true, UnsubscribeURL: unsubURL}); err != nil {
		t.Fatal(err)
	}
	res := sender(t, p).Send(context.Background(), items(1, "itm_seq"))
	if res[0].Outcome != sdk.OutcomeOK || res[0].Response != "2.0.0 queued as X1" {
		t.Errorf("result %+v", res[0])
	}
	p.Close()
	lines := <-log
	var cmds []string
	for _, l := range lines {
		verb, _, _ := strings.Cut(l.line, " ")
		verb, _, _ = strings.Cut(verb, ":")
		cmds = append(cmds, verb)
		ahead := l.buffered != 0
		if want := pipelining && (verb == "MAIL" || verb == "RCPT"); ahead != want {
			t.Errorf("after %q the client had sent %d more bytes (pipelining %v)", l.line, l.buffered, pipelining)
		}
	}
	if got := strings.Join(cmds, " "); got != "EHLO AUTH MAIL RCPT DATA QUIT" {
		t.Errorf("commands %s", got)
	}
}
