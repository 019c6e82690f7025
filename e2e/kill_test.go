package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"testing"
	"time"
)

// killItems is the size of the batch killed mid-way.
const killItems = 20_000

// resultsNotDurableBound bounds the items a killed process had sent whose
// results were not yet durable: those are sent again after the restart, and
// they are the only duplicates. Results are written in groups (the engine's
// completer): one group is being written while the next fills, and a group
// is written once it holds 1,000 results (the engine's flushSize) or is
// 20 ms old. Items claimed but not yet sent are not duplicates: they are
// sent once, after the restart. So each kill may cost up to two groups plus
// the calls in flight (the batch's concurrency) while writes keep up, as
// they do here.
const resultsNotDurableBound = 2 * 1000

// ndjsonItems writes n NDJSON items {"payload":{"n":i,"pad":...}} to w.
func ndjsonItems(w io.Writer, n int, pad string) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	for i := range n {
		if _, err := fmt.Fprintf(bw, `{"payload":{"n":%d,"pad":%q}}`+"\n", i, pad); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// uploadNDJSON streams n items into a draft batch.
func uploadNDJSON(ctx context.Context, t *testing.T, c *Client, batchID string, n int) {
	t.Helper()
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(ndjsonItems(pw, n, "e2e")) }()
	resp, err := c.UploadItems(ctx, batchID, "application/x-ndjson", pr)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status/100 != 2 {
		t.Fatalf("uploading items: %s", resp)
	}
}

// payloadN returns the "n" of a delivered body.
func payloadN(body []byte) (int, error) {
	var p struct {
		N *int `json:"n"`
	}
	if err := json.Unmarshal(body, &p); err != nil || p.N == nil {
		return 0, fmt.Errorf("body %q is not a test payload (%v)", truncate(body, 200), err)
	}
	return *p.N, nil
}

// TestKillNineMidBatch kills the server with SIGKILL three times at random
// points of a 20,000-item batch and restarts it on the same data directory:
// every item must end succeeded, the receiver must have seen each item, and
// duplicates stay within what the killed processes could have had in flight.
func TestKillNineMidBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	secret := randomSecret(t)
	recv := startReceiver(t, ReceiverOptions{Secret: secret})
	srv, c := startServer(t, serverOptions{allowPrivate: true})

	if _, err := c.CreateConnection(ctx, "hooks", secret, nil); err != nil {
		t.Fatal(err)
	}
	const concurrency = 32
	draft, err := c.CreateBatch(ctx, map[string]any{
		"module":     "webhook",
		"connection": "hooks",
		"template":   map[string]any{"url": recv.URL + "/hook"},
		"options":    map[string]any{"concurrency": concurrency, "max_attempts": 20, "retry_base_delay": "50ms", "retry_max_delay": "1s"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if draft.Status != "draft" {
		t.Fatalf("batch without items has status %q, want draft", draft.Status)
	}
	uploadNDJSON(ctx, t, c, draft.ID, killItems)
	if b, err := c.GetBatch(ctx, draft.ID); err != nil || b.Total != killItems {
		t.Fatalf("after upload: total %d, err %v", b.Total, err)
	}

	// Three kill points, uniformly between 10% and 90% of the items seen.
	var points []int
	for range 3 {
		points = append(points, killItems/10+rand.IntN(killItems*8/10))
	}
	slices.Sort(points)

	if err := c.StartBatch(ctx, draft.ID); err != nil {
		t.Fatal(err)
	}
	type kill struct {
		at, distinct int
		requests     int64
		inFlight     int64
	}
	var kills []kill
	for _, p := range points {
		deadline := time.Now().Add(2 * time.Minute)
		var inFlight int64
		for recv.Distinct() < p {
			if time.Now().After(deadline) {
				t.Fatalf("receiver stuck at %d distinct items waiting for %d", recv.Distinct(), p)
			}
			// The API's in_flight just before the kill: the items the dying
			// process holds leased, for the report.
			if b, err := c.GetBatch(ctx, draft.ID); err == nil {
				inFlight = b.Counts.InFlight
			}
			time.Sleep(5 * time.Millisecond)
		}
		srv.Kill()
		k := kill{at: p, distinct: recv.Distinct(), requests: recv.Requests(), inFlight: inFlight}
		kills = append(kills, k)
		t.Logf("kill -9 at %d distinct items (%d requests), in_flight before kill %d", k.distinct, k.requests, k.inFlight)
		c.Close()
		if err := srv.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}

	b, err := c.WaitBatch(ctx, draft.ID, 3*time.Minute, func(b Batch) bool { return b.Status == "completed" })
	if err != nil {
		t.Fatal(err)
	}
	if b.Counts.Succeeded != killItems || b.Counts.Done() != killItems || b.Total != killItems {
		t.Fatalf("completed batch counts %+v total %d, want %d succeeded", b.Counts, b.Total, killItems)
	}

	dups := checkEachItemOnce(ctx, t, c, recv, draft.ID, killItems)
	bound := int64(len(kills)) * (resultsNotDurableBound + concurrency)
	t.Logf("kills %d, requests %d, duplicates %d, bound %d (kills × (%d results not yet durable + %d in flight))",
		len(kills), recv.Requests(), dups, bound, resultsNotDurableBound, concurrency)
	if dups > bound {
		t.Errorf("%d duplicates, more than the %d the killed processes could have had in flight", dups, bound)
	}

	// The server is still healthy after all that.
	if resp, err := c.Do(ctx, http.MethodGet, "/healthz", "", nil, nil); err != nil || resp.Status != http.StatusOK {
		t.Fatalf("/healthz after the run: %v %v", resp, err)
	}
}

// checkEachItemOnce checks that the receiver saw every one of the batch's n
// items ("payload":{"n":0..n-1}), each under its item ID as webhook-id, with
// the same body on every attempt and every signature valid, and that the
// API lists every item succeeded. It returns the duplicate requests.
func checkEachItemOnce(ctx context.Context, t *testing.T, c *Client, recv *Receiver, batchID string, n int) int64 {
	t.Helper()
	if bad, reasons := recv.BadSignatures(); bad != 0 {
		t.Errorf("%d requests with bad signatures: %v", bad, reasons)
	}
	deliveries := recv.Deliveries()
	if len(deliveries) != n {
		t.Errorf("receiver saw %d distinct webhook-ids, want %d", len(deliveries), n)
	}
	var sent int64
	byN := make(map[int]string, n)
	for id, d := range deliveries {
		sent += int64(d.Count)
		if d.BodyDiffer {
			t.Errorf("webhook-id %s was sent with different bodies", id)
		}
		pn, err := payloadN(d.Body)
		if err != nil {
			t.Errorf("webhook-id %s: %v", id, err)
			continue
		}
		if other, dup := byN[pn]; dup {
			t.Errorf("payload n=%d arrived under two webhook-ids %s and %s", pn, other, id)
		}
		byN[pn] = id
	}
	for i := range n {
		if _, ok := byN[i]; !ok {
			t.Errorf("item n=%d never arrived", i)
			break
		}
	}

	// Every stored item is succeeded, and its ID is the webhook-id its
	// payload arrived under.
	items, err := c.ListItems(ctx, batchID, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != n {
		t.Fatalf("listed %d items, want %d", len(items), n)
	}
	for _, it := range items {
		var data struct {
			Payload struct {
				N int `json:"n"`
			} `json:"payload"`
		}
		if err := json.Unmarshal(it.Data, &data); err != nil {
			t.Fatalf("item %s data %s: %v", it.ID, it.Data, err)
		}
		if it.Status != "succeeded" {
			t.Errorf("item %s status %q (%s)", it.ID, it.Status, it.LastError)
		}
		if byN[data.Payload.N] != it.ID {
			t.Errorf("item %s (n=%d) arrived as webhook-id %q", it.ID, data.Payload.N, byN[data.Payload.N])
		}
	}

	return sent - int64(len(deliveries))
}

// TestSigtermMidBatch stops the server with SIGTERM twice during a batch
// and restarts it: a graceful shutdown finishes or gives back its in-flight
// work and writes every result, so the receiver sees each item exactly
// once, with no duplicates at all.
func TestSigtermMidBatch(t *testing.T) {
	t.Parallel()
	const n = 5_000
	ctx := context.Background()
	secret := randomSecret(t)
	recv := startReceiver(t, ReceiverOptions{Secret: secret})
	srv, c := startServer(t, serverOptions{allowPrivate: true})
	if _, err := c.CreateConnection(ctx, "hooks", secret, nil); err != nil {
		t.Fatal(err)
	}
	draft, err := c.CreateBatch(ctx, map[string]any{
		"module": "webhook", "connection": "hooks",
		"template": map[string]any{"url": recv.URL + "/hook"},
		"options":  map[string]any{"concurrency": 32},
	})
	if err != nil {
		t.Fatal(err)
	}
	uploadNDJSON(ctx, t, c, draft.ID, n)
	if err := c.StartBatch(ctx, draft.ID); err != nil {
		t.Fatal(err)
	}
	for _, p := range []int{n * 3 / 10, n * 7 / 10} {
		deadline := time.Now().Add(2 * time.Minute)
		for recv.Distinct() < p {
			if time.Now().After(deadline) {
				t.Fatalf("receiver stuck at %d distinct items waiting for %d", recv.Distinct(), p)
			}
			time.Sleep(2 * time.Millisecond)
		}
		if !srv.Stop(30 * time.Second) {
			t.Fatal("server did not exit within 30s of SIGTERM")
		}
		t.Logf("SIGTERM at %d distinct items; exited", recv.Distinct())
		c.Close()
		if err := srv.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	b, err := c.WaitBatch(ctx, draft.ID, 2*time.Minute, func(b Batch) bool { return b.Status == "completed" })
	if err != nil {
		t.Fatal(err)
	}
	if b.Counts.Succeeded != n {
		t.Fatalf("completed with counts %+v, want %d succeeded", b.Counts, n)
	}
	if dups := checkEachItemOnce(ctx, t, c, recv, draft.ID, n); dups != 0 {
		t.Errorf("%d duplicate deliveries after graceful shutdowns, want none", dups)
	}
}
