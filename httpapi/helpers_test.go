package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/auth"
	"github.com/batchsender/batchsender/engine"
	"github.com/batchsender/batchsender/events"
	"github.com/batchsender/batchsender/httpapi"
	"github.com/batchsender/batchsender/providers"
	"github.com/batchsender/batchsender/secretbox"
	"github.com/batchsender/batchsender/sqlite"
	"github.com/batchsender/batchsender/unsubscribe"
)

func init() {
	// Bodies the validator has no decoder for by default; the document
	// describes them as strings.
	openapi3filter.RegisterBodyDecoder("application/x-ndjson", openapi3filter.PlainBodyDecoder)
	openapi3filter.RegisterBodyDecoder("text/event-stream", openapi3filter.PlainBodyDecoder)
	openapi3filter.RegisterBodyDecoder("text/html", openapi3filter.PlainBodyDecoder)
}

type countingWaker struct{ n atomic.Int64 }

func (w *countingWaker) Wake() { w.n.Add(1) }

// syncBuffer is a log sink that tests read after the server wrote to it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// bundle is one test's fresh world: a store, a server on loopback, two
// projects with a key each, and the OpenAPI document to check traffic with.
type bundle struct {
	store        *sqlite.Store
	srv          *httptest.Server
	waker        *countingWaker
	logs         *syncBuffer
	key          string // project "alpha", admin
	keyB         string // project "beta"
	project      string // alpha's ID
	router       routers.Router
	box          *secretbox.Box
	mu           sync.Mutex
	secrets      []string // values that must never appear in a response or log; under mu
	allowPrivate bool
	runEngine    bool
	maxBody      int64
	maxUpl       int64
	readyErr     error
	unsub        *unsubscribe.Signer // signs links whose base is srv.URL
	events       *events.Receiver    // nil: the default
}

func (b *bundle) addSecret(s ...string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.secrets = append(b.secrets, s...)
}

func (b *bundle) secretList() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.secrets...)
}

type setupOption func(*bundle)

func withLimits(body, upload int64) setupOption {
	return func(b *bundle) { b.maxBody, b.maxUpl = body, upload }
}

func withReadyError(err error) setupOption { return func(b *bundle) { b.readyErr = err } }

// withEvents makes the server read event webhooks with r (whose SNS
// certificates come from the test, never from the network).
func withEvents(r *events.Receiver) setupOption { return func(b *bundle) { b.events = r } }

// withEngine runs the real engine behind the API (and lets providers reach
// loopback, where the tests' receivers listen).
func withEngine() setupOption {
	return func(b *bundle) { b.runEngine, b.allowPrivate = true, true }
}

func setup(t testing.TB, opts ...setupOption) *bundle {
	t.Helper()
	ctx := context.Background()
	b := &bundle{waker: &countingWaker{}, logs: &syncBuffer{}}
	for _, o := range opts {
		o(b)
	}
	store, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "api.db"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("opening store: %v", err)
	}
	t.Cleanup(func() { _ = store.Close() })
	b.store = store

	var key batchsender.APIKey
	b.key, key, err = auth.CreateKey(ctx, store, "alpha", "test", batchsender.RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	b.project = key.ProjectID
	if b.keyB, _, err = auth.CreateKey(ctx, store, "beta", "test", batchsender.RoleMember); err != nil {
		t.Fatal(err)
	}
	b.addSecret(b.key, b.keyB)

	logger := slog.New(slog.NewJSONHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if b.box, err = secretbox.New(bytes.Repeat([]byte{7}, secretbox.KeySize)); err != nil {
		t.Fatal(err)
	}
	// The listener first, so that unsubscribe links can point at it.
	b.srv = httptest.NewUnstartedServer(nil) // listens on 127.0.0.1
	base := "http://" + b.srv.Listener.Addr().String()
	b.unsub = unsubscribe.NewSigner(bytes.Repeat([]byte{9}, 32), base)
	cache := providers.NewCache(providers.Config{Unsealer: b.box, Logger: logger, AllowPrivateNetworks: b.allowPrivate,
		PublicURL: base, Unsubscribe: b.unsub})
	t.Cleanup(func() { _ = cache.Close() })
	var waker interface{ Wake() } = b.waker
	if b.runEngine {
		eng, err := engine.New(engine.Config{Store: store, Providers: cache, Logger: logger, PollInterval: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		ctx, stop := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- eng.Run(ctx) }()
		t.Cleanup(func() {
			stop()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("engine: %v", err)
			}
		})
		waker = eng
	}
	handler := httpapi.NewServer(httpapi.Deps{
		Store:          store,
		Providers:      cache,
		Sealer:         b.box,
		Waker:          waker,
		Logger:         logger,
		MaxBodyBytes:   b.maxBody,
		MaxUploadBytes: b.maxUpl,
		Ready:          func(context.Context) error { return b.readyErr },
		Metrics: func(w io.Writer) {
			fmt.Fprintln(w, "# TYPE batchsender_engine_test_gauge gauge")
			fmt.Fprintln(w, "batchsender_engine_test_gauge 42")
		},
		Version:         "test-1",
		EventsPoll:      20 * time.Millisecond,
		EventsHeartbeat: 50 * time.Millisecond,
		Unsubscribe:     b.unsub,
		Events:          b.events,
	})
	b.srv.Config.Handler = handler
	b.srv.Start()
	t.Cleanup(b.srv.Close)
	t.Cleanup(func() {
		logs := b.logs.String()
		for _, s := range b.secretList() {
			if strings.Contains(logs, s) {
				t.Errorf("the log contains the secret or key %q", s)
			}
		}
		if strings.Contains(strings.ToLower(logs), "bearer") {
			t.Error("the log contains an Authorization header")
		}
	})
	b.router = loadRouter(t, b.srv.URL)
	return b
}

// loadRouter parses and validates the served OpenAPI document and points it
// at the test server.
func loadRouter(t testing.TB, serverURL string) routers.Router {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(httpapi.OpenAPIDocument())
	if err != nil {
		t.Fatalf("loading openapi.json: %v", err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		t.Fatalf("openapi.json is not a valid OpenAPI document: %v", err)
	}
	doc.Servers = openapi3.Servers{{URL: serverURL}}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatalf("routing openapi.json: %v", err)
	}
	return router
}

// call is one request a test makes.
type call struct {
	method, path string
	body         string
	json         any    // marshalled as the body when set
	contentType  string // application/json for json bodies unless set
	key          *string
	header       map[string]string
	// badRequest marks a request the document rightly refuses (no key, a
	// malformed body, a wrong media type): it is sent without checking it
	// against the document. Its response is checked all the same.
	badRequest bool
	// unrouted marks a path the document does not describe at all.
	unrouted bool
	// chunked sends the body without a Content-Length.
	chunked bool
}

// response is what came back.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r *response) decode(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decoding %s: %v", r.body, err)
	}
}

func (r *response) problem(t *testing.T) problemDoc {
	t.Helper()
	var p problemDoc
	r.decode(t, &p)
	return p
}

type problemDoc struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail"`
	Instance string `json:"instance"`
	Code     string `json:"code"`
	ErrorID  string `json:"error_id"`
}

func keyOf(k string) *string { return &k }

// do sends c, checks request (unless marked bad) and response against the
// OpenAPI document, checks the problem document of every error, and checks
// no response ever carries a key or a secret.
func (b *bundle) do(t *testing.T, c call) *response {
	t.Helper()
	var body []byte
	switch {
	case c.json != nil:
		var err error
		if body, err = json.Marshal(c.json); err != nil {
			t.Fatal(err)
		}
		if c.contentType == "" {
			c.contentType = "application/json"
		}
	case c.body != "":
		body = []byte(c.body)
	}
	var rd io.Reader = bytes.NewReader(body)
	if c.chunked {
		rd = struct{ io.Reader }{rd} // hides the length from http.NewRequest
	}
	req, err := http.NewRequest(c.method, b.srv.URL+c.path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if c.contentType != "" {
		req.Header.Set("Content-Type", c.contentType)
	}
	key := b.key
	if c.key != nil {
		key = *c.key
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for k, v := range c.header {
		req.Header.Set(k, v)
	}

	var input *openapi3filter.RequestValidationInput
	if !c.unrouted {
		route, params, err := b.router.FindRoute(req)
		if err != nil {
			t.Fatalf("%s %s: the OpenAPI document has no such operation: %v", c.method, c.path, err)
		}
		input = &openapi3filter.RequestValidationInput{
			Request: req, PathParams: params, Route: route,
			Options: &openapi3filter.Options{AuthenticationFunc: bearerPresent, MultiError: true},
		}
		if !c.badRequest {
			if err := openapi3filter.ValidateRequest(context.Background(), input); err != nil {
				t.Fatalf("%s %s: the request does not match the OpenAPI document: %v", c.method, c.path, err)
			}
			req.Body = io.NopCloser(bytes.NewReader(body)) // the validator read it
			if c.chunked {
				req.Body = io.NopCloser(struct{ io.Reader }{bytes.NewReader(body)})
			}
		}
	}

	res, err := b.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", c.method, c.path, err)
	}
	defer res.Body.Close()
	resBody, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the response: %v", c.method, c.path, err)
	}
	out := &response{status: res.StatusCode, header: res.Header, body: resBody}

	if input != nil {
		input.Request = req
		err := openapi3filter.ValidateResponse(context.Background(), &openapi3filter.ResponseValidationInput{
			RequestValidationInput: input,
			Status:                 res.StatusCode,
			Header:                 res.Header,
			Body:                   io.NopCloser(bytes.NewReader(resBody)),
			Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
		})
		if err != nil {
			t.Fatalf("%s %s → %d: the response does not match the OpenAPI document: %v\nbody: %s", c.method, c.path, res.StatusCode, err, resBody)
		}
	}
	b.checkSecretsAbsent(t, out)
	if res.StatusCode >= 400 {
		checkProblem(t, c, out)
	}
	return out
}

func (b *bundle) checkSecretsAbsent(t *testing.T, r *response) {
	t.Helper()
	text := string(r.body) + fmt.Sprint(r.header)
	for _, s := range b.secretList() {
		if strings.Contains(text, s) {
			t.Fatalf("a response carries the secret or key %q: %s", s, text)
		}
	}
}

// checkProblem checks the shape every error response has.
func checkProblem(t *testing.T, c call, r *response) {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("%s %s → %d with Content-Type %q, want application/problem+json", c.method, c.path, r.status, ct)
	}
	p := r.problem(t)
	if p.Status != r.status || p.Title == "" || p.Detail == "" || p.Code == "" ||
		p.Type != "urn:batchsender:problem:"+p.Code || p.Instance != strings.SplitN(c.path, "?", 2)[0] {
		t.Fatalf("%s %s: malformed problem document %s", c.method, c.path, r.body)
	}
	if (p.Code == "internal") != (p.ErrorID != "") {
		t.Fatalf("error_id must be set exactly for internal errors: %s", r.body)
	}
	challenge := r.header.Get("WWW-Authenticate")
	if r.status == http.StatusUnauthorized && !strings.HasPrefix(challenge, "Bearer ") &&
		!(strings.HasPrefix(c.path, "/v1/hooks/") && strings.HasPrefix(challenge, "Basic ")) {
		t.Fatalf("401 without a Bearer challenge: %v", r.header)
	}
}

// bearerPresent is the document's security check: a Bearer credential must
// be there; whether it is right is the server's business.
func bearerPresent(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	if in.SecuritySchemeName != "bearerAuth" {
		return fmt.Errorf("unexpected security scheme %q", in.SecuritySchemeName)
	}
	if !strings.HasPrefix(in.RequestValidationInput.Request.Header.Get("Authorization"), "Bearer ") {
		return errors.New("no bearer credential")
	}
	return nil
}

// expect fails unless the response has the status.
func (r *response) expect(t *testing.T, status int) *response {
	t.Helper()
	if r.status != status {
		t.Fatalf("got status %d, want %d: %s", r.status, status, r.body)
	}
	return r
}

// expectProblem fails unless the response is a problem with that status
// whose detail mentions every fragment.
func (r *response) expectProblem(t *testing.T, status int, fragments ...string) problemDoc {
	t.Helper()
	r.expect(t, status)
	p := r.problem(t)
	for _, f := range fragments {
		if !strings.Contains(p.Detail, f) {
			t.Fatalf("problem detail %q does not mention %q", p.Detail, f)
		}
	}
	return p
}

// connection makes a test.echo connection named name in the key's project.
func (b *bundle) connection(t *testing.T, key, name string) connectionDoc {
	t.Helper()
	secret := "tok-" + name + "-" + fmt.Sprint(time.Now().UnixNano())
	b.addSecret(secret)
	var c connectionDoc
	b.do(t, call{method: "POST", path: "/v1/connections", key: &key, json: map[string]any{
		"provider": "test.echo", "name": name, "config": map[string]any{"region": "eu"},
		"secrets": map[string]any{"token": secret},
	}}).expect(t, http.StatusCreated).decode(t, &c)
	return c
}

type connectionDoc struct {
	ID          string          `json:"id"`
	ProjectID   string          `json:"project_id"`
	Provider    string          `json:"provider"`
	Module      string          `json:"module"`
	Name        string          `json:"name"`
	Config      json.RawMessage `json:"config"`
	SecretNames []string        `json:"secret_names"`
}

type batchDoc struct {
	ID           string             `json:"id"`
	ProjectID    string             `json:"project_id"`
	Module       string             `json:"module"`
	ConnectionID string             `json:"connection_id"`
	Status       string             `json:"status"`
	Total        int64              `json:"total"`
	Counts       batchsender.Counts `json:"counts"`
	Template     json.RawMessage    `json:"template"`
	Options      map[string]any     `json:"options"`
}

// batch creates a batch from a request body and returns it.
func (b *bundle) batch(t *testing.T, body map[string]any) batchDoc {
	t.Helper()
	var out batchDoc
	b.do(t, call{method: "POST", path: "/v1/batches", json: body}).expect(t, http.StatusCreated).decode(t, &out)
	return out
}

func (b *bundle) getBatch(t *testing.T, id string) batchDoc {
	t.Helper()
	var out batchDoc
	b.do(t, call{method: "GET", path: "/v1/batches/" + id}).expect(t, http.StatusOK).decode(t, &out)
	return out
}

func items(n int) []map[string]any {
	out := make([]map[string]any, n)
	for i := range out {
		out[i] = map[string]any{"to": fmt.Sprintf("r%d", i), "n": i}
	}
	return out
}

// finish plays the engine: it claims up to n due items of a running batch
// and writes their outcomes, failing those whose position fail picks.
func (b *bundle) finish(t *testing.T, batchID string, n int, fail func(seq int64) bool) {
	t.Helper()
	ctx := context.Background()
	now := time.Now()
	claimed, err := b.store.ChunkClaim(ctx, batchsender.ChunkClaimParams{
		BatchID: batchID, Owner: "test-worker", Now: now.Add(time.Hour), LeaseUntil: now.Add(time.Hour), Limit: n,
	})
	if err != nil {
		t.Fatal(err)
	}
	results := make([]batchsender.ItemResult, 0, len(claimed))
	for _, it := range claimed {
		r := batchsender.ItemResult{
			ItemID: it.ID, BatchID: batchID, Owner: "test-worker", Status: batchsender.ItemSucceeded,
			ProviderMessageID: "msg-" + it.ID, Units: 1,
			Attempt: batchsender.Attempt{ItemID: it.ID, Number: it.Attempts, StartedAt: now, Latency: time.Millisecond, Outcome: "ok", StatusCode: 200},
		}
		if fail != nil && fail(it.Seq) {
			r.Status, r.Error, r.ProviderMessageID = batchsender.ItemFailed, "rejected by the test", ""
			r.Attempt.Outcome, r.Attempt.StatusCode, r.Attempt.Error = "permanent", 400, "rejected by the test"
		}
		results = append(results, r)
	}
	if _, err := b.store.ItemResultsWriteMany(ctx, results); err != nil {
		t.Fatal(err)
	}
}

func batchListParams(projectID string) batchsender.BatchListParams {
	return batchsender.BatchListParams{ProjectID: projectID, Limit: 1000}
}

func itemListParams(projectID, batchID string) batchsender.ItemListParams {
	return batchsender.ItemListParams{ProjectID: projectID, BatchID: batchID, Limit: 10_000}
}
