package events_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // signing test messages as SNS SignatureVersion 1 does
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/events"
)

// §7.4 of the provider facts: sendgrid-go's published test vector.
const (
	sgVectorKey  = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA=="
	sgVectorTS   = "1588788367"
	sgVectorBody = `{"category":"example_payload","event":"test_event","message_id":"message_id"}`
	sgVectorSig  = "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0="
)

func TestSendGridVector(t *testing.T) {
	t.Parallel()
	if !events.VerifySendGrid(sgVectorKey, sgVectorTS, sgVectorSig, []byte(sgVectorBody)) {
		t.Fatal("the published vector does not verify")
	}
	if events.VerifySendGrid(sgVectorKey, "1588788368", sgVectorSig, []byte(sgVectorBody)) {
		t.Fatal("a changed timestamp verifies")
	}
	if events.VerifySendGrid(sgVectorKey, sgVectorTS, sgVectorSig, []byte(strings.Replace(sgVectorBody, "test_event", "bounce", 1))) {
		t.Fatal("a changed body verifies")
	}
}

func suppressionsOf(t *testing.T, got []batchsender.Suppression, err error) string {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	var parts []string
	for _, s := range got {
		if s.Channel != "email" || s.Source == "" {
			t.Fatalf("suppression %+v", s)
		}
		parts = append(parts, s.Address+"="+string(s.Reason))
	}
	return strings.Join(parts, " ")
}

func TestSendGridEvents(t *testing.T) {
	t.Parallel()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	cfg, _ := json.Marshal(map[string]string{"public_key": base64.StdEncoding.EncodeToString(der)})
	body := []byte(`[{"email":"Ann@Example.com","event":"bounce","type":"bounce","sg_event_id":"1"},
		{"email":"bob@example.com","event":"bounce","type":"blocked"},
		{"email":"cy@example.com","event":"spamreport"},
		{"email":"dee@example.com","event":"delivered"},
		{"email":"eve@example.com","event":"unsubscribe"}]`)
	ts := "1700000000"
	h := sha256.Sum256(append([]byte(ts), body...))
	sig, err := ecdsa.SignASN1(rand.Reader, key, h[:])
	if err != nil {
		t.Fatal(err)
	}
	hdr := http.Header{}
	hdr.Set("X-Twilio-Email-Event-Webhook-Timestamp", ts)
	hdr.Set("X-Twilio-Email-Event-Webhook-Signature", base64.StdEncoding.EncodeToString(sig))
	r := events.New(events.Options{})
	got, err := r.Handle(context.Background(), "email.sendgrid", events.Request{Header: hdr, Body: body, Config: cfg})
	if s := suppressionsOf(t, got, err); s != "ann@example.com=hard_bounce cy@example.com=complaint eve@example.com=unsubscribe" {
		t.Fatalf("suppressions %s", s)
	}
	// Tampered, unsigned, or not configured: unauthorized.
	for name, req := range map[string]events.Request{
		"tampered":     {Header: hdr, Body: []byte(strings.Replace(string(body), "delivered", "bounce", 1)), Config: cfg},
		"unsigned":     {Header: http.Header{}, Body: body, Config: cfg},
		"unconfigured": {Header: hdr, Body: body},
		"vector key":   {Header: hdr, Body: body, Config: json.RawMessage(`{"public_key":"` + sgVectorKey + `"}`)},
	} {
		if _, err := r.Handle(context.Background(), "email.sendgrid", req); !errors.Is(err, events.ErrUnauthorized) {
			t.Errorf("%s: %v, want ErrUnauthorized", name, err)
		}
	}
}

func TestMailgun(t *testing.T) {
	t.Parallel()
	// §7.6 (self-computed, for consistency).
	const key, ts, token, want = "key-test", "1529006854", "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0", "2df0e54f503d31abdc1519117a730ae38748e41e86f9ae25431dbd26059468af"
	if !events.VerifyMailgun(key, ts, token, want) {
		t.Fatal("the §7.6 example does not verify")
	}
	if events.VerifyMailgun(key, ts, token+"x", want) || events.VerifyMailgun("other", ts, token, want) {
		t.Fatal("a wrong token or key verifies")
	}
	body := func(event, severity, sig string) []byte {
		b, _ := json.Marshal(map[string]any{
			"signature":  map[string]string{"timestamp": ts, "token": token, "signature": sig},
			"event-data": map[string]any{"event": event, "severity": severity, "recipient": "Ann@example.com"},
		})
		return b
	}
	secrets := json.RawMessage(`{"signing_key":"key-test"}`)
	r := events.New(events.Options{})
	for _, tc := range []struct{ event, severity, want string }{
		{"failed", "permanent", "ann@example.com=hard_bounce"},
		{"failed", "temporary", ""},
		{"complained", "", "ann@example.com=complaint"},
		{"unsubscribed", "", "ann@example.com=unsubscribe"},
		{"delivered", "", ""},
	} {
		got, err := r.Handle(context.Background(), "email.mailgun", events.Request{Body: body(tc.event, tc.severity, want), Secrets: secrets})
		if s := suppressionsOf(t, got, err); s != tc.want {
			t.Errorf("%s/%s: %q, want %q", tc.event, tc.severity, s, tc.want)
		}
	}
	if _, err := r.Handle(context.Background(), "email.mailgun", events.Request{Body: body("failed", "permanent", strings.Repeat("0", 64)), Secrets: secrets}); !errors.Is(err, events.ErrUnauthorized) {
		t.Fatalf("bad signature: %v", err)
	}
}

func TestPostmark(t *testing.T) {
	t.Parallel()
	secrets := json.RawMessage(`{"username":"hook","password":"s3cret-pass"}`)
	r := events.New(events.Options{})
	auth := func(u, p string) http.Header {
		h := http.Header{}
		req := &http.Request{Header: h}
		req.SetBasicAuth(u, p)
		return h
	}
	ok := auth("hook", "s3cret-pass")
	for _, tc := range []struct{ body, want string }{
		{`{"RecordType":"Bounce","Type":"HardBounce","Email":"ann@example.com"}`, "ann@example.com=hard_bounce"},
		{`{"RecordType":"Bounce","Type":"SoftBounce","Email":"ann@example.com"}`, ""},
		{`{"RecordType":"SpamComplaint","Email":"Bob@example.com"}`, "bob@example.com=complaint"},
		{`{"RecordType":"SubscriptionChange","Recipient":"cy@example.com","SuppressSending":true}`, "cy@example.com=unsubscribe"},
		{`{"RecordType":"SubscriptionChange","Recipient":"cy@example.com","SuppressSending":false}`, ""},
		{`{"RecordType":"Delivery","Recipient":"cy@example.com"}`, ""},
	} {
		got, err := r.Handle(context.Background(), "email.postmark", events.Request{Header: ok, Body: []byte(tc.body), Secrets: secrets})
		if s := suppressionsOf(t, got, err); s != tc.want {
			t.Errorf("%s: %q, want %q", tc.body, s, tc.want)
		}
	}
	body := []byte(`{"RecordType":"SpamComplaint","Email":"bob@example.com"}`)
	for name, h := range map[string]http.Header{"wrong password": auth("hook", "guess"), "wrong user": auth("x", "s3cret-pass"), "none": {}} {
		if _, err := r.Handle(context.Background(), "email.postmark", events.Request{Header: h, Body: body, Secrets: secrets}); !errors.Is(err, events.ErrUnauthorized) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := r.Handle(context.Background(), "sms.twilio", events.Request{}); !errors.Is(err, events.ErrUnsupported) {
		t.Fatalf("sms.twilio: %v", err)
	}
}

func TestCheckSNSURL(t *testing.T) {
	t.Parallel()
	for _, u := range []string{
		"https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
		"https://sns.eu-central-1.amazonaws.com/?Action=ConfirmSubscription&Token=x",
		"https://sns.us-gov-west-1.amazonaws.com/x.pem",
		"https://sns.cn-north-1.amazonaws.com.cn/x.pem",
	} {
		if err := events.CheckSNSURL(u); err != nil {
			t.Errorf("%s refused: %v", u, err)
		}
	}
	for _, u := range []string{
		"http://sns.us-east-1.amazonaws.com/x.pem",
		"https://sns.us-east-1.amazonaws.com.evil.example/x.pem",
		"https://evil.example/sns.us-east-1.amazonaws.com/x.pem",
		"https://user@sns.us-east-1.amazonaws.com/x.pem",
		"https://sns.us-east-1.amazonaws.com:8443/x.pem",
		"https://s3.us-east-1.amazonaws.com/x.pem",
		"https://169.254.169.254/latest/meta-data/",
		"https://127.0.0.1/x.pem",
		"file:///etc/passwd",
	} {
		if events.CheckSNSURL(u) == nil {
			t.Errorf("%s accepted", u)
		}
	}
}

// snsSigner plays SNS: a locally generated key and certificate, served
// through the injected certificate source at one SNS-looking URL.
type snsSigner struct {
	key     *rsa.PrivateKey
	cert    *x509.Certificate
	certURL string

	mu        sync.Mutex
	fetched   []string
	confirmed []string
}

func newSNSSigner(t *testing.T) *snsSigner {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sns.amazonaws.com"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &snsSigner{key: key, cert: cert, certURL: "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem"}
}

func (s *snsSigner) receiver() *events.Receiver {
	return events.New(events.Options{
		SNSCertificate: func(_ context.Context, url string) (*x509.Certificate, error) {
			s.mu.Lock()
			s.fetched = append(s.fetched, url)
			s.mu.Unlock()
			if url != s.certURL {
				return nil, fmt.Errorf("no certificate at %s", url)
			}
			return s.cert, nil
		},
		SNSConfirm: func(_ context.Context, url string) error {
			s.mu.Lock()
			s.confirmed = append(s.confirmed, url)
			s.mu.Unlock()
			return nil
		},
	})
}

// sign fills Signature for the message m (a map of SNS fields).
func (s *snsSigner) sign(t *testing.T, m map[string]string, version string) []byte {
	t.Helper()
	m["SignatureVersion"], m["SigningCertURL"] = version, s.certURL
	var keys []string
	if m["Type"] == "Notification" {
		keys = []string{"Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"}
	} else {
		keys = []string{"Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"}
	}
	var b strings.Builder
	for _, k := range keys {
		if v, ok := m[k]; ok {
			b.WriteString(k + "\n" + v + "\n")
		}
	}
	var sig []byte
	var err error
	if version == "1" {
		d := sha1.Sum([]byte(b.String())) //nolint:gosec // SNS SignatureVersion 1
		sig, err = rsa.SignPKCS1v15(rand.Reader, s.key, crypto.SHA1, d[:])
	} else {
		d := sha256.Sum256([]byte(b.String()))
		sig, err = rsa.SignPKCS1v15(rand.Reader, s.key, crypto.SHA256, d[:])
	}
	if err != nil {
		t.Fatal(err)
	}
	m["Signature"] = base64.StdEncoding.EncodeToString(sig)
	out, _ := json.Marshal(m)
	return out
}

const topic = "arn:aws:sns:us-east-1:123456789012:ses-events"

func notification(message string) map[string]string {
	return map[string]string{"Type": "Notification", "MessageId": "m-1", "TopicArn": topic,
		"Message": message, "Timestamp": "2026-12-04T12:00:00.000Z"}
}

func TestSESThroughSNS(t *testing.T) {
	t.Parallel()
	s := newSNSSigner(t)
	r := s.receiver()
	cfg := json.RawMessage(`{"topic_arns":["` + topic + `"]}`)
	bounce := `{"eventType":"Bounce","bounce":{"bounceType":"Permanent","bouncedRecipients":[{"emailAddress":"Ann <Ann@Example.com>"},{"emailAddress":"bob@example.com"}]}}`
	for _, v := range []string{"1", "2"} {
		got, err := r.Handle(context.Background(), "email.ses", events.Request{Body: s.sign(t, notification(bounce), v), Config: cfg})
		if got := suppressionsOf(t, got, err); got != "ann@example.com=hard_bounce bob@example.com=hard_bounce" {
			t.Fatalf("version %s: %s", v, got)
		}
	}
	withSubject := notification(`{"notificationType":"Complaint","complaint":{"complainedRecipients":[{"emailAddress":"cy@example.com"}]}}`)
	withSubject["Subject"] = "Amazon SES Email Event Notification"
	got, err := r.Handle(context.Background(), "email.ses", events.Request{Body: s.sign(t, withSubject, "2"), Config: cfg})
	if got := suppressionsOf(t, got, err); got != "cy@example.com=complaint" {
		t.Fatalf("complaint: %s", got)
	}
	transient := `{"eventType":"Bounce","bounce":{"bounceType":"Transient","bouncedRecipients":[{"emailAddress":"dee@example.com"}]}}`
	got, err = r.Handle(context.Background(), "email.ses", events.Request{Body: s.sign(t, notification(transient), "2"), Config: cfg})
	if got := suppressionsOf(t, got, err); got != "" {
		t.Fatalf("transient bounce: %s", got)
	}

	// Tampering with a signed field, another topic, a certificate URL off
	// SNS, or no settings at all: unauthorized.
	signed := s.sign(t, notification(bounce), "2")
	var m map[string]string
	_ = json.Unmarshal(signed, &m)
	tampered := map[string]string{}
	for k, v := range m {
		tampered[k] = v
	}
	tampered["Message"] = strings.Replace(bounce, "bob@", "carol@", 1)
	tamperedBody, _ := json.Marshal(tampered)
	offSNS := map[string]string{}
	for k, v := range m {
		offSNS[k] = v
	}
	offSNS["SigningCertURL"] = "https://attacker.example/cert.pem"
	offSNSBody, _ := json.Marshal(offSNS)
	for name, req := range map[string]events.Request{
		"tampered":     {Body: tamperedBody, Config: cfg},
		"other topic":  {Body: signed, Config: json.RawMessage(`{"topic_arns":["arn:aws:sns:us-east-1:1:other"]}`)},
		"cert off SNS": {Body: offSNSBody, Config: cfg},
		"unconfigured": {Body: signed},
	} {
		if _, err := r.Handle(context.Background(), "email.ses", events.Request{Body: req.Body, Config: req.Config}); !errors.Is(err, events.ErrUnauthorized) {
			t.Errorf("%s: %v, want ErrUnauthorized", name, err)
		}
	}
	s.mu.Lock()
	for _, u := range s.fetched {
		if u != s.certURL {
			t.Errorf("fetched a certificate from %s", u)
		}
	}
	s.mu.Unlock()
}

func TestSNSSubscriptionConfirmation(t *testing.T) {
	t.Parallel()
	s := newSNSSigner(t)
	r := s.receiver()
	cfg := json.RawMessage(`{"topic_arns":["` + topic + `"]}`)
	sub := "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=" + topic + "&Token=tok"
	msg := map[string]string{"Type": "SubscriptionConfirmation", "MessageId": "m-2", "Token": "tok", "TopicArn": topic,
		"Message": "You have chosen to subscribe", "SubscribeURL": sub, "Timestamp": "2026-12-04T12:00:00.000Z"}
	// A topic the connection does not list is not subscribed to.
	if _, err := r.Handle(context.Background(), "email.ses", events.Request{Body: s.sign(t, msg, "1"), Config: json.RawMessage(`{}`)}); !errors.Is(err, events.ErrUnauthorized) {
		t.Fatalf("unlisted topic: %v", err)
	}
	got, err := r.Handle(context.Background(), "email.ses", events.Request{Body: s.sign(t, msg, "1"), Config: cfg})
	if err != nil || len(got) != 0 {
		t.Fatalf("confirmation: %v %v", got, err)
	}
	// A signed message whose SubscribeURL points elsewhere is not followed.
	msg["SubscribeURL"] = "https://127.0.0.1/confirm"
	if _, err := r.Handle(context.Background(), "email.ses", events.Request{Body: s.sign(t, msg, "1"), Config: cfg}); !errors.Is(err, events.ErrUnauthorized) {
		t.Fatalf("bad SubscribeURL: %v", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.confirmed) != 1 || s.confirmed[0] != sub {
		t.Fatalf("confirmed %v", s.confirmed)
	}
}
