package webhook

import (
	"bytes"
	"encoding/json"
	"sort"

	"github.com/batchsender/batchsender/sdk"
)

// preview is the request an item becomes, as POST /v1/templates/preview
// shows it. The Standard Webhooks headers are left out: they are made per
// attempt from the item's ID and the clock.
type preview struct {
	Method  string            `json:"method"`
	URL     string            `json:"url"`
	Headers map[string]string `json:"headers"`
	// Body is the payload, byte for byte; absent when there is none.
	Body json.RawMessage `json:"body,omitempty"`
}

// Preview implements sdk.Previewer: the item merged over the template, with
// the headers the request would carry.
func (s *sender) Preview(data json.RawMessage) (json.RawMessage, error) {
	r, err := s.resolve(data)
	if err != nil {
		return nil, err
	}
	p := preview{Method: r.method, URL: r.url.String(), Headers: map[string]string{"User-Agent": s.p.cfg.UserAgent}, Body: r.body}
	if len(r.body) > 0 {
		p.Headers["Content-Type"] = "application/json"
	}
	names := make([]string, 0, len(r.headers))
	for k := range r.headers {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		p.Headers[k] = r.headers[k]
	}
	return marshalUnescaped(p)
}

var _ sdk.Previewer = (*sender)(nil)

// marshalUnescaped encodes v as JSON without escaping <, > and &, so a
// rendered HTML body reads as written.
func marshalUnescaped(v any) (json.RawMessage, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
