package events

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"

	"github.com/batchsender/batchsender"
)

// VerifyMailgun checks a Mailgun webhook signature: hex HMAC-SHA256 of the
// timestamp followed by the token, keyed with the webhook signing key.
func VerifyMailgun(signingKey, timestamp, token, signature string) bool {
	got, err := hex.DecodeString(signature)
	if err != nil || signingKey == "" || timestamp == "" || token == "" {
		return false
	}
	m := hmac.New(sha256.New, []byte(signingKey))
	m.Write([]byte(timestamp))
	m.Write([]byte(token))
	return hmac.Equal(got, m.Sum(nil))
}

func mailgun(req Request) ([]batchsender.Suppression, error) {
	var s struct {
		SigningKey string `json:"signing_key"`
	}
	if err := decodeSettings(req.Secrets, &s); err != nil || s.SigningKey == "" {
		return nil, ErrUnauthorized
	}
	var body struct {
		Signature struct {
			Timestamp string `json:"timestamp"`
			Token     string `json:"token"`
			Signature string `json:"signature"`
		} `json:"signature"`
		EventData json.RawMessage `json:"event-data"`
	}
	if err := json.Unmarshal(req.Body, &body); err != nil {
		return nil, ErrUnauthorized // nothing to verify
	}
	if !VerifyMailgun(s.SigningKey, body.Signature.Timestamp, body.Signature.Token, body.Signature.Signature) {
		return nil, ErrUnauthorized
	}
	var ev struct {
		Event     string `json:"event"`
		Severity  string `json:"severity"`
		Recipient string `json:"recipient"`
	}
	if err := json.Unmarshal(body.EventData, &ev); err != nil {
		return nil, invalid("Mailgun event: event-data is not an event object: %v", err)
	}
	var reason batchsender.SuppressionReason
	switch {
	case ev.Event == "failed" && ev.Severity == "permanent":
		reason = batchsender.ReasonHardBounce
	case ev.Event == "complained":
		reason = batchsender.ReasonComplaint
	case ev.Event == "unsubscribed":
		reason = batchsender.ReasonUnsubscribe
	default:
		return nil, nil
	}
	if s, ok := suppression(ev.Recipient, reason, "mailgun events"); ok {
		return []batchsender.Suppression{s}, nil
	}
	return nil, nil
}
