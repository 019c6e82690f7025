package webhook

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/batchsender/batchsender/netguard"
	"github.com/batchsender/batchsender/sdk"
)

// Limits on item and template fields.
const (
	maxURLLength      = 8 << 10
	maxHeaders        = 64
	maxHeaderValueLen = 8 << 10
)

// ValidateURL checks a destination URL: absolute http or https, a host,
// no user info, a valid port, and a host the SSRF guard allows before
// resolution (see netguard.CheckHost: literal internal addresses, odd IP
// spellings and localhost names are refused unless allowPrivate). Names
// are judged again on their resolved address when dialled.
func ValidateURL(raw string, allowPrivate bool) error {
	_, err := parseURL(raw, allowPrivate)
	return err
}

func parseURL(raw string, allowPrivate bool) (*url.URL, error) {
	if raw == "" {
		return nil, errors.New("is empty")
	}
	if len(raw) > maxURLLength {
		return nil, fmt.Errorf("is longer than %d bytes", maxURLLength)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("is not a valid URL: %v", errors.Unwrap(err))
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("scheme must be http or https, got %q", u.Scheme)
	}
	if u.Opaque != "" || u.Host == "" {
		return nil, errors.New("must be an absolute URL with a host, like https://example.com/hook")
	}
	if u.User != nil {
		return nil, errors.New("must not contain user info; send credentials in a header such as Authorization")
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("port %q is out of range", p)
		}
	} else if strings.HasSuffix(u.Host, ":") {
		return nil, errors.New("has an empty port")
	}
	if err := netguard.CheckHost(u.Hostname(), allowPrivate); err != nil {
		return nil, err
	}
	return u, nil
}

// reservedHeaders may not be set by templates or items: the transport or
// the signer owns them, or they are hop-by-hop (RFC 9110 §7.6.1).
var reservedHeaders = map[string]string{
	"Host":                "is set from the URL",
	"Content-Length":      "is set from the payload",
	"Transfer-Encoding":   "is managed by the HTTP client",
	"Connection":          "is a hop-by-hop header",
	"Keep-Alive":          "is a hop-by-hop header",
	"Proxy-Connection":    "is a hop-by-hop header",
	"Proxy-Authenticate":  "is a hop-by-hop header",
	"Proxy-Authorization": "is a hop-by-hop header",
	"Te":                  "is a hop-by-hop header",
	"Trailer":             "is a hop-by-hop header",
	"Upgrade":             "is a hop-by-hop header",
	"Expect":              "is managed by the HTTP client",
}

// checkHeaders validates a headers object and returns it with canonical
// names, so merging is case-insensitive.
func checkHeaders(h map[string]string) (map[string]string, error) {
	if len(h) > maxHeaders {
		return nil, fmt.Errorf("more than %d headers", maxHeaders)
	}
	out := make(map[string]string, len(h))
	for name, value := range h {
		if !validToken(name) {
			return nil, fmt.Errorf("%q is not a valid header name", name)
		}
		cn := http.CanonicalHeaderKey(name)
		if why, ok := reservedHeaders[cn]; ok {
			return nil, fmt.Errorf("%q %s and cannot be set", name, why)
		}
		if strings.HasPrefix(cn, "Webhook-") {
			return nil, fmt.Errorf("%q is reserved for the Standard Webhooks signature", name)
		}
		if len(value) > maxHeaderValueLen {
			return nil, fmt.Errorf("value of %q is longer than %d bytes", name, maxHeaderValueLen)
		}
		for i := 0; i < len(value); i++ {
			if c := value[i]; c == '\r' || c == '\n' || c == 0 {
				return nil, fmt.Errorf("value of %q contains a line break or NUL", name)
			}
		}
		if _, dup := out[cn]; dup {
			return nil, fmt.Errorf("%q is given twice (header names are case-insensitive)", name)
		}
		out[cn] = value
	}
	return out, nil
}

// validToken reports whether s is an RFC 9110 token.
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			continue
		}
		if !strings.ContainsRune("!#$%&'*+-.^_`|~", rune(c)) {
			return false
		}
	}
	return true
}

var methods = map[string]bool{"POST": true, "PUT": true, "PATCH": true, "DELETE": true, "GET": true}

// fields is the shape shared by the batch template and an item.
type fields struct {
	URL     string            `json:"url,omitempty"`
	Method  string            `json:"method,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`
	Payload json.RawMessage   `json:"payload,omitempty"`
}

// check validates the fields present, canonicalising header names. The
// URL is checked by the caller, which knows whether it must be present.
func (f *fields) check() error {
	if f.Method != "" && !methods[f.Method] {
		return fmt.Errorf("method: %q is not one of POST, PUT, PATCH, DELETE, GET", f.Method)
	}
	if f.Headers != nil {
		h, err := checkHeaders(f.Headers)
		if err != nil {
			return fmt.Errorf("headers: %w", err)
		}
		f.Headers = h
	}
	// JSON null means "no payload given", so the template's applies.
	if string(f.Payload) == "null" {
		f.Payload = nil
	}
	return nil
}

func decodeFields(raw json.RawMessage, what string) (fields, error) {
	var f fields
	if err := sdk.DecodeStrict(raw, &f); err != nil {
		return f, fmt.Errorf("%s: %s", what, strings.TrimPrefix(err.Error(), "json: "))
	}
	if err := f.check(); err != nil {
		return f, err
	}
	return f, nil
}
