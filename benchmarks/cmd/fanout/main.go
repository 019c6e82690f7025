// Command fanout measures BatchSender's webhook fan-out against a bare
// net/http loop, CSV ingest speed, and the server's peak memory at two
// batch sizes. It builds and runs the real binary; every request goes to a
// loopback receiver in this process.
//
//	go run ./benchmarks/cmd/fanout -items 100000 -rss 100000,1000000
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"time"

	"github.com/batchsender/batchsender/benchmarks"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "fanout:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fanout", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		bin         = fs.String("bin", "", "batchsender binary (built from this module when empty)")
		items       = fs.Int("items", 100_000, "items of the fan-out batch (0 skips the fan-out)")
		concurrency = fs.Int("concurrency", 64, "batch concurrency and bare-loop workers")
		pad         = fs.Int("pad", 100, "payload padding in bytes")
		rss         = fs.String("rss", "100000,1000000", "comma-separated CSV sizes to ingest and send, measuring peak RSS (empty skips)")
		workDir     = fs.String("workdir", "", "directory for data and logs (a temporary one, removed after, when empty)")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	dir := *workDir
	if dir == "" {
		d, err := os.MkdirTemp("", "batchsender-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
	cfg := benchmarks.Config{Bin: *bin, WorkDir: dir, Items: *items, Concurrency: *concurrency, PayloadPad: *pad, Logf: logf}
	var err error
	if cfg.Bin, err = benchmarks.Binary(ctx, cfg); err != nil {
		return err
	}
	host, _ := os.Hostname()
	fmt.Fprintf(stdout, "date %s, host %s, %d CPUs, load average %s\n", time.Now().UTC().Format(time.RFC3339), host, numCPU(), loadAvg())
	defer func() { fmt.Fprintf(stdout, "load average at the end %s\n", loadAvg()) }()
	if *items > 0 {
		res, err := benchmarks.RunFanout(ctx, cfg)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, res)
	}
	if *rss != "" {
		for _, f := range strings.Split(*rss, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				return fmt.Errorf("parsing -rss: %w", err)
			}
			res, err := benchmarks.RunIngestAndSend(ctx, cfg, n)
			if err != nil {
				return err
			}
			fmt.Fprintln(stdout, res)
		}
	}
	return nil
}

// loadAvg returns the 1, 5 and 15 minute load averages: figures taken on a
// busy machine say so.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func numCPU() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	return strings.Count(string(b), "processor\t:")
}
