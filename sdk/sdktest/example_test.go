package sdktest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batchsender/batchsender/sdk"
	"github.com/batchsender/batchsender/sdk/sdktest"
)

// chat is a small batch-native HTTP provider, the kind docs/modules.md
// walks through: it posts up to 10 items per request with a bearer token
// and reads one result per item. bug breaks one rule, to prove that the
// kit notices.
type chat struct {
	bug    string
	client *http.Client
	url    string
	token  string
	log    func(msg string, args ...any)
}

func (c *chat) Info() sdk.Info {
	return sdk.Info{
		ID: "chat.example", Title: "Example chat", MaxChunk: 10, DefaultConcurrency: 2, BillableUnit: "message",
		ConfigSchema:  json.RawMessage(`{"type":"object","properties":{"url":{"type":"string"},"timeout":{"type":"string"}}}`),
		SecretsSchema: json.RawMessage(`{"type":"object","properties":{"token":{"type":"string"}}}`),
		ItemSchema:    json.RawMessage(`{"type":"object","required":["text"]}`),
	}
}

func (c *chat) Provision(ctx context.Context, env sdk.Env) error {
	var cfg struct {
		URL     string `json:"url"`
		Timeout string `json:"timeout"`
	}
	var sec struct {
		Token string `json:"token"`
	}
	if err := sdk.DecodeStrict(env.Config, &cfg); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if err := sdk.DecodeStrict(env.Secrets, &sec); err != nil {
		return fmt.Errorf("secrets: %w", err)
	}
	timeout, err := time.ParseDuration(cfg.Timeout)
	if err != nil {
		return fmt.Errorf("config.timeout: %w", err)
	}
	c.url, c.token = cfg.URL, sec.Token
	c.client = &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: env.Dialer}}
	c.log = env.Logger.Info
	return nil
}

func (c *chat) Compile(json.RawMessage) (sdk.Sender, error) { return c, nil }

func (c *chat) Close() error {
	c.client.CloseIdleConnections()
	return nil
}

func (c *chat) ValidateItem(data json.RawMessage) error {
	var v struct {
		Text string `json:"text"`
	}
	if err := json.Unmarshal(data, &v); err != nil || v.Text == "" {
		return errors.New("text: required")
	}
	return nil
}

type wireItem struct {
	ID   string          `json:"id"`
	Data json.RawMessage `json:"data"`
}

type wireResult struct {
	MessageID string `json:"message_id"`
	Error     string `json:"error"`
}

func (c *chat) Send(ctx context.Context, items []sdk.Item) []sdk.Result {
	res := make([]sdk.Result, len(items))
	all := func(r sdk.Result) []sdk.Result {
		for i := range res {
			res[i] = r
		}
		return res
	}
	body := make([]wireItem, len(items))
	for i, it := range items {
		body[i] = wireItem{ID: it.IdempotencyKey(), Data: it.Data}
		if c.bug == "no_key" {
			body[i].ID = strconv.Itoa(it.Attempt)
		}
	}
	raw, _ := json.Marshal(body)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(raw))
	if c.bug == "ignore_ctx" {
		req, _ = http.NewRequestWithContext(context.Background(), http.MethodPost, c.url, bytes.NewReader(raw))
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if c.bug == "log_secret" {
		c.log("sending", "auth", req.Header.Get("Authorization"))
	}
	resp, err := c.client.Do(req)
	if err != nil {
		// The request may have left: without an idempotency key this
		// would be Unknown; with one a retry is safe.
		return all(sdk.Retry(fmt.Errorf("posting chunk: %w", err)))
	}
	defer resp.Body.Close()
	text, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	status := func(r sdk.Result) sdk.Result {
		r.StatusCode, r.Response = resp.StatusCode, string(text)
		if c.bug == "secret_in_err" {
			r.Err = fmt.Errorf("failed with token %s", c.token)
		}
		return r
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests:
		d, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		if c.bug == "no_retry_after" {
			d = 0
		}
		return all(status(sdk.RetryAfter(time.Duration(d)*time.Second, errors.New("rate limited"))))
	case resp.StatusCode >= 500:
		return all(status(sdk.Retry(fmt.Errorf("server error %d", resp.StatusCode))))
	case resp.StatusCode >= 400:
		if c.bug == "4xx_retry" {
			return all(status(sdk.Retry(fmt.Errorf("client error %d", resp.StatusCode))))
		}
		return all(status(sdk.Permanent(fmt.Errorf("rejected %d", resp.StatusCode))))
	}
	var out []wireResult
	if err := json.Unmarshal(text, &out); err != nil || len(out) != len(items) {
		return all(status(sdk.Unknown(errors.New("unreadable answer"))))
	}
	for i, r := range out {
		if r.Error != "" {
			res[i] = status(sdk.Permanent(errors.New(r.Error)))
		} else {
			res[i] = sdk.OK(r.MessageID)
		}
	}
	if c.bug == "reverse" {
		for i, j := 0, len(res)-1; i < j; i, j = i+1, j-1 {
			res[i], res[j] = res[j], res[i]
		}
	}
	if c.bug == "drop_one" {
		res = res[:len(res)-1]
	}
	return res
}

// chatFake is the provider's fake server.
type chatFake struct {
	srv   *httptest.Server
	mu    sync.Mutex
	b     sdktest.Behaviour
	calls []sdktest.Call
	quit  chan struct{}
}

func newChatFake(t *testing.T) sdktest.Fake {
	f := &chatFake{quit: make(chan struct{})}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(func() {
		close(f.quit)
		f.srv.Close()
	})
	return f
}

func (f *chatFake) Set(b sdktest.Behaviour) { f.mu.Lock(); f.b = b; f.mu.Unlock() }

func (f *chatFake) Calls() []sdktest.Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]sdktest.Call(nil), f.calls...)
}

func (f *chatFake) serve(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer s3cr3t-token" {
		http.Error(w, "bad token", http.StatusUnauthorized)
		return
	}
	var items []wireItem
	if err := json.NewDecoder(r.Body).Decode(&items); err != nil {
		http.Error(w, "bad json", http.StatusBadRequest)
		return
	}
	call := sdktest.Call{Items: len(items)}
	for _, it := range items {
		call.Keys = append(call.Keys, it.ID)
	}
	f.mu.Lock()
	b := f.b
	f.calls = append(f.calls, call)
	f.mu.Unlock()
	switch b.Mode {
	case sdktest.RateLimit:
		w.Header().Set("Retry-After", strconv.Itoa(int(b.RetryAfter/time.Second)))
		http.Error(w, "slow down", http.StatusTooManyRequests)
	case sdktest.ServerError:
		http.Error(w, "oops", http.StatusServiceUnavailable)
	case sdktest.Reject:
		http.Error(w, "invalid", http.StatusUnprocessableEntity)
	case sdktest.Hang:
		select {
		case <-r.Context().Done():
		case <-f.quit:
		}
	default:
		out := make([]wireResult, len(items))
		for i, it := range items {
			out[i].MessageID = "msg-" + it.ID
			for _, k := range b.RejectKeys {
				if strings.Contains(it.ID, k) {
					out[i] = wireResult{Error: "recipient blocked"}
				}
			}
		}
		json.NewEncoder(w).Encode(out)
	}
}

func harness(bug string) sdktest.Harness {
	return sdktest.Harness{
		New:     func() sdk.Provider { return &chat{bug: bug} },
		NewFake: newChatFake,
		Connection: func(fake sdktest.Fake) (json.RawMessage, json.RawMessage) {
			cfg, _ := json.Marshal(map[string]string{"url": fake.(*chatFake).srv.URL, "timeout": "2s"})
			return cfg, json.RawMessage(`{"token":"s3cr3t-token"}`)
		},
		Template:        json.RawMessage(`{}`),
		Item:            func(i int) json.RawMessage { return json.RawMessage(fmt.Sprintf(`{"text":"hello %d"}`, i)) },
		InvalidItem:     json.RawMessage(`{"text":""}`),
		Secrets:         []string{"s3cr3t-token"},
		IdempotencyKeys: true,
		RetryAfter:      true,
		Timeout:         2 * time.Second,
	}
}

// TestExampleProviderPasses is how a provider's tests use the kit.
func TestExampleProviderPasses(t *testing.T) {
	t.Parallel()
	sdktest.Run(t, harness(""))
}

// TestKitCatchesBrokenProviders runs the kit against providers that each
// break one rule, in a child process (a failing testing.T cannot be
// observed in-process), and checks that the kit fails with the right check.
func TestKitCatchesBrokenProviders(t *testing.T) {
	t.Parallel()
	for bug, failing := range map[string]string{
		"no_key":         "IdempotencyKeyPassedOn",
		"ignore_ctx":     "CancelReturnsPromptly",
		"log_secret":     "log line contains a secret",
		"secret_in_err":  "Err contains a secret",
		"no_retry_after": "RetryAfter 0s",
		"4xx_retry":      "RejectIsPermanent",
		"reverse":        "PerItemRejectionKeepsOrder",
		"drop_one":       "results for",
	} {
		t.Run(bug, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(os.Args[0], "-test.run=^TestBrokenChild$", "-test.v")
			cmd.Env = append(os.Environ(), "SDKTEST_BUG="+bug)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("the kit passed a provider with bug %s:\n%s", bug, out)
			}
			if !strings.Contains(string(out), failing) {
				t.Errorf("bug %s: output does not mention %q:\n%s", bug, failing, out)
			}
		})
	}
}

// TestBrokenChild is the child process of TestKitCatchesBrokenProviders.
func TestBrokenChild(t *testing.T) {
	bug := os.Getenv("SDKTEST_BUG")
	if bug == "" {
		return // only meaningful as a child process
	}
	sdktest.Run(t, harness(bug))
}
