package resend

// This file is the HTTP plumbing shared by the HTTP email providers. The same
// file (with only the package clause changed) sits in sendgrid, postmark,
// resend and mailgun: each provider package owns its copy so that it stays a
// self-contained example of a provider, and they are kept identical.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/batchsender/batchsender/email"
	"github.com/batchsender/batchsender/netguard"
	"github.com/batchsender/batchsender/sdk"
)

// Duration is a time.Duration written in JSON as a string such as "10s".
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

// decodeErr strips the decoder's "json: " prefix; its messages name fields,
// never values.
func decodeErr(part string, err error) error {
	return fmt.Errorf("%s: %s", part, strings.TrimPrefix(err.Error(), "json: "))
}

// parseBaseURL checks the base_url override. Without AllowPrivateNetworks
// only https is accepted: API keys must not travel in clear text.
func parseBaseURL(raw, def string, allowPrivate bool) (*url.URL, error) {
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

// newClient returns an HTTP client whose connections go through the host's
// dialer (the SSRF guard) and a second check of the address reached.
func newClient(env sdk.Env, timeout time.Duration) *http.Client {
	dial := env.Dialer
	if dial == nil {
		dial = netguard.Dialer(env.AllowPrivateNetworks, timeout)
	}
	allow := env.AllowPrivateNetworks
	guarded := func(ctx context.Context, network, address string) (net.Conn, error) {
		c, err := dial(ctx, network, address)
		if err != nil {
			return nil, err
		}
		if ap, perr := netip.ParseAddrPort(c.RemoteAddr().String()); perr == nil {
			if err := netguard.CheckPolicy(ap.Addr(), allow); err != nil {
				_ = c.Close()
				return nil, &net.OpError{Op: "dial", Net: network, Err: err}
			}
		}
		return c, nil
	}
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                  nil, // the guard judges the provider's address, not a proxy's
			DialContext:            guarded,
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

// maxAnswer bounds how much of an answer is read (a batch answer for 500
// items is well under 1 MiB).
const maxAnswer = 8 << 20

// answer is one API call's outcome.
type answer struct {
	status  int
	header  http.Header
	body    []byte
	latency time.Duration
	// err is a transport failure; left says whether the request's headers
	// had been written when it happened (the provider may have acted on it).
	err  error
	left bool
}

// do sends req with the call timeout and reads the answer.
func do(ctx context.Context, client *http.Client, timeout time.Duration, req *http.Request) answer {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var left atomic.Bool
	trace := &httptrace.ClientTrace{WroteHeaders: func() { left.Store(true) }}
	start := time.Now()
	resp, err := client.Do(req.WithContext(httptrace.WithClientTrace(ctx, trace)))
	if err != nil {
		return answer{err: err, left: left.Load(), latency: time.Since(start)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	a := answer{status: resp.StatusCode, header: resp.Header, body: body, latency: time.Since(start)}
	if err != nil {
		a.err, a.left = fmt.Errorf("reading the answer: %w", err), true
	}
	return a
}

// transportResult classifies a call that got no complete answer. Before the
// request left, a retry is always safe. After, the provider may have sent the
// mail: without an idempotency key the result is Unknown, so the host does
// not retry it into a double send unless the batch chose at-least-once.
func transportResult(a answer, what string, idempotent bool) sdk.Result {
	err := fmt.Errorf("%s: %w", what, a.err)
	var r sdk.Result
	switch {
	case !a.left:
		r = sdk.Retry(fmt.Errorf("%w (not sent)", err))
	case idempotent:
		r = sdk.Retry(fmt.Errorf("%w (sent with an idempotency key; safe to retry)", err))
	default:
		r = sdk.Unknown(fmt.Errorf("%w (the request was sent and may have been accepted; the API has no idempotency key)", err))
	}
	r.Latency = a.latency
	return r
}

// statusResult classifies a non-2xx answer: 429 and 5xx (and 408) are
// transient, honouring Retry-After; other 4xx are permanent. msg is the
// provider's error text from the body.
func statusResult(a answer, now time.Time, msg string) sdk.Result {
	err := fmt.Errorf("HTTP %d: %s", a.status, msg)
	var r sdk.Result
	switch {
	case a.status == http.StatusTooManyRequests:
		r = sdk.RetryAfter(retryAfter(a.header, now), err)
	case a.status >= 500 || a.status == http.StatusRequestTimeout:
		r = sdk.RetryAfter(retryAfter(a.header, now), err)
	default:
		r = sdk.Permanent(err)
	}
	return withAnswer(r, a)
}

// withAnswer adds the status, the start of the body and the latency.
func withAnswer(r sdk.Result, a answer) sdk.Result {
	r.StatusCode, r.Latency = a.status, a.latency
	r.Response = snippet(a.body)
	return r
}

func snippet(b []byte) string {
	if len(b) > 1024 {
		b = b[:1024]
	}
	return string(b)
}

// retryAfter reads Retry-After, in seconds or as an HTTP date.
func retryAfter(h http.Header, now time.Time) time.Duration {
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

// unsubscribeHeaders returns the RFC 8058 headers of a message, if any.
func unsubscribeHeaders(m *email.Message) []email.Header {
	if m.ListUnsubscribe == "" {
		return nil
	}
	v := "<" + m.ListUnsubscribe + ">"
	if m.ListUnsubscribeMailto != "" {
		v += ", <mailto:" + m.ListUnsubscribeMailto + ">"
	}
	return []email.Header{
		{Name: "List-Unsubscribe", Value: v},
		{Name: "List-Unsubscribe-Post", Value: "List-Unsubscribe=One-Click"},
	}
}

// bodies returns the text and HTML to send: the text alternative is
// derived from the HTML when the template gives none.
func bodies(m *email.Message) (text, html string) {
	text, html = m.Text, m.HTML
	if text == "" && html != "" {
		text = email.HTMLToText(html)
	}
	return text, html
}
