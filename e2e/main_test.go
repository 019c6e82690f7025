package e2e

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
	binDir  string
)

// TestMain removes the binary built for the package and fails the package
// on leaked goroutines.
func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// binary builds the batchsender binary once per package run; tests that
// need no server (the signature checks) do not pay for the build.
func binary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "batchsender-e2e-")
		if binErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		binPath, binErr = BuildBinary(ctx, binDir)
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// randomSecret returns a fresh "whsec_" signing secret.
func randomSecret(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "whsec_" + base64.StdEncoding.EncodeToString(b)
}

// randomKey returns a fresh bootstrap API key.
func randomKey(t *testing.T) string {
	t.Helper()
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "bsk_e2e" + hex.EncodeToString(b)
}

// serverOptions tune startServer.
type serverOptions struct {
	allowPrivate bool     // set BATCHSENDER_ALLOW_PRIVATE_NETWORKS=true
	env          []string // extra environment
}

// startServer runs `batchsender serve` on a fresh data directory and a
// free loopback port, and returns it with a client holding the bootstrap
// key. The server is stopped at the end of the test and its log is shown
// when the test failed.
func startServer(t *testing.T, opts serverOptions) (*Server, *Client) {
	t.Helper()
	bin := binary(t)
	addr, err := FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s := &Server{
		Bin:     bin,
		DataDir: filepath.Join(dir, "data"),
		Addr:    addr,
		Key:     randomKey(t),
		LogPath: filepath.Join(dir, "server.log"),
		Env:     opts.env,
	}
	if opts.allowPrivate {
		s.Env = append(s.Env, "BATCHSENDER_ALLOW_PRIVATE_NETWORKS=true")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	c := NewClient(s.URL(), s.Key)
	t.Cleanup(func() {
		c.Close()
		if !s.Stop(10 * time.Second) {
			t.Errorf("server did not exit within 10s of SIGTERM")
		}
		if t.Failed() {
			t.Logf("server log (%s):\n%s", s.LogPath, tail(s.Log(), 6000))
		}
	})
	return s, c
}

// startReceiver starts a receiver closed at the end of the test.
func startReceiver(t *testing.T, opts ReceiverOptions) *Receiver {
	t.Helper()
	r, err := NewReceiver(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func tail(s string, n int) string {
	if len(s) > n {
		return "...\n" + s[len(s)-n:]
	}
	return s
}
