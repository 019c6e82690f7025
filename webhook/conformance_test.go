package webhook

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/batchsender/batchsender/sdk"
	"github.com/batchsender/batchsender/sdk/sdktest"
)

// The kit's harness gives items no way to learn a scenario's fake, and a
// webhook's destination is in the item. So every item points at one
// loopback router, and each scenario's connection carries a distinct
// User-Agent by which the router hands the request to that scenario's fake.

type router struct {
	srv   *httptest.Server
	mu    sync.Mutex
	fakes map[string]*kitFake
	next  int
}

func (rt *router) serve(w http.ResponseWriter, r *http.Request) {
	rt.mu.Lock()
	f := rt.fakes[r.Header.Get("User-Agent")]
	rt.mu.Unlock()
	if f == nil {
		http.Error(w, "unknown fake", http.StatusMisdirectedRequest)
		return
	}
	f.serve(w, r)
}

type kitFake struct {
	name  string
	quit  chan struct{}
	mu    sync.Mutex
	b     sdktest.Behaviour
	calls []sdktest.Call
}

func (f *kitFake) Set(b sdktest.Behaviour) { f.mu.Lock(); f.b = b; f.mu.Unlock() }

func (f *kitFake) Calls() []sdktest.Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]sdktest.Call(nil), f.calls...)
}

func (f *kitFake) serve(w http.ResponseWriter, r *http.Request) {
	id := r.Header.Get(HeaderID)
	f.mu.Lock()
	b := f.b
	f.calls = append(f.calls, sdktest.Call{Items: 1, Keys: []string{id}})
	f.mu.Unlock()
	switch b.Mode {
	case sdktest.Accept:
		for _, k := range b.RejectKeys {
			if k == id {
				http.Error(w, "rejected", http.StatusUnprocessableEntity)
				return
			}
		}
		w.WriteHeader(http.StatusOK)
	case sdktest.RateLimit:
		w.Header().Set("Retry-After", strconv.Itoa(int(b.RetryAfter/time.Second)))
		w.WriteHeader(http.StatusTooManyRequests)
	case sdktest.ServerError:
		w.WriteHeader(http.StatusServiceUnavailable)
	case sdktest.Reject:
		w.WriteHeader(http.StatusBadRequest)
	case sdktest.Hang:
		select {
		case <-r.Context().Done():
		case <-f.quit:
		}
	}
}

func TestConformance(t *testing.T) {
	rt := &router{fakes: map[string]*kitFake{}}
	rt.srv = httptest.NewServer(http.HandlerFunc(rt.serve))
	t.Cleanup(rt.srv.Close)
	itemURL := rt.srv.URL + "/hook"

	sdktest.Run(t, sdktest.Harness{
		New: func() sdk.Provider { return new(Provider) },
		NewFake: func(t *testing.T) sdktest.Fake {
			rt.mu.Lock()
			rt.next++
			f := &kitFake{name: fmt.Sprintf("kit-fake-%d", rt.next), quit: make(chan struct{})}
			rt.fakes[f.name] = f
			rt.mu.Unlock()
			t.Cleanup(func() { close(f.quit) })
			return f
		},
		Connection: func(fake sdktest.Fake) (json.RawMessage, json.RawMessage) {
			cfg, _ := json.Marshal(map[string]any{"timeout": "2s", "user_agent": fake.(*kitFake).name})
			sec, _ := json.Marshal(Secrets{SigningSecret: testSecret})
			return cfg, sec
		},
		Template: json.RawMessage(`{"headers":{"X-Kit":"1"}}`),
		Item: func(i int) json.RawMessage {
			return json.RawMessage(fmt.Sprintf(`{"url":%q,"payload":{"n":%d}}`, itemURL, i))
		},
		InvalidItem:     json.RawMessage(`{"payload":{"n":1}}`),
		Secrets:         []string{testSecret, testSecret[len("whsec_"):]},
		IdempotencyKeys: true,
		RetryAfter:      true,
		Timeout:         2 * time.Second,
	})
}
