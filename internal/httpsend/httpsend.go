// Package httpsend is the HTTP plumbing the HTTP email providers share
// (sendgrid, postmark, resend, mailgun, and the client under the AWS SDK in
// ses): the connection's configuration helpers, an http.Client whose
// connections go through the host's guarded dialer, one call with its
// answer read to a bound, and the classification of that answer into the
// SDK's outcomes.
package httpsend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/batchsender/batchsender/netguard"
	"github.com/batchsender/batchsender/sdk"
)

// Duration is a time.Duration written in JSON as a string such as "10s",
// between 0 and 5 minutes: the per-call timeout of a connection.
type Duration time.Duration

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New(`timeout: must be a duration string like "10s"`)
	}
	v, err := time.ParseDuration(s)
	if err != nil || v <= 0 || v > 5*time.Minute {
		return fmt.Errorf(`timeout: %q is not a duration between 0s and 5m like "10s"`, s)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// Or returns d, or def when d is unset.
func (d Duration) Or(def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return time.Duration(d)
}

// Decode decodes a connection's config and secrets strictly into cfg and
// sec. Its errors name the part and the field, never a value, so a secret
// cannot leak through them.
func Decode(env sdk.Env, cfg, sec any) error {
	if err := sdk.DecodeStrict(env.Config, cfg); err != nil {
		return decodeErr("config", err)
	}
	if err := sdk.DecodeStrict(env.Secrets, sec); err != nil {
		return decodeErr("secrets", err)
	}
	return nil
}

// decodeErr strips the decoder's "json: " prefix; its messages name fields,
// never values.
func decodeErr(part string, err error) error {
	return fmt.Errorf("%s: %s", part, strings.TrimPrefix(err.Error(), "json: "))
}

// ParseBaseURL checks a base_url override (def when raw is empty). Without
// allowPrivate only https is accepted: API keys must not travel in clear
// text. Errors never repeat the URL, which may hold credentials.
func ParseBaseURL(raw, def string, allowPrivate bool) (*url.URL, error) {
	if raw == "" {
		raw = def
	}
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error repeats the URL, which may hold credentials.
		return nil, errors.New("config: base_url: not a valid URL")
	}
	switch {
	case u.Scheme != "https" && !(u.Scheme == "http" && allowPrivate):
		return nil, errors.New("config: base_url: must be an https URL")
	case u.Host == "":
		return nil, errors.New("config: base_url: needs a host")
	case u.User != nil || u.RawQuery != "" || u.Fragment != "":
		return nil, errors.New("config: base_url: must not carry credentials, a query or a fragment")
	}
	// Refuse blocked destinations now, with the reason; names that
	// resolve to one are refused by the dialer at send time.
	if err := netguard.CheckHost(u.Hostname(), allowPrivate); err != nil {
		return nil, fmt.Errorf("config: base_url: %w", err)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	return u, nil
}

// NewClient returns an HTTP client whose connections go through the host's
// dialer (the SSRF guard; netguard's when the host gives none) and a second
// check of the address reached. It follows no redirects and uses no proxy:
// the guard judges the provider's address.
func NewClient(env sdk.Env, timeout time.Duration) *http.Client {
	dial := env.Dialer
	if dial == nil {
		dial = netguard.Dialer(env.AllowPrivateNetworks, timeout)
	}
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                  nil, // the guard judges the provider's address, not a proxy's
			DialContext:            netguard.CheckRemote(dial, env.AllowPrivateNetworks),
			ForceAttemptHTTP2:      true,
			MaxIdleConnsPerHost:    32,
			IdleConnTimeout:        90 * time.Second,
			TLSHandshakeTimeout:    timeout,
			ResponseHeaderTimeout:  timeout,
			MaxResponseHeaderBytes: 64 << 10,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// MaxAnswer bounds how much of an answer is read (a batch answer for 1,000
// items is well under 1 MiB).
const MaxAnswer = 8 << 20

// Answer is one API call's outcome.
type Answer struct {
	Status  int
	Header  http.Header
	Body    []byte
	Latency time.Duration
	// Err is a transport failure; Left says whether the request's headers
	// had been written when it happened (the provider may have acted on it).
	Err  error
	Left bool
}

// Do sends req with the call timeout and reads the answer (at most
// MaxAnswer bytes of it).
func Do(ctx context.Context, client *http.Client, timeout time.Duration, req *http.Request) Answer {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var left atomic.Bool
	trace := &httptrace.ClientTrace{WroteHeaders: func() { left.Store(true) }}
	start := time.Now()
	resp, err := client.Do(req.WithContext(httptrace.WithClientTrace(ctx, trace)))
	if err != nil {
		return Answer{Err: err, Left: left.Load(), Latency: time.Since(start)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxAnswer))
	a := Answer{Status: resp.StatusCode, Header: resp.Header, Body: body, Latency: time.Since(start)}
	if err != nil {
		a.Err, a.Left = fmt.Errorf("reading the answer: %w", err), true
	}
	return a
}

// TransportResult classifies a call that got no complete answer. Before the
// request left, a retry is always safe. After, the provider may have sent the
// mail: without an idempotency key the result is Unknown, so the host does
// not retry it into a double send unless the batch chose at-least-once.
func TransportResult(a Answer, what string, idempotent bool) sdk.Result {
	err := fmt.Errorf("%s: %w", what, a.Err)
	var r sdk.Result
	switch {
	case !a.Left:
		r = sdk.Retry(fmt.Errorf("%w (not sent)", err))
	case idempotent:
		r = sdk.Retry(fmt.Errorf("%w (sent with an idempotency key; safe to retry)", err))
	default:
		r = sdk.Unknown(fmt.Errorf("%w (the request was sent and may have been accepted; the API has no idempotency key)", err))
	}
	r.Latency = a.Latency
	return r
}

// StatusResult classifies a non-2xx answer: 429, 408 and 5xx are
// transient, honouring Retry-After; other 4xx are permanent. msg is the
// provider's error text from the body.
func StatusResult(a Answer, now time.Time, msg string) sdk.Result {
	err := fmt.Errorf("HTTP %d: %s", a.Status, msg)
	var r sdk.Result
	if Transient(a.Status) {
		r = sdk.RetryAfter(RetryAfter(a.Header, now), err)
	} else {
		r = sdk.Permanent(err)
	}
	return WithAnswer(r, a)
}

// Transient reports whether an HTTP status is worth retrying: 429, 408 and
// 5xx.
func Transient(status int) bool {
	return status == http.StatusTooManyRequests || status == http.StatusRequestTimeout || status >= 500
}

// OK is an accepted item's result: the provider's message ID with the
// call's status and latency.
func OK(id string, a Answer) sdk.Result {
	r := sdk.OK(id)
	r.StatusCode, r.Latency = a.Status, a.Latency
	return r
}

// WithAnswer adds the status, the start of the body and the latency.
func WithAnswer(r sdk.Result, a Answer) sdk.Result {
	r.StatusCode, r.Latency = a.Status, a.Latency
	r.Response = Snippet(a.Body)
	return r
}

// Snippet returns the first KiB of an answer's body, kept with a result.
func Snippet(b []byte) string {
	if len(b) > 1024 {
		b = b[:1024]
	}
	return string(b)
}

// RetryAfter reads Retry-After, in seconds or as an HTTP date; 0 when absent,
// unreadable, past or a day or more away.
func RetryAfter(h http.Header, now time.Time) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseFloat(v, 64); err == nil && s > 0 && s < 86400 {
		return time.Duration(s * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
