package engine_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/batchsender/batchsender/sdk"
)

// The test providers: in-process providers whose behaviour each test sets
// through a control, found by the "key" of the connection's config. Their
// Info is fixed per ID, as the SDK demands.
var testInfos = []sdk.Info{
	// One item per call, like webhook.http.
	{ID: "test.single", Title: "test single", MaxChunk: 1, DefaultConcurrency: 8, BillableUnit: "request"},
	// Ten items per call, like a bulk API.
	{ID: "test.chunked", Title: "test chunked", MaxChunk: 10, DefaultConcurrency: 4, BillableUnit: "record"},
	// A connection with limits of its own.
	{ID: "test.limited", Title: "test limited", MaxChunk: 1, DefaultRate: 50, DefaultConcurrency: 3, BillableUnit: "request"},
	// For the benchmark: many calls in flight.
	{ID: "test.noop", Title: "test no-op", MaxChunk: 1, DefaultConcurrency: 256, BillableUnit: "request"},
	{ID: "test.noopbulk", Title: "test no-op bulk", MaxChunk: 100, DefaultConcurrency: 16, BillableUnit: "record"},
}

func init() {
	for _, info := range testInfos {
		sdk.Register(sdk.Registration{ID: info.ID, New: func() sdk.Provider { return &testProvider{info: info} }})
	}
}

// controls maps a connection config key to the control of its provider.
var controls sync.Map

// control decides what the test provider does and records what it saw.
type control struct {
	// send decides the results of one call; nil means every item succeeds.
	send func(ctx context.Context, items []sdk.Item) []sdk.Result
	// compileErr, when set, is what Compile returns.
	compileErr error

	mu       sync.Mutex
	sends    []sendRecord // every finished call, in order of finishing
	inFlight atomic.Int64
	maxSeen  atomic.Int64
	calls    atomic.Int64
	items    atomic.Int64
}

// sendRecord is one Send call as the provider saw it.
type sendRecord struct {
	start, end time.Time
	items      []sdk.Item
}

func newControl() (key string, c *control) {
	c = &control{}
	key = fmt.Sprintf("ctl-%p", c)
	controls.Store(key, c)
	return key, c
}

// records returns a copy of the calls seen so far.
func (c *control) records() []sendRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]sendRecord(nil), c.sends...)
}

type testProvider struct {
	info sdk.Info
	ctl  *control
}

func (p *testProvider) Info() sdk.Info { return p.info }

func (p *testProvider) Provision(_ context.Context, env sdk.Env) error {
	var cfg struct {
		Key string `json:"key"`
	}
	if err := sdk.DecodeStrict(env.Config, &cfg); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	c, ok := controls.Load(cfg.Key)
	if !ok {
		return fmt.Errorf("config.key: no control %q", cfg.Key)
	}
	p.ctl = c.(*control)
	return nil
}

func (p *testProvider) Compile(json.RawMessage) (sdk.Sender, error) {
	if p.ctl.compileErr != nil {
		return nil, p.ctl.compileErr
	}
	return &testSender{p: p}, nil
}

func (p *testProvider) Close() error { return nil }

type testSender struct{ p *testProvider }

func (s *testSender) ValidateItem(json.RawMessage) error { return nil }

func (s *testSender) Send(ctx context.Context, items []sdk.Item) []sdk.Result {
	c := s.p.ctl
	if len(items) > s.p.info.MaxChunk {
		panic(fmt.Sprintf("test provider got %d items, more than MaxChunk %d", len(items), s.p.info.MaxChunk))
	}
	n := c.inFlight.Add(1)
	for {
		m := c.maxSeen.Load()
		if n <= m || c.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	c.calls.Add(1)
	c.items.Add(int64(len(items)))
	rec := sendRecord{start: time.Now(), items: append([]sdk.Item(nil), items...)}
	defer func() {
		c.inFlight.Add(-1)
		rec.end = time.Now()
		c.mu.Lock()
		c.sends = append(c.sends, rec)
		c.mu.Unlock()
	}()
	if c.send == nil {
		out := make([]sdk.Result, len(items))
		for i, it := range items {
			out[i] = sdk.OK("msg-" + it.ID)
		}
		return out
	}
	return c.send(ctx, items)
}

// each applies f to every item.
func each(f func(ctx context.Context, it sdk.Item) sdk.Result) func(context.Context, []sdk.Item) []sdk.Result {
	return func(ctx context.Context, items []sdk.Item) []sdk.Result {
		out := make([]sdk.Result, len(items))
		for i, it := range items {
			out[i] = f(ctx, it)
		}
		return out
	}
}

var errBoom = errors.New("receiver said 503")

var (
	_ sdk.Provider = (*testProvider)(nil)
	_ sdk.Sender   = (*testSender)(nil)
)
