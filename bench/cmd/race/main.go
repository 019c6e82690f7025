// Command race runs the race of issue 4: on the same database and in the
// same run, River (a general job queue, github.com/riverqueue/river) and
// BatchSender each deliver the same N signed webhooks to the same loopback
// receiver, which verifies every signature; every result is durable before
// the clock stops. It does this on PostgreSQL and on SQLite, and measures a
// bare net/http loop against the same receiver as the ceiling.
//
// Each contestant first enqueues all N (River: InsertManyFast with its
// workers stopped; BatchSender: an NDJSON upload into a draft batch of the
// real binary), then delivers: the delivery clock runs from starting the
// workers (River: Client.Start; BatchSender: POST .../start) until the
// database says all N are done (River: no job left unfinished, checked
// every 20 ms, then N rows of river_job in state completed; BatchSender:
// the batch completed with N succeeded, read every 20 ms). Both phases are
// printed; the ratios compare delivery, then end to end.
//
// The machine's speed drifts, so the contestants take turns for -rounds
// rounds (default 3) and the figures are medians over the rounds. The bare
// loop runs before the first round and after each; a round's ceiling is
// the mean of the loops around it.
//
//	cd bench && go run ./cmd/race -n 100000
//
// This module is separate from BatchSender's so that the product never
// depends on its rivals.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"
	_ "modernc.org/sqlite"

	"github.com/batchsender/batchsender/benchmarks"
	"github.com/batchsender/batchsender/e2e"
)

type config struct {
	n            int
	concurrency  int
	riverWorkers int
	pad          int
	pgURL        string
	bin          string
	workDir      string
	stores       string
	skipBare     bool
	rounds       int
	timeline     bool
	skipRiver    bool
}

func main() {
	var cfg config
	flag.IntVar(&cfg.n, "n", 100_000, "webhooks each contestant delivers")
	flag.IntVar(&cfg.concurrency, "concurrency", 128, "BatchSender batch concurrency and bare-loop workers")
	flag.IntVar(&cfg.riverWorkers, "river-workers", 0, "River MaxWorkers (default: -concurrency)")
	flag.IntVar(&cfg.pad, "pad", 100, "bytes of padding in each payload")
	flag.IntVar(&cfg.rounds, "rounds", 3, "rounds per store: the contestants take turns, and the figures are the medians")
	flag.StringVar(&cfg.pgURL, "pg", envOr("BATCHSENDER_TEST_DATABASE_URL", "postgres://root@127.0.0.1:5432/test?sslmode=disable"), "PostgreSQL URL (each contestant gets a fresh schema, dropped afterwards)")
	flag.StringVar(&cfg.bin, "bin", "", "batchsender binary (default: build ../cmd/batchsender)")
	flag.StringVar(&cfg.workDir, "workdir", "", "directory for data and logs (default: a temporary one, removed)")
	flag.StringVar(&cfg.stores, "stores", "postgres,sqlite", "which rounds to run")
	flag.BoolVar(&cfg.skipBare, "skip-bare", false, "skip the bare loop")
	flag.BoolVar(&cfg.timeline, "timeline", false, "print the receiver's requests per 100 ms of each delivery (shows ramp-up and tail)")
	flag.BoolVar(&cfg.skipRiver, "skip-river", false, "skip River (for looking at BatchSender alone)")
	flag.Parse()
	if cfg.riverWorkers == 0 {
		cfg.riverWorkers = cfg.concurrency
	}
	if cfg.rounds < 1 || cfg.n < 1 {
		fmt.Fprintln(os.Stderr, "race: -rounds and -n must be at least 1")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, cfg)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "race:", err)
		os.Exit(1)
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05.000")+" "+format+"\n", args...)
}

// result is one contestant's figures.
type result struct {
	enqueue, deliver time.Duration
	n                int
	cpu              cpuUse // during delivery
}

func (r result) deliverRate() float64 { return float64(r.n) / r.deliver.Seconds() }
func (r result) totalRate() float64   { return float64(r.n) / (r.enqueue + r.deliver).Seconds() }

func run(ctx context.Context, cfg config) error {
	if cfg.workDir == "" {
		dir, err := os.MkdirTemp("", "batchsender-race-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		cfg.workDir = dir
	}
	if cfg.bin == "" {
		bin, err := buildBinary(ctx, cfg.workDir)
		if err != nil {
			return err
		}
		cfg.bin = bin
	}
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	secret := "whsec_" + base64.StdEncoding.EncodeToString(raw)
	recv, err := e2e.NewReceiver(e2e.ReceiverOptions{Secret: secret})
	if err != nil {
		return err
	}
	defer recv.Close()
	r := &racer{cfg: cfg, recv: recv, secret: secret, key: raw}

	fmt.Printf("race: %d signed webhooks per contestant, BatchSender concurrency %d, River MaxWorkers %d, %d-byte bodies, GOMAXPROCS %d\n",
		cfg.n, cfg.concurrency, cfg.riverWorkers, len(payload(nil, cfg.n/2, cfg.pad)), runtime.GOMAXPROCS(0))
	for _, store := range strings.Split(cfg.stores, ",") {
		var runBS, runRiver func(context.Context) (result, error)
		switch store {
		case "postgres":
			runBS, runRiver = r.batchsenderPG, r.riverPG
		case "sqlite":
			runBS, runRiver = r.batchsenderSQLite, r.riverSQLite
		default:
			return fmt.Errorf("unknown store %q: use postgres and/or sqlite", store)
		}
		// The contestants take turns, round after round, and the figures
		// are the medians over the rounds, so that a slow moment of the
		// machine does not decide a ratio. On PostgreSQL the bare loop, the
		// ceiling, runs before the first round and after every round; a
		// round's ceiling is the mean of the loops before and after it, so
		// that it drifts with the machine's speed.
		bareOn := store == "postgres" && !cfg.skipBare
		var bare []float64
		runBare := func() error {
			rate, err := r.bare(ctx)
			if err != nil {
				return fmt.Errorf("bare loop: %w", err)
			}
			bare = append(bare, rate)
			return nil
		}
		if bareOn {
			if err := runBare(); err != nil {
				return err
			}
		}
		var rounds []round
		for i := range cfg.rounds {
			var rd round
			var err error
			if rd.bs, err = runBS(ctx); err != nil {
				return fmt.Errorf("batchsender on %s: %w", store, err)
			}
			if !cfg.skipRiver {
				if rd.rv, err = runRiver(ctx); err != nil {
					return fmt.Errorf("river on %s: %w", store, err)
				}
			}
			if bareOn {
				if err := runBare(); err != nil {
					return err
				}
				rd.bare = (bare[i] + bare[i+1]) / 2
			}
			rounds = append(rounds, rd)
			fmt.Printf("%s round %d: %s\n", store, i+1, rd)
		}
		r.report(store, rounds)
	}
	return nil
}

// round is one turn of each contestant (and the ceiling around them).
type round struct {
	bs, rv result
	bare   float64 // mean of the bare loops before and after; 0 if none
}

func (rd round) String() string {
	out := fmt.Sprintf("batchsender %.0f/s (machine %.0f%% busy)", rd.bs.deliverRate(), 100*rd.bs.cpu.busy)
	if rd.rv.n > 0 {
		out += fmt.Sprintf(", river %.0f/s (%.0f%% busy; %.2f×)", rd.rv.deliverRate(), 100*rd.rv.cpu.busy, rd.bs.deliverRate()/rd.rv.deliverRate())
	}
	if rd.bare > 0 {
		out += fmt.Sprintf(", bare loop %.0f/s (batchsender %.2f×)", rd.bare, rd.bs.deliverRate()/rd.bare)
	}
	return out
}

// median returns the median of f over the rounds.
func median(rounds []round, f func(round) float64) float64 {
	v := make([]float64, len(rounds))
	for i, rd := range rounds {
		v[i] = f(rd)
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// report prints a store's figures: medians over its rounds.
func (r *racer) report(store string, rounds []round) {
	med := func(f func(round) float64) float64 { return median(rounds, f) }
	cpuPerItem := func(f func(round) time.Duration) time.Duration {
		return time.Duration(med(func(rd round) float64 { return float64(f(rd)) / float64(r.cfg.n) })).Round(time.Microsecond)
	}
	fmt.Printf("%s (median of %d rounds):\n", store, len(rounds))
	fmt.Printf("  batchsender: deliver %8.0f items/s; enqueue %v; end to end %8.0f items/s\n",
		med(func(rd round) float64 { return rd.bs.deliverRate() }),
		time.Duration(med(func(rd round) float64 { return float64(rd.bs.enqueue) })).Round(time.Millisecond),
		med(func(rd round) float64 { return rd.bs.totalRate() }))
	bsCPU := fmt.Sprintf("batchsender %s (server %s, receiver %s",
		cpuPerItem(func(rd round) time.Duration { return rd.bs.cpu.total() }), cpuPerItem(func(rd round) time.Duration { return rd.bs.cpu.server }),
		cpuPerItem(func(rd round) time.Duration { return rd.bs.cpu.self }))
	if store == "postgres" {
		bsCPU += fmt.Sprintf(", postgres %s", cpuPerItem(func(rd round) time.Duration { return rd.bs.cpu.postgres }))
	}
	bsCPU += ")"

	if r.cfg.skipRiver {
		fmt.Printf("  CPU per item delivered: %s\n", bsCPU)
	} else {
		fmt.Printf("  river:       deliver %8.0f items/s; enqueue %v; end to end %8.0f items/s\n",
			med(func(rd round) float64 { return rd.rv.deliverRate() }),
			time.Duration(med(func(rd round) float64 { return float64(rd.rv.enqueue) })).Round(time.Millisecond),
			med(func(rd round) float64 { return rd.rv.totalRate() }))
		fmt.Printf("  batchsender/river: %.2f× delivering, %.2f× end to end\n",
			med(func(rd round) float64 { return rd.bs.deliverRate() / rd.rv.deliverRate() }),
			med(func(rd round) float64 { return rd.bs.totalRate() / rd.rv.totalRate() }))
		rvCPU := fmt.Sprintf("river %s (river+receiver %s", cpuPerItem(func(rd round) time.Duration { return rd.rv.cpu.total() }),
			cpuPerItem(func(rd round) time.Duration { return rd.rv.cpu.self }))
		if store == "postgres" {
			rvCPU += fmt.Sprintf(", postgres %s", cpuPerItem(func(rd round) time.Duration { return rd.rv.cpu.postgres }))
		}
		fmt.Printf("  CPU per item delivered: %s; %s); river/batchsender %.2f×\n", bsCPU, rvCPU,
			med(func(rd round) float64 { return float64(rd.rv.cpu.total()) / float64(max(rd.bs.cpu.total(), 1)) }))
	}
	if rounds[0].bare > 0 {
		fmt.Printf("  bare net/http loop: %8.0f requests/s; batchsender/bare %.2f×",
			med(func(rd round) float64 { return rd.bare }), med(func(rd round) float64 { return rd.bs.deliverRate() / rd.bare }))
		if !r.cfg.skipRiver {
			fmt.Printf(", river/bare %.2f×", med(func(rd round) float64 { return rd.rv.deliverRate() / rd.bare }))
		}
		fmt.Println()
	}
}

// buildBinary builds BatchSender's cmd/batchsender from the module this
// one replaces it with.
func buildBinary(ctx context.Context, dir string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "github.com/batchsender/batchsender").Output()
	if err != nil {
		return "", fmt.Errorf("finding the batchsender module: %w", err)
	}
	bin := filepath.Join(dir, "batchsender")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/batchsender")
	cmd.Dir = strings.TrimSpace(string(out))
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building batchsender: %w\n%s", err, b)
	}
	return bin, nil
}

// bare runs the bare net/http loop against the receiver and returns its
// requests per second.
func (r *racer) bare(ctx context.Context) (float64, error) {
	r.recv.Reset()
	logf("bare loop")
	t0 := readMachineTicks()
	d, err := benchmarks.BareLoop(ctx, r.recv.URL+"/hook", r.key, r.cfg.n, r.cfg.concurrency, r.cfg.pad)
	if err != nil {
		return 0, err
	}
	logf("bare loop: %.0f requests/s, machine %.0f%% busy", float64(r.cfg.n)/d.Seconds(), 100*readMachineTicks().busySince(t0))
	if err := r.check(r.cfg.n, false); err != nil {
		return 0, err
	}
	return float64(r.cfg.n) / d.Seconds(), nil
}

type racer struct {
	cfg    config
	recv   *e2e.Receiver
	secret string
	key    []byte
}

// payload is the body of webhook n, the same for every contestant.
func payload(dst []byte, n, pad int) []byte {
	dst = append(dst, `{"n":`...)
	dst = strconv.AppendInt(dst, int64(n), 10)
	dst = append(dst, `,"pad":"`...)
	for range pad {
		dst = append(dst, 'x')
	}
	return append(dst, `"}`...)
}

// check verifies what the receiver saw: n distinct webhook-ids, no bad
// signatures; duplicates only when allowed (never expected here).
func (r *racer) check(n int, _ bool) error {
	if bad, errs := r.recv.BadSignatures(); bad > 0 {
		return fmt.Errorf("receiver saw %d bad signatures: %v", bad, errs)
	}
	if d := r.recv.Distinct(); d != n {
		return fmt.Errorf("receiver saw %d distinct webhook-ids, want %d", d, n)
	}
	if dup := r.recv.Requests() - int64(n); dup != 0 {
		logf("  %d duplicate deliveries", dup)
	}
	return nil
}

// freshSchema creates a schema and returns a URL working in it and a drop
// function.
func freshSchema(ctx context.Context, base, prefix, appName string) (string, func(), error) {
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := prefix + hex.EncodeToString(b[:])
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		return "", nil, fmt.Errorf("connecting to PostgreSQL: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `CREATE SCHEMA `+schema); err != nil {
		return "", nil, err
	}
	drop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if conn, err := pgx.Connect(ctx, base); err == nil {
			_, _ = conn.Exec(ctx, `DROP SCHEMA `+schema+` CASCADE`)
			_ = conn.Close(ctx)
		}
	}
	u, err := url.Parse(base)
	if err != nil {
		drop()
		return "", nil, err
	}
	q := u.Query()
	q.Set("search_path", schema)
	// The application name finds the contestant's backends, for their CPU.
	q.Set("application_name", appName)
	u.RawQuery = q.Encode()
	return u.String(), drop, nil
}

// ---- BatchSender -----------------------------------------------------------

func (r *racer) batchsenderPG(ctx context.Context) (result, error) {
	dbURL, drop, err := freshSchema(ctx, r.cfg.pgURL, "race_bs_", "race_batchsender")
	if err != nil {
		return result{}, err
	}
	defer drop()
	return r.batchsender(ctx, "bs-pg", "race_batchsender", []string{"BATCHSENDER_DATABASE_URL=" + dbURL, "BATCHSENDER_SECRET_KEY=" + hex.EncodeToString(r.key)})
}

func (r *racer) batchsenderSQLite(ctx context.Context) (result, error) {
	return r.batchsender(ctx, "bs-sqlite", "", nil)
}

// batchsender runs the real binary with the extra environment and has it
// deliver N webhooks.
func (r *racer) batchsender(ctx context.Context, name, appName string, env []string) (result, error) {
	r.recv.Reset()
	addr, err := e2e.FreeAddr()
	if err != nil {
		return result{}, err
	}
	dir, err := os.MkdirTemp(r.cfg.workDir, name+"-") // fresh every round
	if err != nil {
		return result{}, err
	}
	srv := &e2e.Server{
		Bin: r.cfg.bin, DataDir: filepath.Join(dir, "data"), Addr: addr,
		Key:     "bsk_race" + hex.EncodeToString(r.key[:12]),
		LogPath: filepath.Join(dir, "server.log"),
		Env:     append([]string{"BATCHSENDER_ALLOW_PRIVATE_NETWORKS=true", "BATCHSENDER_LOG_LEVEL=warn"}, env...),
	}
	if err := srv.Start(ctx); err != nil {
		return result{}, err
	}
	defer srv.Stop(30 * time.Second)
	c := e2e.NewClient(srv.URL(), srv.Key)
	c.Poll = pollEvery
	defer c.Close()
	if _, err := c.CreateConnection(ctx, "hooks", r.secret, nil); err != nil {
		return result{}, err
	}
	b, err := c.CreateBatch(ctx, map[string]any{
		"module": "webhook", "connection": "hooks",
		"template": map[string]any{"url": r.recv.URL + "/hook"},
		"options":  map[string]any{"concurrency": r.cfg.concurrency},
	})
	if err != nil {
		return result{}, err
	}
	logf("%s: enqueueing %d", name, r.cfg.n)
	start := time.Now()
	pr, pw := io.Pipe()
	go func() {
		bw := bufio.NewWriterSize(pw, 256<<10)
		var buf []byte
		for i := range r.cfg.n {
			buf = append(buf[:0], `{"payload":`...)
			buf = payload(buf, i, r.cfg.pad)
			buf = append(buf, "}\n"...)
			if _, err := bw.Write(buf); err != nil {
				pw.CloseWithError(err)
				return
			}
		}
		pw.CloseWithError(bw.Flush())
	}()
	resp, err := c.UploadItems(ctx, b.ID, "application/x-ndjson", pr)
	if err != nil {
		return result{}, err
	}
	if resp.Status/100 != 2 {
		return result{}, fmt.Errorf("uploading: %s", resp)
	}
	res := result{n: r.cfg.n, enqueue: time.Since(start)}
	logf("%s: delivering", name)
	meter := r.startMeter(ctx, name, srv.PID(), appName)
	start = time.Now()
	if err := c.StartBatch(ctx, b.ID); err != nil {
		return res, err
	}
	last := time.Now()
	final, err := c.WaitBatch(ctx, b.ID, 30*time.Minute, func(b e2e.Batch) bool {
		if time.Since(last) > 5*time.Second {
			last = time.Now()
			logf("  ... %d/%d succeeded", b.Counts.Succeeded, r.cfg.n)
		}
		return b.Status == "completed" || b.Status == "cancelled" || b.Status == "failed"
	})
	res.deliver = time.Since(start)
	res.cpu = meter.stop(ctx)
	if err != nil {
		return res, err
	}
	if final.Counts.Succeeded != int64(r.cfg.n) {
		return res, fmt.Errorf("batch ended %s with %+v", final.Status, final.Counts)
	}
	return res, r.check(r.cfg.n, false)
}

// pollEvery is how often a contestant's completion is checked: often, so
// that the delivery clock stops within a few milliseconds of the end
// whoever runs.
const pollEvery = 20 * time.Millisecond

// ---- River -------------------------------------------------------------------

// hookArgs is one webhook job.
type hookArgs struct {
	URL     string          `json:"url"`
	Payload json.RawMessage `json:"payload"`
}

// Kind names the job kind.
func (hookArgs) Kind() string { return "webhook" }

// hookWorker does the signed POST, as BatchSender's webhook provider does.
type hookWorker struct {
	river.WorkerDefaults[hookArgs]
	key []byte
	hc  *http.Client
}

func (w *hookWorker) Work(ctx context.Context, job *river.Job[hookArgs]) error {
	id := "msg_river_" + strconv.FormatInt(job.ID, 10)
	ts := time.Now().Unix()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, job.Args.URL, strings.NewReader(string(job.Args.Payload)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("webhook-id", id)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(ts, 10))
	req.Header.Set("webhook-signature", e2e.Sign(w.key, id, ts, job.Args.Payload))
	resp, err := w.hc.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook answered %d", resp.StatusCode)
	}
	return nil
}

// riverConfig is River at its best for this work: many workers, fetching
// as soon as a slot frees, no retention work during the run.
func (r *racer) riverConfig(hc *http.Client) *river.Config {
	workers := river.NewWorkers()
	river.AddWorker(workers, &hookWorker{key: r.key, hc: hc})
	return &river.Config{
		Logger:            slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: r.cfg.riverWorkers}},
		Workers:           workers,
		FetchCooldown:     river.FetchCooldownMin,
		FetchPollInterval: 50 * time.Millisecond,
	}
}

func (r *racer) httpClient() *http.Client {
	n := r.cfg.riverWorkers
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConns: n, MaxIdleConnsPerHost: n, MaxConnsPerHost: n}}
}

func (r *racer) jobs() []river.InsertManyParams {
	params := make([]river.InsertManyParams, r.cfg.n)
	for i := range params {
		params[i] = river.InsertManyParams{Args: hookArgs{URL: r.recv.URL + "/hook", Payload: payload(nil, i, r.cfg.pad)}}
	}
	return params
}

func (r *racer) riverPG(ctx context.Context) (result, error) {
	r.recv.Reset()
	dbURL, drop, err := freshSchema(ctx, r.cfg.pgURL, "race_river_", "race_river")
	if err != nil {
		return result{}, err
	}
	defer drop()
	pcfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return result{}, err
	}
	pcfg.MaxConns = 20
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return result{}, err
	}
	defer pool.Close()
	driver := riverpgxv5.New(pool)
	mig, err := rivermigrate.New(driver, nil)
	if err != nil {
		return result{}, err
	}
	if _, err := mig.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return result{}, fmt.Errorf("migrating: %w", err)
	}
	hc := r.httpClient()
	defer hc.CloseIdleConnections()
	client, err := river.NewClient(driver, r.riverConfig(hc))
	if err != nil {
		return result{}, err
	}
	return r.river(ctx, "river-pg", "race_river", client, func(ctx context.Context, q string) (int, error) {
		var n int
		err := pool.QueryRow(ctx, q).Scan(&n)
		return n, err
	})
}

func (r *racer) riverSQLite(ctx context.Context) (result, error) {
	r.recv.Reset()
	dir, err := os.MkdirTemp(r.cfg.workDir, "river-sqlite-") // fresh every round
	if err != nil {
		return result{}, err
	}
	path := filepath.Join(dir, "river.db")
	// The pragmas BatchSender's SQLite store uses: WAL, synchronous=NORMAL
	// (durable across a crash of the process), a busy timeout.
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)")
	if err != nil {
		return result{}, err
	}
	defer db.Close()
	// River's SQLite driver documents one connection as the way to avoid
	// SQLITE_BUSY errors.
	db.SetMaxOpenConns(1)
	driver := riversqlite.New(db)
	mig, err := rivermigrate.New(driver, nil)
	if err != nil {
		return result{}, err
	}
	if _, err := mig.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return result{}, fmt.Errorf("migrating: %w", err)
	}
	hc := r.httpClient()
	defer hc.CloseIdleConnections()
	client, err := river.NewClient(driver, r.riverConfig(hc))
	if err != nil {
		return result{}, err
	}
	// Progress is read on a connection of its own: in WAL mode a reader
	// neither waits for River's one connection nor holds it up.
	reader, err := sql.Open("sqlite", "file:"+path+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		return result{}, err
	}
	defer reader.Close()
	return r.river(ctx, "river-sqlite", "", client, func(ctx context.Context, q string) (int, error) {
		var n int
		err := reader.QueryRowContext(ctx, q).Scan(&n)
		return n, err
	})
}

// river enqueues N jobs with the client's workers stopped, then starts them
// and waits until the database holds N completed jobs. count runs a query
// that returns one number.
func (r *racer) river(ctx context.Context, name, appName string, client interface {
	InsertManyFast(context.Context, []river.InsertManyParams) (int, error)
	Start(context.Context) error
	Stop(context.Context) error
}, count func(ctx context.Context, query string) (int, error)) (result, error) {
	jobs := r.jobs()
	logf("%s: enqueueing %d", name, r.cfg.n)
	start := time.Now()
	const chunk = 10_000
	for i := 0; i < len(jobs); i += chunk {
		if _, err := client.InsertManyFast(ctx, jobs[i:min(i+chunk, len(jobs))]); err != nil {
			return result{}, fmt.Errorf("inserting: %w", err)
		}
	}
	res := result{n: r.cfg.n, enqueue: time.Since(start)}
	logf("%s: delivering", name)
	meter := r.startMeter(ctx, name, 0, appName)
	start = time.Now()
	if err := client.Start(ctx); err != nil {
		return res, err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = client.Stop(sctx)
	}()
	// The frequent check asks whether any job is left unfinished, which
	// River's state index answers at once, rather than counting the
	// completed ones, which reads them all; the count comes at the end.
	const (
		unfinished = `SELECT count(*) FROM (SELECT 1 FROM river_job
			WHERE state IN ('available', 'pending', 'retryable', 'running', 'scheduled') LIMIT 1) x`
		completed = `SELECT count(*) FROM river_job WHERE state = 'completed'`
	)
	last := time.Now()
	for {
		left, err := count(ctx, unfinished)
		if err != nil {
			return res, err
		}
		if left == 0 {
			break
		}
		if time.Since(last) > 5*time.Second {
			last = time.Now()
			n, _ := count(ctx, completed)
			logf("  ... %d/%d completed", n, r.cfg.n)
		}
		if time.Since(start) > 30*time.Minute {
			return res, errors.New("not done after 30 minutes")
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(pollEvery):
		}
	}
	res.deliver = time.Since(start)
	res.cpu = meter.stop(ctx)
	if n, err := count(ctx, completed); err != nil || n != r.cfg.n {
		return res, fmt.Errorf("%d of %d jobs completed (%v)", n, r.cfg.n, err)
	}
	return res, r.check(r.cfg.n, false)
}

// cpuUse is the CPU time a contestant's delivery took: its own process
// (BatchSender's server; none for River, which runs in this one), this
// process (the receiver, and River), and its PostgreSQL backends.
type cpuUse struct {
	server, self, postgres time.Duration
	// busy is the share of the machine's CPUs that were busy, whoever
	// used them: a contestant that leaves CPUs idle loses rate without
	// spending more CPU per item.
	busy float64
}

func (c cpuUse) total() time.Duration { return c.server + c.self + c.postgres }

// perItem formats a CPU time per item in microseconds.
// meter measures a cpuUse between startMeter and stop. CPU time depends
// far less on the other load of a shared machine than rates do.
type meter struct {
	r         *racer
	name      string // the contestant, for -timeline
	serverPID int
	appName   string
	server0   time.Duration
	self0     time.Duration
	pg0       map[int]time.Duration
	machine0  machineTicks
	ticks     chan []int64   // with -timeline: the receiver's request count every 100 ms
	busyTicks chan []float64 // with -timeline: the machine's busy share in each 100 ms
	quit      chan struct{}
}

func (r *racer) startMeter(ctx context.Context, name string, serverPID int, appName string) *meter {
	m := &meter{r: r, name: name, serverPID: serverPID, appName: appName, self0: benchmarks.SelfCPU()}
	if serverPID > 0 {
		m.server0, _ = benchmarks.ProcessCPU(serverPID)
	}
	m.pg0 = r.backendCPU(ctx, appName)
	m.machine0 = readMachineTicks()
	if r.cfg.timeline {
		m.ticks, m.quit = make(chan []int64, 1), make(chan struct{})
		m.busyTicks = make(chan []float64, 1)
		go func() {
			counts := []int64{r.recv.Requests()}
			var busy []float64
			t0 := readMachineTicks()
			t := time.NewTicker(100 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-m.quit:
					m.ticks <- append(counts, r.recv.Requests())
					m.busyTicks <- busy
					return
				case <-t.C:
					counts = append(counts, r.recv.Requests())
					t1 := readMachineTicks()
					busy = append(busy, t1.busySince(t0))
					t0 = t1
				}
			}
		}()
	}
	return m
}

func (m *meter) stop(ctx context.Context) cpuUse {
	var u cpuUse
	u.self = benchmarks.SelfCPU() - m.self0
	u.busy = readMachineTicks().busySince(m.machine0)
	if m.quit != nil {
		close(m.quit)
		counts := <-m.ticks
		var b strings.Builder
		for i := 1; i < len(counts); i++ {
			fmt.Fprintf(&b, " %d", counts[i]-counts[i-1])
		}
		fmt.Printf("  %s: requests per 100 ms:%s; the end was seen %v after the last request\n",
			m.name, b.String(), time.Since(m.r.recv.LastRequest()).Round(time.Millisecond))
		b.Reset()
		for _, v := range <-m.busyTicks {
			fmt.Fprintf(&b, " %.0f", 100*v)
		}
		fmt.Printf("  %s: machine %% busy per 100 ms (/proc/stat, coarse):%s\n", m.name, b.String())
	}
	if m.serverPID > 0 {
		if c, err := benchmarks.ProcessCPU(m.serverPID); err == nil {
			u.server = c - m.server0
		}
	}
	for pid, c := range m.r.backendCPU(ctx, m.appName) {
		u.postgres += c - m.pg0[pid] // a backend started meanwhile counts whole
	}
	return u
}

// machineTicks are the machine's busy and idle CPU ticks so far, from the
// first line of /proc/stat (zero where there is none).
type machineTicks struct{ busy, idle int64 }

func readMachineTicks() machineTicks {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return machineTicks{}
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 9 || f[0] != "cpu" {
		return machineTicks{}
	}
	var v [8]int64
	for i := range v {
		v[i], _ = strconv.ParseInt(f[i+1], 10, 64)
	}
	return machineTicks{busy: v[0] + v[1] + v[2] + v[5] + v[6] + v[7], idle: v[3] + v[4]}
}

// busySince returns the busy share of the CPU ticks since t0.
func (t machineTicks) busySince(t0 machineTicks) float64 {
	busy, idle := t.busy-t0.busy, t.idle-t0.idle
	if busy+idle <= 0 {
		return 0
	}
	return float64(busy) / float64(busy+idle)
}

// backendCPU returns the CPU time so far of each PostgreSQL backend whose
// application_name is appName (none when appName is empty).
func (r *racer) backendCPU(ctx context.Context, appName string) map[int]time.Duration {
	out := map[int]time.Duration{}
	if appName == "" {
		return out
	}
	conn, err := pgx.Connect(ctx, r.cfg.pgURL)
	if err != nil {
		return out
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE application_name = $1`, appName)
	if err != nil {
		return out
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return out
	}
	for _, pid := range pids {
		if c, err := benchmarks.ProcessCPU(int(pid)); err == nil {
			out[int(pid)] = c
		}
	}
	return out
}
