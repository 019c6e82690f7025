package events

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/batchsender/batchsender"
)

// svixTolerance is how far a Standard Webhooks timestamp may lie from now,
// either way, as the reference libraries allow.
const svixTolerance = 5 * time.Minute

// VerifyStandardWebhook checks a Standard Webhooks (Svix) signature header
// — space-separated "v1,<base64>" entries, any of which may match — over
// id.timestamp.body with the whsec_ secret, and that the timestamp lies
// within five minutes of now.
func VerifyStandardWebhook(secret, id, timestamp, signatures string, body []byte, now time.Time) bool {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil || len(key) == 0 || id == "" {
		return false
	}
	ts, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return false
	}
	if d := now.Sub(time.Unix(ts, 0)); d > svixTolerance || d < -svixTolerance {
		return false
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(id + "." + timestamp + "."))
	m.Write(body)
	want := m.Sum(nil)
	for _, entry := range strings.Fields(signatures) {
		v, sig, ok := strings.Cut(entry, ",")
		if !ok || v != "v1" {
			continue
		}
		got, err := base64.StdEncoding.DecodeString(sig)
		if err == nil && hmac.Equal(got, want) {
			return true
		}
	}
	return false
}

// header returns the first of the named headers that is set: Svix sends
// svix-*, the Standard Webhooks libraries webhook-*.
func header(r Request, names ...string) string {
	for _, n := range names {
		if v := r.Header.Get(n); v != "" {
			return v
		}
	}
	return ""
}

func (r *Receiver) resend(req Request) ([]batchsender.Suppression, error) {
	var s struct {
		SigningSecret string `json:"signing_secret"`
	}
	if err := decodeSettings(req.Secrets, &s); err != nil || s.SigningSecret == "" {
		return nil, ErrUnauthorized
	}
	if !VerifyStandardWebhook(s.SigningSecret, header(req, "svix-id", "webhook-id"), header(req, "svix-timestamp", "webhook-timestamp"),
		header(req, "svix-signature", "webhook-signature"), req.Body, r.opts.Now()) {
		return nil, ErrUnauthorized
	}
	var ev struct {
		Type string `json:"type"`
		Data struct {
			To []string `json:"to"`
		} `json:"data"`
	}
	if err := json.Unmarshal(req.Body, &ev); err != nil {
		return nil, invalid("Resend event: the body is not an event object: %v", err)
	}
	var reason batchsender.SuppressionReason
	switch ev.Type {
	case "email.bounced": // Resend reports only permanent rejections as bounced
		reason = batchsender.ReasonHardBounce
	case "email.complained":
		reason = batchsender.ReasonComplaint
	default:
		return nil, nil
	}
	var out []batchsender.Suppression
	for _, to := range ev.Data.To {
		if s, ok := suppression(stripName(to), reason, "resend events"); ok {
			out = append(out, s)
		}
	}
	return out, nil
}
