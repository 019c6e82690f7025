package postmark_test

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
	"github.com/batchsender/batchsender/postmark"
	"github.com/batchsender/batchsender/sdk"
	"github.com/batchsender/batchsender/sdk/sdktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const token = "pm-server-token-0123456789"

var template = json.RawMessage(`{"from":"News <news@example.com>","subject":"Hi {{ first_name }}",
 "html":"<p>Hello {{ first_name }}</p>","headers":{"X-Campaign":"c-{{ first_name }}"}}`)

func item(i int) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"to":"user%d@example.com","first_name":"U%d"}`, i, i))
}

func connection(url string) (json.RawMessage, json.RawMessage) {
	return json.RawMessage(fmt.Sprintf(`{"base_url":%q,"timeout":"2s","message_stream":"broadcast"}`, url)),
		json.RawMessage(fmt.Sprintf(`{"server_token":%q}`, token))
}

func TestConformance(t *testing.T) {
	sdktest.Run(t, sdktest.Harness{
		New: func() sdk.Provider { return new(postmark.Provider) },
		NewFake: func(t *testing.T) sdktest.Fake {
			f := providerfakes.NewPostmark(token)
			return started{f, providerfakes.Start(t, f)}
		},
		Connection:      func(f sdktest.Fake) (json.RawMessage, json.RawMessage) { return connection(f.(started).url) },
		Template:        template,
		Item:            item,
		InvalidItem:     json.RawMessage(`{"to":"not-an-address","first_name":"X"}`),
		Secrets:         []string{token},
		IdempotencyKeys: true,
		RetryAfter:      true,
		Timeout:         2 * time.Second,
		Env:             func(env *sdk.Env) { env.UnsubscribeURL = providerfakes.UnsubscribeURL },
	})
}

// started is a fake with its URL.
type started struct {
	*providerfakes.Postmark
	url string
}

func setup(t *testing.T) (*providerfakes.Postmark, sdk.Sender) {
	t.Helper()
	f := providerfakes.NewPostmark(token)
	cfg, sec := connection(providerfakes.Start(t, f))
	return f, providerfakes.Provision(t, new(postmark.Provider), cfg, sec, template)
}

func items(n int) []sdk.Item { return providerfakes.Items(n, item) }

// sendAll sends items in MaxChunk chunks as the engine would.
func sendAll(s sdk.Sender, its []sdk.Item) []sdk.Result {
	return providerfakes.SendAll(s, its, postmark.MaxBatch)
}

func TestThousandItemsTakeTwoCallsRenderedPerItem(t *testing.T) {
	t.Parallel()
	f, s := setup(t)
	res := sendAll(s, items(1000))
	for i, r := range res {
		if r.Outcome != sdk.OutcomeOK || r.MessageID == "" {
			t.Fatalf("item %d: %v %v", i, r.Outcome, r.Err)
		}
	}
	if calls := len(f.Calls()); calls != 2 {
		t.Errorf("1000 items took %d calls, want 2", calls)
	}
	t.Logf("email.postmark: %d API calls per 1000 items", len(f.Calls()))
	msgs := f.Messages()
	if len(msgs) != 1000 {
		t.Fatalf("fake accepted %d messages", len(msgs))
	}
	m := msgs[7]
	if m.Subject != "Hi U7" || m.HTML != "<p>Hello U7</p>" || m.To[0] != "user7@example.com" ||
		m.Key != "itm_0007" || m.Headers["X-Campaign"] != "c-U7" || m.Text != "Hello U7" {
		t.Errorf("message 7 = %+v", m)
	}
	if m.Headers["Message-Id"] != "<itm_0007@example.com>" ||
		m.Headers["List-Unsubscribe"] != "<https://bs.example.com/u/itm_0007>" ||
		m.Headers["List-Unsubscribe-Post"] != "List-Unsubscribe=One-Click" {
		t.Errorf("message 7 headers = %v", m.Headers)
	}
}

func TestPerItemErrorCodes(t *testing.T) {
	t.Parallel()
	f, s := setup(t)
	its := items(4)
	f.Set(sdktest.Behaviour{RejectKeys: []string{"itm_0002"}})
	res := s.Send(context.Background(), its)
	for i, r := range res {
		want := sdk.OutcomeOK
		if i == 2 {
			want = sdk.OutcomePermanent
		}
		if r.Outcome != want {
			t.Errorf("item %d: %v (%v), want %v", i, r.Outcome, r.Err, want)
		}
	}
	if !strings.Contains(res[2].Err.Error(), "ErrorCode 406") {
		t.Errorf("err = %v", res[2].Err)
	}
	if len(f.Calls()) != 1 {
		t.Errorf("%d calls", len(f.Calls()))
	}
}

func TestRateLimitHonoursRetryAfter(t *testing.T) {
	t.Parallel()
	f, s := setup(t)
	f.Set(sdktest.Behaviour{Mode: sdktest.RateLimit, RetryAfter: 30 * time.Second})
	for _, r := range s.Send(context.Background(), items(3)) {
		if r.Outcome != sdk.OutcomeRetry || r.RetryAfter != 30*time.Second || r.StatusCode != 429 {
			t.Errorf("got %v %v %d", r.Outcome, r.RetryAfter, r.StatusCode)
		}
	}
}

func TestSlowAnswerPastTimeoutIsUnknown(t *testing.T) {
	t.Parallel()
	f, s := setup(t)
	f.SetDelay(3 * time.Second) // the connection's timeout is 2s
	for _, r := range s.Send(context.Background(), items(2)) {
		if r.Outcome != sdk.OutcomeUnknown {
			t.Errorf("got %v (%v), want unknown: Postmark has no idempotency key", r.Outcome, r.Err)
		}
	}
}

func TestWrongTokenIsPermanentWithoutSecret(t *testing.T) {
	t.Parallel()
	f := providerfakes.NewPostmark("another-token")
	url := providerfakes.Start(t, f)
	cfg, sec := connection(url)
	p := new(postmark.Provider)
	if err := p.Provision(context.Background(), sdk.Env{Config: cfg, Secrets: sec, AllowPrivateNetworks: true}); err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	s, _ := p.Compile(template)
	r := s.Send(context.Background(), items(1))[0]
	if r.Outcome != sdk.OutcomePermanent || r.StatusCode != 401 || strings.Contains(r.Err.Error(), token) {
		t.Errorf("got %v %d %v", r.Outcome, r.StatusCode, r.Err)
	}
}

func TestValidateItemRejectsBadInput(t *testing.T) {
	t.Parallel()
	f, s := setup(t)
	for _, bad := range []string{`{"first_name":"A"}`, `{"to":"a@@b","first_name":"A"}`, `{"to":"a@example.com"}`, `{"to":"x@nodot","first_name":"A"}`} {
		if err := s.ValidateItem(json.RawMessage(bad)); err == nil {
			t.Errorf("ValidateItem(%s) passed", bad)
		}
	}
	if len(f.Calls()) != 0 {
		t.Error("validation called the API")
	}
}

func TestProvisionErrors(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ cfg, sec, want string }{
		{`{}`, `{}`, "server_token is required"},
		{`{"base_url":"http://api.example.com"}`, `{"server_token":"x"}`, "https"},
		{`{"bogus":1}`, `{"server_token":"x"}`, "bogus"},
		{`{"timeout":"forever"}`, `{"server_token":"x"}`, "timeout"},
	} {
		err := new(postmark.Provider).Provision(context.Background(), sdk.Env{Config: json.RawMessage(c.cfg), Secrets: json.RawMessage(c.sec)})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Provision(%s, %s) = %v, want %q", c.cfg, c.sec, err, c.want)
		}
	}
}

func TestFakeRejectsWhatPostmarkRejects(t *testing.T) {
	t.Parallel()
	f := providerfakes.NewPostmark(token)
	url := providerfakes.Start(t, f)
	post := func(body string, tok string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, url+"/email/batch", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if tok != "" {
			req.Header.Set("X-Postmark-Server-Token", tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		_, _ = fmt.Fprint(&b, resp.Header.Get("Content-Type"))
		buf := make([]byte, 4096)
		n, _ := resp.Body.Read(buf)
		return resp.StatusCode, string(buf[:n])
	}
	one := `{"From":"a@example.com","To":"b@example.com","Subject":"s","TextBody":"t"}`
	if st, _ := post("["+one+"]", ""); st != 401 {
		t.Errorf("no token: %d", st)
	}
	if st, body := post("["+strings.Repeat(one+",", 500)+one+"]", token); st != 422 || !strings.Contains(body, `"ErrorCode":410`) {
		t.Errorf("501 messages: %d %s", st, body)
	}
	if st, body := post(`[{"From":"a@example.com","To":"bad","Subject":"s","TextBody":"t"},`+one+`]`, token); st != 200 ||
		!strings.Contains(body, `"ErrorCode":300`) || !strings.Contains(body, `"ErrorCode":0`) {
		t.Errorf("mixed batch: %d %s", st, body)
	}
}

func BenchmarkCallsPer1000Items(b *testing.B) {
	f := providerfakes.NewPostmark(token)
	url := providerfakes.Start(b, f)
	cfg, sec := connection(url)
	p := new(postmark.Provider)
	if err := p.Provision(context.Background(), sdk.Env{Config: cfg, Secrets: sec, AllowPrivateNetworks: true}); err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	s, _ := p.Compile(template)
	its := items(1000)
	for b.Loop() {
		sendAll(s, its)
	}
	b.ReportMetric(float64(len(f.Calls()))/float64(b.N), "calls/1000items")
}
