package events

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"

	"github.com/batchsender/batchsender"
)

// postmark checks the basic auth credentials Postmark sends (they are part
// of the webhook URL set in Postmark: https://user:pass@host/...) and reads
// the one event of the request.
func postmark(req Request) ([]batchsender.Suppression, error) {
	var s struct {
		Username string `json:"username"`
		Password string `json:"password"`
	}
	if err := decodeSettings(req.Secrets, &s); err != nil || s.Username == "" || s.Password == "" {
		return nil, ErrUnauthorized
	}
	r := httpRequest(req.Header)
	user, pass, ok := r.BasicAuth()
	// Hashes first, so the comparison takes the same time whatever the
	// lengths.
	uw, ug := sha256.Sum256([]byte(s.Username)), sha256.Sum256([]byte(user))
	pw, pg := sha256.Sum256([]byte(s.Password)), sha256.Sum256([]byte(pass))
	if !ok || subtle.ConstantTimeCompare(uw[:], ug[:])&subtle.ConstantTimeCompare(pw[:], pg[:]) != 1 {
		return nil, ErrUnauthorized
	}
	var ev struct {
		RecordType      string `json:"RecordType"`
		Type            string `json:"Type"` // of a bounce: HardBounce, SoftBounce, ...
		Email           string `json:"Email"`
		Recipient       string `json:"Recipient"`
		SuppressSending *bool  `json:"SuppressSending"`
	}
	if err := json.Unmarshal(req.Body, &ev); err != nil {
		return nil, invalid("Postmark event: the body is not an event object: %v", err)
	}
	addr := ev.Email
	if addr == "" {
		addr = ev.Recipient
	}
	var reason batchsender.SuppressionReason
	switch {
	case ev.RecordType == "Bounce" && ev.Type == "HardBounce":
		reason = batchsender.ReasonHardBounce
	case ev.RecordType == "SpamComplaint":
		reason = batchsender.ReasonComplaint
	case ev.RecordType == "SubscriptionChange" && ev.SuppressSending != nil && *ev.SuppressSending:
		reason = batchsender.ReasonUnsubscribe
	default:
		return nil, nil
	}
	if s, ok := suppression(addr, reason, "postmark events"); ok {
		return []batchsender.Suppression{s}, nil
	}
	return nil, nil
}
