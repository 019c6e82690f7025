package postmark

import (
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"":                              0,
		"7":                             7 * time.Second,
		"1.5":                           1500 * time.Millisecond,
		"-3":                            0,
		"soon":                          0,
		"Fri, 04 Dec 2026 12:00:30 GMT": 30 * time.Second,
		"Fri, 04 Dec 2026 11:00:00 GMT": 0,
	} {
		h := http.Header{}
		if v != "" {
			h.Set("Retry-After", v)
		}
		if got := retryAfter(h, now); got != want {
			t.Errorf("Retry-After %q = %v, want %v", v, got, want)
		}
	}
}

func TestParseBaseURL(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		raw     string
		private bool
		want    string
	}{
		{"", false, "https://api.example.com"},
		{"https://eu.example.com/", false, "https://eu.example.com"},
		{"https://eu.example.com/prefix/", false, "https://eu.example.com/prefix"},
		{"http://127.0.0.1:8080", true, "http://127.0.0.1:8080"},
		{"http://127.0.0.1:8080", false, "error"},
		{"https://user:pw@example.com", false, "error"},
		{"https://example.com?x=1", false, "error"},
		{"ftp://example.com", true, "error"},
		{"https://", false, "error"},
		{"https://10.0.0.7", false, "error"},
		{"https://169.254.169.254", true, "error"},
		{"https://localhost:8443", false, "error"},
		{"https://localhost:8443", true, "https://localhost:8443"},
	} {
		u, err := parseBaseURL(c.raw, "https://api.example.com", c.private)
		got := "error"
		if err == nil {
			got = u.String()
		} else if strings.Contains(err.Error(), "pw") {
			t.Errorf("error %q repeats the URL's password", err)
		}
		if got != c.want {
			t.Errorf("parseBaseURL(%q, %v) = %s (%v), want %s", c.raw, c.private, got, err, c.want)
		}
	}
}

// TestSharedPlumbingCopiesAreIdentical keeps the copies of httpsend.go in
// the HTTP email provider packages the same.
func TestSharedPlumbingCopiesAreIdentical(t *testing.T) {
	t.Parallel()
	body := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		_, rest, _ := strings.Cut(string(b), "\n")
		return rest
	}
	want := body("httpsend.go")
	for _, p := range []string{"../sendgrid/httpsend.go", "../resend/httpsend.go", "../mailgun/httpsend.go"} {
		if body(p) != want {
			t.Errorf("%s differs from postmark/httpsend.go", p)
		}
	}
}
