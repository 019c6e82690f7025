package cluster

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/batchsender/batchsender/e2e"
	"github.com/batchsender/batchsender/internal/pgtest"
)

// bin is the batchsender binary, built once for all tests.
var bin string

func testURL() string { return pgtest.URL() }

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	conn, err := pgx.Connect(ctx, testURL())
	if err == nil {
		err = conn.Ping(ctx)
		_ = conn.Close(ctx)
	}
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: PostgreSQL is unreachable at %s (set BATCHSENDER_TEST_DATABASE_URL, or start it with bash .ci/run): %v\n", testURL(), err)
		return 1
	}
	dir, err := os.MkdirTemp("", "batchsender-cluster-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Minute)
	bin, err = e2e.BuildBinary(ctx, dir)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "FAIL: leaked goroutines:", err)
			return 1
		}
	}
	return code
}

// newSchemaURL returns a database URL in a fresh schema, dropped when the
// test ends.
func newSchemaURL(t *testing.T) string {
	t.Helper()
	return pgtest.SchemaURL(t, "bscluster_")
}

// Settings every node of a test cluster shares.
const (
	secretsKey   = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
	bootstrapKey = "bsk_cluster_test_bootstrap_key_0123"
	// signingSecret is the webhook connection's Standard Webhooks secret.
	signingSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
)

// node is one batchsender process of a test cluster.
type node struct {
	Name string
	Role string // serve or worker
	Addr string // API address (serve) or health address (worker)

	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
	mu      sync.Mutex
	killed  bool
}

// startNode starts `batchsender <role>` on databaseURL, waits until its
// /readyz answers 200, and stops it with SIGTERM at the end of the test.
func startNode(t *testing.T, name, role, databaseURL string, extra ...string) *node {
	t.Helper()
	addr, err := e2e.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	n := &node{Name: name, Role: role, Addr: addr, logPath: t.TempDir() + "/" + name + ".log", exited: make(chan struct{})}
	args := []string{role}
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + os.Getenv("HOME"),
		"BATCHSENDER_DATABASE_URL=" + databaseURL,
		"BATCHSENDER_SECRET_KEY=" + secretsKey,
		"BATCHSENDER_DATA_DIR=" + t.TempDir(),
		"BATCHSENDER_ALLOW_PRIVATE_NETWORKS=true",
		"BATCHSENDER_LOG_LEVEL=info",
		// Short leases: a killed node's items are sent elsewhere within
		// seconds, not the default minute.
		"BATCHSENDER_LEASE_DURATION=4s",
	}
	if role == "serve" {
		env = append(env, "BATCHSENDER_ADDR="+addr, "BATCHSENDER_BOOTSTRAP_KEY="+bootstrapKey)
	} else {
		args = append(args, "--health-addr", addr)
	}
	env = append(env, extra...)
	logf, err := os.Create(n.logPath)
	if err != nil {
		t.Fatal(err)
	}
	n.cmd = exec.Command(bin, args...)
	n.cmd.Env = env
	n.cmd.Stdout, n.cmd.Stderr = logf, logf
	if err := n.cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		_ = n.cmd.Wait()
		logf.Close()
		close(n.exited)
	}()
	t.Cleanup(func() { n.stop(t) })
	waitFor(t, 60*time.Second, name+" ready", func() bool {
		select {
		case <-n.exited:
			t.Fatalf("%s exited before ready:\n%s", name, n.Log())
		default:
		}
		code, _, err := get(n.URL() + "/readyz")
		return err == nil && code == http.StatusOK
	})
	return n
}

// URL is the node's base URL.
func (n *node) URL() string { return "http://" + n.Addr }

// Log returns what the node wrote so far.
func (n *node) Log() string {
	b, _ := os.ReadFile(n.logPath)
	return string(b)
}

// Kill sends SIGKILL and waits until the process is gone.
func (n *node) Kill() {
	n.mu.Lock()
	n.killed = true
	n.mu.Unlock()
	_ = n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.exited
}

// stop sends SIGTERM and expects a clean exit within 30s.
func (n *node) stop(t *testing.T) {
	n.mu.Lock()
	killed := n.killed
	n.mu.Unlock()
	if killed {
		return
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
		if code := n.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("%s exited with %d:\n%s", n.Name, code, tail(n.Log()))
		}
	case <-time.After(30 * time.Second):
		_ = n.cmd.Process.Kill()
		<-n.exited
		t.Errorf("%s did not stop within 30s of SIGTERM", n.Name)
	}
}

var (
	leaderRE  = regexp.MustCompile(`(?m)^batchsender_leader ([01])$`)
	claimedRE = regexp.MustCompile(`(?m)^batchsender_engine_items_claimed_total (\d+)$`)
	claimsRE  = regexp.MustCompile(`(?m)^batchsender_engine_claims_total (\d+)$`)
)

// metric reads one value from the node's /metrics; -1 when unreadable.
func (n *node) metric(re *regexp.Regexp) int64 {
	code, body, err := get(n.URL() + "/metrics")
	if err != nil || code != http.StatusOK {
		return -1
	}
	m := re.FindStringSubmatch(body)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseInt(m[1], 10, 64)
	return v
}

// Leader reports the node's batchsender_leader gauge.
func (n *node) Leader() bool { return n.metric(leaderRE) == 1 }

// leaders returns the names of the nodes whose gauge reads 1.
func leaders(nodes ...*node) []string {
	var out []string
	for _, n := range nodes {
		if n.Leader() {
			out = append(out, n.Name)
		}
	}
	return out
}

var probe = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func get(u string) (int, string, error) {
	resp, err := probe.Get(u)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, err = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String(), err
}

// waitFor polls cond every 50ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func tail(s string) string {
	if len(s) > 6000 {
		return "...\n" + s[len(s)-6000:]
	}
	return s
}

// envInt reads a positive count from the environment, or def.
func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q is not a positive count", name, v)
	}
	return n
}

// webhookBatch creates the "hooks" connection (once per cluster) and a
// batch of n items to receiverURL with the options, started, and returns
// its ID. Items go up as NDJSON, as a large batch would.
func webhookBatch(t *testing.T, c *e2e.Client, receiverURL string, n int, options map[string]any) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := c.CreateConnection(ctx, "hooks", signingSecret, nil); err != nil && !strings.Contains(err.Error(), "409") {
		t.Fatal(err)
	}
	b, err := c.CreateBatch(ctx, map[string]any{
		"module": "webhook", "connection": "hooks",
		"template": map[string]any{"url": receiverURL + "/hook"},
		"options":  options,
	})
	if err != nil {
		t.Fatal(err)
	}
	var body bytes.Buffer
	for i := range n {
		fmt.Fprintf(&body, "{\"payload\":{\"n\":%d}}\n", i)
	}
	resp, err := c.UploadItems(ctx, b.ID, "application/x-ndjson", &body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status/100 != 2 {
		t.Fatalf("uploading items: %s", resp)
	}
	if err := c.StartBatch(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	return b.ID
}
