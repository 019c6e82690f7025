package remote

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/batchsender/batchsender/sdk/sdktest"
	"github.com/batchsender/batchsender/webhook"
)

// testSecret is bytes 0..31 as a Standard Webhooks secret.
const testSecret = "whsec_" + "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

// fakeModule is a remote module written in Go the way a module author
// would: it verifies every request's signature and answers the protocol.
// It implements sdktest.Fake. answer, when set, replaces the /send answer.
type fakeModule struct {
	srv  *httptest.Server
	quit chan struct{}

	mu       sync.Mutex
	b        sdktest.Behaviour
	calls    []sdktest.Call
	bodies   [][]byte
	badSigs  int
	info     InfoResponse
	answer   func(w http.ResponseWriter, req SendRequest)
	validate func(req ValidateRequest) ValidateResponse
	preview  func(req PreviewRequest) PreviewResponse
}

func newFakeModule(t *testing.T) *fakeModule {
	t.Helper()
	f := &fakeModule{
		quit: make(chan struct{}),
		info: InfoResponse{
			Protocol: 1, ID: "chat.fake", Title: "Fake chat module", MaxChunk: 0,
			ItemSchema: json.RawMessage(`{"type":"object","required":["to","text"],"properties":{"to":{"type":"string"},"text":{"type":"string"}}}`),
		},
	}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(func() {
		close(f.quit)
		f.srv.Close()
		if n := f.badSignatures(); n > 0 {
			t.Errorf("fake module saw %d requests with a bad signature", n)
		}
	})
	return f
}

func (f *fakeModule) Set(b sdktest.Behaviour) { f.mu.Lock(); f.b = b; f.mu.Unlock() }

func (f *fakeModule) Calls() []sdktest.Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]sdktest.Call(nil), f.calls...)
}

func (f *fakeModule) badSignatures() int { f.mu.Lock(); defer f.mu.Unlock(); return f.badSigs }

func (f *fakeModule) sendBodies() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]byte(nil), f.bodies...)
}

func (f *fakeModule) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if err := webhook.Verify(testSecret, r.Header, body, time.Now(), 0); err != nil || r.Header.Get(HeaderProtocol) != "1" {
		f.mu.Lock()
		f.badSigs++
		f.mu.Unlock()
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	f.mu.Lock()
	info, validate, preview, custom, b := f.info, f.validate, f.preview, f.answer, f.b
	f.mu.Unlock()
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/mod/info":
		writeJSON(w, http.StatusOK, info)
	case r.Method == http.MethodPost && r.URL.Path == "/mod/validate":
		var req ValidateRequest
		if err := json.Unmarshal(body, &req); err != nil || validate == nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		writeJSON(w, http.StatusOK, validate(req))
	case r.Method == http.MethodPost && r.URL.Path == "/mod/preview":
		var req PreviewRequest
		if err := json.Unmarshal(body, &req); err != nil || preview == nil || len(req.Items) != 1 {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		writeJSON(w, http.StatusOK, preview(req))
	case r.Method == http.MethodPost && r.URL.Path == "/mod/send":
		var req SendRequest
		if err := json.Unmarshal(body, &req); err != nil {
			http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
			return
		}
		call := sdktest.Call{Items: len(req.Items)}
		for _, it := range req.Items {
			call.Keys = append(call.Keys, it.ID)
		}
		f.mu.Lock()
		f.calls = append(f.calls, call)
		f.bodies = append(f.bodies, body)
		f.mu.Unlock()
		if custom != nil {
			custom(w, req)
			return
		}
		f.answerSend(w, r, req, b)
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeModule) answerSend(w http.ResponseWriter, r *http.Request, req SendRequest, b sdktest.Behaviour) {
	switch b.Mode {
	case sdktest.Accept:
		var resp SendResponse
		for _, it := range req.Items {
			res := WireResult{Outcome: "ok", MessageID: "msg-" + it.ID}
			for _, k := range b.RejectKeys {
				if k == it.ID {
					res = WireResult{Outcome: "permanent", Error: "recipient refused"}
				}
			}
			resp.Results = append(resp.Results, res)
		}
		writeJSON(w, http.StatusOK, resp)
	case sdktest.RateLimit:
		w.Header().Set("Retry-After", strconv.Itoa(int(b.RetryAfter/time.Second)))
		http.Error(w, "slow down", http.StatusTooManyRequests)
	case sdktest.ServerError:
		http.Error(w, "unavailable", http.StatusServiceUnavailable)
	case sdktest.Reject:
		http.Error(w, "invalid chunk", http.StatusUnprocessableEntity)
	case sdktest.Hang:
		select {
		case <-r.Context().Done():
		case <-f.quit:
		}
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// connection returns config and secrets pointing at the fake.
func (f *fakeModule) connection(extra map[string]any) (json.RawMessage, json.RawMessage) {
	cfg := map[string]any{"url": f.srv.URL + "/mod", "timeout": "2s"}
	for k, v := range extra {
		cfg[k] = v
	}
	c, _ := json.Marshal(cfg)
	s, _ := json.Marshal(Secrets{SigningSecret: testSecret})
	return c, s
}

func sampleItem(i int) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"to":"user%d","text":"hello %d"}`, i, i))
}
