package httpapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/batchsender/batchsender"
)

// storedConnection stores a connection directly, sealed as the API would
// seal it: the event webhook path never provisions the provider.
func (b *bundle) storedConnection(t *testing.T, provider, name, config, secrets string) batchsender.Connection {
	t.Helper()
	sealed, err := b.box.Seal([]byte(secrets))
	if err != nil {
		t.Fatal(err)
	}
	c, err := b.store.ConnectionCreate(context.Background(), batchsender.ConnectionCreateParams{
		ProjectID: b.project, Provider: provider, Name: name, Config: json.RawMessage(config), SecretsSealed: sealed,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestProviderEventWebhooks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addSecret("key-test", "hook-pass-123")
	mg := b.storedConnection(t, "email.mailgun", "mg", `{"domain":"mg.example.com"}`, `{"api_key":"k","events":{"signing_key":"key-test"}}`)
	pm := b.storedConnection(t, "email.postmark", "pm", `{}`, `{"server_token":"t","events":{"username":"hook","password":"hook-pass-123"}}`)
	echo := b.connection(t, b.key, "echo")

	// The §7.6 Mailgun example signature, with a permanent failure.
	mgBody := func(sig string) map[string]any {
		return map[string]any{
			"signature":  map[string]string{"timestamp": "1529006854", "token": "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0", "signature": sig},
			"event-data": map[string]any{"event": "failed", "severity": "permanent", "recipient": "Gone@Example.com"},
		}
	}
	var res struct {
		Suppressed int `json:"suppressed"`
	}
	b.do(t, call{method: "POST", path: "/v1/hooks/" + mg.ID + "/events", key: keyOf(""),
		json: mgBody("2df0e54f503d31abdc1519117a730ae38748e41e86f9ae25431dbd26059468af")}).expect(t, http.StatusOK).decode(t, &res)
	if res.Suppressed != 1 {
		t.Fatalf("suppressed %d", res.Suppressed)
	}
	got := b.suppressions(t, b.key, "")
	if len(got) != 1 || got[0] != (suppressionDoc{Channel: "email", Address: "gone@example.com", Reason: "hard_bounce", Source: "mailgun events"}) {
		t.Fatalf("suppressions %+v", got)
	}
	// The same event again changes nothing.
	b.do(t, call{method: "POST", path: "/v1/hooks/" + mg.ID + "/events", key: keyOf(""),
		json: mgBody("2df0e54f503d31abdc1519117a730ae38748e41e86f9ae25431dbd26059468af")}).expect(t, http.StatusOK).decode(t, &res)
	if res.Suppressed != 0 {
		t.Fatalf("a repeated event suppressed %d", res.Suppressed)
	}

	// Forged signature, wrong basic auth: 401 and nothing added.
	b.do(t, call{method: "POST", path: "/v1/hooks/" + mg.ID + "/events", key: keyOf(""),
		json: mgBody("00" + "2df0e54f503d31abdc1519117a730ae38748e41e86f9ae25431dbd26059468")}).expectProblem(t, http.StatusUnauthorized)
	b.do(t, call{method: "POST", path: "/v1/hooks/" + pm.ID + "/events", key: keyOf(""),
		header: map[string]string{"Authorization": "Basic aG9vazp3cm9uZw=="}, // hook:wrong
		json:   map[string]any{"RecordType": "SpamComplaint", "Email": "x@example.com"}}).expectProblem(t, http.StatusUnauthorized)
	// Postmark with the right credentials.
	b.do(t, call{method: "POST", path: "/v1/hooks/" + pm.ID + "/events", key: keyOf(""),
		header: map[string]string{"Authorization": "Basic aG9vazpob29rLXBhc3MtMTIz"}, // hook:hook-pass-123
		json:   map[string]any{"RecordType": "SpamComplaint", "Email": "x@example.com"}}).expect(t, http.StatusOK)
	if n := len(b.suppressions(t, b.key, "")); n != 2 {
		t.Fatalf("%d suppressions, want 2", n)
	}

	// Unknown connections and providers without event webhooks: 404.
	b.do(t, call{method: "POST", path: "/v1/hooks/con_missing/events", key: keyOf(""), json: map[string]any{}}).expectProblem(t, http.StatusNotFound)
	b.do(t, call{method: "POST", path: "/v1/hooks/" + echo.ID + "/events", key: keyOf(""), json: map[string]any{}}).expectProblem(t, http.StatusNotFound)
}
