package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// envPprofAddr opens Go's profiling endpoints (/debug/pprof/) on a separate
// listener. Off by default: profiles reveal internals, so the operator
// chooses where (normally a loopback address) they are served.
const envPprofAddr = "BATCHSENDER_PPROF_ADDR"

// startPprof serves net/http/pprof on addr until the returned func is called.
func startPprof(addr string, logger *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: listening on %s: %w", envPprofAddr, addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	logger.Info("profiling endpoints enabled", slog.String("addr", ln.Addr().String()))
	return func() { _ = srv.Close() }, nil
}
