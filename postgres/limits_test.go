package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/engine"
	"github.com/batchsender/batchsender/providers"
	"github.com/batchsender/batchsender/sdk"
)

// limitsProvider posts each item to the URL of its connection config. Its
// config also carries the generic rate_per_second and concurrency fields,
// which the engine reads itself.
type limitsProvider struct{ url string }

func init() {
	sdk.Register(sdk.Registration{ID: "test.pglimits", New: func() sdk.Provider { return new(limitsProvider) }})
}

func (p *limitsProvider) Info() sdk.Info {
	return sdk.Info{ID: "test.pglimits", Title: "test limits", MaxChunk: 1, DefaultConcurrency: 64, BillableUnit: "request"}
}

func (p *limitsProvider) Provision(_ context.Context, env sdk.Env) error {
	var cfg struct {
		URL string `json:"url"`
	}
	if err := json.Unmarshal(env.Config, &cfg); err != nil {
		return err
	}
	p.url = cfg.URL
	return nil
}

func (p *limitsProvider) Compile(json.RawMessage) (sdk.Sender, error) { return p, nil }

func (p *limitsProvider) ValidateItem(json.RawMessage) error { return nil }

func (p *limitsProvider) Close() error { return nil }

func (p *limitsProvider) Send(ctx context.Context, items []sdk.Item) []sdk.Result {
	out := make([]sdk.Result, len(items))
	for i, it := range items {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, strings.NewReader(it.ID))
		if err != nil {
			out[i] = sdk.Permanent(err)
			continue
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			out[i] = sdk.Retry(err)
			continue
		}
		_ = resp.Body.Close()
		out[i] = sdk.OK("")
	}
	return out
}

// TestClusterLimits runs three engines, each with its own store (pool) and
// node ID, on one schema: together they never exceed the connection's rate
// in any one-second window, nor its concurrency, at the receiver; nor a
// batch's own, when those are tighter.
func TestClusterLimits(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name              string
		items, rate, conc int
		hold              time.Duration
		onBatch           bool
	}{
		// Concurrency allows far more than the rate.
		{"RateHolds", 500, 200, 8, 2 * time.Millisecond, false},
		// Slow answers: 3 in flight allow about 60 a second.
		{"ConcurrencyHolds", 150, 0, 3, 40 * time.Millisecond, false},
		// The same limits as a batch's own options, on a connection that
		// would allow far more. Longer batches: the first node takes all
		// the batch's concurrency slots and gives the others their share
		// only at its next lease renewals (every LeaseDuration/20, 1 s here).
		{"BatchRateHolds", 1500, 200, 8, 2 * time.Millisecond, true},
		{"BatchConcurrencyHolds", 600, 0, 3, 40 * time.Millisecond, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clusterLimits(t, tc.items, tc.rate, tc.conc, tc.hold, tc.onBatch)
		})
	}
}

// clusterLimits sends items through three engines under a rate and a
// concurrency limit, the connection's, or the batch's own when onBatch.
func clusterLimits(t *testing.T, items, rate, conc int, hold time.Duration, onBatch bool) {
	var (
		mu       sync.Mutex
		arrivals []time.Time
		seen     = map[string]int{}
		inFlight atomic.Int64
		maxSeen  atomic.Int64
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			m := maxSeen.Load()
			if n <= m || maxSeen.CompareAndSwap(m, n) {
				break
			}
		}
		id := make([]byte, 64)
		k, _ := r.Body.Read(id)
		mu.Lock()
		arrivals = append(arrivals, time.Now())
		seen[string(id[:k])]++
		mu.Unlock()
		time.Sleep(hold)
	}))
	defer srv.Close()
	defer http.DefaultClient.CloseIdleConnections()

	url := newSchemaURL(t)
	stores := []*Store{openStore(t, url), openStore(t, url), openStore(t, url)}
	ctx := context.Background()
	s := stores[0]
	p, err := s.ProjectCreate(ctx, "limits")
	if err != nil {
		t.Fatal(err)
	}
	// rate 0 leaves the rate unlimited.
	config := fmt.Sprintf(`{"url":%q,"rate_per_second":%d,"concurrency":%d}`, srv.URL, rate, conc)
	var opts batchsender.BatchOptions
	if onBatch {
		config = fmt.Sprintf(`{"url":%q,"concurrency":64}`, srv.URL)
		opts = batchsender.BatchOptions{RatePerSecond: float64(rate), Concurrency: conc}
	}
	conn, err := s.ConnectionCreate(ctx, batchsender.ConnectionCreateParams{
		ProjectID: p.ID, Provider: "test.pglimits", Name: "hooks", Config: json.RawMessage(config),
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.BatchCreate(ctx, batchsender.BatchCreateParams{
		ProjectID: p.ID, Module: conn.Module(), ConnectionID: conn.ID, Provider: conn.Provider,
		Status: batchsender.BatchRunning, Template: json.RawMessage(`{}`), Options: opts, Items: func(yield func(batchsender.NewItem, error) bool) {
			for i := range items {
				if !yield(batchsender.NewItem{Data: json.RawMessage(fmt.Sprintf(`{"n":%d}`, i))}, nil) {
					return
				}
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}

	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var engines []*engine.Engine
	for i, st := range stores {
		cache := providers.NewCache(providers.Config{})
		t.Cleanup(func() { _ = cache.Close() })
		e, err := engine.New(engine.Config{
			Store: st, Providers: cache, NodeID: fmt.Sprintf("node-%d", i),
			PollInterval: 50 * time.Millisecond, LeaseDuration: 20 * time.Second, Logger: testLogger(t),
		})
		if err != nil {
			t.Fatal(err)
		}
		engines = append(engines, e)
		wg.Go(func() { _ = e.Run(runCtx) })
	}
	stop := sync.OnceFunc(func() { cancel(); wg.Wait() })
	defer stop()
	t0 := time.Now()
	waitFor(t, "the batch completed", 90*time.Second, func() bool {
		got, err := s.BatchGetByID(ctx, p.ID, b.ID)
		return err == nil && got.Status == batchsender.BatchCompleted
	})
	elapsed := time.Since(t0)
	stop()

	mu.Lock()
	defer mu.Unlock()
	if len(seen) != items {
		t.Fatalf("receiver saw %d distinct items, want %d", len(seen), items)
	}
	slices.SortFunc(arrivals, time.Time.Compare)
	worst, j := 0, 0
	for i := range arrivals {
		for arrivals[i].Sub(arrivals[j]) >= time.Second {
			j++
		}
		worst = max(worst, i-j+1)
	}
	// Burst one: at most rate calls start in any second.
	if rate > 0 && worst > rate+1 {
		t.Errorf("%d requests arrived within one second; the limit allows %d/s", worst, rate)
	}
	if got := maxSeen.Load(); got > int64(conc) {
		t.Errorf("%d requests in flight at once; the limit allows %d", got, conc)
	}
	busy := 0
	for _, e := range engines {
		if e.Stats().ItemsClaimed > 0 {
			busy++
		}
	}
	if got := maxSeen.Load(); rate == 0 && got < 2 {
		t.Errorf("at most %d request in flight: the test shows nothing about concurrency", got)
	}
	if busy < 2 {
		t.Errorf("only %d of 3 nodes did any work: the test shows nothing about sharing limits", busy)
	}
	t.Logf("%d items in %s; worst one-second window %d (limit %d/s); max in flight %d (limit %d); %d nodes worked",
		items, elapsed.Round(time.Millisecond), worst, rate, maxSeen.Load(), conc, busy)
}

func TestRateTake(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	// 100/s: slots 10ms apart; a horizon of 45ms grants at most 5.
	got, wait, err := s.RateTake(ctx, "k", 100, 10, 45*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if got != 5 || wait != 0 {
		t.Fatalf("first take: %d slots from %v, want 5 from now", got, wait)
	}
	// The next five follow the first: they start about 50ms from now.
	got, wait, err = s.RateTake(ctx, "k", 100, 5, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got != 5 || wait < 30*time.Millisecond || wait > 50*time.Millisecond {
		t.Fatalf("second take: %d slots from %v, want 5 from about 50ms", got, wait)
	}
	// Nothing due within a horizon shorter than the wait: none granted,
	// and wait says when the next slot falls due.
	got, wait, err = s.RateTake(ctx, "k", 100, 5, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if got != 0 || wait < 60*time.Millisecond {
		t.Fatalf("third take: %d slots, next due in %v; want none, due in about 100ms", got, wait)
	}
	// Another key has its own bucket.
	if got, wait, err := s.RateTake(ctx, "other", 100, 1, 0); err != nil || got != 1 || wait != 0 {
		t.Fatalf("other key: %d from %v, %v; want 1 now", got, wait, err)
	}
	if _, _, err := s.RateTake(ctx, "k", 0, 1, time.Second); batchsender.ErrorCode(err) != batchsender.EINVALID {
		t.Fatalf("rate 0: %v, want EINVALID", err)
	}
}

func TestSlots(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	ttl := time.Minute
	// Alone, A may lease every slot but no more than the limit.
	got, share, err := s.SlotsAcquire(ctx, "k", "a", 3, 5, ttl)
	if err != nil || got != 3 || share != 3 {
		t.Fatalf("a: got %d share %d (%v), want 3 of 3", got, share, err)
	}
	// B wants some: none is free, and the shares are now 2 each.
	got, share, err = s.SlotsAcquire(ctx, "k", "b", 3, 2, ttl)
	if err != nil || got != 0 || share != 2 {
		t.Fatalf("b: got %d share %d (%v), want 0 with share 2", got, share, err)
	}
	// A renews, learns its share and gives one back; B gets it, not more
	// than its share.
	held, share, err := s.SlotsRenew(ctx, "k", "a", 3, ttl)
	if err != nil || held != 3 || share != 2 {
		t.Fatalf("a renew: held %d share %d (%v), want 3 with share 2", held, share, err)
	}
	if err := s.SlotsRelease(ctx, "k", "a", 1); err != nil {
		t.Fatal(err)
	}
	if got, _, err = s.SlotsAcquire(ctx, "k", "b", 3, 5, ttl); err != nil || got != 1 {
		t.Fatalf("b after a gave one back: got %d (%v), want 1", got, err)
	}
	// Expired leases come free: C leases with a ttl already over.
	if err := s.SlotsRelease(ctx, "k", "b", 0); err != nil {
		t.Fatal(err)
	}
	if got, _, err = s.SlotsAcquire(ctx, "k", "c", 3, 1, -time.Second); err != nil || got != 1 {
		t.Fatalf("c: got %d (%v), want 1", got, err)
	}
	if got, _, err = s.SlotsAcquire(ctx, "k", "b", 3, 1, ttl); err != nil || got != 1 {
		t.Fatalf("b after c's lease expired: got %d (%v), want 1 (C's expired slot)", got, err)
	}
	// Never more than the limit leased at once.
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM conc_slots WHERE key = 'k' AND owner IS NOT NULL AND expires_at > now()`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n > 3 {
		t.Fatalf("%d slots leased, limit 3", n)
	}
}
