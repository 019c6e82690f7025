package sendgrid_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/batchsender/batchsender/internal/providerfakes"
	"github.com/batchsender/batchsender/sdk"
	"github.com/batchsender/batchsender/sdk/sdktest"
	"github.com/batchsender/batchsender/sendgrid"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const apiKey = "SG.test-key.0123456789abcdef"

var template = json.RawMessage(`{"from":"News <news@example.com>","subject":"Hi {{ first_name }}",
 "html":"<p>Hello {{ first_name }}</p>","text":"Hello {{ first_name }}","headers":{"X-Campaign":"c-{{ first_name }}"}}`)

func item(i int) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"to":"user%d@example.com","first_name":"U%d"}`, i, i))
}

func connection(url string) (json.RawMessage, json.RawMessage) {
	return json.RawMessage(fmt.Sprintf(`{"base_url":%q,"timeout":"3s"}`, url)),
		json.RawMessage(fmt.Sprintf(`{"api_key":%q}`, apiKey))
}

type started struct {
	*providerfakes.SendGrid
	url string
}

func TestConformance(t *testing.T) {
	sdktest.Run(t, sdktest.Harness{
		New: func() sdk.Provider { return new(sendgrid.Provider) },
		NewFake: func(t *testing.T) sdktest.Fake {
			f := providerfakes.NewSendGrid(apiKey)
			return started{f, providerfakes.Start(t, f)}
		},
		Connection:  func(f sdktest.Fake) (json.RawMessage, json.RawMessage) { return connection(f.(started).url) },
		Template:    template,
		Item:        item,
		InvalidItem: json.RawMessage(`{"to":"nobody","first_name":"X"}`),
		Secrets:     []string{apiKey},
		// SendGrid answers for the whole call: no per-item outcome.
		IdempotencyKeys: false,
		RetryAfter:      true,
		Timeout:         3 * time.Second,
		Env:             func(env *sdk.Env) { env.UnsubscribeURL = providerfakes.UnsubscribeURL },
	})
}

func provision(t testing.TB, url string, tmpl json.RawMessage) sdk.Sender {
	t.Helper()
	cfg, sec := connection(url)
	return providerfakes.Provision(t, new(sendgrid.Provider), cfg, sec, tmpl)
}

func setup(t *testing.T, tmpl json.RawMessage) (*providerfakes.SendGrid, sdk.Sender) {
	t.Helper()
	f := providerfakes.NewSendGrid(apiKey)
	return f, provision(t, providerfakes.Start(t, f), tmpl)
}

func items(n int) []sdk.Item { return providerfakes.Items(n, item) }

func allOK(t *testing.T, res []sdk.Result) {
	t.Helper()
	for i, r := range res {
		if r.Outcome != sdk.OutcomeOK || r.MessageID == "" {
			t.Fatalf("item %d: %v %v", i, r.Outcome, r.Err)
		}
	}
}

func TestThousandItemsTakeOneCallRenderedPerItem(t *testing.T) {
	t.Parallel()
	f, s := setup(t, template)
	allOK(t, s.Send(context.Background(), items(1000)))
	if calls := len(f.Calls()); calls != 1 {
		t.Errorf("1000 items took %d calls, want 1", calls)
	}
	t.Logf("email.sendgrid: %d API calls per 1000 items", len(f.Calls()))
	msgs := f.Messages()
	if len(msgs) != 1000 {
		t.Fatalf("fake accepted %d messages", len(msgs))
	}
	m := msgs[7]
	if m.Subject != "Hi U7" || m.HTML != "<p>Hello U7</p>" || m.Text != "Hello U7" || m.To[0] != "user7@example.com" ||
		m.Key != "itm_0007" || m.Headers["X-Campaign"] != "c-U7" ||
		m.Headers["List-Unsubscribe"] != "<https://bs.example.com/u/itm_0007>" ||
		m.Headers["List-Unsubscribe-Post"] != "List-Unsubscribe=One-Click" {
		t.Errorf("message 7 = %+v", m)
	}
}

func TestRepeatedRecipientGoesToSecondCall(t *testing.T) {
	t.Parallel()
	f, s := setup(t, template)
	its := items(4)
	its[3].Data = json.RawMessage(`{"to":"USER1@example.com","first_name":"Again"}`)
	allOK(t, s.Send(context.Background(), its))
	if calls := f.Calls(); len(calls) != 2 || calls[0].Items != 3 || calls[1].Items != 1 {
		t.Errorf("calls = %+v, want 3 items then 1", calls)
	}
}

func TestLargeBodies(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("lorem ipsum ", 1200) // about 14 KB, over the substitution limit
	// The same large body for everyone: one call with literal content.
	f, s := setup(t, json.RawMessage(`{"from":"a@example.com","subject":"Hi {{ first_name }}","text":"`+big+`"}`))
	allOK(t, s.Send(context.Background(), items(20)))
	if n := len(f.Calls()); n != 1 {
		t.Errorf("shared large body: %d calls, want 1", n)
	}
	// A large body that differs per item cannot be a substitution.
	f, s = setup(t, json.RawMessage(`{"from":"a@example.com","subject":"s","text":"`+big+` {{ first_name }}"}`))
	allOK(t, s.Send(context.Background(), items(3)))
	if n := len(f.Calls()); n != 3 {
		t.Errorf("personal large bodies: %d calls, want 3", n)
	}
	if m := f.Messages()[2]; !strings.HasSuffix(m.Text, " U2") {
		t.Errorf("text ends %q", m.Text[len(m.Text)-10:])
	}
}

func TestLargePersonalizedNewsletterSharesACall(t *testing.T) {
	t.Parallel()
	var body strings.Builder
	body.WriteString(`<html><body><h1>Hello {{ first_name }}</h1>\n`)
	for i := range 200 {
		fmt.Fprintf(&body, `<p class=\"x\">Paragraph %d of the newsletter, the same for everyone.</p>\n`, i)
	}
	body.WriteString(`<a href=\"{{ unsubscribe_url }}\">Unsubscribe {{ first_name }}</a></body></html>`)
	f, s := setup(t, json.RawMessage(`{"from":"a@example.com","subject":"News for {{ first_name }}","html":"`+body.String()+`"}`))
	its := items(300)
	// A value with '>' changes the text's segment count: that item gets
	// its own skeleton, still rendered right.
	its[5].Data = json.RawMessage(`{"to":"odd@example.com","first_name":"A > B"}`)
	allOK(t, s.Send(context.Background(), its))
	calls := f.Calls()
	if len(calls) != 2 || calls[0].Items != 299 {
		t.Errorf("calls = %+v, want 299 items then 1", calls)
	}
	msgs := f.Messages()
	byKey := map[string]providerfakes.Message{}
	for _, m := range msgs {
		byKey[m.Key] = m
	}
	m := byKey["itm_0042"]
	if len(m.HTML) < 14000 || !strings.HasPrefix(m.HTML, "<html><body><h1>Hello U42</h1>") ||
		!strings.HasSuffix(m.HTML, `<a href="https://bs.example.com/u/itm_0042">Unsubscribe U42</a></body></html>`) ||
		!strings.Contains(m.Text, "Paragraph 199 of the newsletter") {
		t.Errorf("item 42 html starts %q ends %q", m.HTML[:40], m.HTML[len(m.HTML)-80:])
	}
	if odd := byKey["itm_0005"]; !strings.Contains(odd.HTML, "<h1>Hello A &gt; B</h1>") {
		t.Errorf("odd item html starts %q", odd.HTML[:60])
	}
}

func TestPerItemSenderSplitsCalls(t *testing.T) {
	t.Parallel()
	f, s := setup(t, template)
	its := items(4)
	its[2].Data = json.RawMessage(`{"to":"x@example.com","first_name":"X","from":"Other <other@example.com>"}`)
	allOK(t, s.Send(context.Background(), its))
	if calls := f.Calls(); len(calls) != 2 || calls[0].Items != 3 || calls[1].Items != 1 {
		t.Errorf("calls = %+v, want 3 then 1", calls)
	}
	for _, m := range f.Messages() {
		if (m.Key == "itm_0002") != (m.From == "other@example.com") {
			t.Errorf("item %s sent from %s", m.Key, m.From)
		}
	}
}

func TestRateLimitUsesReset(t *testing.T) {
	t.Parallel()
	f, s := setup(t, template)
	f.Set(sdktest.Behaviour{Mode: sdktest.RateLimit, RetryAfter: 20 * time.Second})
	for _, r := range s.Send(context.Background(), items(2)) {
		if r.Outcome != sdk.OutcomeRetry || r.StatusCode != 429 || r.RetryAfter < 19*time.Second || r.RetryAfter > 21*time.Second {
			t.Errorf("got %v %d %v", r.Outcome, r.StatusCode, r.RetryAfter)
		}
	}
}

func TestRejectedCallFailsItsItems(t *testing.T) {
	t.Parallel()
	f, s := setup(t, template)
	f.Set(sdktest.Behaviour{RejectKeys: []string{"itm_0001"}})
	for i, r := range s.Send(context.Background(), items(3)) {
		if r.Outcome != sdk.OutcomePermanent || !strings.Contains(r.Err.Error(), "personalizations.1.to.0.email") {
			t.Errorf("item %d: %v %v", i, r.Outcome, r.Err)
		}
	}
}

func TestSlowAnswerPastTimeoutIsUnknown(t *testing.T) {
	t.Parallel()
	f, s := setup(t, template)
	f.SetDelay(4 * time.Second)
	for _, r := range s.Send(context.Background(), items(2)) {
		if r.Outcome != sdk.OutcomeUnknown {
			t.Errorf("got %v (%v), want unknown", r.Outcome, r.Err)
		}
	}
}

func TestWrongKeyIsPermanentWithoutSecret(t *testing.T) {
	t.Parallel()
	f := providerfakes.NewSendGrid("SG.other")
	s := provision(t, providerfakes.Start(t, f), template)
	r := s.Send(context.Background(), items(1))[0]
	if r.Outcome != sdk.OutcomePermanent || r.StatusCode != 401 || strings.Contains(r.Err.Error(), apiKey) {
		t.Errorf("got %v %d %v", r.Outcome, r.StatusCode, r.Err)
	}
}

func TestValidateItemRejectsBadInput(t *testing.T) {
	t.Parallel()
	f, s := setup(t, template)
	for _, bad := range []string{`{"first_name":"A"}`, `{"to":"a@@b","first_name":"A"}`, `{"to":"a@example.com"}`, `{"to":5,"first_name":"A"}`} {
		if err := s.ValidateItem(json.RawMessage(bad)); err == nil {
			t.Errorf("ValidateItem(%s) passed", bad)
		}
	}
	if len(f.Calls()) != 0 {
		t.Error("validation called the API")
	}
}

func TestFakeRejectsWhatSendGridRejects(t *testing.T) {
	t.Parallel()
	f := providerfakes.NewSendGrid(apiKey)
	url := providerfakes.Start(t, f)
	post := func(body string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, url+"/v3/mail/send", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+apiKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var v map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&v)
		raw, _ := json.Marshal(v)
		return resp.StatusCode, string(raw)
	}
	pers := func(n int, addr func(int) string) string {
		var ps []string
		for i := range n {
			ps = append(ps, fmt.Sprintf(`{"to":[{"email":%q}]}`, addr(i)))
		}
		return `{"personalizations":[` + strings.Join(ps, ",") + `],"from":{"email":"a@example.com"},"subject":"s","content":[{"type":"text/plain","value":"t"}]}`
	}
	if st, body := post(pers(1001, func(i int) string { return fmt.Sprintf("u%d@example.com", i) })); st != 400 || !strings.Contains(body, "1000") {
		t.Errorf("1001 personalizations: %d %s", st, body)
	}
	if st, body := post(pers(2, func(int) string { return "same@example.com" })); st != 400 || !strings.Contains(body, "unique") {
		t.Errorf("duplicate: %d %s", st, body)
	}
	if st, body := post(pers(1, func(int) string { return "bad" })); st != 400 || !strings.Contains(body, "personalizations.0.to.0.email") {
		t.Errorf("bad address: %d %s", st, body)
	}
	if st, _ := post(pers(1000, func(i int) string { return fmt.Sprintf("u%d@example.com", i) })); st != 202 {
		t.Errorf("1000 personalizations: %d", st)
	}
}

func BenchmarkCallsPer1000Items(b *testing.B) {
	f := providerfakes.NewSendGrid(apiKey)
	s := provision(b, providerfakes.Start(b, f), template)
	its := items(1000)
	for b.Loop() {
		s.Send(context.Background(), its)
	}
	b.ReportMetric(float64(len(f.Calls()))/float64(b.N), "calls/1000items")
}
