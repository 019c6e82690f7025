package httpapi_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/unsubscribe"
)

type suppressionDoc struct {
	Channel string `json:"channel"`
	Address string `json:"address"`
	Reason  string `json:"reason"`
	Source  string `json:"source"`
}

type suppressionPage struct {
	Data       []suppressionDoc `json:"data"`
	NextCursor string           `json:"next_cursor"`
}

type importResult struct {
	Received int `json:"received"`
	Added    int `json:"added"`
}

func (b *bundle) suppressions(t *testing.T, key, query string) []suppressionDoc {
	t.Helper()
	var page suppressionPage
	b.do(t, call{method: "GET", path: "/v1/suppressions" + query, key: &key}).expect(t, http.StatusOK).decode(t, &page)
	return page.Data
}

func TestSuppressionImportListDelete(t *testing.T) {
	t.Parallel()
	b := setup(t)

	var res importResult
	b.do(t, call{method: "POST", path: "/v1/suppressions", json: []map[string]any{
		{"address": "Ann@Example.com"},
		{"address": "bob@example.com", "reason": "complaint", "source": "old ESP"},
		{"address": "+15550001", "channel": "sms"},
	}}).expect(t, http.StatusOK).decode(t, &res)
	if res != (importResult{Received: 3, Added: 3}) {
		t.Fatalf("JSON import = %+v", res)
	}
	b.do(t, call{method: "POST", path: "/v1/suppressions", contentType: "application/x-ndjson",
		body: "{\"address\":\"cy@example.com\",\"reason\":\"hard_bounce\"}\n{\"address\":\"ann@example.com\"}\n"}).
		expect(t, http.StatusOK).decode(t, &res)
	if res != (importResult{Received: 2, Added: 1}) {
		t.Fatalf("NDJSON import = %+v", res)
	}
	b.do(t, call{method: "POST", path: "/v1/suppressions", contentType: "text/csv",
		body: "address,reason\ndee@example.com,unsubscribe\neve@example.com,manual\n"}).
		expect(t, http.StatusOK).decode(t, &res)
	if res != (importResult{Received: 2, Added: 2}) {
		t.Fatalf("CSV import = %+v", res)
	}

	got := b.suppressions(t, b.key, "?channel=email")
	var addrs []string
	for _, s := range got {
		addrs = append(addrs, s.Address+"/"+s.Reason)
	}
	want := "ann@example.com/manual bob@example.com/complaint cy@example.com/hard_bounce dee@example.com/unsubscribe eve@example.com/manual"
	if strings.Join(addrs, " ") != want {
		t.Fatalf("suppressions = %v, want %s", addrs, want)
	}
	if got[0].Source != "api" || got[1].Source != "old ESP" {
		t.Fatalf("sources = %+v", got[:2])
	}
	if sms := b.suppressions(t, b.key, "?channel=sms"); len(sms) != 1 || sms[0].Address != "+15550001" {
		t.Fatalf("sms suppressions = %+v", sms)
	}
	// Pages.
	var page suppressionPage
	b.do(t, call{method: "GET", path: "/v1/suppressions?limit=2"}).expect(t, http.StatusOK).decode(t, &page)
	if len(page.Data) != 2 || page.NextCursor != "bob@example.com" {
		t.Fatalf("first page = %+v", page)
	}
	b.do(t, call{method: "GET", path: "/v1/suppressions?limit=2&cursor=" + url.QueryEscape(page.NextCursor)}).expect(t, http.StatusOK).decode(t, &page)
	if len(page.Data) != 2 || page.Data[0].Address != "cy@example.com" {
		t.Fatalf("second page = %+v", page)
	}
	// Another project sees none of it.
	if other := b.suppressions(t, b.keyB, ""); len(other) != 0 {
		t.Fatalf("project beta sees %+v", other)
	}
	b.do(t, call{method: "DELETE", path: "/v1/suppressions/email/ann@example.com", key: &b.keyB}).expectProblem(t, http.StatusNotFound)

	b.do(t, call{method: "DELETE", path: "/v1/suppressions/email/ANN@example.com"}).expect(t, http.StatusNoContent)
	b.do(t, call{method: "DELETE", path: "/v1/suppressions/email/ann@example.com"}).expectProblem(t, http.StatusNotFound)
	if n := len(b.suppressions(t, b.key, "")); n != 4 {
		t.Fatalf("%d suppressions after delete, want 4", n)
	}
}

func TestSuppressionImportRefusesBadRowsWhole(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.do(t, call{method: "POST", path: "/v1/suppressions", json: []map[string]any{
		{"address": "ok@example.com"}, {"address": "Ann <ann@example.com>"},
	}, badRequest: true}).expectProblem(t, http.StatusBadRequest, "row 2", "not an email address")
	b.do(t, call{method: "POST", path: "/v1/suppressions", contentType: "application/x-ndjson",
		body: "{\"address\":\"ok@example.com\"}\n{\"address\":\"x@example.com\",\"reason\":\"bored\"}\n"}).
		expectProblem(t, http.StatusBadRequest, "row 2", "bored")
	b.do(t, call{method: "POST", path: "/v1/suppressions", contentType: "text/csv",
		body: "address,colour\nok@example.com,red\n"}).expectProblem(t, http.StatusBadRequest, "row 1", "colour")
	b.do(t, call{method: "POST", path: "/v1/suppressions", json: []any{}}).expectProblem(t, http.StatusBadRequest, "no suppressions")
	b.do(t, call{method: "POST", path: "/v1/suppressions", contentType: "application/json", body: `{"address":"a@example.com"}`, badRequest: true}).
		expectProblem(t, http.StatusBadRequest, "JSON array")
	b.do(t, call{method: "POST", path: "/v1/suppressions", contentType: "text/plain", body: "a@example.com", badRequest: true}).
		expectProblem(t, http.StatusUnsupportedMediaType)
	b.do(t, call{method: "GET", path: "/v1/suppressions?channel=E-Mail!"}).expectProblem(t, http.StatusBadRequest, "channel")
	if n := len(b.suppressions(t, b.key, "")); n != 0 {
		t.Fatalf("a refused import kept %d suppressions", n)
	}
}

func TestUnsubscribeLink(t *testing.T) {
	t.Parallel()
	b := setup(t)
	link := b.unsub.URL(unsubscribe.Token{ProjectID: b.project, Channel: "email", Address: "ann@example.com", ItemID: "itm_x"})
	path := strings.TrimPrefix(link, b.srv.URL)
	if path == link {
		t.Fatalf("link %q is not on the server %s", link, b.srv.URL)
	}

	// Opening the link shows a page and changes nothing.
	page := b.do(t, call{method: "GET", path: path, key: keyOf("")}).expect(t, http.StatusOK)
	if ct := page.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") ||
		!strings.Contains(string(page.body), `<form method="post">`) || !strings.Contains(string(page.body), "ann@example.com") {
		t.Fatalf("page %s: %s", ct, page.body)
	}
	if n := len(b.suppressions(t, b.key, "")); n != 0 {
		t.Fatalf("GET suppressed %d addresses", n)
	}

	// The one-click POST, twice: both answer 200, one suppression.
	for range 2 {
		b.do(t, call{method: "POST", path: path, key: keyOf(""), contentType: "application/x-www-form-urlencoded",
			body: "List-Unsubscribe=One-Click"}).expect(t, http.StatusOK)
	}
	got := b.suppressions(t, b.key, "")
	if len(got) != 1 || got[0] != (suppressionDoc{Channel: "email", Address: "ann@example.com", Reason: "unsubscribe", Source: "unsubscribe link"}) {
		t.Fatalf("suppressions after unsubscribe = %+v", got)
	}

	if strings.Contains(b.logs.String(), strings.TrimPrefix(path, "/u/")) {
		t.Fatal("the request log shows the unsubscribe token")
	}

	// Forged, altered and foreign tokens are all the same 404.
	token := strings.TrimPrefix(path, "/u/")
	payload, sig, _ := strings.Cut(token, ".")
	otherPayload, _, _ := strings.Cut(b.unsub.Sign(unsubscribe.Token{ProjectID: b.project, Channel: "email", Address: "bob@example.com"}), ".")
	foreign := unsubscribe.NewSigner([]byte("another installation's secret key"), "").Sign(unsubscribe.Token{ProjectID: b.project, Channel: "email", Address: "bob@example.com"})
	for _, bad := range []string{otherPayload + "." + sig, payload + ".AAAA", foreign, "nonsense"} {
		for _, m := range []string{"GET", "POST"} {
			p := b.do(t, call{method: m, path: "/u/" + bad, key: keyOf(""), contentType: "application/x-www-form-urlencoded", body: "List-Unsubscribe=One-Click"}).
				expectProblem(t, http.StatusNotFound)
			if p.Detail != "unsubscribe link not found" {
				t.Fatalf("detail %q", p.Detail)
			}
		}
	}
	if n := len(b.suppressions(t, b.key, "")); n != 1 {
		t.Fatalf("forged links changed the suppressions: %d", n)
	}
}

// A skipped item, as the engine writes it for a suppressed recipient,
// shows in the batch's counts, the item list and the attempts, all as the
// document describes.
func TestSkippedItemsAsTheAPIShowsThem(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.connection(t, b.key, "hooks")
	d := b.batch(t, map[string]any{"module": "test", "connection": "hooks", "items": []map[string]any{{"to": "a"}, {"to": "b"}}})
	ctx := context.Background()
	now := time.Now()
	items, err := b.store.ChunkClaim(ctx, batchsender.ChunkClaimParams{BatchID: d.ID, Owner: "w", Now: now, LeaseUntil: now.Add(time.Minute), Limit: 1})
	if err != nil || len(items) != 1 {
		t.Fatalf("claim: %v %v", items, err)
	}
	msg := "suppressed: a on test (unsubscribe)"
	if _, err := b.store.ItemResultsWriteMany(ctx, []batchsender.ItemResult{{
		ItemID: items[0].ID, BatchID: d.ID, Owner: "w", Status: batchsender.ItemSkipped, Error: msg,
		Attempt: batchsender.Attempt{ItemID: items[0].ID, Number: 1, StartedAt: now, Outcome: "skipped", Error: msg},
	}}); err != nil {
		t.Fatal(err)
	}
	if got := b.getBatch(t, d.ID); got.Counts.Skipped != 1 || got.Counts.Pending != 1 {
		t.Fatalf("counts %+v", got.Counts)
	}
	var list struct {
		Data []struct {
			ID        string `json:"id"`
			Status    string `json:"status"`
			LastError string `json:"last_error"`
		} `json:"data"`
	}
	b.do(t, call{method: "GET", path: "/v1/batches/" + d.ID + "/items?status=skipped"}).expect(t, http.StatusOK).decode(t, &list)
	if len(list.Data) != 1 || list.Data[0].LastError != msg {
		t.Fatalf("skipped items %+v", list.Data)
	}
	b.do(t, call{method: "GET", path: "/v1/batches/" + d.ID + "/items/" + items[0].ID + "/attempts"}).expect(t, http.StatusOK)
}
