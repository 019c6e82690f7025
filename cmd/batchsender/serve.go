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
)

// serveConfig is everything serve needs, from flags and environment.
type serveConfig struct {
	nodeConfig
	Addr         string
	BootstrapKey string // BATCHSENDER_BOOTSTRAP_KEY; never logged
}

// Timeouts of the server process.
const (
	// dialTimeout bounds each outgoing connection attempt of providers.
	dialTimeout = 10 * time.Second
	// httpShutdownTimeout bounds how long in-flight API requests may run on
	// after a shutdown signal.
	httpShutdownTimeout = 15 * time.Second
)

func newServeCmd(getenv func(string) string) *cobra.Command {
	var cfg serveConfig
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the HTTP API and the engine",
		Long: `Run the HTTP API and the engine that carries batches out.

Settings come from flags or the environment:
  --addr          ` + envAddr + `      listen address (default ` + defaultAddr + `)
` + nodeHelp() + `
  ` + envBootstrapKey + `    becomes an admin key of project "default" at start`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cfg.readNodeEnv(getenv); err != nil {
				return err
			}
			cfg.BootstrapKey = strings.TrimSpace(getenv(envBootstrapKey))
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
	// The listener comes first so the public URL (which providers may hand
	// out) is known when the node is built.
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

	n, err := openNode(ctx, cfg.nodeConfig, logger, true, publicURL)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, n.Close()) }()
	st, eng := n.Store, n.Engine

	if cfg.BootstrapKey != "" {
		if err := auth.Bootstrap(ctx, st, cfg.BootstrapKey); err != nil {
			return fmt.Errorf("bootstrap key: %s", describe(err))
		}
	}

	var ready atomic.Bool
	api := httpapi.NewServer(httpapi.Deps{
		Store:     st,
		Providers: n.Cache,
		Sealer:    n.Box,
		Waker:     eng,
		Logger:    logger,
		Now:       time.Now,
		Ready: func(context.Context) error {
			if !ready.Load() {
				return errors.New("starting or shutting down")
			}
			return nil
		},
		Metrics:     n.writeMetrics,
		Version:     version,
		Unsubscribe: n.Unsub,
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
	logger.Info("batchsender started", slog.String("version", version), slog.String("role", "serve"), slog.String("addr", addr),
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
	metric("items_released_total", "counter", "Claimed items given back unsent (shutdown, pause, cancel, or a lease half over).", s.Released)
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
	metric("guard_pauses_total", "counter", "Batches the failure-rate guard paused.", s.GuardPauses)
}
