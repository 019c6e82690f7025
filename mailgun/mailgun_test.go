package mailgun_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/batchsender/batchsender/internal/providerfakes"
	"github.com/batchsender/batchsender/mailgun"
	"github.com/batchsender/batchsender/sdk"
	"github.com/batchsender/batchsender/sdk/sdktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	apiKey = "key-0123456789abcdef0123456789abcdef"
	domain = "mg.example.com"
)

var template = json.RawMessage(`{"from":"News <news@example.com>","subject":"Hi {{ first_name }}",
 "html":"<p>Hello {{ first_name }}</p>","reply_to":"help@example.com","headers":{"X-Campaign":"c-{{ first_name }}"}}`)

func item(i int) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"to":"User %d <user%d@example.com>","first_name":"U%d"}`, i, i, i))
}

func connection(url string) (json.RawMessage, json.RawMessage) {
	return json.RawMessage(fmt.Sprintf(`{"base_url":%q,"domain":%q,"timeout":"3s","tags":["newsletter"]}`, url, domain)),
		json.RawMessage(fmt.Sprintf(`{"api_key":%q}`, apiKey))
}

type started struct {
	*providerfakes.Mailgun
	url string
}

func TestConformance(t *testing.T) {
	sdktest.Run(t, sdktest.Harness{
		New: func() sdk.Provider { return new(mailgun.Provider) },
		NewFake: func(t *testing.T) sdktest.Fake {
			f := providerfakes.NewMailgun(domain, apiKey)
			return started{f, providerfakes.Start(t, f)}
		},
		Connection:  func(f sdktest.Fake) (json.RawMessage, json.RawMessage) { return connection(f.(started).url) },
		Template:    template,
		Item:        item,
		InvalidItem: json.RawMessage(`{"to":"nobody","first_name":"X"}`),
		Secrets:     []string{apiKey},
		// Mailgun answers for the whole call: no per-item outcome.
		IdempotencyKeys: false,
		RetryAfter:      true,
		Timeout:         3 * time.Second,
		Env:             func(env *sdk.Env) { env.UnsubscribeURL = providerfakes.UnsubscribeURL },
	})
}

func provision(t testing.TB, url string, tmpl json.RawMessage) sdk.Sender {
	t.Helper()
	cfg, sec := connection(url)
	return providerfakes.Provision(t, new(mailgun.Provider), cfg, sec, tmpl)
}

func setup(t *testing.T, tmpl json.RawMessage) (*providerfakes.Mailgun, sdk.Sender) {
	t.Helper()
	f := providerfakes.NewMailgun(domain, apiKey)
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
	t.Logf("email.mailgun: %d API calls per 1000 items", len(f.Calls()))
	msgs := f.Messages()
	if len(msgs) != 1000 {
		t.Fatalf("fake sent %d individual messages", len(msgs))
	}
	m := msgs[7]
	if m.Subject != "Hi U7" || m.HTML != "<p>Hello U7</p>" || m.Text != "Hello U7" || len(m.To) != 1 || m.To[0] != "user7@example.com" ||
		m.Key != "itm_0007" || m.Headers["X-Campaign"] != "c-U7" || m.ReplyTo != "<help@example.com>" ||
		m.Headers["List-Unsubscribe"] != "<https://bs.example.com/u/itm_0007>" ||
		m.Headers["List-Unsubscribe-Post"] != "List-Unsubscribe=One-Click" {
		t.Errorf("message 7 = %+v", m)
	}
}

func TestRepeatedRecipientGoesToSecondCall(t *testing.T) {
	t.Parallel()
	f, s := setup(t, template)
	its := items(4)
	its[3].Data = json.RawMessage(`{"to":"user1@EXAMPLE.com","first_name":"Again"}`)
	allOK(t, s.Send(context.Background(), its))
	if calls := f.Calls(); len(calls) != 2 || calls[0].Items != 3 || calls[1].Items != 1 {
		t.Errorf("calls = %+v, want 3 items then 1", calls)
	}
	if m := f.Messages()[3]; m.Subject != "Hi Again" || m.Key != "itm_0003" {
		t.Errorf("single message = %+v", m)
	}
}

func newsletter() json.RawMessage {
	var body strings.Builder
	body.WriteString(`<html><body><h1>Hello {{ first_name }}</h1>\n`)
	for i := range 200 {
		fmt.Fprintf(&body, `<p class=\"x\">Paragraph %d of the newsletter, the same for everyone.</p>\n`, i)
	}
	body.WriteString(`<a href=\"{{ unsubscribe_url }}\">Unsubscribe {{ first_name }}</a></body></html>`)
	return json.RawMessage(`{"from":"a@example.com","subject":"News for {{ first_name }}","html":"` + body.String() + `"}`)
}

func TestLargePersonalizedNewsletterSharesOneCall(t *testing.T) {
	t.Parallel()
	f, s := setup(t, newsletter())
	allOK(t, s.Send(context.Background(), items(300)))
	if calls := f.Calls(); len(calls) != 1 {
		t.Errorf("%d calls, want 1", len(calls))
	}
	m := f.Messages()[42]
	if len(m.HTML) < 14000 || !strings.HasPrefix(m.HTML, "<html><body><h1>Hello U42</h1>") ||
		!strings.HasSuffix(m.HTML, `<a href="https://bs.example.com/u/itm_0042">Unsubscribe U42</a></body></html>`) ||
		!strings.Contains(m.Text, "Paragraph 199 of the newsletter") || !strings.HasPrefix(m.Text, "Hello U42") {
		t.Errorf("item 42: html %d bytes starting %q, text starting %q", len(m.HTML), m.HTML[:40], m.Text[:20])
	}
}

func TestOversizeFormIsSplit(t *testing.T) {
	// Not parallel: it changes the package's size limit.
	defer mailgun.SetMaxCallBytes(40 << 10)()
	f, s := setup(t, json.RawMessage(`{"from":"a@example.com","subject":"s","html":"<p>{{ first_name }}</p>"}`))
	its := items(8)
	for i := range its {
		// About 10 KB of per-recipient values each.
		its[i].Data = json.RawMessage(fmt.Sprintf(`{"to":"u%d@example.com","first_name":"%s%d"}`, i, strings.Repeat("x", 3000), i))
	}
	allOK(t, s.Send(context.Background(), its))
	calls := f.Calls()
	if len(calls) < 2 {
		t.Errorf("%d calls for 8 items of ~10 KB with a 40 KB limit, want a split", len(calls))
	}
	total := 0
	for _, c := range calls {
		total += c.Items
	}
	if total != 8 || len(f.Messages()) != 8 {
		t.Errorf("%d items in calls, %d messages, want 8", total, len(f.Messages()))
	}
}

func TestAttachmentsAreMultipartFiles(t *testing.T) {
	t.Parallel()
	f, s := setup(t, json.RawMessage(`{"from":"a@example.com","subject":"s","text":"t {{ first_name }}",
	 "attachments":[{"filename":"report.pdf","content_type":"application/pdf","content":"aGVsbG8="}]}`))
	allOK(t, s.Send(context.Background(), items(2)))
	if m := f.Messages(); len(m) != 2 || len(m[1].Attachments) != 1 || m[1].Attachments[0] != "report.pdf" || m[1].Text != "t U1" {
		t.Errorf("messages = %+v", m)
	}
}

func TestRateLimitAndServerError(t *testing.T) {
	t.Parallel()
	f, s := setup(t, template)
	f.Set(sdktest.Behaviour{Mode: sdktest.RateLimit, RetryAfter: 12 * time.Second})
	for _, r := range s.Send(context.Background(), items(2)) {
		if r.Outcome != sdk.OutcomeRetry || r.StatusCode != 429 || r.RetryAfter != 12*time.Second {
			t.Errorf("429: got %v %d %v", r.Outcome, r.StatusCode, r.RetryAfter)
		}
	}
	f.Set(sdktest.Behaviour{Mode: sdktest.ServerError})
	for _, r := range s.Send(context.Background(), items(2)) {
		if r.Outcome != sdk.OutcomeRetry || r.StatusCode != 500 {
			t.Errorf("500: got %v %d", r.Outcome, r.StatusCode)
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

func TestWrongKeyOrDomainIsPermanentWithoutSecret(t *testing.T) {
	t.Parallel()
	for _, f := range []*providerfakes.Mailgun{providerfakes.NewMailgun(domain, "key-other"), providerfakes.NewMailgun("other.example.com", apiKey)} {
		s := provision(t, providerfakes.Start(t, f), template)
		r := s.Send(context.Background(), items(1))[0]
		if r.Outcome != sdk.OutcomePermanent || (r.StatusCode != 401 && r.StatusCode != 404) || strings.Contains(r.Err.Error(), apiKey) {
			t.Errorf("got %v %d %v", r.Outcome, r.StatusCode, r.Err)
		}
	}
}

func TestValidateItemRejectsBadInput(t *testing.T) {
	t.Parallel()
	f, s := setup(t, template)
	for _, bad := range []string{`{"first_name":"A"}`, `{"to":"a@@b","first_name":"A"}`, `{"to":"a@example.com"}`} {
		if err := s.ValidateItem(json.RawMessage(bad)); err == nil {
			t.Errorf("ValidateItem(%s) passed", bad)
		}
	}
	if len(f.Calls()) != 0 {
		t.Error("validation called the API")
	}
}

func TestProvisionNeedsDomain(t *testing.T) {
	t.Parallel()
	err := new(mailgun.Provider).Provision(context.Background(), sdk.Env{Config: json.RawMessage(`{}`), Secrets: json.RawMessage(`{"api_key":"k"}`)})
	if err == nil || !strings.Contains(err.Error(), "domain") {
		t.Errorf("err = %v", err)
	}
}

func TestFakeRejectsWhatMailgunRejects(t *testing.T) {
	t.Parallel()
	f := providerfakes.NewMailgun(domain, apiKey)
	base := providerfakes.Start(t, f)
	post := func(form url.Values, user string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, base+"/v3/"+domain+"/messages", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if user != "" {
			req.SetBasicAuth(user, apiKey)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		buf := make([]byte, 4096)
		n, _ := resp.Body.Read(buf)
		return resp.StatusCode, string(buf[:n])
	}
	ok := url.Values{"from": {"a@example.com"}, "to": {"b@example.com"}, "subject": {"s"}, "text": {"t"}}
	if st, _ := post(ok, "api"); st != 200 {
		t.Errorf("valid form: %d", st)
	}
	if st, body := post(ok, "other"); st != 401 || body != "Forbidden" {
		t.Errorf("wrong user: %d %q", st, body)
	}
	many := url.Values{"from": {"a@example.com"}, "subject": {"s"}, "text": {"t"}}
	for i := range 1001 {
		many.Add("to", fmt.Sprintf("u%d@example.com", i))
	}
	if st, _ := post(many, "api"); st != 400 {
		t.Errorf("1001 recipients: %d", st)
	}
	noText := url.Values{"from": {"a@example.com"}, "to": {"b@example.com"}, "subject": {"s"}}
	if st, body := post(noText, "api"); st != 400 || !strings.Contains(body, "text") {
		t.Errorf("no body: %d %s", st, body)
	}
}

func BenchmarkCallsPer1000Items(b *testing.B) {
	f := providerfakes.NewMailgun(domain, apiKey)
	s := provision(b, providerfakes.Start(b, f), template)
	its := items(1000)
	for b.Loop() {
		s.Send(context.Background(), its)
	}
	b.ReportMetric(float64(len(f.Calls()))/float64(b.N), "calls/1000items")
}
