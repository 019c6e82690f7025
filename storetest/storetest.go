// Package storetest is the conformance suite of batchsender.Store. Every
// store implementation calls Exercise from its tests, so SQLite and
// PostgreSQL are held to exactly the same behaviour: the behaviour written
// down in the Store interface's doc comments, nothing more.
package storetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"slices"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
)

// Exercise runs the whole suite. newStore must return a new, empty store
// for each call (each subtest gets its own), independent of the others,
// because the subtests run in parallel; it should register its own cleanup
// (t.Cleanup) to close the store.
func Exercise(ctx context.Context, t *testing.T, newStore func(t *testing.T) batchsender.Store) {
	t.Helper()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, setup(ctx, t, newStore(t)))
		})
	}
}

// test is one subtest of the suite.
type test struct {
	name string
	fn   func(t *testing.T, f *fixture)
}

// tests collects the suite's subtests; each file of the package adds its
// own in an init function.
var tests []test

func register(ts ...test) { tests = append(tests, ts...) }

// fixture is the bundle of fresh records every subtest starts with: two
// projects (A is "ours", B the other tenant), each with a connection.
type fixture struct {
	ctx   context.Context
	s     batchsender.Store
	a, b  batchsender.Project
	conA  batchsender.Connection
	conB  batchsender.Connection
	owner string
}

func setup(ctx context.Context, t *testing.T, s batchsender.Store) *fixture {
	t.Helper()
	f := &fixture{ctx: ctx, s: s, owner: "worker-1"}
	var err error
	if f.a, err = s.ProjectCreate(ctx, "project-a"); err != nil {
		t.Fatalf("ProjectCreate: %v", err)
	}
	if f.b, err = s.ProjectCreate(ctx, "project-b"); err != nil {
		t.Fatalf("ProjectCreate: %v", err)
	}
	f.conA = f.connection(t, f.a.ID, "hooks")
	f.conB = f.connection(t, f.b.ID, "hooks")
	return f
}

func (f *fixture) connection(t *testing.T, projectID, name string) batchsender.Connection {
	t.Helper()
	c, err := f.s.ConnectionCreate(f.ctx, batchsender.ConnectionCreateParams{
		ProjectID: projectID, Provider: "webhook.http", Name: name,
		Config: json.RawMessage(`{"timeout":"5s"}`), SecretsSealed: []byte{1, 2, 3}, SecretNames: []string{"signing_secret"},
	})
	if err != nil {
		t.Fatalf("ConnectionCreate: %v", err)
	}
	return c
}

// items yields n items whose data is {"n": i} for i from 1.
func items(n int) iter.Seq2[batchsender.NewItem, error] {
	return itemsFrom(1, n)
}

// itemsFrom yields n items numbered from first.
func itemsFrom(first, n int) iter.Seq2[batchsender.NewItem, error] {
	return func(yield func(batchsender.NewItem, error) bool) {
		for i := first; i < first+n; i++ {
			if !yield(batchsender.NewItem{Data: json.RawMessage(fmt.Sprintf(`{"n":%d}`, i))}, nil) {
				return
			}
		}
	}
}

// errBadRow is what failing iterators yield.
var errBadRow = batchsender.Errorf(batchsender.EINVALID, "row 501: bad row")

// itemsThenError yields n good items, then errBadRow.
func itemsThenError(n int) iter.Seq2[batchsender.NewItem, error] {
	return func(yield func(batchsender.NewItem, error) bool) {
		for it := range items(n) {
			if !yield(it, nil) {
				return
			}
		}
		yield(batchsender.NewItem{}, errBadRow)
	}
}

// batchOpt changes the parameters of a batch made by newBatch.
type batchOpt func(*batchsender.BatchCreateParams)

func withStatus(st batchsender.BatchStatus) batchOpt {
	return func(p *batchsender.BatchCreateParams) { p.Status = st }
}

func withOptions(o batchsender.BatchOptions) batchOpt {
	return func(p *batchsender.BatchCreateParams) { p.Options = o }
}

func inProject(projectID, connectionID string) batchOpt {
	return func(p *batchsender.BatchCreateParams) { p.ProjectID, p.ConnectionID = projectID, connectionID }
}

// newBatch creates a running batch of n items in project A.
func (f *fixture) newBatch(t *testing.T, n int, opts ...batchOpt) batchsender.Batch {
	t.Helper()
	p := batchsender.BatchCreateParams{
		ProjectID: f.a.ID, Module: "webhook", ConnectionID: f.conA.ID, Provider: "webhook.http",
		Status: batchsender.BatchRunning, Template: json.RawMessage(`{"url":"http://127.0.0.1:1/hook"}`),
		Items: items(n),
	}
	for _, o := range opts {
		o(&p)
	}
	b, err := f.s.BatchCreate(f.ctx, p)
	if err != nil {
		t.Fatalf("BatchCreate: %v", err)
	}
	return b
}

// get reads a batch of project A.
func (f *fixture) get(t *testing.T, id string) batchsender.Batch {
	t.Helper()
	b, err := f.s.BatchGetByID(f.ctx, f.a.ID, id)
	if err != nil {
		t.Fatalf("BatchGetByID: %v", err)
	}
	return b
}

// transition applies an action to a batch of project A and expects it to
// succeed.
func (f *fixture) transition(t *testing.T, id string, a batchsender.BatchAction) batchsender.Batch {
	t.Helper()
	b, err := f.s.BatchTransition(f.ctx, batchsender.BatchTransitionParams{ProjectID: f.a.ID, BatchID: id, Action: a, Now: time.Now()})
	if err != nil {
		t.Fatalf("BatchTransition %s: %v", a, err)
	}
	return b
}

// claim claims up to n due items of the batch for owner.
func (f *fixture) claim(t *testing.T, batchID, owner string, n int) []batchsender.Item {
	t.Helper()
	now := time.Now()
	got, err := f.s.ChunkClaim(f.ctx, batchsender.ChunkClaimParams{
		BatchID: batchID, Owner: owner, Now: now, LeaseUntil: now.Add(time.Minute), Limit: n,
	})
	if err != nil {
		t.Fatalf("ChunkClaim: %v", err)
	}
	return got
}

// result builds the result of one claimed item.
func result(it batchsender.Item, owner string, st batchsender.ItemStatus) batchsender.ItemResult {
	outcome := map[batchsender.ItemStatus]string{
		batchsender.ItemSucceeded: "ok", batchsender.ItemPending: "retry",
		batchsender.ItemFailed: "permanent", batchsender.ItemUnknown: "unknown",
	}[st]
	r := batchsender.ItemResult{
		ItemID: it.ID, BatchID: it.BatchID, Owner: owner, Status: st,
		Attempt: batchsender.Attempt{
			ItemID: it.ID, Number: it.Attempts, StartedAt: time.Now(), Latency: 3 * time.Millisecond,
			Outcome: outcome, StatusCode: 200,
		},
	}
	switch st {
	case batchsender.ItemSucceeded:
		r.ProviderMessageID = "msg-" + it.ID
		r.Units = 1
	case batchsender.ItemPending:
		r.NextAttemptAt = time.Now()
		r.Error = "503 service unavailable"
		r.Attempt.StatusCode = 503
		r.Attempt.Error = r.Error
	default:
		r.Error = "400 bad request"
		r.Attempt.StatusCode = 400
		r.Attempt.Error = r.Error
	}
	return r
}

// write writes results and expects exactly want of them to apply.
func (f *fixture) write(t *testing.T, want int, rs ...batchsender.ItemResult) {
	t.Helper()
	n, err := f.s.ItemResultsWriteMany(f.ctx, rs)
	if err != nil {
		t.Fatalf("ItemResultsWriteMany: %v", err)
	}
	if n != want {
		t.Fatalf("ItemResultsWriteMany applied %d results, want %d", n, want)
	}
}

// allItems lists every item of a batch of project A, paging through
// ItemList, optionally filtered by status.
func (f *fixture) allItems(t *testing.T, batchID string, st batchsender.ItemStatus) []batchsender.Item {
	t.Helper()
	var out []batchsender.Item
	var after int64
	for {
		page, err := f.s.ItemList(f.ctx, batchsender.ItemListParams{ProjectID: f.a.ID, BatchID: batchID, Status: st, AfterSeq: after, Limit: 333})
		if err != nil {
			t.Fatalf("ItemList: %v", err)
		}
		if len(page) == 0 {
			return out
		}
		out = append(out, page...)
		after = page[len(page)-1].Seq
	}
}

// check asserts the batch invariant: its counts equal the actual number of
// items in each status, and Total is their sum. It returns the batch.
func (f *fixture) check(t *testing.T, batchID string) batchsender.Batch {
	t.Helper()
	b := f.get(t, batchID)
	var actual batchsender.Counts
	var total int64
	for _, it := range f.allItems(t, batchID, "") {
		actual.Add(it.Status, 1)
		total++
	}
	if b.Counts != actual {
		t.Fatalf("batch %s counts %+v, but its items are %+v", batchID, b.Counts, actual)
	}
	if b.Total != total {
		t.Fatalf("batch %s total %d, but it has %d items", batchID, b.Total, total)
	}
	var sum int64
	for _, st := range batchsender.ItemStatuses {
		sum += b.Counts.Get(st)
	}
	if sum != b.Total {
		t.Fatalf("batch %s total %d, counts sum to %d", batchID, b.Total, sum)
	}
	return b
}

// wantCode fails unless err carries the error code.
func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	if got := batchsender.ErrorCode(err); got != code {
		t.Fatalf("error %v has code %q, want %q", err, got, code)
	}
}

// sameJSON fails unless a and b are the same JSON value (stores may
// reformat JSON).
func sameJSON(t *testing.T, what string, got, want []byte) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%s: %q is not JSON: %v", what, got, err)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatalf("%s: want %q is not JSON: %v", what, want, err)
	}
	gb, _ := json.Marshal(g)
	wb, _ := json.Marshal(w)
	if !bytes.Equal(gb, wb) {
		t.Fatalf("%s = %s, want %s", what, got, want)
	}
}

// near fails unless got is within a minute of want and in UTC. Stores keep
// timestamps at millisecond or microsecond precision, and a loaded machine
// (the race detector, parallel subtests) can take seconds between the write
// and the check; a wrong unit or time zone is still far outside a minute.
func near(t *testing.T, what string, got, want time.Time) {
	t.Helper()
	if d := got.Sub(want); d < -time.Minute || d > time.Minute {
		t.Fatalf("%s = %v, want about %v", what, got, want)
	}
	if got.Location() != time.UTC {
		t.Fatalf("%s = %v is not in UTC", what, got)
	}
}

// ids returns the IDs of items.
func ids(items []batchsender.Item) []string {
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = it.ID
	}
	return out
}

// isErr reports whether err is target or wraps it.
func isErr(err, target error) bool { return errors.Is(err, target) }

// sortedSeqs returns the seqs of items, sorted.
func sortedSeqs(items []batchsender.Item) []int64 {
	out := make([]int64, len(items))
	for i, it := range items {
		out[i] = it.Seq
	}
	slices.Sort(out)
	return out
}
