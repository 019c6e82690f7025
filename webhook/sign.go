package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Standard Webhooks header names.
const (
	HeaderID        = "Webhook-Id"
	HeaderTimestamp = "Webhook-Timestamp"
	HeaderSignature = "Webhook-Signature"
)

// SecretPrefix starts a Standard Webhooks symmetric secret.
const SecretPrefix = "whsec_"

// DefaultTolerance is how far a webhook-timestamp may lie from the
// verifier's clock, in either direction, as in the reference libraries.
const DefaultTolerance = 5 * time.Minute

// Verification errors, wrapped by Verify's errors.
var (
	ErrMissingHeader = errors.New("missing webhook header")
	ErrTimestamp     = errors.New("webhook timestamp outside the tolerance")
	ErrSignature     = errors.New("no matching webhook signature")
)

// DecodeSecret returns the HMAC key of a Standard Webhooks secret: the
// base64-decoded bytes after an optional "whsec_" prefix (the reference
// libraries accept both forms). It does not check the key length.
func DecodeSecret(secret string) ([]byte, error) {
	s := strings.TrimPrefix(strings.TrimSpace(secret), SecretPrefix)
	key, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		// Some secrets are handed around without padding.
		if k, err2 := base64.RawStdEncoding.DecodeString(s); err2 == nil {
			return k, nil
		}
		return nil, errors.New("signing secret is not valid base64 after the whsec_ prefix")
	}
	if len(key) == 0 {
		return nil, errors.New("signing secret is empty")
	}
	return key, nil
}

// Sign returns the webhook-signature value for one message:
// "v1," + base64(HMAC-SHA256(key, id + "." + timestamp + "." + body)).
func Sign(key []byte, id string, timestamp int64, body []byte) string {
	return "v1," + base64.StdEncoding.EncodeToString(mac(key, id, timestamp, body))
}

// signer is one reusable HMAC state with a scratch buffer for the
// message prefix, pooled per Provider: hmac.New costs two SHA-256 states
// and the key schedule, per request.
type signer struct {
	h   hash.Hash
	buf []byte
}

// sign is Sign with the provider's key and a pooled HMAC state.
func (p *Provider) sign(id string, timestamp int64, body []byte) string {
	sg, _ := p.macs.Get().(*signer)
	if sg == nil {
		sg = &signer{h: hmac.New(sha256.New, p.key), buf: make([]byte, 0, 64)}
	} else {
		sg.h.Reset()
	}
	b := append(sg.buf[:0], id...)
	b = append(b, '.')
	b = strconv.AppendInt(b, timestamp, 10)
	b = append(b, '.')
	sg.h.Write(b)
	sg.h.Write(body)
	var sum [sha256.Size]byte
	var out [3 + 44]byte // "v1," + base64 of 32 bytes
	copy(out[:], "v1,")
	base64.StdEncoding.Encode(out[3:], sg.h.Sum(sum[:0]))
	sg.buf = b[:0]
	p.macs.Put(sg)
	return string(out[:])
}

func mac(key []byte, id string, timestamp int64, body []byte) []byte {
	h := hmac.New(sha256.New, key)
	var buf [24]byte
	h.Write([]byte(id))
	h.Write([]byte{'.'})
	h.Write(strconv.AppendInt(buf[:0], timestamp, 10))
	h.Write([]byte{'.'})
	h.Write(body)
	return h.Sum(nil)
}

// Verify checks a received webhook the way the Standard Webhooks reference
// libraries do: the webhook-id, webhook-timestamp and webhook-signature
// headers (or their svix-* equivalents) must be present, the timestamp
// within tolerance of now in either direction (DefaultTolerance when
// tolerance ≤ 0), and one of the space-separated "v1,<base64>" signatures
// must match body, compared in constant time. Unknown signature versions
// are ignored.
func Verify(secret string, headers http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	key, err := DecodeSecret(secret)
	if err != nil {
		return fmt.Errorf("verifying webhook: %w", err)
	}
	get := func(name string) string {
		if v := headers.Get("webhook-" + name); v != "" {
			return v
		}
		return headers.Get("svix-" + name)
	}
	id, tsText, sigs := get("id"), get("timestamp"), get("signature")
	switch {
	case id == "":
		return fmt.Errorf("verifying webhook: webhook-id: %w", ErrMissingHeader)
	case tsText == "":
		return fmt.Errorf("verifying webhook: webhook-timestamp: %w", ErrMissingHeader)
	case sigs == "":
		return fmt.Errorf("verifying webhook: webhook-signature: %w", ErrMissingHeader)
	}
	ts, err := strconv.ParseInt(tsText, 10, 64)
	if err != nil {
		return fmt.Errorf("verifying webhook: webhook-timestamp %q is not Unix seconds: %w", tsText, ErrTimestamp)
	}
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	sent := time.Unix(ts, 0)
	if d := now.Sub(sent); d > tolerance || d < -tolerance {
		return fmt.Errorf("verifying webhook: timestamp is %s away from now: %w", d.Round(time.Second), ErrTimestamp)
	}
	want := mac(key, id, ts, body)
	for _, entry := range strings.Fields(sigs) {
		version, sig, ok := strings.Cut(entry, ",")
		if !ok || version != "v1" {
			continue
		}
		got, err := base64.StdEncoding.DecodeString(sig)
		if err != nil {
			continue
		}
		if hmac.Equal(got, want) {
			return nil
		}
	}
	return fmt.Errorf("verifying webhook: %w", ErrSignature)
}
