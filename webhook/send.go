package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/batchsender/batchsender/netguard"
	"github.com/batchsender/batchsender/sdk"
)

const (
	// snippetSize is how much of an answer is kept per attempt.
	snippetSize = 1 << 10
	// drainSize is how much more of an answer is read and discarded so the
	// connection can be reused; a longer answer costs a new connection
	// instead of unbounded reading.
	drainSize = 64 << 10
	// maxRetryAfter caps a receiver's Retry-After, so one bad header cannot
	// park an item for days.
	maxRetryAfter = time.Hour
)

// sender is one batch's compiled template.
type sender struct {
	p        *Provider
	tmpl     fields
	tmplURL  *url.URL // the template's URL, parsed and checked once
	tmplHost string   // hostKey(tmplURL)
	urls     urlCache // item URLs already checked, for ValidateItem
}

// request is an item merged over the template, ready to send.
type request struct {
	url     *url.URL
	hostKey string
	method  string
	headers map[string]string
	body    []byte
}

// resolve merges an item over the template and validates the result.
func (s *sender) resolve(data json.RawMessage) (request, error) {
	it, ok := scanFields(data)
	if !ok {
		var err error
		if it, err = decodeFields(data, "item"); err != nil {
			return request{}, err
		}
	}
	return s.merge(it)
}

// resolveFull is resolve through the strict decode only: the reference the
// fast scanner is tested against.
func (s *sender) resolveFull(data json.RawMessage) (request, error) {
	it, err := decodeFields(data, "item")
	if err != nil {
		return request{}, err
	}
	return s.merge(it)
}

// merge lays an item's decoded fields over the template.
func (s *sender) merge(it fields) (request, error) {
	var r request
	switch {
	case it.URL != "":
		u, err := parseURL(it.URL, s.p.allowPrivate)
		if err != nil {
			return r, fmt.Errorf("url: %w", err)
		}
		r.url = u
	case s.tmplURL != nil:
		// Checked by Compile under the same policy; each request gets
		// its own copy.
		u := *s.tmplURL
		r.url = &u
		r.hostKey = s.tmplHost
	default:
		return r, errors.New("url: is required (set it on the item or in the batch template)")
	}
	if r.hostKey == "" {
		r.hostKey = hostKey(r.url)
	}
	r.method = s.tmpl.Method
	if it.Method != "" {
		r.method = it.Method
	}
	r.headers = s.tmpl.Headers
	if len(it.Headers) > 0 {
		r.headers = make(map[string]string, len(s.tmpl.Headers)+len(it.Headers))
		for k, v := range s.tmpl.Headers {
			r.headers[k] = v
		}
		for k, v := range it.Headers {
			r.headers[k] = v
		}
	}
	r.body = s.tmpl.Payload
	if it.Payload != nil {
		r.body = it.Payload
	}
	return r, nil
}

// hostKey names a destination for the per-host limit: host and effective
// port, so "example.com" and "example.com:443" share one limit.
func hostKey(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	return strings.ToLower(u.Hostname()) + ":" + port
}

// ValidateItem implements sdk.Sender.
func (s *sender) ValidateItem(data json.RawMessage) error {
	if s.validateFast(data) {
		return nil
	}
	_, err := s.resolve(data)
	return err
}

// Send implements sdk.Sender. Info.MaxChunk is 1, so there is normally one
// item; longer chunks (from other hosts or test kits) are sent
// concurrently under the same limits.
func (s *sender) Send(ctx context.Context, items []sdk.Item) []sdk.Result {
	out := make([]sdk.Result, len(items))
	if len(items) == 1 {
		out[0] = s.sendOne(ctx, items[0])
		return out
	}
	var wg sync.WaitGroup
	for i := range items {
		wg.Go(func() { out[i] = s.sendOne(ctx, items[i]) })
	}
	wg.Wait()
	return out
}

func notSent(err error) sdk.Result {
	return sdk.Retry(fmt.Errorf("not sent: %w", err))
}

func (s *sender) sendOne(ctx context.Context, item sdk.Item) sdk.Result {
	if err := ctx.Err(); err != nil {
		return notSent(err)
	}
	// Validation is repeated at send time: ingest may have run under
	// another policy, and an invalid item must never reach the network
	// (an odd IP spelling would otherwise go to DNS).
	r, err := s.resolve(item.Data)
	if err != nil {
		return sdk.Permanent(err)
	}
	p := s.p
	if p.inflight != nil {
		select {
		case p.inflight <- struct{}{}:
			defer func() { <-p.inflight }()
		case <-ctx.Done():
			return notSent(ctx.Err())
		}
	}
	if p.limiter != nil {
		if err := p.limiter.Wait(ctx); err != nil {
			return notSent(err)
		}
	}
	slot, err := p.hosts.acquire(ctx, r.hostKey)
	if err != nil {
		return notSent(err)
	}
	defer p.hosts.release(r.hostKey, slot)
	return p.do(ctx, item, r)
}

// newBody is a request body net/http knows to be in memory (a
// bytes.Reader behind io.NopCloser), so the transport writes headers and
// body in one write. Any other type makes it flush the headers first: one
// more write syscall and TCP segment per request, for us and the receiver.
func newBody(data []byte) io.ReadCloser { return io.NopCloser(bytes.NewReader(data)) }

// do sends one signed request and classifies the answer.
func (p *Provider) do(ctx context.Context, item sdk.Item, r request) sdk.Result {
	// Deadlines are real time, not the injected clock.
	reqCtx := p.deadlines.ctx(ctx, time.Now(), time.Duration(p.cfg.Timeout))
	// A value, not a pointer: WithContext copies it, so only the copy is
	// allocated.
	base := http.Request{
		Method:     r.method,
		URL:        r.url,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     make(http.Header, len(r.headers)+5),
		Host:       r.url.Host,
	}
	req := base.WithContext(reqCtx)
	// All header values share one backing array: one allocation instead
	// of one per header. Each value is a full slice of length 1 and
	// capacity 1, so an append by anyone reallocates rather than
	// overwriting the next header.
	vals := make([]string, 0, len(r.headers)+5)
	set := func(k, v string) {
		vals = append(vals, v)
		n := len(vals)
		req.Header[k] = vals[n-1 : n : n]
	}
	if len(r.body) > 0 {
		data := r.body
		req.Body = newBody(data)
		req.ContentLength = int64(len(data))
		// The transport sends the body once more on a new connection when
		// a reused one turns out closed.
		req.GetBody = func() (io.ReadCloser, error) { return newBody(data), nil }
		set("Content-Type", "application/json")
	}
	set("User-Agent", p.cfg.UserAgent)
	for k, v := range r.headers {
		set(k, v)
	}
	// The timestamp is this attempt's; the ID is the item's, the same on
	// every attempt, so receivers can de-duplicate.
	ts := p.now().Unix()
	set(HeaderID, item.ID)
	set(HeaderTimestamp, strconv.FormatInt(ts, 10))
	set(HeaderSignature, p.sign(item.ID, ts, r.body))

	// Latency is a measurement, not a decision, so it uses the monotonic
	// clock rather than the injected one.
	start := time.Now()
	// The transport directly, not an http.Client: redirects are never
	// followed (Standard Webhooks: 3xx is a failure, and it keeps a
	// receiver from bouncing us anywhere), so the client would only add a
	// copy of every request's headers and URL.
	resp, err := p.transport.RoundTrip(req)
	if err != nil {
		res := classifyError(ctx, reqCtx, err, time.Duration(p.cfg.Timeout))
		res.Latency = time.Since(start)
		return res
	}
	buf := snippetBufs.Get().(*[snippetSize]byte)
	n, _ := io.ReadFull(resp.Body, buf[:])
	if n == snippetSize {
		_, _ = io.CopyN(io.Discard, resp.Body, drainSize)
	}
	_ = resp.Body.Close()
	res := classifyResponse(resp, item.ID, p.now())
	res.StatusCode = resp.StatusCode
	if n > 0 {
		res.Response = cleanSnippet(buf[:n]) // a copy: buf goes back to the pool
	}
	snippetBufs.Put(buf)
	res.Latency = time.Since(start)
	return res
}

// deadlineShare is how long requests share one timeout context: a request
// may run up to this much longer than its timeout.
const deadlineShare = 100 * time.Millisecond

// sharedDeadlines hands out the timeout contexts of requests: one per
// parent context and deadlineShare window instead of one per request,
// whose context and timer were one of the send path's largest allocations.
// The shared contexts are never cancelled early (a request that ends
// cannot cancel the others', and a provider may be closed while calls
// still run on it); each ends at its deadline, or with its parent, and is
// then freed.
type sharedDeadlines struct {
	mu      sync.Mutex
	entries [4]sharedDeadline // the engine runs at most a few claims' contexts at once
	next    int
}

type sharedDeadline struct {
	parent context.Context
	until  time.Time // requests starting before until share ctx
	ctx    context.Context
	end    time.Time          // ctx's deadline
	cancel context.CancelFunc // only once ctx has ended by itself
}

// ctx returns a context that ends when parent does or between timeout and
// timeout+deadlineShare after now.
func (d *sharedDeadlines) ctx(parent context.Context, now time.Time, timeout time.Duration) context.Context {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range d.entries {
		e := &d.entries[i]
		if e.parent == parent && now.Before(e.until) && !now.Before(e.until.Add(-deadlineShare)) {
			return e.ctx
		}
	}
	e := &d.entries[d.next]
	d.next = (d.next + 1) % len(d.entries)
	if e.cancel != nil && !now.Before(e.end) {
		e.cancel() // ended already; this only tidies up
	}
	end := now.Add(timeout + deadlineShare)
	ctx, cancel := context.WithDeadline(parent, end)
	*e = sharedDeadline{parent: parent, until: now.Add(deadlineShare), ctx: ctx, end: end, cancel: cancel}
	return ctx
}

// snippetBufs holds the buffers answers are read into before their prefix
// is copied into the result.
var snippetBufs = sync.Pool{New: func() any { return new([snippetSize]byte) }}

// classifyError turns a failed round trip into a result. Every such
// failure is retried except a destination the SSRF guard refused: the
// webhook-id makes a repeat safe for receivers that de-duplicate.
func classifyError(ctx, reqCtx context.Context, err error, timeout time.Duration) sdk.Result {
	var blocked *netguard.BlockedError
	switch {
	case errors.As(err, &blocked):
		return sdk.Permanent(fmt.Errorf("not sent: %w", blocked))
	case ctx.Err() != nil:
		return sdk.Retry(fmt.Errorf("interrupted: %w", ctx.Err()))
	case errors.Is(reqCtx.Err(), context.DeadlineExceeded), isTimeout(err):
		// The transport's own timeouts (TLS handshake, response headers)
		// equal the request's and may fire a moment before its context.
		return sdk.Retry(fmt.Errorf("timed out after %s", timeout))
	}
	return sdk.Retry(fmt.Errorf("sending request: %w", err))
}

// isTimeout reports whether err is a network timeout.
func isTimeout(err error) bool {
	ne, ok := errors.AsType[net.Error](err)
	return ok && ne.Timeout()
}

// classifyResponse maps a status code to an outcome, following the
// Standard Webhooks delivery rules.
func classifyResponse(resp *http.Response, id string, now time.Time) sdk.Result {
	code := resp.StatusCode
	if code >= 200 && code < 300 {
		return sdk.OK(id) // the common case: no message to build
	}
	answered := fmt.Sprintf("receiver answered %d %s", code, http.StatusText(code))
	switch {
	case code >= 300 && code < 400:
		loc := resp.Header.Get("Location")
		if len(loc) > 200 {
			loc = loc[:200] + "…"
		}
		if loc != "" {
			return sdk.Permanent(fmt.Errorf("redirect not followed: %s (Location: %s)", answered, loc))
		}
		return sdk.Permanent(fmt.Errorf("redirect not followed: %s", answered))
	case code == http.StatusGone:
		return sdk.Permanent(fmt.Errorf("endpoint gone: %s", answered))
	case code == http.StatusRequestTimeout, code == http.StatusTooEarly,
		code == http.StatusTooManyRequests, code >= 500 && code < 600:
		if d, ok := parseRetryAfter(resp.Header.Get("Retry-After"), now); ok {
			return sdk.RetryAfter(d, errors.New(answered))
		}
		return sdk.Retry(errors.New(answered))
	}
	return sdk.Permanent(errors.New(answered))
}

// parseRetryAfter reads a Retry-After value, delay-seconds or an HTTP
// date, capped at maxRetryAfter.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	var d time.Duration
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0, false
		}
		if n > int64(maxRetryAfter/time.Second) {
			return maxRetryAfter, true
		}
		d = time.Duration(n) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
		if d < 0 {
			d = 0
		}
	} else {
		return 0, false
	}
	return min(d, maxRetryAfter), true
}

// cleanSnippet makes a response prefix safe to store as text: valid UTF-8
// (a rune cut at the 1 KiB mark is dropped) and no NUL bytes, which
// PostgreSQL text refuses.
func cleanSnippet(b []byte) string {
	if utf8.Valid(b) && bytes.IndexByte(b, 0) < 0 {
		return string(b)
	}
	// Drop an incomplete rune at the cut.
	for i := 0; i < utf8.UTFMax && len(b) > 0; i++ {
		if r, size := utf8.DecodeLastRune(b); r != utf8.RuneError || size != 1 {
			break
		}
		b = b[:len(b)-1]
	}
	s := strings.ToValidUTF8(string(b), "\uFFFD")
	s = strings.ReplaceAll(s, "\x00", "\uFFFD")
	// Replacement characters are longer than the bytes they replace.
	for len(s) > snippetSize {
		_, size := utf8.DecodeLastRuneInString(s)
		s = s[:len(s)-size]
	}
	return s
}

// hostLimiter bounds requests in flight per destination host. Entries
// exist only while in use, so a batch to a million distinct hosts does not
// grow it.
type hostLimiter struct {
	max int
	mu  sync.Mutex
	m   map[string]*hostSlot
}

type hostSlot struct {
	ch   chan struct{}
	refs int
}

func newHostLimiter(max int) *hostLimiter {
	return &hostLimiter{max: max, m: map[string]*hostSlot{}}
}

// acquire takes a slot of host, waiting while it has none free. Give it
// back with release(host, slot).
func (h *hostLimiter) acquire(ctx context.Context, host string) (*hostSlot, error) {
	h.mu.Lock()
	s := h.m[host]
	if s == nil {
		s = &hostSlot{ch: make(chan struct{}, h.max)}
		h.m[host] = s
	}
	s.refs++
	h.mu.Unlock()
	select { // a free slot without the cost of a two-way select
	case s.ch <- struct{}{}:
		return s, nil
	default:
	}
	select {
	case s.ch <- struct{}{}:
		return s, nil
	case <-ctx.Done():
		h.unref(host, s)
		return nil, ctx.Err()
	}
}

// release gives back a slot acquire returned.
func (h *hostLimiter) release(host string, s *hostSlot) {
	<-s.ch
	h.unref(host, s)
}

func (h *hostLimiter) unref(host string, s *hostSlot) {
	h.mu.Lock()
	s.refs--
	if s.refs == 0 {
		delete(h.m, host)
	}
	h.mu.Unlock()
}
