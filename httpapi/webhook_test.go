package httpapi_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	_ "github.com/batchsender/batchsender/webhook" // registers webhook.http
)

// receiver is a loopback webhook endpoint that checks signatures and
// answers 503 to the first attempt of every third item.
type receiver struct {
	mu      sync.Mutex
	key     []byte
	seen    map[string]int // webhook-id → requests
	bodies  map[string]string
	badSigs int
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	id, ts, sig := r.Header.Get("webhook-id"), r.Header.Get("webhook-timestamp"), r.Header.Get("webhook-signature")
	mac := hmac.New(sha256.New, rc.key)
	fmt.Fprintf(mac, "%s.%s.%s", id, ts, body)
	want := "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if !strings.Contains(sig, want) {
		rc.badSigs++
		http.Error(w, "bad signature", http.StatusBadRequest)
		return
	}
	rc.seen[id]++
	rc.bodies[id] = string(body)
	if rc.seen[id] == 1 && strings.Contains(string(body), `"flaky":true`) {
		http.Error(w, "try later", http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func TestWebhookEndToEnd(t *testing.T) {
	t.Parallel()
	b := setup(t, withEngine())
	key := []byte("0123456789abcdef0123456789abcdef")
	secret := "whsec_" + base64.StdEncoding.EncodeToString(key)
	b.addSecret(secret, base64.StdEncoding.EncodeToString(key))
	rc := &receiver{key: key, seen: map[string]int{}, bodies: map[string]string{}}
	dst := httptest.NewServer(rc) // 127.0.0.1
	defer dst.Close()

	b.do(t, call{method: "POST", path: "/v1/connections", json: map[string]any{
		"provider": "webhook.http", "name": "hooks", "config": map[string]any{},
		"secrets": map[string]any{"signing_secret": secret},
	}}).expect(t, http.StatusCreated)

	const n = 30
	list := make([]map[string]any, n)
	for i := range list {
		list[i] = map[string]any{"payload": map[string]any{"order": i, "flaky": i%3 == 0}}
	}
	bt := b.batch(t, map[string]any{
		"module": "webhook", "connection": "hooks",
		"template": map[string]any{"url": dst.URL + "/hook", "headers": map[string]string{"X-Source": "batchsender"}},
		"items":    list,
		"options":  map[string]any{"retry_base_delay": "10ms", "retry_max_delay": "50ms"},
	})

	_, events := b.stream(t, t.Context(), "/v1/batches/"+bt.ID+"/events")
	for {
		ev, ok := next(t, events)
		if !ok {
			t.Fatal("stream ended without done")
		}
		if ev.name == "done" {
			break
		}
	}
	got := b.getBatch(t, bt.ID)
	if got.Status != "completed" || got.Counts.Succeeded != n {
		t.Fatalf("batch ended %+v", got)
	}
	var page struct {
		Data []struct {
			ID       string `json:"id"`
			Attempts int    `json:"attempts"`
			Status   string `json:"status"`
		} `json:"data"`
	}
	b.do(t, call{method: "GET", path: "/v1/batches/" + bt.ID + "/items?limit=100"}).expect(t, http.StatusOK).decode(t, &page)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.badSigs != 0 {
		t.Fatalf("%d requests had bad signatures", rc.badSigs)
	}
	if len(page.Data) != n || len(rc.seen) != n {
		t.Fatalf("%d items, receiver saw %d distinct webhook-ids", len(page.Data), len(rc.seen))
	}
	for _, it := range page.Data {
		wantAttempts := 1
		if strings.Contains(rc.bodies[it.ID], `"flaky":true`) {
			wantAttempts = 2
		}
		if rc.seen[it.ID] != wantAttempts || it.Attempts != wantAttempts || it.Status != "succeeded" {
			t.Fatalf("item %s: %d requests, %d attempts, %s; want %d", it.ID, rc.seen[it.ID], it.Attempts, it.Status, wantAttempts)
		}
	}
}

func TestWebhookLoopbackRefusedWithoutOperatorSetting(t *testing.T) {
	t.Parallel()
	b := setup(t) // private networks not allowed
	secret := "whsec_" + base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	b.addSecret(secret)
	b.do(t, call{method: "POST", path: "/v1/connections", json: map[string]any{
		"provider": "webhook.http", "name": "hooks", "secrets": map[string]any{"signing_secret": secret},
	}}).expect(t, http.StatusCreated)
	for _, u := range []string{"http://127.0.0.1:9/x", "http://localhost/x", "http://2130706433/x", "http://[::1]/x"} {
		b.do(t, call{method: "POST", path: "/v1/batches", json: map[string]any{
			"module": "webhook", "connection": "hooks",
			"items": []map[string]any{{"url": "https://example.com/ok"}, {"url": u}},
		}}).expectProblem(t, http.StatusBadRequest, "items[1]: url")
		b.do(t, call{method: "POST", path: "/v1/batches", json: map[string]any{
			"module": "webhook", "connection": "hooks", "template": map[string]any{"url": u},
		}}).expectProblem(t, http.StatusBadRequest, "template")
	}
	if n := b.batchCount(t); n != 0 {
		t.Fatalf("%d batches were created", n)
	}
}
