package httpapi

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/auth"
)

// statusWriter remembers what a handler wrote, for logs and metrics. Unwrap
// lets http.ResponseController reach the real writer (Flush for events).
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// requestInfo is filled in along the way (auth adds the key) and read by
// the request log line.
type requestInfo struct {
	keyID     string
	projectID string
}

type requestInfoKey struct{}

// quietRoutes are polled by machines; their successes are logged at debug.
var quietRoutes = map[string]bool{"GET /healthz": true, "GET /readyz": true, "GET /metrics": true}

// observe logs one line per request and counts it in the metrics. It never
// logs headers, query strings or bodies: they may carry keys or secrets.
func (s *server) observe(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := s.Now()
		info := &requestInfo{}
		r = r.WithContext(context.WithValue(r.Context(), requestInfoKey{}, info))
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		if sw.status == 0 {
			sw.status = http.StatusOK
		}
		elapsed := s.Now().Sub(start)
		route := r.Pattern // set by the ServeMux; empty when no route matched
		if route == "" {
			route = "unmatched"
		}
		s.metrics.observe(route, sw.status, elapsed)
		path := r.URL.Path
		if strings.HasPrefix(path, "/u/") || strings.Contains(route, "{address}") {
			// An unsubscribe token is a credential, and it and suppression
			// paths name a person's address: neither belongs in the log.
			path = "(redacted)"
		}
		attrs := []slog.Attr{
			slog.String("method", r.Method),
			slog.String("path", path),
			slog.String("route", route),
			slog.Int("status", sw.status),
			slog.Int64("bytes", sw.bytes),
			slog.Duration("duration", elapsed),
		}
		if info.keyID != "" {
			attrs = append(attrs, slog.String("key_id", info.keyID), slog.String("project_id", info.projectID))
		}
		level := slog.LevelInfo
		switch {
		case sw.status >= 500:
			level = slog.LevelError
		case quietRoutes[route]:
			level = slog.LevelDebug // probes and scrapes would drown the log
		}
		s.Logger.LogAttrs(r.Context(), level, "http request", attrs...)
	})
}

// recoverer turns a panicking handler into a 500 problem whose error ID
// points at the logged stack.
func (s *server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw, ok := w.(*statusWriter)
		if !ok {
			sw = &statusWriter{ResponseWriter: w}
		}
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler { // the documented way to abort a response; not ours to catch
				panic(v)
			}
			p := internalProblem(r)
			s.Logger.ErrorContext(r.Context(), "handler panicked",
				slog.String("error_id", p.ErrorID), slog.String("method", r.Method),
				slog.String("path", r.URL.Path), slog.String("panic", fmt.Sprint(v)),
				slog.String("stack", string(debug.Stack())))
			if sw.status != 0 {
				return // the response has begun; nothing sensible can follow
			}
			s.writeProblem(sw, r, p)
		}()
		next.ServeHTTP(sw, r)
	})
}

// statusRecorder captures what the ServeMux's own 404 and 405 handlers
// would answer, so the answer can be a problem document instead.
type statusRecorder struct {
	header http.Header
	status int
}

func (r *statusRecorder) Header() http.Header         { return r.header }
func (r *statusRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *statusRecorder) WriteHeader(code int)        { r.status = code }

// notFound answers requests that match no route with a problem document:
// 405 with Allow when the path exists under another method, else 404.
func (s *server) notFound(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		if pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		rec := &statusRecorder{header: http.Header{}}
		h.ServeHTTP(rec, r)
		if rec.status == http.StatusMethodNotAllowed {
			w.Header().Set("Allow", rec.header.Get("Allow"))
			s.writeError(w, r, batchsender.Errorf(codeMethodNotAllowed,
				"%s is not allowed on %s; allowed: %s", r.Method, r.URL.Path, rec.header.Get("Allow")))
			return
		}
		s.writeError(w, r, batchsender.Errorf(batchsender.ENOTFOUND,
			"no such endpoint: %s %s (the API is described at /openapi.json)", r.Method, r.URL.Path))
	})
}

type apiKeyKey struct{}

// auth lets a request through only with a valid Authorization: Bearer key,
// and puts the key in the request's context: every handler behind it reads
// the project from there and never from the request.
func (s *server) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		header := r.Header.Get("Authorization")
		if header == "" {
			s.writeError(w, r, batchsender.Errorf(batchsender.EUNAUTHORIZED,
				"missing API key: send the header Authorization: Bearer <API key>"))
			return
		}
		scheme, token, _ := strings.Cut(header, " ")
		if !strings.EqualFold(scheme, "Bearer") {
			s.writeError(w, r, batchsender.Errorf(batchsender.EUNAUTHORIZED,
				"the Authorization header must use the Bearer scheme: Authorization: Bearer <API key>"))
			return
		}
		key, err := auth.Authenticate(r.Context(), s.Store, strings.TrimSpace(token))
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if info, ok := r.Context().Value(requestInfoKey{}).(*requestInfo); ok {
			info.keyID, info.projectID = key.ID, key.ProjectID
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), apiKeyKey{}, key)))
	})
}

// projectID returns the project of the request's API key. Only handlers
// behind auth call it.
func projectID(r *http.Request) string {
	key, _ := r.Context().Value(apiKeyKey{}).(batchsender.APIKey)
	return key.ProjectID
}
