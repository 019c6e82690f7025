package webhook

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"testing"
)

// fastCases are items for the fast path: the usual shapes, which it must
// accept on its own, and near misses it must leave to the full decode.
var fastCases = []struct {
	data string
	fast bool // validateFast accepts it by itself
}{
	{`{"url":"https://example.com/hook"}`, true},
	{` { "url" : "https://example.com/hook" , "payload" : {"a":[1,-2.5e+3,true,false,null,"x\"\\\u00e9\n"]} } `, true},
	{`{"url":"http://example.com:8080/h?x=1","method":"PUT","headers":{"Authorization":"Bearer t"},"payload":[1,2]}`, true},
	{`{"payload":{"order":"1","customer":"cust-1"},"url":"https://example.com/hooks/3"}`, true},
	{`{"payload":{"name":"Zoë ✓"}}`, true}, // with a template URL
	{`{"payload":"héllo"}`, true},
	{`{"headers":{}}`, true},
	{`{}`, true},

	// Left to the full decode, which accepts them.
	{`null`, false},
	{`{"URL":"https://example.com/hook"}`, false},
	{`{"url":"https:\/\/example.com\/hook"}`, false},
	{`{"headers":null}`, false},
	{`{"payload":null}`, true},
	{"\v{}", false},

	// Left to the full decode, which refuses them.
	{`{"url":"https://example.com","url":"http://127.0.0.1/"}`, false},
	{`{"url":"http://127.0.0.1/"}`, false},
	{`{"url":"ftp://example.com/"}`, false},
	{`{"url":"https://example.com","method":"TRACE"}`, false},
	{`{"url":"https://example.com","method":"post"}`, false},
	{`{"url":"https://example.com","headers":{"Host":"x"}}`, false},
	{`{"url":"https://example.com","headers":{"X-A":"1","x-a":"2"}}`, false},
	{`{"url":"https://example.com","headers":{"X-A":"1","X-A":"2"}}`, false},
	{`{"url":"https://example.com","headers":{"X-A":1}}`, false},
	{`{"url":"https://example.com","urll":"x"}`, false},
	{`{"url":"https://example.com"} x`, false},
	{`{"url":"https://example.com",}`, false},
	{`{"url":"https://example.com","payload":}`, false},
	{`{"url":"https://example.com","payload":01}`, false},
	{`{"url":"https://example.com","payload":1.}`, false},
	{`{"url":"https://example.com","payload":-}`, false},
	{`{"url":"https://example.com","payload":1e}`, false},
	{`{"url":"https://example.com","payload":"\x"}`, false},
	{`{"url":"https://example.com","payload":"\u12"}`, false},
	{"{\"url\":\"https://example.com\",\"payload\":\"a\tb\"}", false},
	{`{"url":"https://example.com","payload":[1,]}`, false},
	{`{"url":"https://example.com","payload":{"a":1,}}`, false},
	{`{"url":"https://example.com","payload":{"a"}}`, false},
	{`{"url":"https://example.com","payload":{1:2}}`, false},
	{`{"url":"https://example.com","payload":tru}`, false},
	{`{"url":"https://example.com","payload":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}`, false},
	{`{"url":"https://example.com"`, false},
	{`[1]`, false},
	{``, false},
}

// TestValidateFast checks that the fast path accepts the usual items, and
// that it never accepts one the full decode refuses.
func TestValidateFast(t *testing.T) {
	t.Parallel()
	p := newProvider(t, opts{})
	s := compile(t, p, `{"url":"https://hooks.example.com/in"}`).(*sender)
	for _, tc := range fastCases {
		fast := s.validateFast([]byte(tc.data))
		_, full := s.resolveFull(json.RawMessage(tc.data))
		sameResolve(t, s, tc.data)
		if fast != tc.fast {
			t.Errorf("validateFast(%s) = %v, want %v (full decode: %v)", tc.data, fast, tc.fast, full)
		}
		if fast && full != nil {
			t.Errorf("validateFast(%s) accepted what the full decode refuses: %v", tc.data, full)
		}
	}
	// Without a template URL an item must name one.
	bare := compile(t, p, `{}`).(*sender)
	if bare.validateFast([]byte(`{"payload":{}}`)) {
		t.Error("validateFast accepted an item without a URL and no template URL")
	}
}

// TestValidateFastURLCache checks that a cached URL is still judged under
// the sender's policy, and that the cache stays bounded.
func TestValidateFastURLCache(t *testing.T) {
	t.Parallel()
	p := newProvider(t, opts{})
	s := compile(t, p, `{}`).(*sender)
	for range 2 {
		if s.validateFast([]byte(`{"url":"http://127.0.0.1/x"}`)) {
			t.Fatal("a loopback URL passed the fast path")
		}
		if !s.validateFast([]byte(`{"url":"https://example.com/x"}`)) {
			t.Fatal("a good URL failed the fast path")
		}
	}
	for i := range urlCacheSize + 10 {
		data := []byte(`{"url":"https://example.com/` + string(rune('a'+i%26)) + string(rune('a'+i/26)) + `"}`)
		if !s.validateFast(data) {
			t.Fatalf("validateFast(%s) = false", data)
		}
	}
	if n := len(s.urls.ok); n > urlCacheSize {
		t.Errorf("URL cache holds %d entries, more than %d", n, urlCacheSize)
	}
}

// sameResolve checks that resolve, which reads items with the fast scanner
// when it can, gives what the strict decode gives: the same request, or
// an error where the decode errs.
func sameResolve(t *testing.T, s *sender, data string) {
	t.Helper()
	got, gotErr := s.resolve(json.RawMessage(data))
	want, wantErr := s.resolveFull(json.RawMessage(data))
	if (gotErr != nil) != (wantErr != nil) {
		t.Fatalf("resolve(%q): error %v, the strict decode's %v", data, gotErr, wantErr)
	}
	if wantErr != nil {
		return // both refuse; the wording may name either of two clashing headers
	}
	if got.url.String() != want.url.String() || got.hostKey != want.hostKey || got.method != want.method ||
		!bytes.Equal(got.body, want.body) || (got.body == nil) != (want.body == nil) || !maps.Equal(got.headers, want.headers) {
		t.Errorf("resolve(%q) = %+v, the strict decode gives %+v", data, got, want)
	}
}

// FuzzValidateFast checks the one property that matters: whatever the
// fast path accepts, the full decode accepts too.
func FuzzValidateFast(f *testing.F) {
	for _, tc := range fastCases {
		f.Add(tc.data)
	}
	p := new(Provider)
	p.cfg = Config{}
	s := &sender{p: p}
	f.Fuzz(func(t *testing.T, data string) {
		sameResolve(t, s, data)
		if s.validateFast([]byte(data)) {
			if _, err := s.resolveFull(json.RawMessage(data)); err != nil {
				t.Errorf("validateFast(%q) accepted what the full decode refuses: %v", data, err)
			}
		}
	})
}

// BenchmarkValidateItem measures ValidateItem on rows shaped like a CSV
// upload's (50 distinct URLs), the fast path, and the full decode.
func BenchmarkValidateItem(b *testing.B) {
	p := new(Provider)
	s := &sender{p: p}
	rows := make([][]byte, 1000)
	for i := range rows {
		rows[i] = fmt.Appendf(nil, `{"url":"https://example.com/hooks/%d","payload":{"order":"%d","customer":"cust-%d"}}`, i%50, i, i)
	}
	b.Run("ValidateItem", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if err := s.ValidateItem(rows[i%len(rows)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("full", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, err := s.resolveFull(rows[i%len(rows)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}
