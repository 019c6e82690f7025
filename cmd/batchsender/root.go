package main

import (
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

// Environment variables. Every setting shares the BATCHSENDER_ prefix; the
// README's configuration table lists them.
const (
	envAddr         = "BATCHSENDER_ADDR"
	envDataDir      = "BATCHSENDER_DATA_DIR"
	envDatabaseURL  = "BATCHSENDER_DATABASE_URL"
	envSecretKey    = "BATCHSENDER_SECRET_KEY"
	envBootstrapKey = "BATCHSENDER_BOOTSTRAP_KEY"
	envAllowPrivate = "BATCHSENDER_ALLOW_PRIVATE_NETWORKS"
	envPublicURL    = "BATCHSENDER_PUBLIC_URL"
	envLogLevel     = "BATCHSENDER_LOG_LEVEL"
	envURL          = "BATCHSENDER_URL"
	envAPIKey       = "BATCHSENDER_API_KEY"
)

// Defaults of the settings above.
const (
	defaultAddr    = "127.0.0.1:8080"
	defaultDataDir = "./data"
	defaultURL     = "http://127.0.0.1:8080"
)

// envOr returns the variable's value, or def when it is unset or empty.
func envOr(getenv func(string) string, name, def string) string {
	if v := strings.TrimSpace(getenv(name)); v != "" {
		return v
	}
	return def
}

func newRootCmd(getenv func(string) string) *cobra.Command {
	root := &cobra.Command{
		Use:   "batchsender",
		Short: "BatchSender: send batches of webhooks, emails, SMS and more, with retries and progress",
		Long: `BatchSender carries out batches of items (webhooks, emails, SMS, CRM records)
through provider connections, with rate limits, retries and live progress.

Run the server with "batchsender serve"; the connection and batch commands
talk to a running server (see --url and --api-key).`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.CompletionOptions.DisableDefaultCmd = true
	root.AddCommand(
		newServeCmd(getenv),
		newWorkerCmd(getenv),
		newMigrateStoreCmd(getenv),
		newMigrateCmd(getenv),
		newKeysCmd(getenv),
		newModulesCmd(),
		newVersionCmd(),
		newReceiveCmd(),
		newConnectionCmd(getenv),
		newBatchCmd(getenv),
	)
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "batchsender %s (%s %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return err
		},
	}
}

// newLogger returns a text logger on w at the named level.
func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("%s: %q is not a level: use debug, info, warn or error", envLogLevel, level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// parseBoolEnv reads a boolean setting; empty means false.
func parseBoolEnv(getenv func(string) string, name string) (bool, error) {
	v := strings.TrimSpace(getenv(name))
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%s: %q is not a boolean: use true or false", name, v)
	}
	return b, nil
}
