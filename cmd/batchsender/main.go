// Command batchsender is BatchSender's one binary: the server (serve), its
// maintenance commands (migrate, keys create, modules) and a client for a
// running server (connection, batch).
//
// main only wires the process to run: run takes the arguments, the
// environment as a function and the standard streams, so tests drive the
// whole program exactly as a user would, in process. Nothing below run reads
// the environment.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is stamped at build time: go build -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// exitError carries an exit code other than 1, for outcomes that are not
// failures of the command itself (a batch that ended with failed items).
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// exitCode prints err (if any) and maps it to the process exit code:
// 0 success, 2 for an *exitError of code 2 (see batch create), 1 otherwise.
func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "batchsender:", err)
	if e, ok := errors.AsType[*exitError](err); ok {
		return e.code
	}
	return 1
}

// run is the whole program. args excludes the program name.
func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	root := newRootCmd(getenv)
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	return root.ExecuteContext(ctx)
}
