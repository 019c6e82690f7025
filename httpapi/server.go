// Package httpapi is BatchSender's HTTP API: JSON under /v1, problem
// documents (RFC 9457) for every error, Server-Sent Events for live
// progress, and the operational endpoints /healthz, /readyz, /metrics and
// /openapi.json.
//
// The whole surface is listed in routes.go, and openapi.json beside it
// describes every route; the tests validate every request and response they
// make against that document, so the two cannot drift apart.
//
// What is not here yet: key management over HTTP (keys are made with the
// CLI), per-key rate limits, and ETags.
package httpapi

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/events"
	"github.com/batchsender/batchsender/providers"
	"github.com/batchsender/batchsender/unsubscribe"
)

// Defaults for Deps fields left zero.
const (
	DefaultMaxBodyBytes    int64 = 10 << 20 // JSON bodies
	DefaultMaxUploadBytes  int64 = 1 << 30  // NDJSON and CSV uploads
	DefaultEventsPoll            = 300 * time.Millisecond
	DefaultEventsHeartbeat       = 15 * time.Second
	// maxUploadLine bounds one NDJSON line or CSV row of an upload.
	maxUploadLine = 1 << 20
)

// Deps is everything the API needs from the rest of the program.
type Deps struct {
	// Store persists everything. Required.
	Store batchsender.Store
	// Providers provisions connections' providers. Required.
	Providers *providers.Cache
	// Sealer encrypts connection secrets before they are stored. Required.
	Sealer interface{ Seal([]byte) ([]byte, error) }
	// Waker is told when work may have become due, so the engine need not
	// wait for its next poll. May be nil.
	Waker interface{ Wake() }
	// Logger receives one line per request and every internal error. Never
	// given secrets, keys or bodies.
	Logger *slog.Logger
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// MaxBodyBytes bounds JSON request bodies (DefaultMaxBodyBytes when 0).
	MaxBodyBytes int64
	// MaxUploadBytes bounds NDJSON and CSV uploads (DefaultMaxUploadBytes when 0).
	MaxUploadBytes int64
	// Ready answers /readyz; nil means always ready.
	Ready func(ctx context.Context) error
	// Metrics writes extra Prometheus text lines (engine statistics) after
	// the API's own. May be nil.
	Metrics func(w io.Writer)
	// Version is shown in /metrics as batchsender_build_info.
	Version string
	// EventsPoll is how often an event stream reads its batch
	// (DefaultEventsPoll when 0). Reading the store rather than listening
	// in-process makes streams work whichever node does the work.
	EventsPoll time.Duration
	// Unsubscribe verifies the tokens of the one-click unsubscribe links
	// (/u/{token}); the same signer must make them (providers.Config). Nil
	// answers every link with 404.
	Unsubscribe *unsubscribe.Signer
	// Events verifies and reads providers' event webhooks
	// (/v1/hooks/{connection_id}/events); events.New(events.Options{})
	// when nil.
	Events *events.Receiver
	// EventsHeartbeat is how often an idle event stream sends a comment,
	// so proxies keep it open (DefaultEventsHeartbeat when 0).
	EventsHeartbeat time.Duration
}

func (d Deps) withDefaults() Deps {
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.MaxBodyBytes <= 0 {
		d.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if d.MaxUploadBytes <= 0 {
		d.MaxUploadBytes = DefaultMaxUploadBytes
	}
	if d.EventsPoll <= 0 {
		d.EventsPoll = DefaultEventsPoll
	}
	if d.Events == nil {
		d.Events = events.New(events.Options{Now: d.Now})
	}
	if d.EventsHeartbeat <= 0 {
		d.EventsHeartbeat = DefaultEventsHeartbeat
	}
	return d
}

// server holds the dependencies the handlers share.
type server struct {
	Deps
	metrics *httpMetrics
}

// NewServer returns the API as one http.Handler.
//
// Event streams end when the request's context ends: a program that shuts
// its http.Server down gracefully should cancel the server's BaseContext
// (for instance from RegisterOnShutdown) so open streams close.
//
// It panics when Store, Providers or Sealer is missing: that is a wiring
// mistake to catch at start, not a request's fault.
func NewServer(d Deps) http.Handler {
	switch {
	case d.Store == nil:
		panic("httpapi: Deps.Store is required")
	case d.Providers == nil:
		panic("httpapi: Deps.Providers is required")
	case d.Sealer == nil:
		panic("httpapi: Deps.Sealer is required")
	}
	s := &server{Deps: d.withDefaults(), metrics: newHTTPMetrics()}
	mux := http.NewServeMux()
	s.routes(mux)
	return s.observe(s.recoverer(s.notFound(mux)))
}

// wake tells the engine that work may be due.
func (s *server) wake() {
	if s.Waker != nil {
		s.Waker.Wake()
	}
}
