package events

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"

	"github.com/batchsender/batchsender"
)

// SendGrid's signature headers.
const (
	sendgridSignatureHeader = "X-Twilio-Email-Event-Webhook-Signature"
	sendgridTimestampHeader = "X-Twilio-Email-Event-Webhook-Timestamp"
)

// VerifySendGrid checks a SendGrid Signed Event Webhook signature: base64
// DER ECDSA over SHA-256 of the timestamp header immediately followed by
// the raw body, with publicKey the base64 SPKI key from the settings.
func VerifySendGrid(publicKey, timestamp, signature string, body []byte) bool {
	der, err := base64.StdEncoding.DecodeString(publicKey)
	if err != nil {
		return false
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return false
	}
	pub, ok := k.(*ecdsa.PublicKey)
	if !ok {
		return false
	}
	sig, err := base64.StdEncoding.DecodeString(signature)
	if err != nil || timestamp == "" {
		return false
	}
	h := sha256.New()
	h.Write([]byte(timestamp))
	h.Write(body)
	return ecdsa.VerifyASN1(pub, h.Sum(nil), sig)
}

func sendgrid(req Request) ([]batchsender.Suppression, error) {
	var s struct {
		PublicKey string `json:"public_key"`
	}
	if err := decodeSettings(req.Config, &s); err != nil || s.PublicKey == "" {
		return nil, ErrUnauthorized
	}
	if !VerifySendGrid(s.PublicKey, req.Header.Get(sendgridTimestampHeader), req.Header.Get(sendgridSignatureHeader), req.Body) {
		return nil, ErrUnauthorized
	}
	var evs []struct {
		Email string `json:"email"`
		Event string `json:"event"`
		Type  string `json:"type"` // bounce or blocked, on bounce events
	}
	if err := json.Unmarshal(req.Body, &evs); err != nil {
		return nil, invalid("SendGrid events: the body is not a JSON array of events: %v", err)
	}
	var out []batchsender.Suppression
	for _, ev := range evs {
		var reason batchsender.SuppressionReason
		switch {
		case ev.Event == "bounce" && ev.Type != "blocked":
			// "blocked" is a temporary refusal (reputation, content), not a
			// dead mailbox.
			reason = batchsender.ReasonHardBounce
		case ev.Event == "spamreport":
			reason = batchsender.ReasonComplaint
		case ev.Event == "unsubscribe" || ev.Event == "group_unsubscribe":
			reason = batchsender.ReasonUnsubscribe
		default:
			continue
		}
		if s, ok := suppression(ev.Email, reason, "sendgrid events"); ok {
			out = append(out, s)
		}
	}
	return out, nil
}
