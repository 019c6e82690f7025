package remote

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batchsender/batchsender/sdk"
	"github.com/batchsender/batchsender/sdk/sdktest"
)

// pythonModule is examples/remote-python/module.py running as a child
// process on a loopback port.
type pythonModule struct {
	base string // http://127.0.0.1:port
	next atomic.Int64
}

// lockedBuffer collects a child's output while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string { b.mu.Lock(); defer b.mu.Unlock(); return b.buf.String() }

// startPythonModule starts the example module. Without python3 the test
// fails in CI (CI=true) and is skipped elsewhere.
func startPythonModule(t *testing.T) *pythonModule {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("python3 is required in CI to run the Python example module: %v", err)
		}
		t.Skipf("python3 not found (%v); CI runs this test", err)
	}
	script, err := filepath.Abs(filepath.Join("..", "examples", "remote-python", "module.py"))
	if err != nil {
		t.Fatal(err)
	}
	// Port 0: the module binds a free port and prints it, so no other
	// process can take the port between choosing and binding it.
	cmd := exec.Command(py, script, "--host", "127.0.0.1", "--port", "0", "--quiet", "--test-control")
	cmd.Env = append(os.Environ(), "BATCHSENDER_SIGNING_SECRET="+testSecret)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", script, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	listening := regexp.MustCompile(`listening on http://127\.0\.0\.1:([0-9]+)\n`)
	var port string
	waitFor(t, 10*time.Second, func() bool {
		m := listening.FindStringSubmatch(out.String())
		if m != nil {
			port = m[1]
		}
		return m != nil
	}, func() string { return "the Python module did not start; its output: " + out.String() })
	return &pythonModule{base: "http://127.0.0.1:" + port}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, cond func() bool, why func() string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(why())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pyFake is one conformance scenario's base path on the Python module,
// switched through its test-control endpoints.
type pyFake struct {
	t    *testing.T
	base string // module URL for this scenario
}

func (m *pythonModule) newFake(t *testing.T) sdktest.Fake {
	return &pyFake{t: t, base: fmt.Sprintf("%s/s%d", m.base, m.next.Add(1))}
}

func (f *pyFake) Set(b sdktest.Behaviour) {
	body, _ := json.Marshal(map[string]any{
		"mode": b.Mode.String(), "retry_after": int(b.RetryAfter / time.Second), "reject_keys": b.RejectKeys,
	})
	resp, err := http.Post(f.base+"/_test/behaviour", "application/json", bytes.NewReader(body))
	if err != nil {
		f.t.Fatalf("setting the Python module's behaviour: %v", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		f.t.Fatalf("setting the Python module's behaviour: %s", resp.Status)
	}
}

func (f *pyFake) Calls() []sdktest.Call {
	resp, err := http.Get(f.base + "/_test/calls")
	if err != nil {
		f.t.Fatalf("reading the Python module's calls: %v", err)
	}
	defer resp.Body.Close()
	var out struct {
		Calls []struct {
			Items int      `json:"items"`
			Keys  []string `json:"keys"`
		} `json:"calls"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		f.t.Fatalf("reading the Python module's calls: %v", err)
	}
	calls := make([]sdktest.Call, len(out.Calls))
	for i, c := range out.Calls {
		calls[i] = sdktest.Call{Items: c.Items, Keys: c.Keys}
	}
	return calls
}

func pythonConnection(fake sdktest.Fake) (json.RawMessage, json.RawMessage) {
	cfg, _ := json.Marshal(map[string]any{"url": fake.(*pyFake).base, "timeout": "2s"})
	sec, _ := json.Marshal(Secrets{SigningSecret: testSecret})
	return cfg, sec
}

func TestConformancePythonModule(t *testing.T) {
	t.Parallel()
	m := startPythonModule(t)
	sdktest.Run(t, sdktest.Harness{
		New:        func() sdk.Provider { return new(Provider) },
		NewFake:    m.newFake,
		Connection: pythonConnection,
		Template:   json.RawMessage(`{"prefix":"[kit] "}`),
		Item: func(i int) json.RawMessage {
			return json.RawMessage(fmt.Sprintf(`{"to":"+4915100000%03d","text":"hello %d"}`, i, i))
		},
		// The module's /validate refuses it: the local schema check
		// cannot, as the type of "fail" is right.
		InvalidItem:     json.RawMessage(`{"to":"+49151","text":"x","fail":"sometimes"}`),
		Secrets:         []string{testSecret, testSecret[len("whsec_"):]},
		IdempotencyKeys: true,
		RetryAfter:      true,
		Timeout:         2 * time.Second,
	})
}

// TestPythonModuleExample checks the example's own behaviour: items that
// ask to fail do, a repeated item is not sent twice, the template is
// checked, and an unsigned request is refused.
func TestPythonModuleExample(t *testing.T) {
	t.Parallel()
	m := startPythonModule(t)
	fake := m.newFake(t)
	cfg, sec := pythonConnection(fake)
	p := new(Provider)
	if err := p.Provision(context.Background(), sdk.Env{Config: cfg, Secrets: sec, AllowPrivateNetworks: true}); err != nil {
		t.Fatalf("Provision: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	if got := p.Module(); got.ID != "sms.console" || got.MaxChunk != 250 || !got.Validate || !got.Preview {
		t.Errorf("module info %+v", got)
	}
	if _, err := p.Compile(json.RawMessage(`{"prefix":5}`)); err == nil || err.Error() != "template: prefix: must be a string" {
		t.Errorf("Compile with a bad prefix: %v", err)
	}
	s, err := p.Compile(json.RawMessage(`{"prefix":"Hi: "}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ValidateItem(json.RawMessage(`{"to":"+49151","text":""}`)); err == nil || err.Error() != "text: required" {
		t.Errorf("empty text: %v", err)
	}
	pv, ok := s.(sdk.Previewer)
	if !ok {
		t.Fatal("the sender of a module that previews is no sdk.Previewer")
	}
	if got, err := pv.Preview(json.RawMessage(`{"to":"+49151","text":"see you"}`)); err != nil || string(got) != `{"to": "+49151", "text": "Hi: see you", "segments": 1}` {
		t.Errorf("Preview = %s, %v", got, err)
	}
	if _, err := pv.Preview(json.RawMessage(`{"to":"+49151"}`)); err == nil || err.Error() != "text: required" {
		t.Errorf("Preview without text: %v", err)
	}
	items := []sdk.Item{
		{ID: "itm_1", Seq: 1, Attempt: 1, Data: json.RawMessage(`{"to":"+1","text":"` + strings.Repeat("x", 200) + `"}`)},
		{ID: "itm_2", Seq: 2, Attempt: 1, Data: json.RawMessage(`{"to":"+2","text":"b","fail":"retry"}`)},
		{ID: "itm_3", Seq: 3, Attempt: 1, Data: json.RawMessage(`{"to":"+3","text":"c","fail":"permanent"}`)},
		{ID: "itm_4", Seq: 4, Attempt: 1, Data: json.RawMessage(`{"to":"+4","text":"d","fail":"unknown"}`)},
	}
	res := s.Send(context.Background(), items)
	want := []sdk.Outcome{sdk.OutcomeOK, sdk.OutcomeRetry, sdk.OutcomePermanent, sdk.OutcomeUnknown}
	for i, r := range res {
		if r.Outcome != want[i] {
			t.Errorf("item %d: %v (%v), want %v", i, r.Outcome, r.Err, want[i])
		}
	}
	if res[0].Units != 2 || res[1].RetryAfter != 30*time.Second {
		t.Errorf("units %d (want 2 segments), retry after %v (want 30s)", res[0].Units, res[1].RetryAfter)
	}
	again := s.Send(context.Background(), items[:1])
	if again[0].MessageID != res[0].MessageID {
		t.Errorf("a repeated item got message ID %q, first %q: the module must de-duplicate by item ID", again[0].MessageID, res[0].MessageID)
	}
	resp, err := http.Post(fake.(*pyFake).base+"/send", "application/json", strings.NewReader(`{"template":{},"items":[]}`))
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("unsigned /send answered %s, want 401", resp.Status)
	}
}
