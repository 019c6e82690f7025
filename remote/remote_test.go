package remote

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/batchsender/batchsender/sdk"
)

// provision returns a provider connected to f (private networks allowed,
// as the operator would for a loopback module).
func provision(t *testing.T, f *fakeModule, extra map[string]any) *Provider {
	t.Helper()
	cfg, sec := f.connection(extra)
	p := new(Provider)
	err := p.Provision(context.Background(), sdk.Env{
		Config: cfg, Secrets: sec, AllowPrivateNetworks: true,
		Dialer: (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
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
		t.Fatalf("Compile: %v", err)
	}
	return s
}

func items(n int) []sdk.Item {
	out := make([]sdk.Item, n)
	for i := range out {
		out[i] = sdk.Item{ID: "itm_" + string(rune('a'+i)), Seq: int64(i + 1), Attempt: 2, Data: sampleItem(i)}
	}
	return out
}

func TestSendCarriesTheDocumentedBody(t *testing.T) {
	t.Parallel()
	f := newFakeModule(t)
	s := compile(t, provision(t, f, nil), `{ "prefix": "hi" }`)
	res := s.Send(context.Background(), items(2))
	for i, r := range res {
		if r.Outcome != sdk.OutcomeOK || r.MessageID != "msg-"+items(2)[i].ID || r.Units != 1 || r.StatusCode != 200 {
			t.Errorf("result %d: %+v", i, r)
		}
	}
	bodies := f.sendBodies()
	if len(bodies) != 1 {
		t.Fatalf("%d calls, want 1", len(bodies))
	}
	want := `{"template":{"prefix":"hi"},"items":[{"id":"itm_a","seq":1,"attempt":2,"data":{"to":"user0","text":"hello 0"}},{"id":"itm_b","seq":2,"attempt":2,"data":{"to":"user1","text":"hello 1"}}]}`
	if string(bodies[0]) != want {
		t.Errorf("body\n got %s\nwant %s", bodies[0], want)
	}
}

func TestBadAnswersRetryEveryItemWithAClearError(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, body, want string
		status           int
	}{
		{"WrongCount", `{"results":[{"outcome":"ok"}]}`, "1 results for 3 items", 200},
		{"NotJSON", `<html>oops</html>`, "malformed module answer", 200},
		{"UnknownOutcome", `{"results":[{"outcome":"ok"},{"outcome":"maybe"},{"outcome":"ok"}]}`, `results[1]: outcome "maybe"`, 200},
		{"NegativeUnits", `{"results":[{"outcome":"ok","units":-1},{"outcome":"ok"},{"outcome":"ok"}]}`, "negative", 200},
		{"BadGateway", `upstream down`, "module answered 502 Bad Gateway: upstream down", 502},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeModule(t)
			f.answer = func(w http.ResponseWriter, _ SendRequest) {
				w.WriteHeader(c.status)
				_, _ = w.Write([]byte(c.body))
			}
			res := compile(t, provision(t, f, nil), `{}`).Send(context.Background(), items(3))
			for i, r := range res {
				if r.Outcome != sdk.OutcomeRetry || r.Err == nil || !strings.Contains(r.Err.Error(), c.want) {
					t.Errorf("item %d: %v %v, want retry containing %q", i, r.Outcome, r.Err, c.want)
				}
			}
		})
	}
}

func TestWireResultsMapToOutcomes(t *testing.T) {
	t.Parallel()
	f := newFakeModule(t)
	f.answer = func(w http.ResponseWriter, _ SendRequest) {
		writeJSON(w, 200, map[string]any{"results": []map[string]any{
			{"outcome": "ok", "units": 3},
			{"outcome": "retry", "retry_after_seconds": 30, "error": "busy"},
			{"outcome": "permanent", "error": "no such user"},
			{"outcome": "unknown"},
		}})
	}
	res := compile(t, provision(t, f, nil), `{}`).Send(context.Background(), items(4))
	if r := res[0]; r.Outcome != sdk.OutcomeOK || r.MessageID != "itm_a" || r.Units != 3 {
		t.Errorf("ok: %+v (message ID defaults to the item ID)", r)
	}
	if r := res[1]; r.Outcome != sdk.OutcomeRetry || r.RetryAfter != 30*time.Second || r.Err.Error() != "busy" {
		t.Errorf("retry: %+v", r)
	}
	if r := res[2]; r.Outcome != sdk.OutcomePermanent || r.Err.Error() != "no such user" || !strings.Contains(r.Response, "no such user") {
		t.Errorf("permanent: %+v", r)
	}
	if r := res[3]; r.Outcome != sdk.OutcomeUnknown || r.Err == nil {
		t.Errorf("unknown: %+v", r)
	}
}

func TestClientErrorIsPermanentForTheChunk(t *testing.T) {
	t.Parallel()
	f := newFakeModule(t)
	f.answer = func(w http.ResponseWriter, _ SendRequest) {
		http.Error(w, "template field missing", http.StatusBadRequest)
	}
	for i, r := range compile(t, provision(t, f, nil), `{}`).Send(context.Background(), items(2)) {
		if r.Outcome != sdk.OutcomePermanent || r.StatusCode != 400 || !strings.Contains(r.Err.Error(), "template field missing") {
			t.Errorf("item %d: %+v", i, r)
		}
	}
}

func TestSendSplitsIntoTheModulesChunkSize(t *testing.T) {
	t.Parallel()
	f := newFakeModule(t)
	f.info.MaxChunk = 3
	p := provision(t, f, map[string]any{"max_chunk": 10})
	res := compile(t, p, `{}`).Send(context.Background(), items(7))
	for i, r := range res {
		if r.Outcome != sdk.OutcomeOK || r.MessageID != "msg-"+items(7)[i].ID {
			t.Errorf("item %d: %+v", i, r)
		}
	}
	total := 0
	for _, c := range f.Calls() {
		if c.Items > 3 {
			t.Errorf("a call carried %d items, more than the module's 3", c.Items)
		}
		total += c.Items
	}
	if total != 7 || len(f.Calls()) != 3 {
		t.Errorf("%d items in %d calls, want 7 in 3", total, len(f.Calls()))
	}
}

func TestModuleValidatesTemplateAndItems(t *testing.T) {
	t.Parallel()
	f := newFakeModule(t)
	f.info.Validate = true
	f.validate = func(req ValidateRequest) ValidateResponse {
		var tpl map[string]any
		_ = json.Unmarshal(req.Template, &tpl)
		resp := ValidateResponse{Errors: make([]*string, len(req.Items))}
		if _, ok := tpl["channel"]; !ok {
			resp.TemplateError = "channel: required"
		}
		for i, it := range req.Items {
			var d map[string]any
			_ = json.Unmarshal(it.Data, &d)
			if s, _ := d["text"].(string); len(s) > 10 {
				msg := "text: longer than 10 characters"
				resp.Errors[i] = &msg
			}
		}
		return resp
	}
	p := provision(t, f, nil)
	if _, err := p.Compile(json.RawMessage(`{}`)); err == nil || err.Error() != "template: channel: required" {
		t.Errorf("Compile without channel: %v", err)
	}
	s := compile(t, p, `{"channel":"#general"}`)
	if err := s.ValidateItem(json.RawMessage(`{"to":"a","text":"short"}`)); err != nil {
		t.Errorf("valid item: %v", err)
	}
	if err := s.ValidateItem(json.RawMessage(`{"to":"a","text":"far too long for it"}`)); err == nil || err.Error() != "text: longer than 10 characters" {
		t.Errorf("long item: %v", err)
	}
	// Local schema checks come first and need no call.
	for item, want := range map[string]string{
		`{"text":"x"}`:          "to: required",
		`{"to":5,"text":"x"}`:   "to: must be of type [string], got integer",
		`[1]`:                   "item: must be a JSON object",
		`{"to":null,"text":""}`: "to: required",
	} {
		if err := s.ValidateItem(json.RawMessage(item)); err == nil || err.Error() != want {
			t.Errorf("ValidateItem(%s) = %v, want %q", item, err, want)
		}
	}
}

func TestProvisionRefusesBadConnections(t *testing.T) {
	t.Parallel()
	f := newFakeModule(t)
	good, sec := f.connection(nil)
	cases := []struct {
		name         string
		cfg, secrets string
		allowPrivate bool
		want         string
	}{
		{"NoURL", `{}`, string(sec), true, "config: url: is required"},
		{"BadScheme", `{"url":"ftp://example.com"}`, string(sec), true, "scheme must be http or https"},
		{"Query", `{"url":"https://example.com/m?x=1"}`, string(sec), true, "query"},
		{"UnknownField", `{"url":"https://example.com","urls":1}`, string(sec), true, `unknown field "urls"`},
		{"BadTimeout", `{"url":"https://example.com","timeout":"soon"}`, string(sec), true, "timeout"},
		{"ChunkTooBig", `{"url":"https://example.com","max_chunk":501}`, string(sec), true, "max_chunk: must be between 1 and 500"},
		// Decided before any connection is made: no packet leaves.
		{"LoopbackNeedsOperator", `{"url":"http://127.0.0.1:9/m"}`, string(sec), false, "config: url:"},
		{"MetadataAlwaysRefused", `{"url":"http://169.254.169.254/m"}`, string(sec), true, "config: url:"},
		{"NoSecret", string(good), `{}`, true, "signing_secret is required"},
		{"ShortSecret", string(good), `{"signing_secret":"whsec_AAAA"}`, true, "24 to 64"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			err := new(Provider).Provision(context.Background(), sdk.Env{
				Config: json.RawMessage(c.cfg), Secrets: json.RawMessage(c.secrets), AllowPrivateNetworks: c.allowPrivate,
			})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Provision = %v, want an error containing %q", err, c.want)
			}
			if err != nil && strings.Contains(err.Error(), testSecret[6:]) {
				t.Errorf("error shows the secret: %v", err)
			}
		})
	}
}

func TestProvisionChecksTheModulesInfo(t *testing.T) {
	t.Parallel()
	for name, info := range map[string]InfoResponse{
		"BadID":       {ID: "Chat"},
		"NewProtocol": {ID: "chat.x", Protocol: 2},
		"BadSchema":   {ID: "chat.x", ItemSchema: json.RawMessage(`{"type":"array"}`)},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := newFakeModule(t)
			f.info = info
			cfg, sec := f.connection(nil)
			err := new(Provider).Provision(context.Background(), sdk.Env{Config: cfg, Secrets: sec, AllowPrivateNetworks: true})
			if err == nil || !strings.Contains(err.Error(), "module /info") {
				t.Errorf("Provision = %v, want a module /info error", err)
			}
		})
	}
	t.Run("WrongSecretIsRefusedByTheModule", func(t *testing.T) {
		t.Parallel()
		f := newFakeModule(t)
		cfg, _ := f.connection(nil)
		err := new(Provider).Provision(context.Background(), sdk.Env{Config: cfg, AllowPrivateNetworks: true,
			Secrets: json.RawMessage(`{"signing_secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}`)})
		if err == nil || !strings.Contains(err.Error(), "401") {
			t.Errorf("Provision = %v, want the module's 401", err)
		}
		f.mu.Lock()
		f.badSigs = 0 // expected here
		f.mu.Unlock()
	})
}

func TestPreviewAsksTheModuleWhenItOffers(t *testing.T) {
	t.Parallel()
	f := newFakeModule(t)
	if _, ok := compile(t, provision(t, f, nil), `{}`).(sdk.Previewer); ok {
		t.Error("a module without preview in /info gives a Previewer")
	}
	f.info.Preview = true
	f.preview = func(req PreviewRequest) PreviewResponse {
		var d struct{ To, Text string }
		_ = json.Unmarshal(req.Items[0].Data, &d)
		if d.Text == "" {
			return PreviewResponse{Results: []PreviewResult{{Error: "text: required"}}}
		}
		if d.Text == "bad" {
			return PreviewResponse{Results: []PreviewResult{{Rendered: json.RawMessage(`"x"`)}}}
		}
		r, _ := json.Marshal(map[string]string{"line": string(req.Template) + " " + d.To + ": " + d.Text})
		return PreviewResponse{Results: []PreviewResult{{Rendered: r}}}
	}
	pv := compile(t, provision(t, f, nil), `{"p":1}`).(sdk.Previewer)
	if got, err := pv.Preview(sampleItem(3)); err != nil || string(got) != `{"line":"{\"p\":1} user3: hello 3"}` {
		t.Errorf("Preview = %s, %v", got, err)
	}
	if _, err := pv.Preview(json.RawMessage(`{"to":"a"}`)); err == nil || err.Error() != "text: required" {
		t.Errorf("Preview error = %v", err)
	}
	if _, err := pv.Preview(json.RawMessage(`{"to":"a","text":"bad"}`)); err == nil || !strings.Contains(err.Error(), "not a JSON object") {
		t.Errorf("Preview of a non-object = %v", err)
	}
	if n := len(f.Calls()); n != 0 {
		t.Errorf("previews made %d /send calls", n)
	}
}
