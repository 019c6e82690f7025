package client_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"time"

	"github.com/batchsender/batchsender/auth"
	"github.com/batchsender/batchsender/engine"
	"github.com/batchsender/batchsender/httpapi"
	"github.com/batchsender/batchsender/netguard"
	"github.com/batchsender/batchsender/providers"
	"github.com/batchsender/batchsender/secretbox"
	"github.com/batchsender/batchsender/sqlite"
	_ "github.com/batchsender/batchsender/webhook" // the webhook.http provider
)

// testKey is the admin key of project "default" on every test server.
const testKey = "bsk_client_test_key_0123456789"

// apiServer is a real BatchSender (SQLite store, engine, HTTP API) on a
// loopback port, wired as `batchsender serve` wires it, and a webhook
// receiver next to it that answers 204, or 410 under /fail.
type apiServer struct {
	URL      string
	Receiver string
	stop     func()
}

// startAPI starts an apiServer with its data in a fresh temporary
// directory. stop shuts everything down and removes the directory.
func startAPI() (*apiServer, error) {
	dir, err := os.MkdirTemp("", "batchsender-client-test-")
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	store, err := sqlite.Open(ctx, dir+"/batchsender.db", nil)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	fail := func(err error) (*apiServer, error) {
		store.Close()
		os.RemoveAll(dir)
		return nil, err
	}
	if err := auth.Bootstrap(ctx, store, testKey); err != nil {
		return fail(err)
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	box, err := secretbox.New(key)
	if err != nil {
		return fail(err)
	}
	cache := providers.NewCache(providers.Config{
		Unsealer:             box,
		Dialer:               netguard.Dialer(true, 5*time.Second), // the receiver is on loopback
		AllowPrivateNetworks: true,
	})
	eng, err := engine.New(engine.Config{Store: store, Providers: cache, PollInterval: 20 * time.Millisecond, RescueOnStart: true})
	if err != nil {
		cache.Close()
		return fail(err)
	}
	api := httptest.NewServer(httpapi.NewServer(httpapi.Deps{
		Store: store, Providers: cache, Sealer: box, Waker: eng, Version: "test",
		EventsPoll: 20 * time.Millisecond,
	}))
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if len(r.URL.Path) >= 5 && r.URL.Path[:5] == "/fail" {
			w.WriteHeader(http.StatusGone)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	engCtx, stopEngine := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := eng.Run(engCtx); err != nil && !errors.Is(err, context.Canceled) {
			fmt.Fprintln(os.Stderr, "engine:", err)
		}
	})
	return &apiServer{URL: api.URL, Receiver: recv.URL, stop: func() {
		// Streams end with their requests' contexts: close the API first.
		api.CloseClientConnections()
		api.Close()
		stopEngine()
		wg.Wait()
		recv.Close()
		cache.Close()
		store.Close()
		os.RemoveAll(dir)
	}}, nil
}

// Close stops the server.
func (s *apiServer) Close() { s.stop() }
