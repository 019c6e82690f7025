package e2e

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The official Standard Webhooks vector (spec repo, JS "sign function works").
const (
	vectorSecret    = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	vectorID        = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	vectorTimestamp = 1614265330
	vectorBody      = `{"test": 2432232314}`
	vectorSignature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
)

func vectorHeader(sig string) http.Header {
	h := http.Header{}
	h.Set("webhook-id", vectorID)
	h.Set("webhook-timestamp", strconv.Itoa(vectorTimestamp))
	h.Set("webhook-signature", sig)
	return h
}

func TestSignMatchesStandardWebhooksVector(t *testing.T) {
	t.Parallel()
	key, err := DecodeSecret(vectorSecret)
	if err != nil {
		t.Fatal(err)
	}
	if got := Sign(key, vectorID, vectorTimestamp, []byte(vectorBody)); got != vectorSignature {
		t.Fatalf("Sign = %q, want %q", got, vectorSignature)
	}
}

func TestVerifySignature(t *testing.T) {
	t.Parallel()
	key, err := DecodeSecret(vectorSecret)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Unix(vectorTimestamp, 0)
	body := []byte(vectorBody)

	t.Run("AcceptsVector", func(t *testing.T) {
		if err := VerifySignature(key, vectorHeader(vectorSignature), body, at); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("AcceptsAnyOfSeveralSignatures", func(t *testing.T) {
		h := vectorHeader("v1a,abc v1,AAAA " + vectorSignature)
		if err := VerifySignature(key, h, body, at.Add(4*time.Minute)); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("RejectsChangedBody", func(t *testing.T) {
		if err := VerifySignature(key, vectorHeader(vectorSignature), []byte(`{"test":2432232314}`), at); err == nil {
			t.Fatal("re-serialized body accepted")
		}
	})
	t.Run("RejectsOtherSecret", func(t *testing.T) {
		other, _ := DecodeSecret("whsec_" + strings.Repeat("A", 32))
		if err := VerifySignature(other, vectorHeader(vectorSignature), body, at); err == nil {
			t.Fatal("signature accepted with another secret")
		}
	})
	t.Run("RejectsStaleAndFutureTimestamps", func(t *testing.T) {
		for _, now := range []time.Time{at.Add(6 * time.Minute), at.Add(-6 * time.Minute)} {
			if err := VerifySignature(key, vectorHeader(vectorSignature), body, now); err == nil {
				t.Fatalf("timestamp accepted at %v", now)
			}
		}
	})
	t.Run("RejectsMissingHeaders", func(t *testing.T) {
		for _, name := range []string{"webhook-id", "webhook-timestamp", "webhook-signature"} {
			h := vectorHeader(vectorSignature)
			h.Del(name)
			if err := VerifySignature(key, h, body, at); err == nil {
				t.Fatalf("accepted without %s", name)
			}
		}
	})
	t.Run("RejectsEmptyV1", func(t *testing.T) {
		if err := VerifySignature(key, vectorHeader("v1,"), body, at); err == nil {
			t.Fatal("empty v1 signature accepted")
		}
	})
}

func TestReceiverVerifiesRecordsAndAnswers(t *testing.T) {
	t.Parallel()
	key, _ := DecodeSecret(vectorSecret)
	r := startReceiver(t, ReceiverOptions{
		Secret:      vectorSecret,
		RecordTimes: true,
		Behavior: func(c Call) Action {
			if c.Attempt == 1 {
				return Action{Status: http.StatusTooManyRequests, RetryAfter: "1"}
			}
			return Action{}
		},
	})
	hc := &http.Client{Transport: &http.Transport{}}
	defer hc.CloseIdleConnections()
	send := func(sig string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, r.URL+"/hook", strings.NewReader(vectorBody))
		now := time.Now().Unix()
		req.Header.Set("webhook-id", "msg_1")
		req.Header.Set("webhook-timestamp", strconv.FormatInt(now, 10))
		if sig == "" {
			sig = Sign(key, "msg_1", now, []byte(vectorBody))
		}
		req.Header.Set("webhook-signature", sig)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := send(""); resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("first attempt answered %d Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if resp := send(""); resp.StatusCode != 200 {
		t.Fatalf("second attempt answered %d", resp.StatusCode)
	}
	if resp := send("v1,AAAA"); resp.StatusCode != 401 {
		t.Fatalf("bad signature answered %d", resp.StatusCode)
	}
	d := r.Deliveries()["msg_1"]
	if d.Count != 2 || string(d.Body) != vectorBody || d.BodyDiffer || len(d.Times) != 2 || d.Statuses[0] != 429 {
		t.Fatalf("delivery recorded as %+v", d)
	}
	if n, _ := r.BadSignatures(); n != 1 || r.Requests() != 3 {
		t.Fatalf("bad signatures %d, requests %d", n, r.Requests())
	}
}
