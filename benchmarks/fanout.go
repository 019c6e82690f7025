// Package benchmarks measures BatchSender from the outside: it runs the real
// binary (SQLite, every result durable) against a loopback receiver that
// verifies every signature, and measures a bare net/http client loop against
// the same receiver as the ceiling.
//
// Nothing here runs under `go test ./...`: the measurements are in
// Benchmark functions (run with -bench) and in the program cmd/fanout.
// See docs/performance.md for how to run them and the figures measured.
package benchmarks

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/batchsender/batchsender/e2e"
)

// Config sizes one run. Zero values mean the defaults in parentheses.
type Config struct {
	Bin         string // batchsender binary (built into WorkDir when empty)
	WorkDir     string // data directories and logs (required)
	Items       int    // items of the fan-out batch (100,000)
	Concurrency int    // batch concurrency and bare-loop workers (64)
	PayloadPad  int    // bytes of padding in each payload (100)
	Logf        func(format string, args ...any)
}

func (c Config) withDefaults() Config {
	if c.Items == 0 {
		c.Items = 100_000
	}
	if c.Concurrency == 0 {
		c.Concurrency = 64
	}
	if c.PayloadPad == 0 {
		c.PayloadPad = 100
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
	return c
}

// FanoutResult holds the figures of one fan-out run.
type FanoutResult struct {
	Items       int
	Concurrency int
	BodyBytes   int
	Elapsed     time.Duration // start → completed, every result durable
	ItemsPerSec float64
	BareElapsed time.Duration
	BarePerSec  float64
	Ratio       float64 // ItemsPerSec / BarePerSec
	PeakRSS     int64   // VmHWM of the server process, bytes
	// CPU time per item, which depends far less on other load on the
	// machine than the rates do: the server's during the send, this
	// process's (the receiver) during the send, and this process's (bare
	// client and receiver together) during the bare loop.
	ServerCPUPerItem   time.Duration
	ReceiverCPUPerItem time.Duration
	BareCPUPerItem     time.Duration
	Requests           int64 // requests the receiver got from the server
	Duplicates         int64 // requests beyond one per item
	BadSignatures      int64
	SucceededItems     int64
}

// String formats the result for humans.
func (r FanoutResult) String() string {
	return fmt.Sprintf("fanout: %d items, concurrency %d, body %d B\n"+
		"  batchsender: %.0f items/s (%v, every result durable; %d requests, %d duplicates, %d bad signatures)\n"+
		"  bare loop:   %.0f requests/s (%v)\n"+
		"  ratio:       %.2f\n"+
		"  server peak RSS: %.1f MB\n"+
		"  CPU per item: server %v, receiver %v; bare loop client+receiver %v per request",
		r.Items, r.Concurrency, r.BodyBytes,
		r.ItemsPerSec, r.Elapsed.Round(time.Millisecond), r.Requests, r.Duplicates, r.BadSignatures,
		r.BarePerSec, r.BareElapsed.Round(time.Millisecond), r.Ratio, float64(r.PeakRSS)/1e6,
		r.ServerCPUPerItem, r.ReceiverCPUPerItem, r.BareCPUPerItem)
}

// IngestResult holds the figures of one ingest-and-send run.
type IngestResult struct {
	Rows          int
	IngestElapsed time.Duration
	RowsPerSec    float64
	IngestRSS     int64         // VmHWM after the upload
	IngestCPU     time.Duration // server CPU time spent on the upload
	SendCPU       time.Duration // server CPU time spent sending
	SendElapsed   time.Duration
	ItemsPerSec   float64
	PeakRSS       int64 // VmHWM after every item was sent
}

// String formats the result for humans.
func (r IngestResult) String() string {
	return fmt.Sprintf("ingest+send: %d CSV rows\n"+
		"  ingest: %.0f rows/s (%v; server CPU %v, %v per row), peak RSS after ingest %.1f MB\n"+
		"  send:   %.0f items/s (%v; server CPU %v, %v per item), peak RSS after sending %.1f MB",
		r.Rows, r.RowsPerSec, r.IngestElapsed.Round(time.Millisecond), r.IngestCPU, perItem(r.IngestCPU, r.Rows), float64(r.IngestRSS)/1e6,
		r.ItemsPerSec, r.SendElapsed.Round(time.Millisecond), r.SendCPU, perItem(r.SendCPU, r.Rows), float64(r.PeakRSS)/1e6)
}

// harness is one server with a receiver and a connection.
type harness struct {
	cfg    Config
	secret string
	key    []byte
	recv   *e2e.Receiver
	srv    *e2e.Server
	client *e2e.Client
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// Binary returns cfg.Bin, building the binary into cfg.WorkDir when empty.
func Binary(ctx context.Context, cfg Config) (string, error) {
	if cfg.Bin != "" {
		return cfg.Bin, nil
	}
	return e2e.BuildBinary(ctx, cfg.WorkDir)
}

func newHarness(ctx context.Context, cfg Config, name string) (*harness, error) {
	bin, err := Binary(ctx, cfg)
	if err != nil {
		return nil, err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return nil, err
	}
	h := &harness{cfg: cfg, secret: "whsec_" + base64.StdEncoding.EncodeToString(raw), key: raw}
	h.recv, err = e2e.NewReceiver(e2e.ReceiverOptions{Secret: h.secret})
	if err != nil {
		return nil, err
	}
	addr, err := e2e.FreeAddr()
	if err != nil {
		h.close()
		return nil, err
	}
	h.srv = &e2e.Server{
		Bin:     bin,
		DataDir: filepath.Join(cfg.WorkDir, name, "data"),
		Addr:    addr,
		Key:     "bsk_bench" + randomHex(24),
		LogPath: filepath.Join(cfg.WorkDir, name+".log"),
		Env:     []string{"BATCHSENDER_ALLOW_PRIVATE_NETWORKS=true", "BATCHSENDER_LOG_LEVEL=warn"},
	}
	if err := h.srv.Start(ctx); err != nil {
		h.close()
		return nil, err
	}
	h.client = e2e.NewClient(h.srv.URL(), h.srv.Key)
	h.client.Poll = 20 * time.Millisecond // the clock stops close to the batch's end
	if _, err := h.client.CreateConnection(ctx, "hooks", h.secret, nil); err != nil {
		h.close()
		return nil, err
	}
	return h, nil
}

func (h *harness) close() {
	if h.client != nil {
		h.client.Close()
	}
	if h.srv != nil {
		h.srv.Stop(15 * time.Second)
	}
	if h.recv != nil {
		h.recv.Close()
	}
}

// payload returns the body of item n: the same shape and size for the
// server's items and the bare loop's requests.
func payload(dst []byte, n, pad int) []byte {
	dst = append(dst, `{"n":`...)
	dst = strconv.AppendInt(dst, int64(n), 10)
	dst = append(dst, `,"pad":"`...)
	for range pad {
		dst = append(dst, 'x')
	}
	return append(dst, `"}`...)
}

func (h *harness) draft(ctx context.Context) (string, error) {
	b, err := h.client.CreateBatch(ctx, map[string]any{
		"module":     "webhook",
		"connection": "hooks",
		"template":   map[string]any{"url": h.recv.URL + "/hook"},
		"options":    map[string]any{"concurrency": h.cfg.Concurrency},
	})
	if err != nil {
		return "", err
	}
	return b.ID, nil
}

func (h *harness) uploadNDJSON(ctx context.Context, id string, n int) error {
	pr, pw := io.Pipe()
	go func() {
		bw := bufio.NewWriterSize(pw, 256<<10)
		var buf []byte
		for i := range n {
			buf = append(buf[:0], `{"payload":`...)
			buf = payload(buf, i, h.cfg.PayloadPad)
			buf = append(buf, "}\n"...)
			if _, err := bw.Write(buf); err != nil {
				pw.CloseWithError(err)
				return
			}
		}
		pw.CloseWithError(bw.Flush())
	}()
	resp, err := h.client.UploadItems(ctx, id, "application/x-ndjson", pr)
	if err != nil {
		return err
	}
	if resp.Status/100 != 2 {
		return fmt.Errorf("uploading items: %s", resp)
	}
	return nil
}

func (h *harness) uploadCSV(ctx context.Context, id string, n int) error {
	pr, pw := io.Pipe()
	go func() {
		bw := bufio.NewWriterSize(pw, 256<<10)
		bw.WriteString("payload.n,payload.name,payload.email\n")
		var buf []byte
		for i := range n {
			buf = strconv.AppendInt(buf[:0], int64(i), 10)
			buf = append(buf, ",Customer "...)
			buf = strconv.AppendInt(buf, int64(i), 10)
			buf = append(buf, ",customer"...)
			buf = strconv.AppendInt(buf, int64(i), 10)
			buf = append(buf, "@example.com\n"...)
			if _, err := bw.Write(buf); err != nil {
				pw.CloseWithError(err)
				return
			}
		}
		pw.CloseWithError(bw.Flush())
	}()
	resp, err := h.client.UploadItems(ctx, id, "text/csv", pr)
	if err != nil {
		return err
	}
	if resp.Status/100 != 2 {
		return fmt.Errorf("uploading CSV: %s", resp)
	}
	return nil
}

// send starts the draft and waits until it completes with every item
// succeeded.
func (h *harness) send(ctx context.Context, id string, n int) (time.Duration, error) {
	start := time.Now()
	if err := h.client.StartBatch(ctx, id); err != nil {
		return 0, err
	}
	last := time.Now()
	b, err := h.client.WaitBatch(ctx, id, 30*time.Minute, func(b e2e.Batch) bool {
		if time.Since(last) > 5*time.Second {
			last = time.Now()
			h.cfg.Logf("  ... %d/%d succeeded, %d in flight", b.Counts.Succeeded, n, b.Counts.InFlight)
		}
		return b.Status == "completed" || b.Status == "cancelled"
	})
	elapsed := time.Since(start)
	if err != nil {
		return elapsed, err
	}
	if b.Counts.Succeeded != int64(n) {
		return elapsed, fmt.Errorf("batch %s ended %q with counts %+v, want %d succeeded", id, b.Status, b.Counts, n)
	}
	return elapsed, nil
}

// RunFanout measures the fan-out of cfg.Items webhooks through the server
// and then the bare loop against the same receiver.
func RunFanout(ctx context.Context, cfg Config) (FanoutResult, error) {
	cfg = cfg.withDefaults()
	h, err := newHarness(ctx, cfg, "fanout")
	if err != nil {
		return FanoutResult{}, err
	}
	defer h.close()
	res := FanoutResult{Items: cfg.Items, Concurrency: cfg.Concurrency, BodyBytes: len(payload(nil, cfg.Items/2, cfg.PayloadPad))}

	id, err := h.draft(ctx)
	if err != nil {
		return res, err
	}
	if err := h.uploadNDJSON(ctx, id, cfg.Items); err != nil {
		return res, err
	}
	cfg.Logf("fanout: %d items uploaded; sending", cfg.Items)
	srvCPU0, err := ProcessCPU(h.srv.PID())
	if err != nil {
		return res, err
	}
	selfCPU0 := SelfCPU()
	res.Elapsed, err = h.send(ctx, id, cfg.Items)
	if err != nil {
		return res, fmt.Errorf("%w\nserver log tail:\n%s", err, tail(h.srv.Log(), 3000))
	}
	res.ItemsPerSec = float64(cfg.Items) / res.Elapsed.Seconds()
	res.ReceiverCPUPerItem = perItem(SelfCPU()-selfCPU0, cfg.Items)
	srvCPU1, err := ProcessCPU(h.srv.PID())
	if err != nil {
		return res, err
	}
	res.ServerCPUPerItem = perItem(srvCPU1-srvCPU0, cfg.Items)
	res.PeakRSS, err = h.srv.PeakRSS()
	if err != nil {
		return res, err
	}
	res.Requests = h.recv.Requests()
	res.Duplicates = res.Requests - int64(h.recv.Distinct())
	res.BadSignatures, _ = h.recv.BadSignatures()
	res.SucceededItems = int64(cfg.Items)
	if res.BadSignatures != 0 {
		return res, fmt.Errorf("receiver saw %d bad signatures", res.BadSignatures)
	}

	// The server is idle now (its batch is done); the bare loop gets the
	// machine to itself apart from that idle process.
	h.recv.Reset()
	cfg.Logf("fanout: bare loop")
	selfCPU0 = SelfCPU()
	res.BareElapsed, err = BareLoop(ctx, h.recv.URL+"/hook", h.key, cfg.Items, cfg.Concurrency, cfg.PayloadPad)
	if err != nil {
		return res, err
	}
	res.BareCPUPerItem = perItem(SelfCPU()-selfCPU0, cfg.Items)
	res.BarePerSec = float64(cfg.Items) / res.BareElapsed.Seconds()
	res.Ratio = res.ItemsPerSec / res.BarePerSec
	if bad, _ := h.recv.BadSignatures(); bad != 0 {
		return res, fmt.Errorf("bare loop: receiver saw %d bad signatures", bad)
	}
	return res, nil
}

// BareLoop posts n signed payloads to url with concurrency workers over
// keep-alive connections, as the ceiling any sender on this machine can
// reach against the receiver, and returns the time it took.
func BareLoop(ctx context.Context, url string, key []byte, n, concurrency, pad int) (time.Duration, error) {
	tr := &http.Transport{MaxIdleConns: concurrency, MaxIdleConnsPerHost: concurrency, MaxConnsPerHost: concurrency}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var body []byte
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				body = payload(body[:0], i, pad)
				id := "msg_bare" + strconv.Itoa(i)
				ts := time.Now().Unix()
				req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("webhook-id", id)
				req.Header.Set("webhook-timestamp", strconv.FormatInt(ts, 10))
				req.Header.Set("webhook-signature", e2e.Sign(key, id, ts, body))
				resp, err := hc.Do(req)
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					once.Do(func() { firstErr = fmt.Errorf("bare loop: status %d", resp.StatusCode) })
					return
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(start), firstErr
}

// RunIngestAndSend uploads rows CSV rows into a draft on a fresh server,
// then sends them all, and reports ingest speed and the server's peak RSS.
func RunIngestAndSend(ctx context.Context, cfg Config, rows int) (IngestResult, error) {
	cfg = cfg.withDefaults()
	h, err := newHarness(ctx, cfg, "ingest-"+strconv.Itoa(rows))
	if err != nil {
		return IngestResult{}, err
	}
	defer h.close()
	res := IngestResult{Rows: rows}
	id, err := h.draft(ctx)
	if err != nil {
		return res, err
	}
	cpu0, err := ProcessCPU(h.srv.PID())
	if err != nil {
		return res, err
	}
	start := time.Now()
	if err := h.uploadCSV(ctx, id, rows); err != nil {
		return res, err
	}
	res.IngestElapsed = time.Since(start)
	cpu1, err := ProcessCPU(h.srv.PID())
	if err != nil {
		return res, err
	}
	res.IngestCPU = cpu1 - cpu0
	res.RowsPerSec = float64(rows) / res.IngestElapsed.Seconds()
	if res.IngestRSS, err = h.srv.PeakRSS(); err != nil {
		return res, err
	}
	cfg.Logf("ingest: %d rows in %v; sending", rows, res.IngestElapsed.Round(time.Millisecond))
	res.SendElapsed, err = h.send(ctx, id, rows)
	if err != nil {
		return res, fmt.Errorf("%w\nserver log tail:\n%s", err, tail(h.srv.Log(), 3000))
	}
	res.ItemsPerSec = float64(rows) / res.SendElapsed.Seconds()
	cpu2, err := ProcessCPU(h.srv.PID())
	if err != nil {
		return res, err
	}
	res.SendCPU = cpu2 - cpu1
	if res.PeakRSS, err = h.srv.PeakRSS(); err != nil {
		return res, err
	}
	if bad, _ := h.recv.BadSignatures(); bad != 0 {
		return res, fmt.Errorf("receiver saw %d bad signatures", bad)
	}
	return res, nil
}

func perItem(d time.Duration, n int) time.Duration {
	if n == 0 {
		return 0
	}
	return (d / time.Duration(n)).Round(100 * time.Nanosecond)
}

// ProcessCPU returns the user+system CPU time a process has used so far,
// from /proc/PID/stat (in clock ticks of 1/100 s, the Linux USER_HZ).
func ProcessCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("reading process CPU time: %w", err)
	}
	// The command name (field 2) may hold spaces; fields after it are
	// counted from its closing parenthesis: utime and stime are the 12th
	// and 13th there.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// SelfCPU returns the user+system CPU time this process has used so far.
func SelfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
