package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/batchsender/batchsender/engine"
	"github.com/batchsender/batchsender/netguard"
	"github.com/batchsender/batchsender/providers"
	"github.com/batchsender/batchsender/secretbox"
	"github.com/batchsender/batchsender/unsubscribe"
)

// nodeConfig is what every engine-running process (serve, worker) needs.
type nodeConfig struct {
	Store        storeConfig
	SecretKey    string // BATCHSENDER_SECRET_KEY; never logged
	AllowPrivate bool
	PublicURL    string
	LogLevel     string
	// LeaseDuration is how long a claim holds its items (0: the engine's
	// default). On PostgreSQL it is also how long the items of a node that
	// died wait before another node sends them.
	LeaseDuration time.Duration
	// MaxInFlight caps the sends this node runs at once over all batches
	// (0: the engine's default).
	MaxInFlight int
	// PprofAddr, when set, serves Go's profiling endpoints there.
	PprofAddr string
	// GOGCSet is true when the operator set GOGC, which then wins over
	// defaultGCPercent.
	GOGCSet bool
}

// defaultGCPercent is the garbage collector's target for serve and worker
// when GOGC is not set. The engine's live heap is tiny (about 3 MB while
// sending 17,000 webhooks/s), so at Go's default of 100 the collector ran
// every 20-odd milliseconds and took about 6% of the CPU; at 200 it runs a
// third as often. 400 saved little more and raised the peak RSS of a
// 1,000,000-row ingest from 72 to 91 MB, against a budget of 100.
const defaultGCPercent = 200

// envLeaseDuration tunes the engine's claim lease, envMaxInFlight its
// process-wide cap on sends in flight.
const (
	envLeaseDuration = "BATCHSENDER_LEASE_DURATION"
	envMaxInFlight   = "BATCHSENDER_MAX_IN_FLIGHT"
)

// readNodeEnv fills the settings that come from the environment only.
func (c *nodeConfig) readNodeEnv(getenv func(string) string) error {
	var err error
	c.SecretKey = getenv(envSecretKey)
	c.PublicURL = strings.TrimRight(strings.TrimSpace(getenv(envPublicURL)), "/")
	c.LogLevel = envOr(getenv, envLogLevel, "info")
	c.PprofAddr = strings.TrimSpace(getenv(envPprofAddr))
	c.GOGCSet = getenv("GOGC") != ""
	if c.AllowPrivate, err = parseBoolEnv(getenv, envAllowPrivate); err != nil {
		return err
	}
	if v := strings.TrimSpace(getenv(envLeaseDuration)); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second || d > time.Hour {
			return fmt.Errorf("%s: %q is not a duration between 1s and 1h (such as 30s)", envLeaseDuration, v)
		}
		c.LeaseDuration = d
	}
	if v := strings.TrimSpace(getenv(envMaxInFlight)); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100_000 {
			return fmt.Errorf("%s: %q is not a whole number between 1 and 100000", envMaxInFlight, v)
		}
		c.MaxInFlight = n
	}
	return nil
}

// errSharedKey explains why a shared store needs the key in the environment.
var errSharedKey = errors.New(envSecretKey + " must be set when " + envDatabaseURL +
	" is: every node of a PostgreSQL cluster seals and opens connection secrets, so all of them need the same key " +
	"(a key file generated per node would leave the other nodes unable to read the secrets); " +
	"generate one with `openssl rand -base64 32` and give it to every node")

// node is an open store with its secrets box, provider cache and engine:
// what serve and worker share.
type node struct {
	Logger *slog.Logger
	Store  *openedStore
	Box    *secretbox.Box
	Cache  *providers.Cache
	Engine *engine.Engine
	Unsub  *unsubscribe.Signer // signs and checks unsubscribe links
	// stopPprof closes the profiling listener, if one was opened.
	stopPprof func()
}

// openNode opens the store and builds the engine. publicURL is where this
// process's API is reachable ("" when it has none). exclusive is passed to
// openStore. Close the node when done.
func openNode(ctx context.Context, cfg nodeConfig, logger *slog.Logger, exclusive bool, publicURL string) (n *node, err error) {
	if cfg.Store.DatabaseURL != "" && strings.TrimSpace(cfg.SecretKey) == "" {
		return nil, errSharedKey
	}
	if !cfg.GOGCSet {
		debug.SetGCPercent(defaultGCPercent)
	}
	st, err := openStore(ctx, cfg.Store, logger, exclusive)
	if err != nil {
		return nil, err
	}
	n = &node{Logger: logger, Store: st}
	defer func() {
		if err != nil {
			_ = n.Close()
		}
	}()
	if cfg.PprofAddr != "" {
		if n.stopPprof, err = startPprof(cfg.PprofAddr, logger); err != nil {
			return n, err
		}
	}
	key, err := secretbox.LoadKey(cfg.SecretKey, cfg.Store.DataDir)
	if err != nil {
		return n, fmt.Errorf("loading secrets key: %w", err)
	}
	if n.Box, err = secretbox.New(key); err != nil {
		return n, fmt.Errorf("loading secrets key: %w", err)
	}
	n.Unsub = unsubscribe.NewSigner(key, publicURL)
	n.Cache = providers.NewCache(providers.Config{
		Unsealer:             n.Box,
		Logger:               logger,
		Dialer:               netguard.Dialer(cfg.AllowPrivate, dialTimeout),
		AllowPrivateNetworks: cfg.AllowPrivate,
		PublicURL:            publicURL,
		Now:                  time.Now,
		Unsubscribe:          n.Unsub,
	})
	n.Engine, err = engine.New(engine.Config{
		// The store itself, not the openedStore wrapper: the engine looks
		// for its WorkSignaler and LeaderElector methods.
		Store:         st.Store,
		Providers:     n.Cache,
		Logger:        logger,
		Now:           time.Now,
		RescueOnStart: st.SingleProcess,
		LeaseDuration: cfg.LeaseDuration,
		MaxInFlight:   cfg.MaxInFlight,
	})
	if err != nil {
		return n, fmt.Errorf("starting engine: %w", err)
	}
	return n, nil
}

// Close releases the provider cache and the store.
func (n *node) Close() error {
	if n.stopPprof != nil {
		n.stopPprof()
	}
	if n.Cache != nil {
		n.Cache.Close()
	}
	if err := n.Store.Close(); err != nil {
		return fmt.Errorf("closing store: %w", err)
	}
	return nil
}

// writeMetrics writes the engine's counters and the leader gauge.
func (n *node) writeMetrics(w io.Writer) {
	writeEngineMetrics(w, n.Engine.Stats())
	v := 0
	if n.Store.Leader() {
		v = 1
	}
	fmt.Fprintf(w, "# HELP batchsender_leader 1 while this node holds the cluster's maintenance role (lease rescue, schedules).\n# TYPE batchsender_leader gauge\nbatchsender_leader %d\n", v)
}

// nodeHelp is the settings part of serve's and worker's help.
func nodeHelp() string {
	return `  --data-dir      ` + envDataDir + `  data directory (default ` + defaultDataDir + `)
  --database-url  ` + envDatabaseURL + `  postgres:// URL: run on PostgreSQL, as one
                  node of a cluster, instead of SQLite in the data directory
  ` + envSecretKey + `       32-byte key (base64 or hex) sealing connection secrets;
                               default on SQLite: <data-dir>/secret.key, generated on
                               first start; required with PostgreSQL (the same on every node)
  ` + envAllowPrivate + ` true lets providers reach loopback and private networks
  ` + envPublicURL + `       base URL where the API is reachable
  ` + envLogLevel + `        debug, info (default), warn or error
  ` + envLeaseDuration + `   how long a node holds claimed items (default 1m); on
                               PostgreSQL, how long a dead node's items wait before
                               another node sends them
  ` + envMaxInFlight + `    sends this node runs at once over all batches
                               (default 512)
  ` + envPprofAddr + `       address for Go's /debug/pprof/ endpoints (off by default;
                               keep it on loopback)`
}
