package httpapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"time"
)

// handleBatchEvents streams a batch's progress as Server-Sent Events:
//
//	event: progress   the batch, at once and whenever it changes
//	event: done       the batch, once it is completed or cancelled; then the stream ends
//	event: error      a problem document, when the batch can no longer be read
//
// plus a comment line as heartbeat while nothing changes. The stream polls
// the store instead of listening inside the process, so it shows the work
// of every node that shares the store.
func (s *server) handleBatchEvents() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		pid, id := projectID(r), r.PathValue("id")
		b, err := s.Store.BatchGetByID(ctx, pid, id)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		rc := http.NewResponseController(w)
		// A stream lasts as long as its batch, past any WriteTimeout the
		// http.Server has for ordinary requests.
		_ = rc.SetWriteDeadline(time.Time{})
		h := w.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Accel-Buffering", "no") // tell nginx not to buffer the stream
		w.WriteHeader(http.StatusOK)

		send := func(event string, v any) error {
			data, err := json.Marshal(v)
			if err != nil {
				return fmt.Errorf("encoding %s event: %w", event, err)
			}
			if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, data); err != nil {
				return err
			}
			return rc.Flush()
		}
		last, _ := json.Marshal(toBatchResponse(b))
		if err := send("progress", toBatchResponse(b)); err != nil {
			return
		}
		if b.Status.Terminal() {
			_ = send("done", toBatchResponse(b))
			return
		}
		poll := time.NewTicker(s.EventsPoll)
		defer poll.Stop()
		heartbeat := time.NewTicker(s.EventsHeartbeat)
		defer heartbeat.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-heartbeat.C:
				if _, err := fmt.Fprint(w, ": heartbeat\n\n"); err != nil {
					return
				}
				if err := rc.Flush(); err != nil {
					return
				}
			case <-poll.C:
				b, err := s.Store.BatchGetByID(ctx, pid, id)
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					p := internalProblem(r)
					s.Logger.ErrorContext(ctx, "event stream: reading batch", slog.String("error_id", p.ErrorID),
						slog.String("batch_id", id), slog.Any("error", err))
					_ = send("error", p)
					return
				}
				resp := toBatchResponse(b)
				cur, _ := json.Marshal(resp)
				if !bytes.Equal(cur, last) {
					last = cur
					if err := send("progress", resp); err != nil {
						return
					}
					heartbeat.Reset(s.EventsHeartbeat)
				}
				if b.Status.Terminal() {
					_ = send("done", resp)
					return
				}
			}
		}
	})
}
