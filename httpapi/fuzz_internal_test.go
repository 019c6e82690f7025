package httpapi

import (
	"bytes"
	"net/http/httptest"
	"testing"

	"github.com/batchsender/batchsender"
)

// FuzzDecodeBatchCreate feeds arbitrary bodies to the batch-create decoder:
// it must never panic, every refusal must be a 400 or 413 kind of error, and
// whatever it accepts must be a request the handler can use.
func FuzzDecodeBatchCreate(f *testing.F) {
	for _, s := range []string{
		`{"module":"test","connection":"hooks","items":[{"to":"a"}]}`,
		`{"module":"test","connection":"hooks","template":{"to":"x"},"options":{"send_at":"2026-01-02T15:04:05Z","retry_base_delay":"1s","retry_max_delay":5000000000}}`,
		`{"module":"test","connection":"c","items":[]}`,
		`{"module":"test","connection":"c","options":{"max_attempts":1000}}`,
		`{"module":"test","connection":"c","items":[1]}`,
		`{"module":`, `[]`, `null`, ``, `{"module":"test","connection":"c"} {}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest("POST", "/v1/batches", bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		req, err := decode[batchCreateRequest](httptest.NewRecorder(), r, 1<<16)
		if err != nil {
			if c := batchsender.ErrorCode(err); c != batchsender.EINVALID && c != batchsender.ETOOLARGE {
				t.Fatalf("refusal with code %q: %v", c, err)
			}
			return
		}
		if req.Module == "" || req.Connection == "" || (req.Items != nil && len(req.Items) == 0) {
			t.Fatalf("accepted an incomplete request %+v", req)
		}
		for _, it := range req.Items {
			if !isJSONObject(it) {
				t.Fatalf("accepted item %s", it)
			}
		}
		if err := req.options.Validate(); err != nil {
			t.Fatalf("accepted options that do not validate: %v", err)
		}
		if req.hash() == "" {
			t.Fatal("no request hash")
		}
	})
}
