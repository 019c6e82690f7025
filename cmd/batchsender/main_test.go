package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/batchsender/batchsender/client"
	"github.com/batchsender/batchsender/webhook"
)

// TestMain fails the package when a test leaves goroutines behind: every
// server run here must shut down completely.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls cond every 20ms until it returns true or the deadline
// passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// env is a fake environment for run.
type env map[string]string

func (e env) get(k string) string { return e[k] }

// testServer is `batchsender serve` running in process, as a user starts it.
type testServer struct {
	URL     string
	DataDir string
	Env     env
	Stdout  *syncBuffer
	Stderr  *syncBuffer
	stop    context.CancelFunc
	done    chan error

	stopOnce sync.Once
	stopErr  error
}

// shutdown stops the server as SIGTERM would (by ending run's context) and
// returns what serve returned; it fails the test if serve takes longer than
// timeout. Later calls return the first result.
func (s *testServer) shutdown(t *testing.T, timeout time.Duration) error {
	t.Helper()
	s.stopOnce.Do(func() {
		s.stop()
		select {
		case s.stopErr = <-s.done:
		case <-time.After(timeout):
			s.stopErr = fmt.Errorf("serve did not stop within %v", timeout)
		}
	})
	return s.stopErr
}

var listenRE = regexp.MustCompile(`listening on (http://\S+)`)

// startServer runs serve on 127.0.0.1:0 with a fresh data directory and the
// given extra environment, waits until it prints its address and /readyz
// answers 200, and stops it at the end of the test, failing the test if the
// shutdown is not clean.
func startServer(t *testing.T, extra env) *testServer {
	t.Helper()
	e := env{
		envAddr:     "127.0.0.1:0",
		envDataDir:  t.TempDir(),
		envLogLevel: "warn",
	}
	for k, v := range extra {
		e[k] = v
	}
	s := &testServer{DataDir: e[envDataDir], Env: e, Stdout: &syncBuffer{}, Stderr: &syncBuffer{}, done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	go func() { s.done <- run(ctx, []string{"serve"}, e.get, strings.NewReader(""), s.Stdout, s.Stderr) }()
	t.Cleanup(func() {
		if err := s.shutdown(t, 30*time.Second); err != nil {
			t.Errorf("serve: %v; stderr:\n%s", err, s.Stderr)
		}
	})
	var exited error
	waitFor(t, 30*time.Second, "the listen address", func() bool {
		select {
		case exited = <-s.done:
			s.done <- exited
			return true
		default:
		}
		m := listenRE.FindStringSubmatch(s.Stdout.String())
		if m != nil {
			s.URL = m[1]
		}
		return m != nil
	})
	if s.URL == "" {
		t.Fatalf("serve exited early: %v; stderr:\n%s", exited, s.Stderr)
	}
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	waitFor(t, 30*time.Second, "/readyz", func() bool {
		resp, err := hc.Get(s.URL + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return s
}

// client returns an SDK client for the server, closed at the end of the test.
func (s *testServer) client(t *testing.T, key string) *client.Client {
	t.Helper()
	c := client.New(s.URL, key)
	t.Cleanup(c.Close)
	return c
}

// cli runs one client command against the server with the key, and
// returns its stdout, stderr and error.
func (s *testServer) cli(t *testing.T, key string, args ...string) (string, string, error) {
	t.Helper()
	return s.cliStdin(t, key, "", args...)
}

// cliStdin is cli with standard input.
func (s *testServer) cliStdin(t *testing.T, key, stdin string, args ...string) (string, string, error) {
	t.Helper()
	e := env{envURL: s.URL, envAPIKey: key}
	var out, errOut syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := run(ctx, args, e.get, strings.NewReader(stdin), &out, &errOut)
	return out.String(), errOut.String(), err
}

// admin runs a data-directory command (keys create, migrate) on the
// server's data directory.
func (s *testServer) admin(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut syncBuffer
	err := run(context.Background(), args, s.Env.get, strings.NewReader(""), &out, &errOut)
	if err != nil {
		return out.String() + errOut.String(), err
	}
	return out.String(), nil
}

// receiver is a loopback webhook receiver that verifies every signature and
// answers 410 Gone to paths under /fail.
type receiver struct {
	*httptest.Server
	mu      sync.Mutex
	seen    map[string]int // webhook-id → deliveries
	bad     []string       // signature failures
	bodies  map[string]string
	secret  string
	request int
}

// testSecret is a Standard Webhooks signing secret (the spec's example).
const testSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

func startReceiver(t *testing.T) *receiver {
	t.Helper()
	r := &receiver{seen: map[string]int{}, bodies: map[string]string{}, secret: testSecret}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(req.Body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		verr := webhook.Verify(r.secret, req.Header, body, time.Now(), 0)
		r.mu.Lock()
		r.request++
		id := req.Header.Get("webhook-id")
		if verr != nil {
			r.bad = append(r.bad, fmt.Sprintf("%s: %v", id, verr))
		} else {
			r.seen[id]++
			r.bodies[id] = string(body)
		}
		r.mu.Unlock()
		switch {
		case verr != nil:
			w.WriteHeader(http.StatusUnauthorized)
		case strings.HasPrefix(req.URL.Path, "/fail"):
			w.WriteHeader(http.StatusGone)
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) stats() (distinct int, bad []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen), append([]string(nil), r.bad...)
}

// bootstrapKey is the admin key the test servers start with.
const bootstrapKey = "bsk_test_bootstrap_key_0123456789"

// webhookServer starts a server that may send to loopback, with the
// bootstrap key and a "hooks" webhook connection signing with testSecret.
func webhookServer(t *testing.T) (*testServer, *client.Client) {
	t.Helper()
	s := startServer(t, env{envBootstrapKey: bootstrapKey, envAllowPrivate: "true"})
	c := s.client(t, bootstrapKey)
	_, err := c.ConnectionCreate(context.Background(), client.ConnectionCreateRequest{
		Provider: "webhook.http", Name: "hooks", Config: map[string]any{},
		Secrets: map[string]any{"signing_secret": testSecret},
	})
	if err != nil {
		t.Fatal(err)
	}
	return s, c
}

// writeFile writes a file in a fresh temporary directory and returns its
// path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := t.TempDir() + "/" + name
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// exitCodeOf returns the exit status main would use for err.
func exitCodeOf(err error) int {
	if err == nil {
		return 0
	}
	if e, ok := errors.AsType[*exitError](err); ok {
		return e.code
	}
	return 1
}
