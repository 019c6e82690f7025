package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// repeatReader yields prefix, then item repeated forever (until limit bytes).
// The transport may go on reading it after the response has arrived, so
// the count read by the test is atomic.
type repeatReader struct {
	prefix, item []byte
	limit, n     int64
	off          int
	read         atomic.Int64
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.n >= r.limit {
		return 0, io.EOF
	}
	w := 0
	for w < len(p) && r.n < r.limit {
		var src []byte
		if r.n < int64(len(r.prefix)) {
			src = r.prefix[r.n:]
		} else {
			src = r.item[r.off:]
		}
		k := copy(p[w:], src)
		if r.n >= int64(len(r.prefix)) {
			r.off = (r.off + k) % len(r.item)
		}
		w += k
		r.n += int64(k)
	}
	r.read.Store(r.n)
	return w, nil
}

// TestBadInput sends malformed and forbidden requests to a server started
// without BATCHSENDER_ALLOW_PRIVATE_NETWORKS: each must get a clear 4xx
// problem document (or, for guarded URLs, a permanent item failure naming
// the guard), nothing half-created may remain, and the server stays up.
func TestBadInput(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	secret := randomSecret(t)
	// The receiver must see nothing: every URL pointing at it is blocked.
	recv := startReceiver(t, ReceiverOptions{Secret: secret})
	_, c := startServer(t, serverOptions{})
	if _, err := c.CreateConnection(ctx, "hooks", secret, nil); err != nil {
		t.Fatal(err)
	}
	healthy := func(t *testing.T) {
		t.Helper()
		resp, err := c.Do(ctx, http.MethodGet, "/healthz", "", nil, nil)
		if err != nil || resp.Status != http.StatusOK {
			t.Fatalf("/healthz: %v %v", resp, err)
		}
	}
	expectProblem := func(t *testing.T, resp Response, err error, statuses ...int) Problem {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(statuses, resp.Status) {
			t.Fatalf("status %d, want one of %v: %s", resp.Status, statuses, resp)
		}
		p, perr := IsProblem(resp)
		if perr != nil {
			t.Fatal(perr)
		}
		return p
	}
	before, err := c.ListBatchIDs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var drafts []string                 // batches this test creates on purpose
	okURL := "https://example.com/hook" // never contacted: those batches are rejected or stay drafts
	post := func(body string) (Response, error) {
		return c.Do(ctx, http.MethodPost, "/v1/batches", "application/json", strings.NewReader(body), nil)
	}

	rejects := []struct {
		name, body string
		statuses   []int
		mention    string // a word the detail must contain
	}{
		{"MalformedJSON", `{"module":"webhook",`, []int{400}, ""},
		{"NotAnObject", `[1,2,3]`, []int{400}, ""},
		{"TrailingGarbage", `{"module":"webhook","connection":"hooks","items":[{"url":"` + okURL + `"}]} x`, []int{400}, ""},
		{"UnknownField", `{"module":"webhook","connection":"hooks","colour":"red","items":[{"url":"` + okURL + `"}]}`, []int{400, 422}, "colour"},
		{"MissingModule", `{"connection":"hooks","items":[{"url":"` + okURL + `"}]}`, []int{400, 422}, "module"},
		{"UnknownModule", `{"module":"carrier-pigeon","connection":"hooks","items":[{"url":"` + okURL + `"}]}`, []int{400, 404, 422}, "module"},
		{"MissingConnection", `{"module":"webhook","items":[{"url":"` + okURL + `"}]}`, []int{400, 422}, "connection"},
		{"UnknownConnection", `{"module":"webhook","connection":"nope","items":[{"url":"` + okURL + `"}]}`, []int{400, 404, 422}, "connection"},
		{"ItemWithoutURL", `{"module":"webhook","connection":"hooks","items":[{"payload":{"a":1}}]}`, []int{400, 422}, "url"},
		{"ItemURLNotHTTP", `{"module":"webhook","connection":"hooks","items":[{"url":"ftp://example.com/x"}]}`, []int{400, 422}, "url"},
		{"ItemURLGarbage", `{"module":"webhook","connection":"hooks","items":[{"url":"http://exa mple.com/%zz"}]}`, []int{400, 422}, "url"},
		{"ItemNotAnObject", `{"module":"webhook","connection":"hooks","items":[42]}`, []int{400, 422}, ""},
		{"NegativeMaxAttempts", `{"module":"webhook","connection":"hooks","items":[{"url":"` + okURL + `"}],"options":{"max_attempts":-1}}`, []int{400, 422}, "max_attempts"},
		{"HugeConcurrency", `{"module":"webhook","connection":"hooks","items":[{"url":"` + okURL + `"}],"options":{"concurrency":1000000}}`, []int{400, 422}, "concurrency"},
		{"BadDuration", `{"module":"webhook","connection":"hooks","items":[{"url":"` + okURL + `"}],"options":{"retry_base_delay":"soon"}}`, []int{400, 422}, "retry_base_delay"},
		{"BadSendAt", `{"module":"webhook","connection":"hooks","items":[{"url":"` + okURL + `"}],"options":{"send_at":"tomorrow"}}`, []int{400, 422}, ""},
	}
	for _, tc := range rejects {
		t.Run("Rejects"+tc.name, func(t *testing.T) {
			resp, err := post(tc.body)
			p := expectProblem(t, resp, err, tc.statuses...)
			t.Logf("%d %s", resp.Status, p.Detail)
			if tc.mention != "" && !strings.Contains(strings.ToLower(p.Detail), tc.mention) {
				t.Errorf("detail %q does not name %q", p.Detail, tc.mention)
			}
			healthy(t)
		})
	}

	t.Run("RejectsTooManyInlineItems", func(t *testing.T) {
		var sb strings.Builder
		sb.WriteString(`{"module":"webhook","connection":"hooks","template":{"url":"` + okURL + `"},"items":[`)
		for i := range 10_001 {
			if i > 0 {
				sb.WriteByte(',')
			}
			fmt.Fprintf(&sb, `{"payload":{"n":%d}}`, i)
		}
		sb.WriteString(`]}`)
		resp, err := post(sb.String())
		expectProblem(t, resp, err, 400, 413, 422)
		healthy(t)
	})

	t.Run("RejectsBodyOverTheLimit", func(t *testing.T) {
		// 256 MiB of items, far past any sane JSON limit; the server must
		// stop reading and answer 413 rather than buffer it.
		body := &repeatReader{
			prefix: []byte(`{"module":"webhook","connection":"hooks","template":{"url":"` + okURL + `"},"items":[`),
			item:   []byte(`{"payload":{"text":"` + strings.Repeat("x", 1000) + `"}},`),
			limit:  256 << 20,
		}
		start := time.Now()
		resp, err := c.Do(ctx, http.MethodPost, "/v1/batches", "application/json", body, nil)
		expectProblem(t, resp, err, 413)
		t.Logf("413 after reading %d MiB of the body in %v", body.read.Load()>>20, time.Since(start).Round(time.Millisecond))
		healthy(t)
	})

	t.Run("RejectsConnectionProblems", func(t *testing.T) {
		for name, body := range map[string]string{
			"Malformed":       `{"provider":`,
			"UnknownProvider": `{"provider":"webhook.carrier","name":"x","config":{},"secrets":{}}`,
			"MissingName":     `{"provider":"webhook.http","config":{},"secrets":{"signing_secret":"` + secret + `"}}`,
			"DuplicateName":   `{"provider":"webhook.http","name":"hooks","config":{},"secrets":{"signing_secret":"` + secret + `"}}`,
			"UnknownConfig":   `{"provider":"webhook.http","name":"y","config":{"colour":"red"},"secrets":{"signing_secret":"` + secret + `"}}`,
			"BadSecret":       `{"provider":"webhook.http","name":"z","config":{},"secrets":{"signing_secret":"not base64 !!"}}`,
		} {
			resp, err := c.Do(ctx, http.MethodPost, "/v1/connections", "application/json", strings.NewReader(body), nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.Status/100 != 4 {
				t.Errorf("%s: status %d: %s", name, resp.Status, resp)
				continue
			}
			if _, err := IsProblem(resp); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
		healthy(t)
	})

	t.Run("RejectsMissingOrWrongKey", func(t *testing.T) {
		for _, key := range []string{"", "bsk_wrong", c.Key + "x"} {
			anon := NewClient(c.URL, key)
			resp, err := anon.JSON(ctx, http.MethodGet, "/v1/batches", nil)
			anon.Close()
			expectProblem(t, resp, err, 401)
		}
	})

	// Uploads: a bad row rejects the whole upload with its row number, and
	// nothing of it is kept.
	newDraft := func(t *testing.T) string {
		t.Helper()
		b, err := c.CreateBatch(ctx, map[string]any{"module": "webhook", "connection": "hooks", "template": map[string]any{"url": okURL}})
		if err != nil {
			t.Fatal(err)
		}
		drafts = append(drafts, b.ID)
		return b.ID
	}
	uploads := []struct {
		name, contentType, body, row string
	}{
		{"NDJSONBrokenLine", "application/x-ndjson", "{\"payload\":{\"n\":1}}\n{\"payload\":{\"n\":2}}\n{\"payload\":\n{\"payload\":{\"n\":4}}\n", "3"},
		{"NDJSONNotAnObject", "application/x-ndjson", "{\"payload\":{\"n\":1}}\n[1]\n", "2"},
		{"NDJSONBadURL", "application/x-ndjson", "{\"payload\":{\"n\":1}}\n{\"payload\":{\"n\":1}}\n{\"url\":\"gopher://x\"}\n", "3"},
		{"CSVWrongFieldCount", "text/csv", "payload.n,payload.name\n1,a\n2,b,extra\n", "2"},
		{"CSVUnbalancedQuote", "text/csv", "payload.n,payload.name\n1,a\n2,b\n3,\"c\n", "3"},
		{"CSVDuplicateHeader", "text/csv", "payload.n,payload.n\n1,2\n", ""},
	}
	for _, tc := range uploads {
		t.Run("RejectsUpload"+tc.name, func(t *testing.T) {
			id := newDraft(t)
			// A good upload first, so "nothing kept" means the bad one added nothing.
			resp, err := c.UploadItems(ctx, id, "application/x-ndjson", strings.NewReader("{\"payload\":{\"ok\":1}}\n"))
			if err != nil || resp.Status/100 != 2 {
				t.Fatalf("good upload: %v %v", resp, err)
			}
			resp, err = c.UploadItems(ctx, id, tc.contentType, strings.NewReader(tc.body))
			p := expectProblem(t, resp, err, 400, 422)
			t.Logf("%d %s", resp.Status, p.Detail)
			if tc.row != "" && !strings.Contains(p.Detail, tc.row) {
				t.Errorf("detail %q does not name row %s", p.Detail, tc.row)
			}
			b, err := c.GetBatch(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if b.Total != 1 || b.Status != "draft" {
				t.Errorf("after the rejected upload: total %d status %q, want 1 and draft", b.Total, b.Status)
			}
			healthy(t)
		})
	}
	t.Run("RejectsUploadWithUnknownContentType", func(t *testing.T) {
		id := newDraft(t)
		resp, err := c.UploadItems(ctx, id, "application/xml", strings.NewReader("<items/>"))
		expectProblem(t, resp, err, 400, 415)
	})
	t.Run("RejectsUploadToMissingBatch", func(t *testing.T) {
		resp, err := c.UploadItems(ctx, "bat_nosuchbatch", "application/x-ndjson", strings.NewReader("{}\n"))
		expectProblem(t, resp, err, 404)
	})

	// Loopback in every spelling, without the operator setting: refused at
	// creation, or every item fails permanently naming the guard. The
	// receiver listens there, so anything that slips through is counted.
	port := strings.TrimPrefix(recv.URL, "http://127.0.0.1:")
	hosts := []string{"127.0.0.1", "localhost", "0x7f.0.0.1", "2130706433", "0177.0.0.1", "127.1", "[::1]", "[::ffff:127.0.0.1]", "localhost."}
	// Other names this machine's /etc/hosts maps to loopback pass any
	// check of the URL's spelling; only the dial-time check can stop them.
	hosts = append(hosts, loopbackHostNames()...)
	for _, h := range hosts {
		t.Run("GuardsLoopback/"+url.PathEscape(h), func(t *testing.T) {
			target := "http://" + h + ":" + port + "/hook"
			resp, err := c.JSON(ctx, http.MethodPost, "/v1/batches", map[string]any{
				"module": "webhook", "connection": "hooks",
				"items":   []map[string]any{{"url": target, "payload": map[string]any{"h": h}}},
				"options": map[string]any{"max_attempts": 2, "retry_base_delay": "50ms"},
			})
			if err != nil {
				t.Fatal(err)
			}
			if resp.Status/100 == 4 {
				p := expectProblem(t, resp, nil, resp.Status)
				t.Logf("%s: %d %s", target, resp.Status, p.Detail)
				if !namesGuard(p.Detail) {
					t.Errorf("detail %q does not say the address is blocked", p.Detail)
				}
				return
			}
			if resp.Status != http.StatusCreated {
				t.Fatalf("status %d: %s", resp.Status, resp)
			}
			var b Batch
			if err := resp.Decode(&b); err != nil {
				t.Fatal(err)
			}
			drafts = append(drafts, b.ID)
			b, err = c.WaitBatch(ctx, b.ID, 30*time.Second, func(b Batch) bool { return b.Status == "completed" })
			if err != nil {
				t.Fatal(err)
			}
			items, err := c.ListItems(ctx, b.ID, "")
			if err != nil {
				t.Fatal(err)
			}
			if len(items) == 1 {
				t.Logf("%s: item %s after %d attempts: %s", target, items[0].Status, items[0].Attempts, items[0].LastError)
			}
			if len(items) != 1 || items[0].Status != "failed" || items[0].Attempts != 1 || !namesGuard(items[0].LastError) {
				t.Errorf("want one item failed permanently at its first attempt naming the guard, got %+v", items)
			}
			healthy(t)
		})
	}

	if n := recv.Requests(); n != 0 {
		t.Errorf("the guarded receiver got %d requests", n)
	}
	after, err := c.ListBatchIDs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := append(slices.Clone(before), drafts...)
	slices.Sort(want)
	slices.Sort(after)
	if !slices.Equal(after, want) {
		t.Errorf("batches after the rejected requests: %v, want the deliberate ones %v", after, want)
	}
	healthy(t)
}

// loopbackHostNames returns the names other than localhost that
// /etc/hosts maps to a loopback address. Names from that file resolve
// without any DNS traffic.
func loopbackHostNames() []string {
	b, err := os.ReadFile("/etc/hosts")
	if err != nil {
		return nil
	}
	var names []string
	for _, line := range strings.Split(string(b), "\n") {
		line, _, _ = strings.Cut(line, "#")
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		ip, err := netip.ParseAddr(f[0])
		if err != nil || !ip.IsLoopback() {
			continue
		}
		for _, n := range f[1:] {
			if !strings.HasPrefix(n, "localhost") && !strings.HasPrefix(n, "ip6-") && !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	return names
}

// namesGuard reports whether a message says an address was blocked by the
// private-network guard.
func namesGuard(s string) bool {
	s = strings.ToLower(s)
	for _, w := range []string{"blocked", "not allowed", "private", "loopback", "ssrf"} {
		if strings.Contains(s, w) {
			return true
		}
	}
	return false
}
