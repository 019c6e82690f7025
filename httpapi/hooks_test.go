package httpapi_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/events"
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

// SES events arrive through SNS, which posts JSON labelled text/plain and
// signs it with a certificate the server fetches; here the certificate is
// made by the test and handed over through events.Options.
func TestSESEventsThroughSNS(t *testing.T) {
	t.Parallel()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	const certURL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-test.pem"
	const topic = "arn:aws:sns:eu-west-1:123456789012:ses"
	b := setup(t, withEvents(events.New(events.Options{
		SNSCertificate: func(_ context.Context, url string) (*x509.Certificate, error) {
			if url != certURL {
				return nil, fmt.Errorf("no certificate at %s", url)
			}
			return cert, nil
		},
		SNSConfirm: func(context.Context, string) error { return errors.New("not expected") },
	})))
	ses := b.storedConnection(t, "email.ses", "ses", `{"region":"eu-west-1","events":{"topic_arns":["`+topic+`"]}}`, `{}`)

	msg := map[string]string{"Type": "Notification", "MessageId": "m-1", "TopicArn": topic, "Timestamp": "2026-12-04T12:00:00.000Z",
		"Message":          `{"eventType":"Complaint","complaint":{"complainedRecipients":[{"emailAddress":"Angry@Example.com"}]}}`,
		"SignatureVersion": "2", "SigningCertURL": certURL}
	toSign := ""
	for _, k := range []string{"Message", "MessageId", "Timestamp", "TopicArn", "Type"} {
		toSign += k + "\n" + msg[k] + "\n"
	}
	sum := sha256.Sum256([]byte(toSign))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	msg["Signature"] = base64.StdEncoding.EncodeToString(sig)
	body, _ := json.Marshal(msg)

	var res struct {
		Suppressed int `json:"suppressed"`
	}
	b.do(t, call{method: "POST", path: "/v1/hooks/" + ses.ID + "/events", key: keyOf(""), contentType: "text/plain; charset=UTF-8", body: string(body)}).
		expect(t, http.StatusOK).decode(t, &res)
	got := b.suppressions(t, b.key, "")
	if res.Suppressed != 1 || len(got) != 1 || got[0].Address != "angry@example.com" || got[0].Reason != "complaint" || got[0].Source != "ses events" {
		t.Fatalf("suppressed %d: %+v", res.Suppressed, got)
	}
	// The same message with its signature broken is refused.
	msg["Signature"] = base64.StdEncoding.EncodeToString(append(sig[:len(sig)-1], sig[len(sig)-1]^1))
	body, _ = json.Marshal(msg)
	b.do(t, call{method: "POST", path: "/v1/hooks/" + ses.ID + "/events", key: keyOf(""), contentType: "text/plain; charset=UTF-8", body: string(body)}).
		expectProblem(t, http.StatusUnauthorized)
}
