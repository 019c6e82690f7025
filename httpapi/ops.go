package httpapi

import (
	"bytes"
	_ "embed"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/batchsender/batchsender"
)

// openAPIDocument is the API's description, served as is.
//
//go:embed openapi.json
var openAPIDocument []byte

// OpenAPIDocument returns the OpenAPI document that describes the API.
func OpenAPIDocument() []byte { return bytes.Clone(openAPIDocument) }

func (s *server) handleOpenAPI() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(openAPIDocument)))
		_, _ = w.Write(openAPIDocument)
	})
}

// handleHealthz answers 200 while the process serves HTTP at all.
func (s *server) handleHealthz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
}

// handleReadyz answers 200 when the program says it can take work (the
// store answers), else 503.
func (s *server) handleReadyz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.Ready != nil {
			if err := s.Ready(r.Context()); err != nil {
				// The reason goes to the log only: it may describe the
				// database in ways an anonymous caller should not see.
				s.Logger.WarnContext(r.Context(), "not ready", "error", err)
				s.writeError(w, r, batchsender.Errorf(codeUnavailable, "not ready"))
				return
			}
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ready\n")
	})
}

// handleMetrics writes Prometheus text: the API's request counters, then
// whatever Deps.Metrics adds.
func (s *server) handleMetrics() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		var buf bytes.Buffer
		fmt.Fprintf(&buf, "# HELP batchsender_build_info The running BatchSender version.\n")
		fmt.Fprintf(&buf, "# TYPE batchsender_build_info gauge\n")
		fmt.Fprintf(&buf, "batchsender_build_info{version=%s} 1\n", labelValue(s.Version))
		s.metrics.write(&buf)
		if s.Metrics != nil {
			s.Metrics(&buf)
		}
		_, _ = w.Write(buf.Bytes())
	})
}

// durationBuckets are the upper bounds, in seconds, of the request
// duration histogram.
var durationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

type routeStatus struct {
	route  string
	status int
}

type histogram struct {
	counts []uint64 // one per bucket, not cumulative
	sum    float64
	count  uint64
}

// httpMetrics counts requests by route and status and times them by route.
// Routes are the ServeMux patterns, so the label set stays small whatever
// IDs the paths carry.
type httpMetrics struct {
	mu        sync.Mutex
	requests  map[routeStatus]uint64
	durations map[string]*histogram
}

func newHTTPMetrics() *httpMetrics {
	return &httpMetrics{requests: map[routeStatus]uint64{}, durations: map[string]*histogram{}}
}

func (m *httpMetrics) observe(route string, status int, d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.requests[routeStatus{route, status}]++
	h := m.durations[route]
	if h == nil {
		h = &histogram{counts: make([]uint64, len(durationBuckets))}
		m.durations[route] = h
	}
	sec := d.Seconds()
	if i, _ := slices.BinarySearch(durationBuckets, sec); i < len(durationBuckets) {
		h.counts[i]++
	}
	h.sum += sec
	h.count++
}

func (m *httpMetrics) write(w io.Writer) {
	m.mu.Lock()
	defer m.mu.Unlock()
	keys := make([]routeStatus, 0, len(m.requests))
	for k := range m.requests {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b routeStatus) int {
		if c := strings.Compare(a.route, b.route); c != 0 {
			return c
		}
		return a.status - b.status
	})
	fmt.Fprintf(w, "# HELP batchsender_http_requests_total HTTP requests served, by route and status.\n")
	fmt.Fprintf(w, "# TYPE batchsender_http_requests_total counter\n")
	for _, k := range keys {
		fmt.Fprintf(w, "batchsender_http_requests_total{route=%s,status=\"%d\"} %d\n", labelValue(k.route), k.status, m.requests[k])
	}
	routes := make([]string, 0, len(m.durations))
	for r := range m.durations {
		routes = append(routes, r)
	}
	slices.Sort(routes)
	fmt.Fprintf(w, "# HELP batchsender_http_request_duration_seconds Time to serve HTTP requests, by route.\n")
	fmt.Fprintf(w, "# TYPE batchsender_http_request_duration_seconds histogram\n")
	for _, r := range routes {
		h := m.durations[r]
		var cum uint64
		for i, le := range durationBuckets {
			cum += h.counts[i]
			fmt.Fprintf(w, "batchsender_http_request_duration_seconds_bucket{route=%s,le=\"%s\"} %d\n",
				labelValue(r), strconv.FormatFloat(le, 'g', -1, 64), cum)
		}
		fmt.Fprintf(w, "batchsender_http_request_duration_seconds_bucket{route=%s,le=\"+Inf\"} %d\n", labelValue(r), h.count)
		fmt.Fprintf(w, "batchsender_http_request_duration_seconds_sum{route=%s} %s\n", labelValue(r), strconv.FormatFloat(h.sum, 'g', -1, 64))
		fmt.Fprintf(w, "batchsender_http_request_duration_seconds_count{route=%s} %d\n", labelValue(r), h.count)
	}
}

// labelValue quotes a Prometheus label value.
func labelValue(v string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	return `"` + r.Replace(v) + `"`
}
