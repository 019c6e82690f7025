package webhook

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/batchsender/batchsender/netguard"
	"github.com/batchsender/batchsender/sdk"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata")

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	vectorSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	testSecret   = "whsec_" + "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=" // bytes 0..31
)

var fixedNow = time.Unix(1700000000, 0)

// captured is one request a test receiver saw.
type captured struct {
	Method string
	Path   string
	Header http.Header
	Body   []byte
	VerErr error
}

// receiver is a loopback server that verifies signatures and records
// requests; handle decides each answer (nil: 200).
type receiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	reqs   []captured
	handle func(w http.ResponseWriter, r *http.Request)
}

func newReceiver(t *testing.T, secret string, now func() time.Time, handle func(w http.ResponseWriter, r *http.Request)) *receiver {
	t.Helper()
	rc := &receiver{handle: handle}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		c := captured{Method: r.Method, Path: r.URL.RequestURI(), Header: r.Header.Clone(), Body: body}
		c.VerErr = Verify(secret, r.Header, body, now(), 0)
		rc.mu.Lock()
		rc.reqs = append(rc.reqs, c)
		rc.mu.Unlock()
		if rc.handle != nil {
			rc.handle(w, r)
		}
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) requests() []captured {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]captured(nil), rc.reqs...)
}

type opts struct {
	config       string
	secret       string
	allowPrivate bool
	dialer       func(ctx context.Context, network, address string) (net.Conn, error)
	now          func() time.Time
}

func newProvider(t *testing.T, o opts) *Provider {
	t.Helper()
	if o.secret == "" {
		o.secret = testSecret
	}
	if o.now == nil {
		o.now = func() time.Time { return fixedNow }
	}
	secrets, _ := json.Marshal(Secrets{SigningSecret: o.secret})
	p := new(Provider)
	err := p.Provision(context.Background(), sdk.Env{
		Config:               json.RawMessage(o.config),
		Secrets:              secrets,
		Dialer:               o.dialer,
		AllowPrivateNetworks: o.allowPrivate,
		Now:                  o.now,
	})
	if err != nil {
		t.Fatalf("Provision: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func compile(t *testing.T, p *Provider, template string) sdk.Sender {
	t.Helper()
	s, err := p.Compile(json.RawMessage(template))
	if err != nil {
		t.Fatalf("Compile(%s): %v", template, err)
	}
	return s
}

func item(id, data string) sdk.Item {
	return sdk.Item{ID: id, Seq: 1, Attempt: 1, Data: json.RawMessage(data)}
}

func send1(t *testing.T, s sdk.Sender, it sdk.Item) sdk.Result {
	t.Helper()
	res := s.Send(context.Background(), []sdk.Item{it})
	if len(res) != 1 {
		t.Fatalf("Send returned %d results, want 1", len(res))
	}
	return res[0]
}

func TestSignMatchesOfficialVector(t *testing.T) {
	t.Parallel()
	key, err := DecodeSecret(vectorSecret)
	if err != nil {
		t.Fatal(err)
	}
	got := Sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, []byte(`{"test": 2432232314}`))
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Fatalf("Sign = %s, want %s", got, want)
	}
	// The prefix is optional.
	key2, err := DecodeSecret(strings.TrimPrefix(vectorSecret, "whsec_"))
	if err != nil || string(key2) != string(key) {
		t.Fatalf("DecodeSecret without prefix: %v", err)
	}
}

// TestPooledSignMatchesSign checks that the provider's pooled signer gives
// Sign's answer, the official vector included, also when a state is reused
// for other ids, times and bodies in turn.
func TestPooledSignMatchesSign(t *testing.T) {
	t.Parallel()
	key, err := DecodeSecret(vectorSecret)
	if err != nil {
		t.Fatal(err)
	}
	p := &Provider{key: key}
	if got, want := p.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, []byte(`{"test": 2432232314}`)), "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Fatalf("sign = %s, want %s", got, want)
	}
	for i := range 50 {
		id := strings.Repeat("i", i*3)
		body := []byte(strings.Repeat("b", i*7))
		ts := int64(1614265330 + i)
		if got, want := p.sign(id, ts, body), Sign(key, id, ts, body); got != want {
			t.Fatalf("sign(%q, %d, %d bytes) = %s, Sign gives %s", id, ts, len(body), got, want)
		}
	}
}

func TestVerify(t *testing.T) {
	t.Parallel()
	key, _ := DecodeSecret(vectorSecret)
	body := []byte(`{"test": 2432232314}`)
	ts := time.Unix(1614265330, 0)
	headers := func(sig string) http.Header {
		h := http.Header{}
		h.Set("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek")
		h.Set("webhook-timestamp", "1614265330")
		h.Set("webhook-signature", sig)
		return h
	}
	good := Sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", ts.Unix(), body)

	t.Run("AcceptsValidSignature", func(t *testing.T) {
		t.Parallel()
		if err := Verify(vectorSecret, headers(good), body, ts.Add(time.Minute), 0); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("AcceptsAnyOfSeveralSignatures", func(t *testing.T) {
		t.Parallel()
		sig := "v1a,whatever v1,AAAA " + good + " v2,zzz"
		if err := Verify(vectorSecret, headers(sig), body, ts, 0); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("AcceptsSvixHeaders", func(t *testing.T) {
		t.Parallel()
		h := http.Header{}
		h.Set("svix-id", "msg_p5jXN8AQM9LWM0D4loKWxJek")
		h.Set("svix-timestamp", "1614265330")
		h.Set("svix-signature", good)
		if err := Verify(vectorSecret, h, body, ts, 0); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("RejectsTamperedBody", func(t *testing.T) {
		t.Parallel()
		if err := Verify(vectorSecret, headers(good), []byte(`{"test": 2432232315}`), ts, 0); !errors.Is(err, ErrSignature) {
			t.Fatalf("err = %v, want ErrSignature", err)
		}
	})
	t.Run("RejectsWrongSecret", func(t *testing.T) {
		t.Parallel()
		if err := Verify(testSecret, headers(good), body, ts, 0); !errors.Is(err, ErrSignature) {
			t.Fatalf("err = %v, want ErrSignature", err)
		}
	})
	t.Run("RejectsOldAndFutureTimestamps", func(t *testing.T) {
		t.Parallel()
		for _, now := range []time.Time{ts.Add(6 * time.Minute), ts.Add(-6 * time.Minute)} {
			if err := Verify(vectorSecret, headers(good), body, now, 0); !errors.Is(err, ErrTimestamp) {
				t.Fatalf("now=%v: err = %v, want ErrTimestamp", now, err)
			}
		}
		if err := Verify(vectorSecret, headers(good), body, ts.Add(time.Hour), 2*time.Hour); err != nil {
			t.Fatalf("custom tolerance: %v", err)
		}
	})
	t.Run("RejectsMissingOrMalformedHeaders", func(t *testing.T) {
		t.Parallel()
		for _, name := range []string{"webhook-id", "webhook-timestamp", "webhook-signature"} {
			h := headers(good)
			h.Del(name)
			if err := Verify(vectorSecret, h, body, ts, 0); !errors.Is(err, ErrMissingHeader) {
				t.Fatalf("without %s: err = %v, want ErrMissingHeader", name, err)
			}
		}
		h := headers(good)
		h.Set("webhook-timestamp", "yesterday")
		if err := Verify(vectorSecret, h, body, ts, 0); !errors.Is(err, ErrTimestamp) {
			t.Fatalf("bad timestamp: err = %v", err)
		}
		for _, sig := range []string{"v1,", "v1", "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", "v1,!!!"} {
			if err := Verify(vectorSecret, headers(sig), body, ts, 0); !errors.Is(err, ErrSignature) {
				t.Fatalf("signature %q: err = %v, want ErrSignature", sig, err)
			}
		}
	})
}

func TestRegisteredWithSchemas(t *testing.T) {
	t.Parallel()
	reg, ok := sdk.Lookup(ID)
	if !ok {
		t.Fatal("webhook.http is not registered")
	}
	info := reg.New().Info()
	if info.Module() != "webhook" || info.MaxChunk != 1 || info.DefaultConcurrency != DefaultConcurrency || info.BillableUnit != "request" {
		t.Fatalf("unexpected info %+v", info)
	}
	for name, raw := range map[string]json.RawMessage{"config": info.ConfigSchema, "secrets": info.SecretsSchema, "item": info.ItemSchema} {
		var v map[string]any
		if err := json.Unmarshal(raw, &v); err != nil || v["type"] != "object" {
			t.Errorf("%s schema is not a JSON Schema object: %v", name, err)
		}
	}
}

func TestProvisionValidatesConfigAndSecrets(t *testing.T) {
	t.Parallel()
	provision := func(config, secrets string) error {
		p := new(Provider)
		defer p.Close()
		return p.Provision(context.Background(), sdk.Env{Config: json.RawMessage(config), Secrets: json.RawMessage(secrets)})
	}
	good := `{"signing_secret":"` + testSecret + `"}`
	for _, cfg := range []string{``, `{}`, `null`, `{"timeout":"30s","max_per_host":8,"rate_per_second":100,"concurrency":10,"user_agent":"me/1"}`} {
		if err := provision(cfg, good); err != nil {
			t.Errorf("config %s: %v", cfg, err)
		}
	}
	for _, sec := range []string{
		`{"signing_secret":"` + vectorSecret + `"}`,
		`{"signing_secret":"` + strings.TrimPrefix(testSecret, "whsec_") + `"}`,
		`{"signing_secret":"whsec_` + base64.StdEncoding.EncodeToString(make([]byte, 64)) + `"}`,
	} {
		if err := provision(`{}`, sec); err != nil {
			t.Errorf("secrets %s: %v", sec, err)
		}
	}
	for _, tc := range []struct{ config, secrets, want string }{
		{`{"timeout":"10"}`, good, "timeout"},
		{`{"timeout":10}`, good, "timeout"},
		{`{"timeout":"-1s"}`, good, "timeout"},
		{`{"timeout":"10m"}`, good, "timeout"},
		{`{"max_per_host":-1}`, good, "max_per_host"},
		{`{"concurrency":-5}`, good, "concurrency"},
		{`{"rate_per_second":-1}`, good, "rate_per_second"},
		{`{"user_agent":"a\nb"}`, good, "user_agent"},
		{`{"tiemout":"1s"}`, good, "tiemout"},
		{`{}`, `{}`, "signing_secret is required"},
		{`{}`, `{"signing_secret":"whsec_` + base64.StdEncoding.EncodeToString(make([]byte, 16)) + `"}`, "24 to 64"},
		{`{}`, `{"signing_secret":"whsec_` + base64.StdEncoding.EncodeToString(make([]byte, 65)) + `"}`, "24 to 64"},
		{`{}`, `{"signing_secret":"whsec_not*base64*at*all*hunter2"}`, "base64"},
		{`{}`, `{"signing_secret":"` + testSecret + `","extra":"hunter2"}`, "extra"},
	} {
		err := provision(tc.config, tc.secrets)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config %s secrets %s: err = %v, want mention of %q", tc.config, tc.secrets, err, tc.want)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "AAAA") {
			t.Errorf("error %q leaks the secret", err)
		}
	}
}

func TestCompileAndValidateItem(t *testing.T) {
	t.Parallel()
	p := newProvider(t, opts{})
	s := compile(t, p, `{}`)
	withTmpl := compile(t, p, `{"url":"https://hooks.example.com/in","headers":{"X-Team":"a"}}`)

	for _, data := range []string{
		`{"url":"https://example.com/hook"}`,
		`{"url":"http://example.com:8080/hook?x=1","method":"PUT","headers":{"Authorization":"Bearer t"},"payload":{"a":1}}`,
		`{"url":"https://[2606:4700::1111]/"}`,
		`{"url":"https://8.8.8.8/","payload":[1,2,3]}`,
	} {
		if err := s.ValidateItem(json.RawMessage(data)); err != nil {
			t.Errorf("ValidateItem(%s) = %v", data, err)
		}
	}
	if err := withTmpl.ValidateItem(json.RawMessage(`{"payload":{"a":1}}`)); err != nil {
		t.Errorf("item using the template url: %v", err)
	}

	for _, tc := range []struct{ data, want string }{
		{`{"payload":{}}`, "url: is required"},
		{`{"url":""}`, "url: is required"},
		{`{"url":"ftp://example.com/x"}`, "url: scheme must be http or https"},
		{`{"url":"/relative"}`, "url: scheme"},
		{`{"url":"https://user:pw@example.com/"}`, "url: must not contain user info"},
		{`{"url":"https://example.com:0/"}`, "url: port"},
		{`{"url":"https://example.com:99999/"}`, "url: port"},
		{`{"url":"https://exa mple.com/"}`, "url:"},
		{`{"url":"https://example.com","method":"TRACE"}`, "method:"},
		{`{"url":"https://example.com","headers":{"Host":"evil"}}`, `headers: "Host"`},
		{`{"url":"https://example.com","headers":{"content-length":"1"}}`, `headers: "content-length"`},
		{`{"url":"https://example.com","headers":{"Connection":"close"}}`, "hop-by-hop"},
		{`{"url":"https://example.com","headers":{"Transfer-Encoding":"chunked"}}`, "Transfer-Encoding"},
		{`{"url":"https://example.com","headers":{"webhook-id":"x"}}`, "Standard Webhooks"},
		{`{"url":"https://example.com","headers":{"Bad Name":"x"}}`, "not a valid header name"},
		{`{"url":"https://example.com","headers":{"X-A":"a\r\nX-B: b"}}`, "line break"},
		{`{"url":"https://example.com","headers":{"X-A":"1","x-a":"2"}}`, "twice"},
		{`{"url":"https://example.com","urll":"x"}`, `unknown field "urll"`},
		{`[1]`, "item:"},
		{`{"url":"http://127.0.0.1/"}`, "loopback"},
		{`{"url":"http://10.1.2.3/"}`, "private"},
		{`{"url":"http://169.254.169.254/latest/meta-data/"}`, "cloud metadata"},
	} {
		err := s.ValidateItem(json.RawMessage(tc.data))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ValidateItem(%s) = %v, want mention of %q", tc.data, err, tc.want)
		}
	}

	for _, tmpl := range []string{`{"url":"http://localhost/"}`, `{"method":"get"}`, `{"headers":{"Host":"x"}}`, `{"urls":"x"}`, `[]`} {
		if _, err := p.Compile(json.RawMessage(tmpl)); err == nil {
			t.Errorf("Compile(%s) accepted a bad template", tmpl)
		}
	}
}

func TestOddLoopbackSpellingsAreBlocked(t *testing.T) {
	t.Parallel()
	// Nothing here reaches the network: every URL is refused before DNS or
	// dialling, which the receiver-less Send results show.
	p := newProvider(t, opts{})
	s := compile(t, p, `{}`)
	for _, u := range []string{
		"http://0x7f.0.0.1/", "http://2130706433/", "http://127.1/", "http://0177.0.0.1/",
		"http://[::ffff:127.0.0.1]/", "http://[::1]/", "http://localhost/", "http://LOCALHOST./",
		"http://app.localhost:8080/", "http://127.0.0.1./", "http://0/", "http://[::]/",
	} {
		data := `{"url":"` + u + `"}`
		err := s.ValidateItem(json.RawMessage(data))
		if !netguard.IsBlocked(err) {
			t.Errorf("ValidateItem(%s) = %v, want blocked by the guard", u, err)
		}
		res := send1(t, s, item("itm_odd", data))
		if res.Outcome != sdk.OutcomePermanent || !netguard.IsBlocked(res.Err) {
			t.Errorf("Send(%s) = %v %v, want permanent blocked", u, res.Outcome, res.Err)
		}
	}
	// Lifting the guard allows loopback but still refuses ambiguous
	// spellings, which Go's resolver would hand to DNS.
	open := compile(t, newProvider(t, opts{allowPrivate: true}), `{}`)
	for _, u := range []string{"http://127.0.0.1/", "http://localhost/", "http://[::1]/"} {
		if err := open.ValidateItem(json.RawMessage(`{"url":"` + u + `"}`)); err != nil {
			t.Errorf("with private networks allowed, ValidateItem(%s) = %v", u, err)
		}
	}
	for _, u := range []string{"http://0x7f.0.0.1/", "http://2130706433/", "http://127.1/"} {
		if err := open.ValidateItem(json.RawMessage(`{"url":"` + u + `"}`)); err == nil || !strings.Contains(err.Error(), "non-standard spelling") {
			t.Errorf("with private networks allowed, ValidateItem(%s) = %v, want non-standard spelling error", u, err)
		}
	}
}

func TestDefaultPolicyFailsLoopbackPermanently(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, testSecret, time.Now, nil)
	p := newProvider(t, opts{}) // AllowPrivateNetworks false, the host's default
	s := compile(t, p, `{}`)
	res := send1(t, s, item("itm_1", `{"url":"`+rc.srv.URL+`/hook","payload":{}}`))
	if res.Outcome != sdk.OutcomePermanent {
		t.Fatalf("outcome = %v (%v), want permanent", res.Outcome, res.Err)
	}
	want := "destination 127.0.0.1 is a loopback address; blocked by the SSRF guard (operator setting BATCHSENDER_ALLOW_PRIVATE_NETWORKS)"
	if !strings.Contains(res.Err.Error(), want) {
		t.Fatalf("err = %q, want it to contain %q", res.Err, want)
	}
	if n := len(rc.requests()); n != 0 {
		t.Fatalf("receiver saw %d requests, want 0", n)
	}
}

// nameToLoopback is a dialer that resolves the made-up name hooks.test to
// the loopback receiver and then dials through next, standing in for DNS
// without any query leaving the machine.
func nameToLoopback(target string, next func(ctx context.Context, network, address string) (net.Conn, error)) func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		host, _, _ := net.SplitHostPort(address)
		if host != "hooks.test" {
			return nil, fmt.Errorf("test dialer: unexpected address %s", address)
		}
		return next(ctx, network, target)
	}
}

func TestGuardJudgesResolvedAddressAtDialTime(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, testSecret, time.Now, nil)
	target := rc.srv.Listener.Addr().String()
	_, port, _ := net.SplitHostPort(target)
	dialers := map[string]func(ctx context.Context, network, address string) (net.Conn, error){
		// The host's guarded dialer refuses in Control, before connecting.
		"GuardedDialer": nameToLoopback(target, netguard.Dialer(false, time.Second)),
		// A plain dialer is still caught by the check of the reached address.
		"PlainDialer": nameToLoopback(target, (&net.Dialer{Timeout: time.Second}).DialContext),
	}
	for name, dial := range dialers {
		t.Run(name, func(t *testing.T) {
			p := newProvider(t, opts{dialer: dial})
			s := compile(t, p, `{}`)
			data := `{"url":"http://hooks.test:` + port + `/hook"}`
			if err := s.ValidateItem(json.RawMessage(data)); err != nil {
				t.Fatalf("a public-looking name must pass ingest: %v", err)
			}
			res := send1(t, s, item("itm_dns", data))
			if res.Outcome != sdk.OutcomePermanent || !netguard.IsBlocked(res.Err) || !strings.Contains(res.Err.Error(), "loopback") {
				t.Fatalf("Send = %v %v, want permanent loopback block", res.Outcome, res.Err)
			}
		})
	}
	if n := len(rc.requests()); n != 0 {
		t.Fatalf("receiver saw %d requests, want 0", n)
	}
}

func TestSendSignsRequestsTheReceiverVerifies(t *testing.T) {
	t.Parallel()
	var clock atomic.Int64
	clock.Store(fixedNow.Unix())
	now := func() time.Time { return time.Unix(clock.Load(), 0) }
	rc := newReceiver(t, testSecret, now, nil)
	p := newProvider(t, opts{allowPrivate: true, now: now})
	s := compile(t, p, `{"url":"`+rc.srv.URL+`/default","headers":{"X-Team":"core","X-Env":"prod"},"payload":{"from":"template"}}`)

	it := item("itm_01JABCDEF", `{"headers":{"x-env":"staging","Authorization":"Bearer abc"},"payload":{"b": 2, "a": [1, 2]}}`)
	if res := send1(t, s, it); res.Outcome != sdk.OutcomeOK || res.MessageID != "itm_01JABCDEF" || res.StatusCode != 200 || res.Units != 1 {
		t.Fatalf("first attempt = %+v", res)
	}
	clock.Add(90)
	it.Attempt = 2
	if res := send1(t, s, it); res.Outcome != sdk.OutcomeOK {
		t.Fatalf("second attempt = %+v", res)
	}
	reqs := rc.requests()
	if len(reqs) != 2 {
		t.Fatalf("receiver saw %d requests, want 2", len(reqs))
	}
	for i, r := range reqs {
		if r.VerErr != nil {
			t.Fatalf("request %d: receiver could not verify: %v", i, r.VerErr)
		}
		if r.Method != "POST" || r.Path != "/default" {
			t.Errorf("request %d: %s %s", i, r.Method, r.Path)
		}
		if got := string(r.Body); got != `{"b": 2, "a": [1, 2]}` {
			t.Errorf("request %d: body %q, want the payload's exact bytes", i, got)
		}
		if got := r.Header.Get("Content-Type"); got != "application/json" {
			t.Errorf("request %d: Content-Type %q", i, got)
		}
		if r.Header.Get("X-Team") != "core" || r.Header.Get("X-Env") != "staging" || r.Header.Get("Authorization") != "Bearer abc" {
			t.Errorf("request %d: headers not merged with the item winning: %v", i, r.Header)
		}
		if r.Header.Get("Webhook-Id") != "itm_01JABCDEF" {
			t.Errorf("request %d: webhook-id %q", i, r.Header.Get("Webhook-Id"))
		}
	}
	if reqs[0].Header.Get("Webhook-Timestamp") != "1700000000" || reqs[1].Header.Get("Webhook-Timestamp") != "1700000090" {
		t.Errorf("timestamps %q, %q: want each attempt's own clock reading",
			reqs[0].Header.Get("Webhook-Timestamp"), reqs[1].Header.Get("Webhook-Timestamp"))
	}
	if reqs[0].Header.Get("Webhook-Signature") == reqs[1].Header.Get("Webhook-Signature") {
		t.Error("signature did not change with the timestamp")
	}
}

func TestSendWithoutPayloadSendsEmptySignedBody(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, testSecret, func() time.Time { return fixedNow }, nil)
	s := compile(t, newProvider(t, opts{allowPrivate: true}), `{"method":"DELETE"}`)
	if res := send1(t, s, item("itm_del", `{"url":"`+rc.srv.URL+`/x/1"}`)); res.Outcome != sdk.OutcomeOK {
		t.Fatalf("Send = %+v", res)
	}
	r := rc.requests()[0]
	if r.Method != "DELETE" || len(r.Body) != 0 || r.Header.Get("Content-Type") != "" || r.VerErr != nil {
		t.Fatalf("request %s body %q content-type %q verify %v", r.Method, r.Body, r.Header.Get("Content-Type"), r.VerErr)
	}
}

func TestSendClassifiesAnswers(t *testing.T) {
	t.Parallel()
	httpDate := fixedNow.Add(42 * time.Second).UTC().Format(http.TimeFormat)
	redirectTarget := newReceiver(t, testSecret, time.Now, nil)
	rc := newReceiver(t, testSecret, time.Now, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/200":
			_, _ = io.WriteString(w, `{"received":true}`)
		case "/204":
			w.WriteHeader(204)
		case "/503":
			w.Header().Set("Retry-After", "7")
			w.WriteHeader(503)
		case "/503-plain":
			w.WriteHeader(503)
		case "/429-date":
			w.Header().Set("Retry-After", httpDate)
			w.WriteHeader(429)
		case "/429-huge":
			w.Header().Set("Retry-After", "99999999")
			w.WriteHeader(429)
		case "/302":
			http.Redirect(w, r, redirectTarget.srv.URL+"/stolen", http.StatusFound)
		default:
			var code int
			_, _ = fmt.Sscanf(r.URL.Path, "/%d", &code)
			w.WriteHeader(code)
			_, _ = fmt.Fprintf(w, "status %d", code)
		}
	})
	s := compile(t, newProvider(t, opts{allowPrivate: true}), `{}`)
	for _, tc := range []struct {
		path       string
		outcome    sdk.Outcome
		retryAfter time.Duration
		errText    string
		response   string
	}{
		{"/200", sdk.OutcomeOK, 0, "", `{"received":true}`},
		{"/204", sdk.OutcomeOK, 0, "", ""},
		{"/503", sdk.OutcomeRetry, 7 * time.Second, "503 Service Unavailable", ""},
		{"/503-plain", sdk.OutcomeRetry, 0, "503", ""},
		{"/429-date", sdk.OutcomeRetry, 42 * time.Second, "429 Too Many Requests", ""},
		{"/429-huge", sdk.OutcomeRetry, time.Hour, "429", ""},
		{"/408", sdk.OutcomeRetry, 0, "408", "status 408"},
		{"/425", sdk.OutcomeRetry, 0, "425", "status 425"},
		{"/500", sdk.OutcomeRetry, 0, "500", "status 500"},
		{"/502", sdk.OutcomeRetry, 0, "502", "status 502"},
		{"/410", sdk.OutcomePermanent, 0, "endpoint gone", "status 410"},
		{"/400", sdk.OutcomePermanent, 0, "400 Bad Request", "status 400"},
		{"/404", sdk.OutcomePermanent, 0, "404", "status 404"},
		{"/302", sdk.OutcomePermanent, 0, "redirect not followed", ""},
	} {
		res := send1(t, s, item("itm_c", `{"url":"`+rc.srv.URL+tc.path+`","payload":1}`))
		if res.Outcome != tc.outcome || res.RetryAfter != tc.retryAfter {
			t.Errorf("%s: outcome %v retry-after %v (%v), want %v %v", tc.path, res.Outcome, res.RetryAfter, res.Err, tc.outcome, tc.retryAfter)
			continue
		}
		if tc.errText != "" && (res.Err == nil || !strings.Contains(res.Err.Error(), tc.errText)) {
			t.Errorf("%s: err %v, want mention of %q", tc.path, res.Err, tc.errText)
		}
		if tc.response != "" && res.Response != tc.response {
			t.Errorf("%s: response %q, want %q", tc.path, res.Response, tc.response)
		}
		if res.StatusCode == 0 || res.Latency <= 0 {
			t.Errorf("%s: status %d latency %v not recorded", tc.path, res.StatusCode, res.Latency)
		}
	}
	if n := len(redirectTarget.requests()); n != 0 {
		t.Fatalf("redirect was followed: target saw %d requests", n)
	}
}

func TestSendTimeoutIsRetried(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	rc := newReceiver(t, testSecret, time.Now, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	defer close(release)
	s := compile(t, newProvider(t, opts{allowPrivate: true, config: `{"timeout":"100ms"}`}), `{}`)
	res := send1(t, s, item("itm_slow", `{"url":"`+rc.srv.URL+`/slow"}`))
	if res.Outcome != sdk.OutcomeRetry || res.Err == nil || !strings.Contains(res.Err.Error(), "timed out after 100ms") {
		t.Fatalf("Send = %v %v, want retry after a timeout", res.Outcome, res.Err)
	}
}

func TestSendNetworkErrorIsRetried(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close() // nothing listens there now: connection refused
	s := compile(t, newProvider(t, opts{allowPrivate: true}), `{}`)
	res := send1(t, s, item("itm_refused", `{"url":"http://`+addr+`/"}`))
	if res.Outcome != sdk.OutcomeRetry || res.Err == nil {
		t.Fatalf("Send = %v %v, want retry", res.Outcome, res.Err)
	}
}

func TestSendKeepsOnlyFirstKiBOfAnswer(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("0123456789", 500) // 5000 bytes
	rc := newReceiver(t, testSecret, time.Now, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(400)
		_, _ = io.WriteString(w, big)
	})
	s := compile(t, newProvider(t, opts{allowPrivate: true}), `{}`)
	res := send1(t, s, item("itm_big", `{"url":"`+rc.srv.URL+`"}`))
	if len(res.Response) != 1024 || res.Response != big[:1024] {
		t.Fatalf("response snippet is %d bytes, want the first 1024", len(res.Response))
	}
}

func TestSendHonoursContext(t *testing.T) {
	t.Parallel()
	t.Run("CancelledBeforeSendingRetriesEveryItem", func(t *testing.T) {
		t.Parallel()
		rc := newReceiver(t, testSecret, time.Now, nil)
		s := compile(t, newProvider(t, opts{allowPrivate: true}), `{}`)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		items := []sdk.Item{item("a", `{"url":"`+rc.srv.URL+`"}`), item("b", `{"url":"`+rc.srv.URL+`"}`)}
		for i, res := range s.Send(ctx, items) {
			if res.Outcome != sdk.OutcomeRetry {
				t.Errorf("item %d: %v %v, want retry", i, res.Outcome, res.Err)
			}
		}
		if n := len(rc.requests()); n != 0 {
			t.Fatalf("receiver saw %d requests", n)
		}
	})
	t.Run("CancelledInFlightRetries", func(t *testing.T) {
		t.Parallel()
		arrived := make(chan struct{})
		rc := newReceiver(t, testSecret, time.Now, func(w http.ResponseWriter, r *http.Request) {
			close(arrived)
			<-r.Context().Done()
		})
		s := compile(t, newProvider(t, opts{allowPrivate: true}), `{}`)
		ctx, cancel := context.WithCancel(context.Background())
		go func() { <-arrived; cancel() }()
		res := send1Ctx(ctx, s, item("c", `{"url":"`+rc.srv.URL+`"}`))
		if res.Outcome != sdk.OutcomeRetry {
			t.Fatalf("Send = %v %v, want retry", res.Outcome, res.Err)
		}
	})
}

func send1Ctx(ctx context.Context, s sdk.Sender, it sdk.Item) sdk.Result {
	return s.Send(ctx, []sdk.Item{it})[0]
}

func TestSendLimitsConcurrencyPerHost(t *testing.T) {
	t.Parallel()
	var inFlight, peak atomic.Int32
	gate := make(chan struct{})
	rc := newReceiver(t, testSecret, time.Now, func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		for {
			old := peak.Load()
			if n <= old || peak.CompareAndSwap(old, n) {
				break
			}
		}
		<-gate
		inFlight.Add(-1)
	})
	s := compile(t, newProvider(t, opts{allowPrivate: true, config: `{"max_per_host":2}`}), `{}`)
	items := make([]sdk.Item, 6)
	for i := range items {
		items[i] = item(fmt.Sprintf("itm_%d", i), `{"url":"`+rc.srv.URL+`"}`)
	}
	done := make(chan []sdk.Result)
	go func() { done <- s.Send(context.Background(), items) }()
	waitFor(t, func() bool { return inFlight.Load() == 2 })
	// Let requests through one at a time; the limit must hold throughout.
	var results []sdk.Result
	for results == nil {
		select {
		case gate <- struct{}{}:
		case results = <-done:
		}
	}
	if p := peak.Load(); p != 2 {
		t.Fatalf("peak concurrency per host = %d, want 2", p)
	}
	for i, res := range results {
		if res.Outcome != sdk.OutcomeOK || res.MessageID != items[i].ID {
			t.Fatalf("result %d = %+v, want ok for %s in order", i, res, items[i].ID)
		}
	}
}

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSignedRequestGolden(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, testSecret, func() time.Time { return fixedNow }, func(w http.ResponseWriter, r *http.Request) {})
	s := compile(t, newProvider(t, opts{allowPrivate: true}), `{"headers":{"X-Source":"batchsender-test"}}`)
	if res := send1(t, s, item("itm_01JGOLDEN0000000000000000", `{"url":"`+rc.srv.URL+`/hooks/orders?v=1","payload":{"type":"order.paid","data":{"id":42}}}`)); res.Outcome != sdk.OutcomeOK {
		t.Fatalf("Send = %+v", res)
	}
	r := rc.requests()[0]
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s\n", r.Method, r.Path)
	names := make([]string, 0, len(r.Header))
	for k := range r.Header {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Fprintf(&b, "%s: %s\n", k, strings.Join(r.Header[k], ", "))
	}
	fmt.Fprintf(&b, "\n%s\n", r.Body)
	golden(t, "signed_request.golden", b.String())
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading golden file (run go test -update): %v", err)
	}
	if got != string(want) {
		t.Fatalf("%s differs (run go test -update if intended)\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"0", 0, true},
		{"120", 2 * time.Minute, true},
		{" 5 ", 5 * time.Second, true},
		{"7200", time.Hour, true},
		{fixedNow.Add(-time.Minute).UTC().Format(http.TimeFormat), 0, true},
		{fixedNow.Add(3 * time.Hour).UTC().Format(http.TimeFormat), time.Hour, true},
		{"", 0, false},
		{"-3", 0, false},
		{"soon", 0, false},
		{"1.5", 0, false},
	} {
		got, ok := parseRetryAfter(tc.in, fixedNow)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseRetryAfter(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestCleanSnippet(t *testing.T) {
	t.Parallel()
	cut := []byte(strings.Repeat("a", 1022) + "€")[:1024] // a 3-byte rune cut after 2 bytes
	if got := cleanSnippet(cut); got != strings.Repeat("a", 1022) {
		t.Errorf("cut rune not dropped: %q", got[1020:])
	}
	if got := cleanSnippet([]byte("a\x00b\xffc")); got != "a\uFFFDb\uFFFDc" {
		t.Errorf("cleanSnippet = %q", got)
	}
	long := []byte(strings.Repeat("\xff", 1024))
	if got := cleanSnippet(long); len(got) > 1024 {
		t.Errorf("cleaned snippet grew to %d bytes", len(got))
	}
}

func FuzzValidateURL(f *testing.F) {
	for _, s := range []string{
		"https://example.com/hook", "http://127.0.0.1/", "http://0x7f.0.0.1/", "http://2130706433/",
		"http://127.1/", "http://[::ffff:127.0.0.1]/", "http://localhost/", "http://[fe80::1%25eth0]/",
		"https://user:pw@example.com/", "http://example.com:99999/", "javascript:alert(1)", "http:///x",
		"http://169.254.169.254/", "http://0177.0.0.1/", "http://1.2.3.4.5/", "http://xn--bcher-kva.example/",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := parseURL(raw, false)
		if err != nil {
			return
		}
		if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" || u.User != nil {
			t.Fatalf("accepted %q with scheme %q host %q", raw, u.Scheme, u.Host)
		}
		// An accepted host, whatever its spelling, is no blocked address.
		h := u.Hostname()
		if a, ok := netguard.ParseIPv4Loose(h); ok && netguard.Check(a) != nil {
			t.Fatalf("accepted %q whose host means %s", raw, a)
		}
		if n := strings.TrimSuffix(strings.ToLower(h), "."); n == "localhost" || strings.HasSuffix(n, ".localhost") {
			t.Fatalf("accepted localhost URL %q", raw)
		}
	})
}

// writeCounter counts a connection's writes.
type writeCounter struct {
	net.Conn
	writes *atomic.Int64
}

func (c writeCounter) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// A request goes out in one write: headers and body together. A body type
// net/http does not know to be in memory makes it flush the headers first,
// which doubles the write syscalls and TCP segments on both sides.
func TestRequestIsOneWrite(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, testSecret, func() time.Time { return fixedNow }, nil)
	var writes atomic.Int64
	dial := func(ctx context.Context, network, address string) (net.Conn, error) {
		c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, network, address)
		if err != nil {
			return nil, err
		}
		return writeCounter{Conn: c, writes: &writes}, nil
	}
	p := newProvider(t, opts{allowPrivate: true, dialer: dial})
	s := compile(t, p, `{"url":"`+rc.srv.URL+`/hook"}`)
	const n = 3
	for i := range n {
		if res := send1(t, s, item(fmt.Sprintf("itm_%d", i), `{"payload":{"n":1}}`)); res.Outcome != sdk.OutcomeOK {
			t.Fatalf("send %d = %+v", i, res)
		}
	}
	if got := len(rc.requests()); got != n {
		t.Fatalf("receiver saw %d requests, want %d", got, n)
	}
	if got := writes.Load(); got != n {
		t.Fatalf("%d requests took %d writes, want one each", n, got)
	}
}
