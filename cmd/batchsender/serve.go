package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/batchsender/batchsender/auth"
	"github.com/batchsender/batchsender/engine"
	"github.com/batchsender/batchsender/httpapi"
	"github.com/batchsender/batchsender/netguard"
	"github.com/batchsender/batchsender/providers"
	"github.com/batchsender/batchsender/secretbox"
)

// serveConfig is everything serve needs, from flags and environment.
type serveConfig struct {
	Addr         string
	Store        storeConfig
	SecretKey    string // BATCHSENDER_SECRET_KEY; never logged
	BootstrapKey string // BATCHSENDER_BOOTSTRAP_KEY; never logged
	AllowPrivate bool
	PublicURL    string
	LogLevel     string
}

// Timeouts of the server process.
const (
	// dialTimeout bounds each outgoing connection attempt of providers.
	dialTimeout = 10 * time.Second
	// httpShutdownTimeout bounds how long in-flight API requests may run on
	// after a shutdown signal.
	httpShutdownTimeout = 15 * time.Second
)

// storeFlags registers --data-dir on cmd, defaulting from the environment.
func storeFlags(cmd *cobra.Command, getenv func(string) string, cfg *storeConfig) {
	cmd.Flags().StringVar(&cfg.DataDir, "data-dir", envOr(getenv, envDataDir, defaultDataDir), "directory of the SQLite database and secrets key file (env "+envDataDir+")")
	cfg.DatabaseURL = strings.TrimSpace(getenv(envDatabaseURL))
}

func newServeCmd(getenv func(string) string) *cobra.Command {
	var cfg serveConfig
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the HTTP API and the engine",
		Long: `Run the HTTP API and the engine that carries batches out.

Settings come from flags or the environment:
  --addr      ` + envAddr + `      listen address (default ` + defaultAddr + `)
  --data-dir  ` + envDataDir + `  data directory (default ` + defaultDataDir + `)
  ` + envSecretKey + `       32-byte key (base64 or hex) sealing connection secrets;
                               default: <data-dir>/secret.key, generated on first start
  ` + envBootstrapKey + `    becomes an admin key of project "default" at start
  ` + envAllowPrivate + ` true lets providers reach loopback and private networks
  ` + envPublicURL + `       base URL where this server is reachable
  ` + envLogLevel + `        debug, info (default), warn or error`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			cfg.SecretKey = getenv(envSecretKey)
			cfg.BootstrapKey = strings.TrimSpace(getenv(envBootstrapKey))
			cfg.PublicURL = strings.TrimRight(strings.TrimSpace(getenv(envPublicURL)), "/")
			cfg.LogLevel = envOr(getenv, envLogLevel, "info")
			if cfg.AllowPrivate, err = parseBoolEnv(getenv, envAllowPrivate); err != nil {
				return err
			}
			return serve(cmd.Context(), cfg, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&cfg.Addr, "addr", envOr(getenv, envAddr, defaultAddr), "listen address (env "+envAddr+")")
	storeFlags(cmd, getenv, &cfg.Store)
	return cmd
}

// serve runs the server until ctx ends, then shuts down gracefully: the
// listener closes, in-flight requests and sends finish (within their grace
// periods), unsent claimed items are released, and the store is closed.
func serve(ctx context.Context, cfg serveConfig, stdout, stderr io.Writer) (err error) {
	logger, err := newLogger(stderr, cfg.LogLevel)
	if err != nil {
		return err
	}
	st, err := openStore(ctx, cfg.Store, logger, true)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := st.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("closing store: %w", cerr))
		}
	}()

	key, err := secretbox.LoadKey(cfg.SecretKey, cfg.Store.DataDir)
	if err != nil {
		return fmt.Errorf("loading secrets key: %w", err)
	}
	box, err := secretbox.New(key)
	if err != nil {
		return fmt.Errorf("loading secrets key: %w", err)
	}
	if cfg.BootstrapKey != "" {
		if err := auth.Bootstrap(ctx, st, cfg.BootstrapKey); err != nil {
			return fmt.Errorf("bootstrap key: %s", describe(err))
		}
	}

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", cfg.Addr, err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	publicURL := cfg.PublicURL
	if publicURL == "" {
		publicURL = "http://" + addr
	}

	cache := providers.NewCache(providers.Config{
		Unsealer:             box,
		Logger:               logger,
		Dialer:               netguard.Dialer(cfg.AllowPrivate, dialTimeout),
		AllowPrivateNetworks: cfg.AllowPrivate,
		PublicURL:            publicURL,
		Now:                  time.Now,
	})
	defer cache.Close()

	eng, err := engine.New(engine.Config{
		Store:         st,
		Providers:     cache,
		Logger:        logger,
		Now:           time.Now,
		RescueOnStart: st.SingleProcess,
	})
	if err != nil {
		return fmt.Errorf("starting engine: %w", err)
	}

	var ready atomic.Bool
	api := httpapi.NewServer(httpapi.Deps{
		Store:     st,
		Providers: cache,
		Sealer:    box,
		Waker:     eng,
		Logger:    logger,
		Now:       time.Now,
		Ready: func(context.Context) error {
			if !ready.Load() {
				return errors.New("starting or shutting down")
			}
			return nil
		},
		Metrics: func(w io.Writer) { writeEngineMetrics(w, eng.Stats()) },
		Version: version,
	})
	// Event streams never go idle, so http.Server.Shutdown would wait for
	// them until its timeout; they get a context that shutdown cancels.
	streams, endStreams := context.WithCancel(context.Background())
	defer endStreams()
	srv := &http.Server{
		Handler:           endOnShutdown(streams, api),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	srv.RegisterOnShutdown(endStreams)

	engCtx, stopEngine := context.WithCancel(context.WithoutCancel(ctx))
	defer stopEngine()
	engDone := make(chan error, 1)
	go func() { engDone <- eng.Run(engCtx) }()
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(ln) }()

	ready.Store(true)
	logger.Info("batchsender started", slog.String("version", version), slog.String("addr", addr),
		slog.String("store", st.Name), slog.Bool("allow_private_networks", cfg.AllowPrivate))
	if _, err := fmt.Fprintf(stdout, "listening on http://%s\n", addr); err != nil {
		logger.Warn("writing the listen address", slog.Any("error", err))
	}

	var runErr error
	select {
	case <-ctx.Done():
		logger.Info("shutting down")
	case err := <-srvDone:
		srvDone <- err
		runErr = fmt.Errorf("http server stopped: %w", err)
	case err := <-engDone:
		engDone <- err
		runErr = fmt.Errorf("engine stopped: %w", err)
	}
	ready.Store(false)

	// Stop both at once: the engine stops claiming and lets in-flight sends
	// finish within its grace period while the API drains its requests.
	stopEngine()
	shutCtx, cancel := context.WithTimeout(context.Background(), httpShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		_ = srv.Close()
		logger.Warn("http shutdown cut short", slog.Any("error", err))
	}
	if err := <-srvDone; err != nil && !errors.Is(err, http.ErrServerClosed) && runErr == nil {
		runErr = fmt.Errorf("http server: %w", err)
	}
	if err := <-engDone; err != nil && !errors.Is(err, context.Canceled) && runErr == nil {
		runErr = fmt.Errorf("engine: %w", err)
	}
	logger.Info("stopped")
	return runErr
}

// endOnShutdown gives event-stream requests a context that also ends when
// streams ends, so they close at shutdown instead of holding it up.
func endOnShutdown(streams context.Context, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/events") {
			ctx, cancel := context.WithCancel(r.Context())
			defer cancel()
			stop := context.AfterFunc(streams, cancel)
			defer stop()
			r = r.WithContext(ctx)
		}
		h.ServeHTTP(w, r)
	})
}

// writeEngineMetrics writes the engine's counters in the Prometheus text
// format.
func writeEngineMetrics(w io.Writer, s engine.Stats) {
	metric := func(name, kind, help string, v int64) {
		fmt.Fprintf(w, "# HELP batchsender_engine_%s %s\n# TYPE batchsender_engine_%s %s\nbatchsender_engine_%s %d\n", name, help, name, kind, name, v)
	}
	metric("attempts_succeeded_total", "counter", "Attempts that succeeded.", s.Succeeded)
	metric("attempts_retried_total", "counter", "Attempts that failed and will be tried again.", s.Retried)
	metric("items_failed_total", "counter", "Items that failed for good.", s.Failed)
	metric("items_unknown_total", "counter", "Items whose send may or may not have happened.", s.Unknown)
	metric("items_released_total", "counter", "Claimed items given back unsent at shutdown.", s.Released)
	metric("items_rescued_total", "counter", "Items whose expired lease this engine rescued.", s.Rescued)
	metric("claims_total", "counter", "Claims that returned items.", s.Claims)
	metric("items_claimed_total", "counter", "Items claimed.", s.ItemsClaimed)
	metric("send_calls_total", "counter", "Provider Send calls made.", s.Calls)
	metric("send_calls_in_flight", "gauge", "Provider Send calls running now.", s.CallsInFlight)
	metric("send_panics_total", "counter", "Provider Send calls that panicked.", s.Panics)
	metric("send_bad_results_total", "counter", "Send calls that returned the wrong number of results.", s.BadResults)
	metric("flushes_total", "counter", "Group commits of results.", s.Flushes)
	metric("flush_errors_total", "counter", "Failed group commits (retried).", s.FlushErrors)
	metric("results_written_total", "counter", "Results the store took.", s.ResultsWritten)
	metric("results_ignored_total", "counter", "Results ignored because their lease had been rescued.", s.ResultsIgnored)
	metric("runners", "gauge", "Batches being worked on now.", s.Runners)
}
