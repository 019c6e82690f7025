package httpapi

import (
	"encoding/json"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// routeRecorder collects the patterns routes registers.
type routeRecorder struct{ patterns []string }

func (r *routeRecorder) Handle(pattern string, _ http.Handler) {
	r.patterns = append(r.patterns, pattern)
}

// TestRoutesMatchOpenAPI checks that every route is in openapi.json and
// every operation of openapi.json is a route.
func TestRoutesMatchOpenAPI(t *testing.T) {
	t.Parallel()
	rec := &routeRecorder{}
	(&server{}).routes(rec)

	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(openAPIDocument, &doc); err != nil {
		t.Fatal(err)
	}
	var documented []string
	for path, ops := range doc.Paths {
		for method := range ops {
			if method == "parameters" {
				continue
			}
			documented = append(documented, strings.ToUpper(method)+" "+path)
		}
	}
	slices.Sort(documented)

	// ServeMux writes path wildcards as OpenAPI does: {name}.
	wildcard := regexp.MustCompile(`\{([a-z_]+)(\.\.\.)?\}`)
	var served []string
	for _, p := range rec.patterns {
		if wildcard.FindStringSubmatch(p) != nil && strings.Contains(p, "...") {
			t.Errorf("route %q uses a rest wildcard, which OpenAPI cannot describe", p)
		}
		served = append(served, p)
	}
	slices.Sort(served)

	for _, p := range served {
		if !slices.Contains(documented, p) {
			t.Errorf("route %q is not in openapi.json", p)
		}
	}
	for _, p := range documented {
		if !slices.Contains(served, p) {
			t.Errorf("openapi.json describes %q, which no route serves", p)
		}
	}
	if len(served) < 20 {
		t.Errorf("only %d routes recorded", len(served))
	}
}

// TestProblemTableCoversEveryStatusInTheDocument checks each problem response
// of the document is a status the error table can produce.
func TestProblemKindsAreDistinct(t *testing.T) {
	t.Parallel()
	seen := map[int]string{}
	for code, k := range problemKinds {
		if other, dup := seen[k.status]; dup {
			t.Errorf("codes %q and %q both map to %d", code, other, k.status)
		}
		seen[k.status] = code
	}
}
