package events_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/batchsender/batchsender/events"
)

func TestStandardWebhookVector(t *testing.T) {
	t.Parallel()
	// §7.2: the Standard Webhooks spec repository's vector.
	const secret, id, ts, body, sig = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330",
		`{"test": 2432232314}`, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
	at := time.Unix(1614265330, 0)
	if !events.VerifyStandardWebhook(secret, id, ts, "v1,bm90IGl0 "+sig, []byte(body), at.Add(time.Minute)) {
		t.Fatal("the spec's vector does not verify")
	}
	for name, ok := range map[string]bool{
		"too old":      events.VerifyStandardWebhook(secret, id, ts, sig, []byte(body), at.Add(6*time.Minute)),
		"too new":      events.VerifyStandardWebhook(secret, id, ts, sig, []byte(body), at.Add(-6*time.Minute)),
		"other id":     events.VerifyStandardWebhook(secret, "msg_other", ts, sig, []byte(body), at),
		"other body":   events.VerifyStandardWebhook(secret, id, ts, sig, []byte(`{"test": 1}`), at),
		"v1a only":     events.VerifyStandardWebhook(secret, id, ts, "v1a,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", []byte(body), at),
		"empty header": events.VerifyStandardWebhook(secret, id, ts, "", []byte(body), at),
	} {
		if ok {
			t.Errorf("%s verifies", name)
		}
	}
}

func TestResendEvents(t *testing.T) {
	t.Parallel()
	key := []byte("0123456789abcdef0123456789abcdef")
	secret := "whsec_" + base64.StdEncoding.EncodeToString(key)
	now := time.Unix(1_800_000_000, 0)
	r := events.New(events.Options{Now: func() time.Time { return now }})
	secrets, _ := json.Marshal(map[string]string{"signing_secret": secret})
	req := func(body string, sigKey []byte) events.Request {
		ts := strconv.FormatInt(now.Unix(), 10)
		m := hmac.New(sha256.New, sigKey)
		m.Write([]byte("msg_1." + ts + "." + body))
		h := http.Header{}
		h.Set("svix-id", "msg_1")
		h.Set("svix-timestamp", ts)
		h.Set("svix-signature", "v1,"+base64.StdEncoding.EncodeToString(m.Sum(nil)))
		return events.Request{Header: h, Body: []byte(body), Secrets: secrets}
	}
	for _, tc := range []struct{ body, want string }{
		{`{"type":"email.bounced","data":{"email_id":"e1","to":["Ann <Ann@example.com>"]}}`, "ann@example.com=hard_bounce"},
		{`{"type":"email.complained","data":{"to":["bob@example.com"]}}`, "bob@example.com=complaint"},
		{`{"type":"email.delivered","data":{"to":["cy@example.com"]}}`, ""},
	} {
		got, err := r.Handle(context.Background(), "email.resend", req(tc.body, key))
		if s := suppressionsOf(t, got, err); s != tc.want {
			t.Errorf("%s: %q, want %q", tc.body, s, tc.want)
		}
	}
	if _, err := r.Handle(context.Background(), "email.resend", req(`{"type":"email.bounced","data":{"to":["x@example.com"]}}`, []byte("another key"))); !errors.Is(err, events.ErrUnauthorized) {
		t.Fatalf("wrong key: %v", err)
	}
}
