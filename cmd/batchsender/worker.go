package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
)

// envHealthAddr is the worker's optional health listener address.
const envHealthAddr = "BATCHSENDER_HEALTH_ADDR"

// workerConfig is everything worker needs, from flags and environment.
type workerConfig struct {
	nodeConfig
	// HealthAddr is where /healthz, /readyz and /metrics are served; empty
	// serves nothing.
	HealthAddr string
}

func newWorkerCmd(getenv func(string) string) *cobra.Command {
	var cfg workerConfig
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run the engine only (no API): one more node of a PostgreSQL cluster",
		Long: `Run the engine that carries batches out, without the HTTP API. Start it
next to "batchsender serve" nodes on the same PostgreSQL database to add
sending capacity; workers join and leave at any time.

Settings come from flags or the environment, as for serve:
  --health-addr   ` + envHealthAddr + `  optional listen address of /healthz, /readyz
                  and /metrics (Prometheus) for health checks; default: none
` + nodeHelp(),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cfg.readNodeEnv(getenv); err != nil {
				return err
			}
			return work(cmd.Context(), cfg, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&cfg.HealthAddr, "health-addr", envOr(getenv, envHealthAddr, ""), "listen address of /healthz, /readyz and /metrics; empty: none (env "+envHealthAddr+")")
	storeFlags(cmd, getenv, &cfg.Store)
	return cmd
}

// work runs a worker node until ctx ends, then shuts the engine down as
// serve does: in-flight sends finish within the grace period and unsent
// claimed items are released.
func work(ctx context.Context, cfg workerConfig, stdout, stderr io.Writer) (err error) {
	logger, err := newLogger(stderr, cfg.LogLevel)
	if err != nil {
		return err
	}
	var ln net.Listener
	if cfg.HealthAddr != "" {
		if ln, err = net.Listen("tcp", cfg.HealthAddr); err != nil {
			return fmt.Errorf("listening on %s: %w", cfg.HealthAddr, err)
		}
		defer ln.Close()
	}
	// exclusive: a worker on SQLite is the one process of its data
	// directory, like serve. On PostgreSQL no lock is taken.
	n, err := openNode(ctx, cfg.nodeConfig, logger, true, cfg.PublicURL)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, n.Close()) }()

	var ready atomic.Bool
	var srv *http.Server
	srvDone := make(chan error, 1)
	if ln != nil {
		srv = &http.Server{
			Handler:           healthHandler(n, &ready),
			ReadHeaderTimeout: 5 * time.Second,
			ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		}
		go func() { srvDone <- srv.Serve(ln) }()
	}

	engCtx, stopEngine := context.WithCancel(context.WithoutCancel(ctx))
	defer stopEngine()
	engDone := make(chan error, 1)
	go func() { engDone <- n.Engine.Run(engCtx) }()

	ready.Store(true)
	attrs := []any{slog.String("version", version), slog.String("role", "worker"), slog.String("store", n.Store.Name)}
	if ln != nil {
		attrs = append(attrs, slog.String("health_addr", ln.Addr().String()))
	}
	logger.Info("batchsender started", attrs...)
	if ln != nil {
		if _, err := fmt.Fprintf(stdout, "worker running; health on http://%s\n", ln.Addr()); err != nil {
			logger.Warn("writing the health address", slog.Any("error", err))
		}
	} else if _, err := fmt.Fprintln(stdout, "worker running"); err != nil {
		logger.Warn("writing the start line", slog.Any("error", err))
	}

	var runErr error
	select {
	case <-ctx.Done():
		logger.Info("shutting down")
	case err := <-engDone:
		engDone <- err
		runErr = fmt.Errorf("engine stopped: %w", err)
	case err := <-srvDone:
		srvDone <- err
		runErr = fmt.Errorf("health server stopped: %w", err)
	}
	ready.Store(false)
	stopEngine()
	if err := <-engDone; err != nil && !errors.Is(err, context.Canceled) && runErr == nil {
		runErr = fmt.Errorf("engine: %w", err)
	}
	if srv != nil {
		shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(shutCtx); err != nil {
			_ = srv.Close()
		}
		if err := <-srvDone; err != nil && !errors.Is(err, http.ErrServerClosed) && runErr == nil {
			runErr = fmt.Errorf("health server: %w", err)
		}
	}
	logger.Info("stopped")
	return runErr
}

// healthHandler serves a worker's probes: /healthz answers while the
// process runs, /readyz while the engine runs, and
// /metrics the engine counters and the leader gauge.
func healthHandler(n *node, ready *atomic.Bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !ready.Load() {
			http.Error(w, "starting or shutting down", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		n.writeMetrics(w)
	})
	return mux
}
