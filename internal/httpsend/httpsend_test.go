package httpsend

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/batchsender/batchsender/netguard"
	"github.com/batchsender/batchsender/sdk"
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
		if got := RetryAfter(h, now); got != want {
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
		u, err := ParseBaseURL(c.raw, "https://api.example.com", c.private)
		got := "error"
		if err == nil {
			got = u.String()
		} else if strings.Contains(err.Error(), "pw") {
			t.Errorf("error %q repeats the URL's password", err)
		}
		if got != c.want {
			t.Errorf("ParseBaseURL(%q, %v) = %s (%v), want %s", c.raw, c.private, got, err, c.want)
		}
	}
}

func TestStatusResult(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	for status, want := range map[int]sdk.Outcome{
		400: sdk.OutcomePermanent, 401: sdk.OutcomePermanent, 422: sdk.OutcomePermanent,
		408: sdk.OutcomeRetry, 429: sdk.OutcomeRetry, 500: sdk.OutcomeRetry, 503: sdk.OutcomeRetry,
	} {
		h := http.Header{"Retry-After": {"3"}}
		r := StatusResult(Answer{Status: status, Header: h, Body: []byte(strings.Repeat("x", 2000))}, now, "boom")
		if r.Outcome != want || r.StatusCode != status || len(r.Response) != 1024 {
			t.Errorf("HTTP %d: outcome %v status %d response %d bytes, want %v %d 1024", status, r.Outcome, r.StatusCode, len(r.Response), want, status)
		}
		if want == sdk.OutcomeRetry && r.RetryAfter != 3*time.Second {
			t.Errorf("HTTP %d: RetryAfter %v, want 3s", status, r.RetryAfter)
		}
		if r.Err == nil || !strings.Contains(r.Err.Error(), "boom") {
			t.Errorf("HTTP %d: error %v does not carry the provider's message", status, r.Err)
		}
	}
}

func TestTransportResult(t *testing.T) {
	t.Parallel()
	failed := errors.New("connection reset")
	for _, c := range []struct {
		left, idempotent bool
		want             sdk.Outcome
	}{
		{false, false, sdk.OutcomeRetry},
		{false, true, sdk.OutcomeRetry},
		{true, true, sdk.OutcomeRetry},
		{true, false, sdk.OutcomeUnknown},
	} {
		r := TransportResult(Answer{Err: failed, Left: c.left}, "posting /x", c.idempotent)
		if r.Outcome != c.want || !errors.Is(r.Err, failed) {
			t.Errorf("left=%v idempotent=%v: %v (%v), want %v wrapping the transport error", c.left, c.idempotent, r.Outcome, r.Err, c.want)
		}
	}
}

func TestDuration(t *testing.T) {
	t.Parallel()
	var d Duration
	if err := json.Unmarshal([]byte(`"10s"`), &d); err != nil || d.Or(time.Minute) != 10*time.Second {
		t.Fatalf(`"10s" = %v, %v`, time.Duration(d), err)
	}
	if Duration(0).Or(time.Minute) != time.Minute {
		t.Error("unset duration does not fall back to the default")
	}
	for _, bad := range []string{`"0s"`, `"6m"`, `"soon"`, `10`} {
		if err := json.Unmarshal([]byte(bad), &d); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	if b, _ := json.Marshal(Duration(90 * time.Second)); string(b) != `"1m30s"` {
		t.Errorf("marshal = %s", b)
	}
}

func TestNewClientChecksTheAddressReached(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	defer srv.Close()
	plain := (&net.Dialer{}).DialContext
	for _, allow := range []bool{false, true} {
		c := NewClient(sdk.Env{Dialer: plain, AllowPrivateNetworks: allow}, 2*time.Second)
		req, _ := http.NewRequest(http.MethodPost, srv.URL, nil)
		a := Do(context.Background(), c, 2*time.Second, req)
		c.CloseIdleConnections()
		switch {
		case !allow && (a.Err == nil || !netguard.IsBlocked(a.Err) || a.Left):
			t.Errorf("loopback under the default policy: %+v, want blocked before the request left", a)
		case allow && (a.Err != nil || a.Status != http.StatusOK):
			t.Errorf("loopback with private networks allowed: %+v", a)
		}
	}
}
