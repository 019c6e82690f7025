package ses

// This file is the part of the HTTP email providers' shared plumbing (see
// postmark/httpsend.go) that the SES provider uses: the AWS SDK does the
// requests, on a client built here.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
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
