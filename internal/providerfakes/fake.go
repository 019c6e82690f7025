// Package providerfakes holds local fakes of the HTTP email APIs
// (SendGrid, Postmark, Resend, Mailgun, SES v2) for tests and end-to-end
// runs. Each fake is an http.Handler speaking the provider's real wire
// format: same paths, auth scheme, encodings, status codes, rate-limit
// headers and error bodies, and it rejects what the real API rejects (too
// many messages per call, missing fields, bad addresses). Each records what
// it accepted and implements sdktest.Fake so the conformance kit can switch
// it between accepting, rate limiting, failing, rejecting and hanging.
//
// The fakes live in a non-test package so that e2e tests can start them
// next to a real server:
//
//	fake := providerfakes.NewPostmark("server-token")
//	url := providerfakes.Start(t, fake) // loopback httptest server, stopped by t.Cleanup
//	// connection: {"provider":"email.postmark","config":{"base_url":url},
//	//              "secrets":{"server_token":"server-token"}}
//	fake.Set(sdktest.Behaviour{Mode: sdktest.RateLimit, RetryAfter: 5 * time.Second})
//	fake.SetDelay(3 * time.Second) // slow answers
//	msgs := fake.Messages()         // what was accepted, after substitutions
//
// The provider under test needs AllowPrivateNetworks to reach loopback.
package providerfakes

import (
	"net/http"
	"net/http/httptest"
	"net/mail"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batchsender/batchsender/sdk/sdktest"
)

// Message is one email a fake accepted, after the provider's own
// substitutions (personalizations, recipient variables, template data).
type Message struct {
	From    string
	To      []string
	ReplyTo string
	Subject string
	Text    string
	HTML    string
	// Headers are the custom headers, by canonical name.
	Headers map[string]string
	// Key is the item key the client passed on (custom args, metadata,
	// tags), "" when none.
	Key string
	// Attachments are the attachments' file names.
	Attachments []string
	// MessageID is the ID the fake answered with.
	MessageID string
}

// core is what every fake shares: the behaviour switch and the records.
type core struct {
	mu       sync.Mutex
	b        sdktest.Behaviour
	delay    time.Duration
	calls    []sdktest.Call
	msgs     []Message
	quit     chan struct{}
	quitOnce sync.Once
	seq      int
}

func newCore() core { return core{quit: make(chan struct{})} }

// Set implements sdktest.Fake.
func (c *core) Set(b sdktest.Behaviour) {
	c.mu.Lock()
	c.b = b
	c.mu.Unlock()
}

// SetDelay makes every answer wait d first (a slow provider).
func (c *core) SetDelay(d time.Duration) {
	c.mu.Lock()
	c.delay = d
	c.mu.Unlock()
}

// Calls implements sdktest.Fake: every API call that passed authentication
// and parsing, in arrival order, in any mode.
func (c *core) Calls() []sdktest.Call {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.calls)
}

// Messages returns the messages accepted so far, in order.
func (c *core) Messages() []Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.msgs)
}

// Close releases handlers hanging in Hang mode; call it before closing the
// server.
func (c *core) Close() { c.quitOnce.Do(func() { close(c.quit) }) }

// begin records a call and returns the behaviour to apply. It waits out
// the delay; false means the client went away or the fake closed meanwhile.
func (c *core) begin(r *http.Request, call sdktest.Call) (sdktest.Behaviour, bool) {
	c.mu.Lock()
	c.calls = append(c.calls, call)
	b, d := c.b, c.delay
	c.mu.Unlock()
	if d > 0 {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return b, false
		case <-c.quit:
			return b, false
		}
	}
	if b.Mode == sdktest.Hang {
		select {
		case <-r.Context().Done():
		case <-c.quit:
		}
		return b, false
	}
	return b, true
}

// accept records accepted messages.
func (c *core) accept(msgs ...Message) {
	c.mu.Lock()
	c.msgs = append(c.msgs, msgs...)
	c.mu.Unlock()
}

// nextID returns a fresh number for message IDs.
func (c *core) nextID() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	return c.seq
}

func rejected(b sdktest.Behaviour, key string) bool {
	return key != "" && slices.Contains(b.RejectKeys, key)
}

// retryAfterSeconds renders a Retry-After in whole seconds, at least 1.
func retryAfterSeconds(d time.Duration) int {
	s := int((d + time.Second - 1) / time.Second)
	return max(s, 1)
}

// validAddress reports whether s is one address ("a@b.c" or "Name <a@b.c>")
// whose domain has a dot, as the providers require.
func validAddress(s string) bool {
	a, err := mail.ParseAddress(s)
	if err != nil {
		return false
	}
	at := strings.LastIndexByte(a.Address, '@')
	return at > 0 && strings.Contains(a.Address[at+1:], ".")
}

// bareAddress returns the address part of "Name <a@b>".
func bareAddress(s string) string {
	if a, err := mail.ParseAddress(s); err == nil {
		return strings.ToLower(a.Address)
	}
	return strings.ToLower(strings.TrimSpace(s))
}

// addressList splits a comma-separated list into bare addresses.
func addressList(s string) []string {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if strings.TrimSpace(a) != "" {
			out = append(out, bareAddress(a))
		}
	}
	return out
}

// Server is a started fake.
type Server interface {
	http.Handler
	Close()
}

// Start serves fake on a loopback httptest server that t's cleanup stops,
// and returns the server's base URL.
func Start(t testing.TB, fake Server) string {
	t.Helper()
	srv := httptest.NewServer(fake)
	t.Cleanup(func() {
		fake.Close()
		srv.Close()
	})
	return srv.URL
}
