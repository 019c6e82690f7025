package httpapi_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// TestProblemDocumentsGolden pins the exact wire shape of problem documents.
func TestProblemDocumentsGolden(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cases := []struct {
		name string
		c    call
	}{
		{"unauthorized_missing", call{method: "GET", path: "/v1/batches", key: keyOf(""), badRequest: true}},
		{"unauthorized_wrong", call{method: "GET", path: "/v1/batches", key: keyOf("bsk_aaaaaaaaaaaa_nope"), badRequest: true}},
		{"not_found", call{method: "GET", path: "/v1/nothing", unrouted: true}},
		{"invalid", call{method: "POST", path: "/v1/batches", json: map[string]any{"module": "test"}, badRequest: true}},
		{"invalid_json", call{method: "POST", path: "/v1/batches", body: `{"module":`, contentType: "application/json", badRequest: true}},
		{"unsupported_media_type", call{method: "POST", path: "/v1/batches/bat_missing/items", body: "x", contentType: "text/plain", badRequest: true}},
		{"method_not_allowed", call{method: "PUT", path: "/v1/batches", unrouted: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := b.do(t, tc.c)
			var pretty bytes.Buffer
			if err := json.Indent(&pretty, r.body, "", "  "); err != nil {
				t.Fatal(err)
			}
			got := append(pretty.Bytes(), '\n')
			path := filepath.Join("testdata", "problems", tc.name+".json")
			if *update {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%s differs from %s:\n got %s\nwant %s", tc.name, path, got, want)
			}
			if r.status >= 500 || r.status < 400 {
				t.Fatalf("status %d", r.status)
			}
		})
	}
}
