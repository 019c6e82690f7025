// Package e2e checks BatchSender from the outside, exactly as a user and a
// receiving server see it: it builds the real binary, runs it as a
// subprocess on a temporary data directory, drives it through the HTTP API
// and receives its webhooks on a loopback server that verifies every
// Standard Webhooks signature on its own (it shares no code with the sender).
//
// The exported helpers (Receiver, Server, Client) are used by the tests of
// this package and by the benchmarks in package benchmarks.
package e2e

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Action tells the receiver how to answer one request.
type Action struct {
	Status     int           // 0 means 200
	RetryAfter string        // value of the Retry-After header, if any
	Sleep      time.Duration // wait this long (or until the client gives up) before answering
}

// Call describes one delivery to a Behavior.
type Call struct {
	ID      string // webhook-id
	Path    string // URL path the request was sent to
	Attempt int    // requests seen with this webhook-id so far, this one included
}

// Behavior decides the answer to one delivery. It is called concurrently.
type Behavior func(Call) Action

// Delivery is what the receiver knows about one webhook-id.
type Delivery struct {
	Count      int         // requests received with this webhook-id
	Body       []byte      // body of the first request
	BodyDiffer bool        // a later request carried a different body
	Times      []time.Time // arrival of each request (when recording times)
	Statuses   []int       // status answered to each request, in the order of Times (0 while unanswered)
}

// Receiver is a loopback HTTP server that verifies Standard Webhooks
// signatures and records each delivery by webhook-id.
type Receiver struct {
	// URL is the receiver's base URL (http://127.0.0.1:PORT).
	URL string

	key         []byte
	behavior    Behavior
	recordTimes bool
	srv         *http.Server
	ln          net.Listener
	done        chan struct{}

	requests atomic.Int64
	badSigs  atomic.Int64
	last     atomic.Int64 // Unix nanoseconds of the latest request

	mu         sync.Mutex
	deliveries map[string]*Delivery
	sigErrors  []string // first few signature failures, for the report
}

// ReceiverOptions configure a Receiver.
type ReceiverOptions struct {
	// Secret is the connection's signing secret, "whsec_" + base64.
	Secret string
	// Behavior decides answers; nil answers 200 to everything.
	Behavior Behavior
	// RecordTimes keeps arrival times and statuses per delivery.
	RecordTimes bool
}

// NewReceiver starts a receiver on 127.0.0.1. Close it when done.
func NewReceiver(opts ReceiverOptions) (*Receiver, error) {
	key, err := DecodeSecret(opts.Secret)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listening for the receiver: %w", err)
	}
	r := &Receiver{
		URL:         "http://" + ln.Addr().String(),
		key:         key,
		behavior:    opts.Behavior,
		recordTimes: opts.RecordTimes,
		ln:          ln,
		done:        make(chan struct{}),
		deliveries:  make(map[string]*Delivery),
	}
	r.srv = &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(r.done)
		_ = r.srv.Serve(ln)
	}()
	return r, nil
}

// Close stops the receiver and waits for its goroutines.
func (r *Receiver) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.srv.Shutdown(ctx); err != nil {
		_ = r.srv.Close()
	}
	<-r.done
}

// ServeHTTP verifies, records and answers one delivery.
func (r *Receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	now := time.Now()
	r.requests.Add(1)
	r.last.Store(now.UnixNano())
	body, err := io.ReadAll(req.Body)
	if err != nil {
		http.Error(w, "reading body", http.StatusBadRequest)
		return
	}
	id := req.Header.Get("webhook-id")
	if err := VerifySignature(r.key, req.Header, body, now); err != nil {
		r.badSigs.Add(1)
		r.mu.Lock()
		if len(r.sigErrors) < 10 {
			r.sigErrors = append(r.sigErrors, fmt.Sprintf("id %q: %v", id, err))
		}
		r.mu.Unlock()
		// 401 is permanent for the sender: a bad signature shows up as a
		// failed item as well as in BadSignatures.
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}

	r.mu.Lock()
	d := r.deliveries[id]
	if d == nil {
		d = &Delivery{Body: body}
		r.deliveries[id] = d
	} else if string(d.Body) != string(body) {
		d.BodyDiffer = true
	}
	d.Count++
	attempt := d.Count
	// Times are kept in order of arrival: a request the receiver holds
	// (Sleep) may end after a retry of it that arrived later.
	slot := -1
	if r.recordTimes {
		d.Times = append(d.Times, now)
		d.Statuses = append(d.Statuses, 0)
		slot = len(d.Times) - 1
	}
	r.mu.Unlock()

	var act Action
	if r.behavior != nil {
		act = r.behavior(Call{ID: id, Path: req.URL.Path, Attempt: attempt})
	}
	if act.Sleep > 0 {
		t := time.NewTimer(act.Sleep)
		select {
		case <-t.C:
		case <-req.Context().Done():
			t.Stop()
		}
	}
	status := act.Status
	if status == 0 {
		status = http.StatusOK
	}
	if slot >= 0 {
		r.mu.Lock()
		d.Statuses[slot] = status
		r.mu.Unlock()
	}
	if act.RetryAfter != "" {
		w.Header().Set("Retry-After", act.RetryAfter)
	}
	w.WriteHeader(status)
}

// LastRequest returns when the latest request arrived (zero if none has).
func (r *Receiver) LastRequest() time.Time {
	if ns := r.last.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// Requests returns how many requests arrived, valid or not.
func (r *Receiver) Requests() int64 { return r.requests.Load() }

// BadSignatures returns how many requests failed verification, and the
// first few reasons.
func (r *Receiver) BadSignatures() (int64, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.badSigs.Load(), append([]string(nil), r.sigErrors...)
}

// Deliveries returns a copy of what was received, by webhook-id.
func (r *Receiver) Deliveries() map[string]Delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]Delivery, len(r.deliveries))
	for id, d := range r.deliveries {
		c := *d
		c.Times = append([]time.Time(nil), d.Times...)
		c.Statuses = append([]int(nil), d.Statuses...)
		out[id] = c
	}
	return out
}

// Distinct returns how many distinct webhook-ids were received.
func (r *Receiver) Distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.deliveries)
}

// Reset forgets everything received so far.
func (r *Receiver) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deliveries = make(map[string]*Delivery)
	r.sigErrors = nil
	r.requests.Store(0)
	r.badSigs.Store(0)
	r.last.Store(0)
}

// SignatureTolerance is how far webhook-timestamp may be from the
// receiver's clock, as in the reference libraries.
const SignatureTolerance = 5 * time.Minute

// DecodeSecret returns the HMAC key of a "whsec_" secret (the prefix is
// optional, as in the reference libraries).
func DecodeSecret(secret string) ([]byte, error) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		return nil, fmt.Errorf("decoding signing secret: %w", err)
	}
	if len(key) == 0 {
		return nil, errors.New("empty signing secret")
	}
	return key, nil
}

// Sign returns the v1 signature of body for id and timestamp: base64 of
// HMAC-SHA256 over "id.timestamp.body".
func Sign(key []byte, id string, timestamp int64, body []byte) string {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id))
	mac.Write([]byte{'.'})
	mac.Write([]byte(strconv.FormatInt(timestamp, 10)))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// VerifySignature checks the Standard Webhooks headers of one request the
// way a careful consumer does: all three headers present, the id free of
// dots, the timestamp within SignatureTolerance of now, and at least one
// v1 signature matching in constant time.
func VerifySignature(key []byte, h http.Header, body []byte, now time.Time) error {
	id := h.Get("webhook-id")
	ts := h.Get("webhook-timestamp")
	sigs := h.Get("webhook-signature")
	switch {
	case id == "":
		return errors.New("missing webhook-id")
	case strings.Contains(id, "."):
		return errors.New("webhook-id contains a dot")
	case ts == "":
		return errors.New("missing webhook-timestamp")
	case sigs == "":
		return errors.New("missing webhook-signature")
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("unparsable webhook-timestamp %q", ts)
	}
	if d := now.Sub(time.Unix(sec, 0)); d > SignatureTolerance || d < -SignatureTolerance {
		return fmt.Errorf("webhook-timestamp %d is %v away from now", sec, d)
	}
	want := []byte(Sign(key, id, sec, body))
	for _, s := range strings.Fields(sigs) {
		if !strings.HasPrefix(s, "v1,") || len(s) == len("v1,") {
			continue
		}
		if hmac.Equal([]byte(s), want) {
			return nil
		}
	}
	return fmt.Errorf("no matching v1 signature in %q", sigs)
}
