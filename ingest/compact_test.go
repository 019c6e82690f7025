package ingest

import (
	"bytes"
	"encoding/json"
	"testing"
)

// compactCases are lines for compactObject: objects it compacts itself,
// and lines it leaves to json.Compact.
var compactCases = []struct {
	line string
	ok   bool
}{
	{`{}`, true},
	{` { } `, true},
	{`{"a":1}`, true},
	{"\t{ \"a\" : [ 1 , -2.5e+3 , 0.1E-2 , true , false , null ] ,\r\n \"b\" : { \"c\" : \"x y\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\" } } ", true},
	{`{"url":"https://example.com/h","payload":{"name":"Zoë ✓","n":0}}`, true},
	{`{"a":[[],{},""]}`, true},

	{``, false},
	{`[]`, false},
	{`"x"`, false},
	{`null`, false},
	{`{"a":1}{}`, false},
	{`{"a":1} x`, false},
	{`{"a":1,}`, false},
	{`{"a"}`, false},
	{`{a:1}`, false},
	{`{"a":01}`, false},
	{`{"a":1.}`, false},
	{`{"a":.5}`, false},
	{`{"a":-}`, false},
	{`{"a":1e}`, false},
	{`{"a":+1}`, false},
	{`{"a":"\x"}`, false},
	{`{"a":"\u00g0"}`, false},
	{"{\"a\":\"tab\there\"}", false},
	{`{"a":[1,]}`, false},
	{`{"a":tru}`, false},
	{`{"a":nul}`, false},
	{`{"a":1`, false},
	{`{"a":"x`, false},
	{"\v{}", false},
}

// TestCompactObject checks that compactObject returns exactly what
// json.Compact returns for the lines it accepts, and accepts no line that
// json.Compact refuses.
func TestCompactObject(t *testing.T) {
	t.Parallel()
	for _, tc := range compactCases {
		got, ok := compactObject(nil, []byte(tc.line))
		if ok != tc.ok {
			t.Errorf("compactObject(%q) ok = %v, want %v", tc.line, ok, tc.ok)
		}
		checkCompact(t, tc.line, got, ok)
	}
	deep := bytes.Repeat([]byte(`{"a":`), maxCompactDepth+5)
	deep = append(append(deep, '1'), bytes.Repeat([]byte(`}`), maxCompactDepth+5)...)
	if _, ok := compactObject(nil, deep); ok {
		t.Error("compactObject followed nesting deeper than maxCompactDepth")
	}
}

func checkCompact(t *testing.T, line string, got []byte, ok bool) {
	t.Helper()
	var want bytes.Buffer
	err := json.Compact(&want, []byte(line))
	if !ok {
		return
	}
	if err != nil {
		t.Errorf("compactObject(%q) accepted what json.Compact refuses: %v", line, err)
		return
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Errorf("compactObject(%q) = %s, json.Compact gives %s", line, got, want.Bytes())
	}
}

// FuzzCompactObject checks compactObject against json.Compact.
func FuzzCompactObject(f *testing.F) {
	for _, tc := range compactCases {
		f.Add(tc.line)
	}
	f.Fuzz(func(t *testing.T, line string) {
		got, ok := compactObject(nil, []byte(line))
		checkCompact(t, line, got, ok)
		if ok && (len(got) == 0 || got[0] != '{') {
			t.Errorf("compactObject(%q) = %s, not an object", line, got)
		}
	})
}
