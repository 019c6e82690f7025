package postgres

import (
	"context"
	"database/sql"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/sqlite"
)

func TestImportSQLiteCopiesEverything(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "batchsender.db")
	lite, err := sqlite.Open(ctx, path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer lite.Close()

	// A SQLite installation with a bit of everything: a key, a connection,
	// a finished batch with attempts, a draft, and an item in flight.
	p, err := lite.ProjectCreate(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lite.APIKeyCreate(ctx, batchsender.APIKeyCreateParams{ID: "bsk_1", ProjectID: p.ID, Name: "admin", Role: batchsender.RoleAdmin, SecretHash: []byte{9, 8, 7}}); err != nil {
		t.Fatal(err)
	}
	con, err := lite.ConnectionCreate(ctx, batchsender.ConnectionCreateParams{ProjectID: p.ID, Provider: "webhook.http", Name: "hooks",
		Config: json.RawMessage(`{"b":1,"a":2}`), SecretsSealed: []byte{1, 2, 3}, SecretNames: []string{"signing_secret"}})
	if err != nil {
		t.Fatal(err)
	}
	sendAt := time.Now().Add(time.Hour)
	mk := func(st batchsender.BatchStatus, n int, key string) batchsender.Batch {
		b, err := lite.BatchCreate(ctx, batchsender.BatchCreateParams{ProjectID: p.ID, Module: "webhook", ConnectionID: con.ID, Provider: "webhook.http",
			Status: st, Template: json.RawMessage(`{"url":"http://127.0.0.1:1/"}`), IdempotencyKey: key, RequestHash: "h-" + key,
			Options: batchsender.BatchOptions{MaxAttempts: 3, SendAt: &sendAt}, Items: items(n)})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	run := mk(batchsender.BatchRunning, 5, "k1")
	mk(batchsender.BatchDraft, 2, "")
	now := time.Now()
	claimed, err := lite.ChunkClaim(ctx, batchsender.ChunkClaimParams{BatchID: run.ID, Owner: "w", Now: now, LeaseUntil: now.Add(time.Minute), Limit: 4})
	if err != nil || len(claimed) != 4 {
		t.Fatalf("claim: %d %v", len(claimed), err)
	}
	var rs []batchsender.ItemResult
	for i, it := range claimed[:3] {
		st := []batchsender.ItemStatus{batchsender.ItemSucceeded, batchsender.ItemFailed, batchsender.ItemPending}[i]
		rs = append(rs, batchsender.ItemResult{ItemID: it.ID, BatchID: run.ID, Owner: "w", Status: st, NextAttemptAt: now, Error: "e", ProviderMessageID: "m", Units: 1,
			Attempt: batchsender.Attempt{ItemID: it.ID, Number: 1, StartedAt: now, Latency: time.Millisecond, Outcome: "ok", StatusCode: 200, Response: "r"}})
	}
	if _, err := lite.ItemResultsWriteMany(ctx, rs); err != nil {
		t.Fatal(err)
	}

	if _, err := lite.SuppressionsAdd(ctx, p.ID, []batchsender.Suppression{
		{Channel: "email", Address: "Ann@Example.com", Reason: batchsender.ReasonUnsubscribe, Source: "unsubscribe link"},
		{Channel: "email", Address: "bob@example.com", Reason: batchsender.ReasonHardBounce}}); err != nil {
		t.Fatal(err)
	}

	for _, body := range []string{`{"subject":"v1"}`, `{"subject":"v2", "from":"a@example.com"}`} {
		if _, err := lite.TemplateCreate(ctx, batchsender.TemplateCreateParams{ProjectID: p.ID, Name: "welcome", Module: "email", Template: json.RawMessage(body)}); err != nil {
			t.Fatal(err)
		}
	}

	src, err := sql.Open("sqlite", path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	pg := newStore(t)
	report, err := pg.ImportSQLite(ctx, src)
	if err != nil {
		t.Fatalf("ImportSQLite: %v", err)
	}
	want := ImportReport{"projects": 1, "api_keys": 1, "connections": 1, "batches": 2, "items": 7, "attempts": 3, "suppressions": 2, "templates": 2}
	if !reflect.DeepEqual(report, want) {
		t.Fatalf("report %v, want %v", report, want)
	}

	// Everything reads back the same from both stores.
	same := func(what string, a, b any, errA, errB error) {
		t.Helper()
		if errA != nil || errB != nil {
			t.Fatalf("%s: %v / %v", what, errA, errB)
		}
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("%s differs:\nsqlite   %+v\npostgres %+v", what, a, b)
		}
	}
	p1, e1 := lite.ProjectGetByName(ctx, "default")
	p2, e2 := pg.ProjectGetByName(ctx, "default")
	same("project", p1, p2, e1, e2)
	k1, e1 := lite.APIKeyGetByID(ctx, "bsk_1")
	k2, e2 := pg.APIKeyGetByID(ctx, "bsk_1")
	same("key", k1, k2, e1, e2)
	c1, e1 := lite.ConnectionList(ctx, p.ID)
	c2, e2 := pg.ConnectionList(ctx, p.ID)
	same("connections", c1, c2, e1, e2)
	b1, e1 := lite.BatchList(ctx, batchsender.BatchListParams{ProjectID: p.ID})
	b2, e2 := pg.BatchList(ctx, batchsender.BatchListParams{ProjectID: p.ID})
	same("batches", b1, b2, e1, e2)
	for _, b := range b1 {
		i1, e1 := lite.ItemList(ctx, batchsender.ItemListParams{ProjectID: p.ID, BatchID: b.ID})
		i2, e2 := pg.ItemList(ctx, batchsender.ItemListParams{ProjectID: p.ID, BatchID: b.ID})
		same("items", i1, i2, e1, e2)
		for _, it := range i1 {
			a1, e1 := lite.ItemAttemptList(ctx, p.ID, it.ID)
			a2, e2 := pg.ItemAttemptList(ctx, p.ID, it.ID)
			same("attempts", a1, a2, e1, e2)
		}
	}
	s1, e1 := lite.SuppressionList(ctx, batchsender.SuppressionListParams{ProjectID: p.ID, Channel: "email"})
	s2, e2 := pg.SuppressionList(ctx, batchsender.SuppressionListParams{ProjectID: p.ID, Channel: "email"})
	same("suppressions", s1, s2, e1, e2)
	t1, e1 := lite.TemplateList(ctx, batchsender.TemplateListParams{ProjectID: p.ID})
	t2, e2 := pg.TemplateList(ctx, batchsender.TemplateListParams{ProjectID: p.ID})
	same("templates", t1, t2, e1, e2)
	v1, e1 := lite.TemplateGet(ctx, p.ID, "welcome", 1)
	v2, e2 := pg.TemplateGet(ctx, p.ID, "welcome", 1)
	same("template version 1", v1, v2, e1, e2)
	g1, e1 := lite.BatchGetByIdempotencyKey(ctx, p.ID, "k1")
	g2, e2 := pg.BatchGetByIdempotencyKey(ctx, p.ID, "k1")
	same("batch by key", g1, g2, e1, e2)

	// The imported store carries on: the in-flight item's lease is rescued
	// and the batch can finish.
	if n, err := pg.LeasesRescue(ctx, now.Add(2*time.Minute)); err != nil || n != 1 {
		t.Fatalf("LeasesRescue after import: %d %v", n, err)
	}
	// The failed item is listed as one; the retry, the rescued item and
	// the one never claimed are all claimed again.
	if failed, err := pg.ItemList(ctx, batchsender.ItemListParams{ProjectID: p.ID, BatchID: run.ID, Status: batchsender.ItemFailed}); err != nil || len(failed) != 1 || failed[0].Seq != 2 {
		t.Fatalf("failed items after import: %+v, %v; want seq 2", failed, err)
	}
	later := now.Add(time.Hour)
	again, err := pg.ChunkClaim(ctx, batchsender.ChunkClaimParams{BatchID: run.ID, Owner: "w2", Now: later, LeaseUntil: later.Add(time.Minute), Limit: 10})
	if err != nil {
		t.Fatalf("claim after import: %v", err)
	}
	var seqs []int64
	for _, it := range again {
		seqs = append(seqs, it.Seq)
	}
	if slices.Sort(seqs); !slices.Equal(seqs, []int64{3, 4, 5}) {
		t.Fatalf("claimed after import: seqs %v, want 3 4 5", seqs)
	}

	// A second import into the same, now non-empty, database is refused.
	if _, err := pg.ImportSQLite(ctx, src); batchsender.ErrorCode(err) != batchsender.ECONFLICT {
		t.Fatalf("second import: %v, want conflict", err)
	}
}
