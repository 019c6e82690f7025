package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/batchsender/batchsender/webhook"
)

// newReceiveCmd is a small webhook receiver for trying BatchSender out on
// one machine: it checks each delivery's Standard Webhooks signature and
// prints one line per request.
func newReceiveCmd() *cobra.Command {
	var addr, secret string
	cmd := &cobra.Command{
		Use:   "receive --secret whsec_... [--addr 127.0.0.1:9000]",
		Short: "Run a local webhook receiver that verifies signatures (for trying BatchSender out)",
		Long: `Run a local webhook receiver that verifies each delivery's Standard Webhooks
signature and prints one line per request.

It answers 204 to a request whose signature is valid, 401 to one whose
signature is not, and 410 Gone to any request whose path starts with /fail,
so a batch can show permanent failures. Send to it only with the server's
BATCHSENDER_ALLOW_PRIVATE_NETWORKS=true, since it listens on loopback.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := webhook.DecodeSecret(secret); err != nil {
				return fmt.Errorf("--secret: %w", err)
			}
			return receive(cmd.Context(), addr, secret, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:9000", "listen address")
	cmd.Flags().StringVar(&secret, "secret", "", "the connection's signing secret (whsec_...)")
	_ = cmd.MarkFlagRequired("secret")
	return cmd
}

func receive(ctx context.Context, addr, secret string, out io.Writer) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	var mu sync.Mutex
	var n int
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, "reading body", http.StatusBadRequest)
			return
		}
		verdict, status := "signature ok", http.StatusNoContent
		if err := webhook.Verify(secret, r.Header, body, time.Now(), 0); err != nil {
			verdict, status = "BAD SIGNATURE: "+err.Error(), http.StatusUnauthorized
		} else if strings.HasPrefix(r.URL.Path, "/fail") {
			status = http.StatusGone
		}
		mu.Lock()
		n++
		fmt.Fprintf(out, "#%d %s %s id=%s %s → %d %s\n", n, r.Method, r.URL.Path, r.Header.Get("webhook-id"), verdict, status, truncate(string(body), 200))
		mu.Unlock()
		w.WriteHeader(status)
	})
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(out, "receiving webhooks on http://%s\n", ln.Addr())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutCtx)
	if err := <-done; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
