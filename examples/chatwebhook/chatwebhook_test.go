package chatwebhook

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/batchsender/batchsender/sdk"
	"github.com/batchsender/batchsender/sdk/sdktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// hookPath is the fake's one incoming webhook; the webhook URL is the
// secret, so the kit checks that this never shows.
const hookPath = "/services/T0001/B0002/abcdefSECRETtoken42"

// fakeSlack speaks Slack's incoming webhook wire format: POST of a JSON
// object with a non-empty "text", answered 200 "ok"; an unknown hook is
// 404 "no_service", a body that is not JSON 400 "invalid_payload", one
// without text 400 "no_text", and rate limiting 429 with Retry-After.
type fakeSlack struct {
	srv  *httptest.Server
	quit chan struct{}

	mu    sync.Mutex
	b     sdktest.Behaviour
	calls []sdktest.Call
	texts []string
}

func newFakeSlack(t *testing.T) *fakeSlack {
	t.Helper()
	f := &fakeSlack{quit: make(chan struct{})}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(func() { close(f.quit); f.srv.Close() })
	return f
}

func (f *fakeSlack) Set(b sdktest.Behaviour) { f.mu.Lock(); f.b = b; f.mu.Unlock() }

func (f *fakeSlack) Calls() []sdktest.Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]sdktest.Call(nil), f.calls...)
}

func (f *fakeSlack) received() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.texts...)
}

func (f *fakeSlack) serve(w http.ResponseWriter, r *http.Request) {
	plain := func(code int, s string) {
		w.Header().Set("Content-Type", "text/html") // what Slack sends
		w.WriteHeader(code)
		_, _ = io.WriteString(w, s)
	}
	if r.Method != http.MethodPost {
		plain(http.StatusMethodNotAllowed, "invalid_method")
		return
	}
	if r.URL.Path != hookPath {
		plain(http.StatusNotFound, "no_service")
		return
	}
	f.mu.Lock()
	b := f.b
	f.calls = append(f.calls, sdktest.Call{Items: 1})
	f.mu.Unlock()
	switch b.Mode {
	case sdktest.RateLimit:
		w.Header().Set("Retry-After", strconv.Itoa(int(b.RetryAfter/time.Second)))
		plain(http.StatusTooManyRequests, "rate_limited")
		return
	case sdktest.ServerError:
		plain(http.StatusInternalServerError, "rollup_error")
		return
	case sdktest.Reject:
		plain(http.StatusForbidden, "action_prohibited")
		return
	case sdktest.Hang:
		select {
		case <-r.Context().Done():
		case <-f.quit:
		}
		return
	}
	if !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		plain(http.StatusBadRequest, "invalid_payload")
		return
	}
	var msg map[string]any
	if err := json.NewDecoder(r.Body).Decode(&msg); err != nil {
		plain(http.StatusBadRequest, "invalid_payload")
		return
	}
	text, _ := msg["text"].(string)
	if strings.TrimSpace(text) == "" {
		plain(http.StatusBadRequest, "no_text")
		return
	}
	f.mu.Lock()
	f.texts = append(f.texts, text)
	f.mu.Unlock()
	plain(http.StatusOK, "ok")
}

func connection(f *fakeSlack, path string) (json.RawMessage, json.RawMessage) {
	cfg, _ := json.Marshal(Config{BaseURL: f.srv.URL, Timeout: "2s"})
	sec, _ := json.Marshal(Secrets{WebhookURL: "https://hooks.slack.com" + path})
	return cfg, sec
}

func TestConformance(t *testing.T) {
	sdktest.Run(t, sdktest.Harness{
		New:     func() sdk.Provider { return new(Provider) },
		NewFake: func(t *testing.T) sdktest.Fake { return newFakeSlack(t) },
		Connection: func(fake sdktest.Fake) (json.RawMessage, json.RawMessage) {
			return connection(fake.(*fakeSlack), hookPath)
		},
		Template: json.RawMessage(`{"text":"Order {{ order }} for {{ name | default: \"you\" }} has shipped"}`),
		Item: func(i int) json.RawMessage {
			return json.RawMessage(`{"order":"A-` + strconv.Itoa(i) + `"}`)
		},
		InvalidItem: json.RawMessage(`{"name":"Ann"}`), // no order
		Secrets:     []string{"abcdefSECRETtoken42"},
		RetryAfter:  true,
		Timeout:     2 * time.Second,
	})
}

func provision(t *testing.T, f *fakeSlack, path string) *Provider {
	t.Helper()
	cfg, sec := connection(f, path)
	p := new(Provider)
	if err := p.Provision(context.Background(), sdk.Env{Config: cfg, Secrets: sec, Dialer: (&net.Dialer{}).DialContext}); err != nil {
		t.Fatalf("Provision: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func TestPostsTheRenderedText(t *testing.T) {
	t.Parallel()
	f := newFakeSlack(t)
	s, err := provision(t, f, hookPath).Compile(json.RawMessage(`{"text":"Hi {{ name | upcase }} <3"}`))
	if err != nil {
		t.Fatal(err)
	}
	res := s.Send(context.Background(), []sdk.Item{{ID: "itm_1", Seq: 1, Attempt: 1, Data: json.RawMessage(`{"name":"ann"}`)}})
	if r := res[0]; r.Outcome != sdk.OutcomeOK || r.MessageID != "itm_1" || r.Response != "ok" {
		t.Errorf("result %+v", r)
	}
	if got := f.received(); len(got) != 1 || got[0] != "Hi ANN <3" {
		t.Errorf("Slack received %q", got)
	}
	prev, err := s.(sdk.Previewer).Preview(json.RawMessage(`{"name":"bo"}`))
	if err != nil || string(prev) != `{"text":"Hi BO <3"}` {
		t.Errorf("Preview = %s, %v", prev, err)
	}
}

func TestSlackErrorsArePermanentWithTheirCode(t *testing.T) {
	t.Parallel()
	f := newFakeSlack(t)
	s, err := provision(t, f, "/services/T0001/B0002/revoked").Compile(json.RawMessage(`{"text":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	r := s.Send(context.Background(), []sdk.Item{{ID: "itm_1", Seq: 1, Attempt: 1, Data: json.RawMessage(`{}`)}})[0]
	if r.Outcome != sdk.OutcomePermanent || r.StatusCode != 404 || !strings.Contains(r.Err.Error(), "no_service") {
		t.Errorf("revoked webhook: %+v", r)
	}
}

func TestBadInputIsRefusedBeforeSending(t *testing.T) {
	t.Parallel()
	f := newFakeSlack(t)
	p := provision(t, f, hookPath)
	for tpl, want := range map[string]string{
		`{}`:                     "template.text: required",
		`{"text":"{% if %}"}`:    "template.text:",
		`{"text":"x","color":1}`: `unknown field "color"`,
	} {
		if _, err := p.Compile(json.RawMessage(tpl)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Compile(%s) = %v, want %q", tpl, err, want)
		}
	}
	s, _ := p.Compile(json.RawMessage(`{"text":"{{ greeting }}"}`))
	if err := s.ValidateItem(json.RawMessage(`{"greeting":"   "}`)); err == nil || !strings.Contains(err.Error(), "renders empty") {
		t.Errorf("blank text: %v", err)
	}
	if err := s.ValidateItem(json.RawMessage(`{}`)); err == nil || !strings.Contains(err.Error(), `"greeting"`) {
		t.Errorf("missing variable: %v", err)
	}
	if err := new(Provider).Provision(context.Background(), sdk.Env{Secrets: json.RawMessage(`{"webhook_url":"hooks"}`)}); err == nil || strings.Contains(err.Error(), "hooks\"") {
		t.Errorf("bad webhook URL: %v", err)
	}
	if n := len(f.Calls()); n != 0 {
		t.Errorf("%d requests reached Slack", n)
	}
}
