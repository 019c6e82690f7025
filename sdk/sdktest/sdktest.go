// Package sdktest is the conformance kit for BatchSender providers. Every
// provider's tests call Run with a Harness; a provider written in another
// repository uses it the same way. It depends on the standard library only.
//
// The harness gives the kit three things:
//
//   - a way to build the provider (New) and to connect it to a fake
//     endpoint (NewFake, Connection): the fake is the provider's own test
//     server speaking the provider's wire protocol (an httptest server, an
//     SMTP server), and it implements Fake so that the kit can switch its
//     behaviour per scenario (accept, rate-limit with Retry-After, server
//     error, reject, hang) and read back what it received;
//   - a batch template and sample items;
//   - the secret strings the connection carries, which must never show.
//
// Each scenario gets a fresh fake and a freshly provisioned provider, and
// the kit checks:
//
//   - Info is sane: ID namespaced "module.name" in lower case, a title, a
//     billable unit, MaxChunk ≥ 1, config/secrets/item schemas that are
//     JSON objects, and Info independent of provisioning;
//   - the sample items pass ValidateItem, and InvalidItem (if given) fails;
//   - Send returns exactly one result per item, in order: with the fake
//     accepting, every result is OK with a message ID; with some items
//     rejected (when the fake can tell items apart), exactly those are
//     permanent failures at their positions;
//   - classification: rate limiting is Retry (carrying the fake's
//     Retry-After when the harness says the protocol has one), server
//     errors are Retry, rejections are Permanent, and a hanging endpoint
//     ends in Retry or Unknown within the provider's timeout;
//   - context cancellation: Send against a hanging endpoint returns soon
//     after ctx ends, each result Retry or Unknown;
//   - no secret appears in any Result.Err, Result.Response, Provision
//     error or log line written through Env.Logger;
//   - chunking: a Send of exactly Info().MaxChunk items succeeds, each item
//     reaches the fake exactly once, and no single call carries more than
//     MaxChunk items;
//   - idempotency: where the harness declares that the provider passes the
//     item's key on, every key the fake received contains the item's ID, and
//     a second attempt of the same items carries the same keys.
//
// Not checked: rate limits (the host enforces them), and anything specific to
// one provider's API, which its own tests cover.
package sdktest

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batchsender/batchsender/sdk"
)

// Mode is how a fake answers.
type Mode int

// Modes a fake must support.
const (
	// Accept takes every item (HTTP 2xx, SMTP 250). Items whose key is in
	// Behaviour.RejectKeys are rejected permanently instead.
	Accept Mode = iota
	// RateLimit answers "slow down": HTTP 429 with Retry-After, SMTP 421 or
	// 451/454 throttling replies.
	RateLimit
	// ServerError answers a transient server failure: HTTP 5xx, SMTP 451.
	ServerError
	// Reject answers a permanent refusal: HTTP 4xx (400/422), SMTP 550.
	Reject
	// Hang accepts the request and never answers, until the fake closes or
	// the client goes away.
	Hang
)

func (m Mode) String() string {
	return [...]string{"accept", "rate_limit", "server_error", "reject", "hang"}[m]
}

// Behaviour is what a fake does with the calls that follow.
type Behaviour struct {
	Mode Mode
	// RetryAfter is the delay the fake asks for in RateLimit mode.
	RetryAfter time.Duration
	// RejectKeys lists item IDs the fake rejects permanently in Accept
	// mode (matched against the keys it receives, see Call.Keys).
	RejectKeys []string
}

// Call is one request the fake received.
type Call struct {
	// Items is the number of items the request carried.
	Items int
	// Keys are the idempotency keys received, one per item when the
	// provider sends them (a header, a body field, the Message-ID).
	Keys []string
}

// Fake is implemented by a provider's test server.
type Fake interface {
	// Set changes how the fake answers calls from now on.
	Set(b Behaviour)
	// Calls returns the requests received so far, in arrival order. A
	// request refused in a mode other than Accept still counts.
	Calls() []Call
}

// Harness describes a provider to the kit.
type Harness struct {
	// New returns a fresh, unprovisioned provider.
	New func() sdk.Provider
	// NewFake starts a fake endpoint in Accept mode; it is stopped by
	// t.Cleanup.
	NewFake func(t *testing.T) Fake
	// Connection returns the config and secrets that point the provider at
	// fake. The config should set a short call timeout, 2 to 3 seconds: the
	// hang scenario waits for it, and the cancellation scenario expects
	// Send to return within half of it.
	Connection func(fake Fake) (config, secrets json.RawMessage)
	// Template is the batch template passed to Compile.
	Template json.RawMessage
	// Item returns the data of the i-th sample item (0-based); it must
	// pass ValidateItem.
	Item func(i int) json.RawMessage
	// InvalidItem, if set, must fail ValidateItem.
	InvalidItem json.RawMessage
	// Secrets are strings that must never appear in results or logs (the
	// secrets' values; the kit ignores ones shorter than 4 bytes).
	Secrets []string
	// IdempotencyKeys says that the provider passes each item's ID on and
	// the fake reports it in Call.Keys; it enables the idempotency and
	// per-item rejection checks.
	IdempotencyKeys bool
	// RetryAfter says the protocol carries a Retry-After the provider
	// must pass through (HTTP: yes; SMTP: no).
	RetryAfter bool
	// Timeout is the call timeout set by Connection (default 2s). Hanging
	// sends must end within Timeout plus a few seconds of slack.
	Timeout time.Duration
	// Env, if set, adjusts the Env the kit provisions with (for instance
	// to add an UnsubscribeURL); the kit's Logger is kept.
	Env func(env *sdk.Env)
}

// slack is how much longer than the provider's timeout the kit waits
// before calling a send hung; generous because CI machines are loaded.
const slack = 5 * time.Second

// Run runs the conformance scenarios as subtests of t.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.New == nil || h.NewFake == nil || h.Connection == nil || h.Item == nil {
		t.Fatal("sdktest: Harness needs New, NewFake, Connection and Item")
	}
	if h.Timeout == 0 {
		h.Timeout = 2 * time.Second
	}
	t.Run("Info", func(t *testing.T) { t.Parallel(); checkInfo(t, h) })
	t.Run("ValidateItem", func(t *testing.T) { t.Parallel(); checkValidate(t, h) })
	t.Run("ResultsInOrder", func(t *testing.T) { t.Parallel(); checkAccept(t, h) })
	t.Run("ExactlyMaxChunk", func(t *testing.T) { t.Parallel(); checkMaxChunk(t, h) })
	t.Run("RateLimitIsRetry", func(t *testing.T) { t.Parallel(); checkRateLimit(t, h) })
	t.Run("ServerErrorIsRetry", func(t *testing.T) {
		t.Parallel()
		checkMode(t, h, ServerError, sdk.OutcomeRetry)
	})
	t.Run("RejectIsPermanent", func(t *testing.T) {
		t.Parallel()
		checkMode(t, h, Reject, sdk.OutcomePermanent)
	})
	t.Run("HangEndsWithinTimeout", func(t *testing.T) { t.Parallel(); checkHang(t, h) })
	t.Run("CancelReturnsPromptly", func(t *testing.T) { t.Parallel(); checkCancel(t, h) })
	if h.IdempotencyKeys {
		t.Run("PerItemRejectionKeepsOrder", func(t *testing.T) { t.Parallel(); checkMixed(t, h) })
		t.Run("IdempotencyKeyPassedOn", func(t *testing.T) { t.Parallel(); checkKeys(t, h) })
	}
}

// fixture is one scenario's fake and provisioned provider.
type fixture struct {
	h      Harness
	fake   Fake
	p      sdk.Provider
	sender sdk.Sender
	logs   *LogCapture
}

func setup(t *testing.T, h Harness) *fixture {
	t.Helper()
	f := &fixture{h: h, fake: h.NewFake(t), logs: NewLogCapture()}
	config, secrets := h.Connection(f.fake)
	env := sdk.Env{
		Config:               config,
		Secrets:              secrets,
		Dialer:               (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		AllowPrivateNetworks: true,
		PublicURL:            "http://127.0.0.1:1",
		Now:                  time.Now,
	}
	if h.Env != nil {
		h.Env(&env)
	}
	env.Logger = f.logs.Logger()
	f.p = h.New()
	if err := f.p.Provision(context.Background(), env); err != nil {
		f.checkSecrets(t, "Provision error", err.Error())
		t.Fatalf("Provision: %v", err)
	}
	t.Cleanup(func() {
		if err := f.p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		for _, line := range f.logs.Lines() {
			f.checkSecrets(t, "log line", line)
		}
	})
	s, err := f.p.Compile(h.Template)
	if err != nil {
		t.Fatalf("Compile(%s): %v", h.Template, err)
	}
	f.sender = s
	return f
}

// items returns n sample items with distinct IDs, attempt 1.
func (f *fixture) items(t *testing.T, n int) []sdk.Item {
	out := make([]sdk.Item, n)
	prefix := strings.ReplaceAll(strings.ToLower(t.Name()), "/", "_")
	prefix = regexp.MustCompile(`[^a-z0-9_]`).ReplaceAllString(prefix, "")
	for i := range out {
		out[i] = sdk.Item{
			ID:      fmt.Sprintf("itm_%s_%03d", prefix, i),
			Seq:     int64(i + 1),
			Attempt: 1,
			Data:    f.h.Item(i),
		}
	}
	return out
}

// send calls Send with a guard against hanging and checks the invariants
// every result list must meet.
func (f *fixture) send(t *testing.T, ctx context.Context, items []sdk.Item) []sdk.Result {
	t.Helper()
	done := make(chan []sdk.Result, 1)
	go func() { done <- f.sender.Send(ctx, items) }()
	var res []sdk.Result
	select {
	case res = <-done:
	case <-time.After(f.h.Timeout + slack):
		t.Fatalf("Send of %d items did not return within %v", len(items), f.h.Timeout+slack)
	}
	if len(res) != len(items) {
		t.Fatalf("Send returned %d results for %d items", len(res), len(items))
	}
	for i, r := range res {
		switch r.Outcome {
		case sdk.OutcomeOK:
		case sdk.OutcomeRetry, sdk.OutcomePermanent, sdk.OutcomeUnknown:
			if r.Err == nil {
				t.Errorf("result %d: outcome %v without Err", i, r.Outcome)
			}
		default:
			t.Errorf("result %d: invalid outcome %d", i, r.Outcome)
		}
		if r.Err != nil {
			f.checkSecrets(t, fmt.Sprintf("result %d Err", i), r.Err.Error())
		}
		f.checkSecrets(t, fmt.Sprintf("result %d Response", i), r.Response)
		if r.RetryAfter < 0 {
			t.Errorf("result %d: negative RetryAfter", i)
		}
	}
	return res
}

func (f *fixture) checkSecrets(t *testing.T, where, s string) {
	t.Helper()
	for _, secret := range f.h.Secrets {
		if len(secret) >= 4 && strings.Contains(s, secret) {
			t.Errorf("%s contains a secret: %q", where, s)
		}
	}
}

func chunk(h Harness, n int) int {
	if m := h.New().Info().MaxChunk; m < n {
		return m
	}
	return n
}

func checkInfo(t *testing.T, h Harness) {
	info := h.New().Info()
	if !regexp.MustCompile(`^[a-z][a-z0-9]*\.[a-z][a-z0-9_.-]*$`).MatchString(info.ID) {
		t.Errorf("ID %q is not namespaced as module.name in lower case", info.ID)
	}
	if info.Title == "" {
		t.Error("Title is empty")
	}
	if info.MaxChunk < 1 {
		t.Errorf("MaxChunk = %d, want ≥ 1", info.MaxChunk)
	}
	if info.DefaultRate < 0 || info.DefaultConcurrency < 0 {
		t.Errorf("negative DefaultRate %v or DefaultConcurrency %d", info.DefaultRate, info.DefaultConcurrency)
	}
	if info.BillableUnit == "" {
		t.Error("BillableUnit is empty")
	}
	for name, s := range map[string]json.RawMessage{"ConfigSchema": info.ConfigSchema, "SecretsSchema": info.SecretsSchema, "ItemSchema": info.ItemSchema} {
		if name == "SecretsSchema" && len(s) == 0 {
			continue // a provider without secrets
		}
		var obj map[string]any
		if err := json.Unmarshal(s, &obj); err != nil {
			t.Errorf("%s is not a JSON object: %v", name, err)
			continue
		}
		if typ, ok := obj["type"]; ok && typ != "object" {
			t.Errorf("%s has type %v, want object", name, typ)
		}
	}
	f := setup(t, h)
	a, _ := json.Marshal(info)
	b, _ := json.Marshal(f.p.Info())
	if string(a) != string(b) {
		t.Error("Info changes after Provision; it must not depend on the configuration")
	}
}

func checkValidate(t *testing.T, h Harness) {
	f := setup(t, h)
	for i := 0; i < 3; i++ {
		if err := f.sender.ValidateItem(h.Item(i)); err != nil {
			t.Errorf("sample item %d: ValidateItem: %v", i, err)
		}
	}
	if h.InvalidItem != nil {
		if err := f.sender.ValidateItem(h.InvalidItem); err == nil {
			t.Errorf("ValidateItem(%s) succeeded, want an error", h.InvalidItem)
		} else {
			f.checkSecrets(t, "ValidateItem error", err.Error())
		}
	}
}

func checkAccept(t *testing.T, h Harness) {
	f := setup(t, h)
	items := f.items(t, chunk(h, 5))
	res := f.send(t, context.Background(), items)
	for i, r := range res {
		if r.Outcome != sdk.OutcomeOK {
			t.Errorf("item %d: outcome %v (%v), want ok", i, r.Outcome, r.Err)
		}
		if r.MessageID == "" {
			t.Errorf("item %d: OK without MessageID", i)
		}
	}
	checkCalls(t, h, f.fake.Calls(), len(items))
}

func checkMaxChunk(t *testing.T, h Harness) {
	f := setup(t, h)
	n := h.New().Info().MaxChunk
	items := f.items(t, n)
	res := f.send(t, context.Background(), items)
	for i, r := range res {
		if r.Outcome != sdk.OutcomeOK {
			t.Fatalf("item %d of a full chunk of %d: outcome %v (%v), want ok", i, n, r.Outcome, r.Err)
		}
	}
	checkCalls(t, h, f.fake.Calls(), n)
}

// checkCalls checks that items reached the fake exactly once in total and
// no call exceeded MaxChunk.
func checkCalls(t *testing.T, h Harness, calls []Call, want int) {
	t.Helper()
	maxChunk := h.New().Info().MaxChunk
	total := 0
	for i, c := range calls {
		if c.Items > maxChunk {
			t.Errorf("call %d carried %d items, more than MaxChunk %d", i, c.Items, maxChunk)
		}
		total += c.Items
	}
	if total != want {
		t.Errorf("fake received %d items in %d calls, want %d", total, len(calls), want)
	}
}

func checkRateLimit(t *testing.T, h Harness) {
	f := setup(t, h)
	const ra = 7 * time.Second
	f.fake.Set(Behaviour{Mode: RateLimit, RetryAfter: ra})
	res := f.send(t, context.Background(), f.items(t, chunk(h, 3)))
	for i, r := range res {
		if r.Outcome != sdk.OutcomeRetry {
			t.Errorf("item %d: outcome %v (%v), want retry", i, r.Outcome, r.Err)
		}
		if h.RetryAfter && (r.RetryAfter < ra-time.Second || r.RetryAfter > ra+time.Second) {
			t.Errorf("item %d: RetryAfter %v, want about %v", i, r.RetryAfter, ra)
		}
	}
}

func checkMode(t *testing.T, h Harness, m Mode, want sdk.Outcome) {
	f := setup(t, h)
	f.fake.Set(Behaviour{Mode: m})
	res := f.send(t, context.Background(), f.items(t, chunk(h, 3)))
	for i, r := range res {
		if r.Outcome != want {
			t.Errorf("%v: item %d: outcome %v (%v), want %v", m, i, r.Outcome, r.Err, want)
		}
	}
}

func checkHang(t *testing.T, h Harness) {
	f := setup(t, h)
	f.fake.Set(Behaviour{Mode: Hang})
	start := time.Now()
	res := f.send(t, context.Background(), f.items(t, chunk(h, 2)))
	for i, r := range res {
		if r.Outcome != sdk.OutcomeRetry && r.Outcome != sdk.OutcomeUnknown {
			t.Errorf("item %d: outcome %v (%v) against a hanging endpoint, want retry or unknown", i, r.Outcome, r.Err)
		}
	}
	t.Logf("hanging send ended after %v", time.Since(start).Round(time.Millisecond))
}

func checkCancel(t *testing.T, h Harness) {
	f := setup(t, h)
	f.fake.Set(Behaviour{Mode: Hang})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	timer := time.AfterFunc(100*time.Millisecond, cancel)
	defer timer.Stop()
	start := time.Now()
	done := make(chan []sdk.Result, 1)
	items := f.items(t, chunk(h, 3))
	go func() { done <- f.sender.Send(ctx, items) }()
	var res []sdk.Result
	// Prompt means well before the provider's own timeout would fire.
	limit := h.Timeout / 2
	if limit < 500*time.Millisecond {
		limit = 500 * time.Millisecond
	}
	select {
	case res = <-done:
	case <-time.After(limit + slack):
		t.Fatalf("Send did not return within %v of cancellation", limit+slack)
	}
	if d := time.Since(start); d > limit+100*time.Millisecond {
		t.Errorf("Send returned %v after start, %v after cancellation; want prompt", d, d-100*time.Millisecond)
	}
	if len(res) != len(items) {
		t.Fatalf("Send returned %d results for %d items", len(res), len(items))
	}
	for i, r := range res {
		if r.Outcome != sdk.OutcomeRetry && r.Outcome != sdk.OutcomeUnknown {
			t.Errorf("item %d: outcome %v (%v) after cancellation, want retry or unknown", i, r.Outcome, r.Err)
		}
		if r.Err != nil {
			f.checkSecrets(t, "result Err", r.Err.Error())
		}
	}
}

func checkMixed(t *testing.T, h Harness) {
	f := setup(t, h)
	items := f.items(t, chunk(h, 5))
	if len(items) < 2 {
		return // MaxChunk 1: RejectIsPermanent covers per-item rejection
	}
	var reject []string
	// An asymmetric pattern (positions 1, 4, 7, ...) so that a reversed
	// or shifted result list is caught.
	rejected := func(i int) bool { return i%3 == 1 }
	for i := range items {
		if rejected(i) {
			reject = append(reject, items[i].ID)
		}
	}
	f.fake.Set(Behaviour{Mode: Accept, RejectKeys: reject})
	res := f.send(t, context.Background(), items)
	for i, r := range res {
		want := sdk.OutcomeOK
		if rejected(i) {
			want = sdk.OutcomePermanent
		}
		if r.Outcome != want {
			t.Errorf("item %d: outcome %v (%v), want %v", i, r.Outcome, r.Err, want)
		}
	}
}

func checkKeys(t *testing.T, h Harness) {
	f := setup(t, h)
	items := f.items(t, chunk(h, 4))
	f.send(t, context.Background(), items)
	second := append([]sdk.Item(nil), items...)
	for i := range second {
		second[i].Attempt = 2
	}
	f.send(t, context.Background(), second)
	calls := f.fake.Calls()
	var keys []string
	for _, c := range calls {
		keys = append(keys, c.Keys...)
	}
	for _, it := range items {
		n := 0
		for _, k := range keys {
			if strings.Contains(k, it.ID) {
				n++
			}
		}
		if n != 2 {
			t.Errorf("item %s: its key reached the fake %d times over two attempts, want 2 (keys %q)", it.ID, n, keys)
		}
	}
}

// LogCapture collects log records written through a *slog.Logger, for
// checking that no secret is logged. It is safe for concurrent use.
type LogCapture struct {
	mu    sync.Mutex
	lines []string
}

// NewLogCapture returns an empty capture.
func NewLogCapture() *LogCapture { return &LogCapture{} }

// Lines returns every record so far, formatted as text with all attributes.
func (c *LogCapture) Lines() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.lines...)
}

func (c *LogCapture) add(line string) {
	c.mu.Lock()
	c.lines = append(c.lines, line)
	c.mu.Unlock()
}

// Logger returns a logger whose records, at every level, the capture keeps.
func (c *LogCapture) Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(captureWriter{c}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// captureWriter receives one Write per record from slog.TextHandler.
type captureWriter struct{ c *LogCapture }

func (w captureWriter) Write(p []byte) (int, error) {
	w.c.add(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
