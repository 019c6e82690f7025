// Package events reads email providers' event webhooks and turns the
// events that must stop further sending (hard bounces, spam complaints,
// unsubscribes) into suppressions. Every request is verified with its
// provider's own scheme before anything in it is believed:
//
//   - email.sendgrid: Signed Event Webhook, ECDSA P-256/SHA-256 over the
//     timestamp header followed by the raw body, checked with the public key
//     from the SendGrid settings (connection config events.public_key).
//   - email.mailgun: hex HMAC-SHA256 of timestamp+token with the webhook
//     signing key (connection secrets events.signing_key).
//   - email.postmark: Postmark signs nothing; its webhooks carry HTTP basic
//     auth credentials set in the webhook URL (connection secrets
//     events.username and events.password), compared in constant time.
//   - email.ses: SES publishes to an SNS topic, and SNS signs every message
//     with RSA (SignatureVersion 1: SHA-1, 2: SHA-256) and a certificate
//     fetched over HTTPS from sns.<region>.amazonaws.com only. Any AWS
//     account can have SNS sign messages, so the topics must be listed
//     (connection config events.topic_arns). Subscription
//     confirmations are confirmed by fetching their SubscribeURL, after the
//     same checks.
//   - email.resend: Standard Webhooks (Svix) HMAC-SHA256 over
//     id.timestamp.body with the whsec_ secret (connection secrets
//     events.signing_secret), timestamps within five minutes.
//
// The settings live under a reserved "events" key of the connection's
// config and secrets; the provider cache removes that key before the
// provider sees its configuration.
package events

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/batchsender/batchsender"
)

// Errors Handle returns. Neither says why a request failed: a prober learns
// nothing from the answer.
var (
	// ErrUnauthorized: the request's signature or credentials do not
	// verify, or the connection has no event webhook settings.
	ErrUnauthorized = errors.New("event webhook: not verified")
	// ErrUnsupported: the provider has no event webhook here.
	ErrUnsupported = errors.New("event webhook: not supported for this provider")
)

// Request is one event webhook request for a connection.
type Request struct {
	Header http.Header
	Body   []byte
	// Config and Secrets are the "events" objects of the connection's
	// config and secrets (nil when absent).
	Config  json.RawMessage
	Secrets json.RawMessage
}

// Options make a Receiver. Zero values are production defaults.
type Options struct {
	// SNSCertificate returns the certificate at an SNS SigningCertURL that
	// CheckSNSURL accepted. The default fetches it over HTTPS and caches it.
	SNSCertificate func(ctx context.Context, url string) (*x509.Certificate, error)
	// SNSConfirm visits a subscription's SubscribeURL (already checked with
	// CheckSNSURL). The default is an HTTPS GET.
	SNSConfirm func(ctx context.Context, url string) error
	// Now is the clock.
	Now func() time.Time
}

// Receiver verifies and reads event webhooks. It is safe for concurrent use.
type Receiver struct {
	opts Options
}

// New returns a Receiver.
func New(opts Options) *Receiver {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.SNSCertificate == nil || opts.SNSConfirm == nil {
		f := newSNSFetcher()
		if opts.SNSCertificate == nil {
			opts.SNSCertificate = f.certificate
		}
		if opts.SNSConfirm == nil {
			opts.SNSConfirm = f.confirm
		}
	}
	return &Receiver{opts: opts}
}

// Supported reports whether a provider's events can be received.
func Supported(providerID string) bool {
	switch providerID {
	case "email.sendgrid", "email.mailgun", "email.postmark", "email.ses", "email.resend":
		return true
	}
	return false
}

// Handle verifies one request for a connection of the provider and returns
// the suppressions its events call for (channel "email", normalized
// addresses, Source naming the provider). A verified request without such
// events returns none. ErrUnauthorized when it does not verify; an EINVALID
// error when it verifies but cannot be read.
func (r *Receiver) Handle(ctx context.Context, providerID string, req Request) ([]batchsender.Suppression, error) {
	switch providerID {
	case "email.sendgrid":
		return sendgrid(req)
	case "email.mailgun":
		return mailgun(req)
	case "email.postmark":
		return postmark(req)
	case "email.ses":
		return r.ses(ctx, req)
	case "email.resend":
		return r.resend(req)
	}
	return nil, ErrUnsupported
}

// suppression builds one email suppression from a provider's event.
func suppression(address string, reason batchsender.SuppressionReason, source string) (batchsender.Suppression, bool) {
	a := batchsender.NormalizeAddress(address)
	if a == "" || len(a) > 320 {
		return batchsender.Suppression{}, false
	}
	return batchsender.Suppression{Channel: "email", Address: a, Reason: reason, Source: source}, true
}

// decodeSettings reads an "events" object; absent means unconfigured.
func decodeSettings(raw json.RawMessage, v any) error {
	if len(raw) == 0 || string(raw) == "null" {
		return ErrUnauthorized
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return ErrUnauthorized
	}
	return nil
}

func invalid(format string, args ...any) error {
	return batchsender.Errorf(batchsender.EINVALID, "%s", fmt.Sprintf(format, args...))
}

// httpRequest wraps a header for net/http's parsers.
func httpRequest(h http.Header) *http.Request { return &http.Request{Header: h} }
