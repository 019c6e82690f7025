package httpapi

import (
	"errors"
	"io"
	"net/http"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/events"
)

// maxEventBody bounds one event webhook request: SendGrid posts events in
// batches of up to a few megabytes.
const maxEventBody = 8 << 20

// handleProviderEvents receives a provider's event webhook for one
// connection. There is no API key: the provider's signature (or, for
// Postmark, basic auth credentials), checked with the connection's event
// settings, is the credential. Hard bounces, complaints and unsubscribes
// become suppressions of the connection's project.
func (s *server) handleProviderEvents() http.Handler {
	type response struct {
		Suppressed int `json:"suppressed"` // addresses newly suppressed
	}
	notHere := batchsender.Errorf(batchsender.ENOTFOUND, "no event webhook here")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := s.Store.ConnectionGetByID(r.Context(), r.PathValue("connection_id"))
		if batchsender.IsNotFound(err) || (err == nil && !events.Supported(conn.Provider)) {
			s.writeError(w, r, notHere)
			return
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if r.ContentLength > maxEventBody {
			s.writeError(w, r, tooLarge(maxEventBody))
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxEventBody))
		if err != nil {
			if mbe, ok := errors.AsType[*http.MaxBytesError](err); ok {
				s.writeError(w, r, tooLarge(mbe.Limit))
				return
			}
			s.writeError(w, r, batchsender.Errorf(batchsender.EINVALID, "reading the request body failed"))
			return
		}
		cfg, secrets, err := s.Providers.EventSettings(conn)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		sups, err := s.Events.Handle(r.Context(), conn.Provider, events.Request{Header: r.Header, Body: body, Config: cfg, Secrets: secrets})
		if errors.Is(err, events.ErrUnauthorized) {
			if conn.Provider == "email.postmark" {
				w.Header().Set("WWW-Authenticate", `Basic realm="batchsender events"`)
			}
			s.writeError(w, r, batchsender.Errorf(batchsender.EUNAUTHORIZED, "the event webhook request is not verified"))
			return
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		var out response
		if len(sups) > 0 {
			if out.Suppressed, err = s.Store.SuppressionsAdd(r.Context(), conn.ProjectID, sups); err != nil {
				s.writeError(w, r, err)
				return
			}
		}
		s.encode(w, r, http.StatusOK, out)
	})
}
