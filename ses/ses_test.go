package ses_test

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
	"github.com/batchsender/batchsender/ses"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	keyID  = "AKIAFAKEFAKEFAKE0001"
	secret = "fakeSecretAccessKey/0123456789abcdefghijk"
	region = "eu-west-1"
)

var template = json.RawMessage(`{"from":"News <news@example.com>","subject":"Hi {{ first_name }} & co",
 "html":"<p>Hello {{ first_name }}</p>","reply_to":"help@example.com","headers":{"X-Campaign":"c-{{ first_name }}"}}`)

func item(i int) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"to":"user%d@example.com","first_name":"U<%d>"}`, i, i))
}

func connection(url string) (json.RawMessage, json.RawMessage) {
	return json.RawMessage(fmt.Sprintf(`{"base_url":%q,"region":%q,"timeout":"2s"}`, url, region)),
		json.RawMessage(fmt.Sprintf(`{"access_key_id":%q,"secret_access_key":%q}`, keyID, secret))
}

type started struct {
	*providerfakes.SES
	url string
}

func TestConformance(t *testing.T) {
	sdktest.Run(t, sdktest.Harness{
		New: func() sdk.Provider { return new(ses.Provider) },
		NewFake: func(t *testing.T) sdktest.Fake {
			f := providerfakes.NewSES(region, keyID, secret)
			return started{f, providerfakes.Start(t, f)}
		},
		Connection:      func(f sdktest.Fake) (json.RawMessage, json.RawMessage) { return connection(f.(started).url) },
		Template:        template,
		Item:            item,
		InvalidItem:     json.RawMessage(`{"to":"jörg@example.com","first_name":"X"}`),
		Secrets:         []string{secret},
		IdempotencyKeys: true,  // the tag reaches the fake and bulk answers are per entry
		RetryAfter:      false, // SES sends no Retry-After
		Timeout:         2 * time.Second,
		Env:             func(env *sdk.Env) { env.UnsubscribeURL = providerfakes.UnsubscribeURL },
	})
}

func provision(t testing.TB, url string, tmpl json.RawMessage) sdk.Sender {
	t.Helper()
	cfg, sec := connection(url)
	return providerfakes.Provision(t, new(ses.Provider), cfg, sec, tmpl)
}

func setup(t *testing.T, tmpl json.RawMessage) (*providerfakes.SES, sdk.Sender) {
	t.Helper()
	f := providerfakes.NewSES(region, keyID, secret)
	return f, provision(t, providerfakes.Start(t, f), tmpl)
}

func items(n int) []sdk.Item { return providerfakes.Items(n, item) }

// sendAll sends items in MaxChunk chunks as the engine would.
func sendAll(s sdk.Sender, its []sdk.Item) []sdk.Result {
	return providerfakes.SendAll(s, its, ses.MaxBulk)
}

func TestBulkCallsRenderedPerItem(t *testing.T) {
	t.Parallel()
	f, s := setup(t, template)
	for i, r := range sendAll(s, items(1000)) {
		if r.Outcome != sdk.OutcomeOK || r.MessageID == "" {
			t.Fatalf("item %d: %v %v", i, r.Outcome, r.Err)
		}
	}
	if calls := len(f.Calls()); calls != 20 {
		t.Errorf("1000 items took %d calls, want 20", calls)
	}
	t.Logf("email.ses: %d API calls per 1000 items", len(f.Calls()))
	m := f.Messages()[7]
	if m.Subject != "Hi U<7> & co" || m.HTML != "<p>Hello U&lt;7&gt;</p>" || m.Text != "Hello U<7>" ||
		m.To[0] != "user7@example.com" || m.Key != "itm_0007" || m.Headers["X-Campaign"] != "c-U<7>" ||
		m.ReplyTo != "<help@example.com>" || m.From != `"News" <news@example.com>` ||
		m.Headers["List-Unsubscribe"] != "<https://bs.example.com/u/itm_0007>" ||
		m.Headers["List-Unsubscribe-Post"] != "List-Unsubscribe=One-Click" {
		t.Errorf("message 7 = %+v", m)
	}
}

func TestPerEntryStatus(t *testing.T) {
	t.Parallel()
	f, s := setup(t, template)
	f.Set(sdktest.Behaviour{RejectKeys: []string{"itm_0002"}})
	res := s.Send(context.Background(), items(4))
	for i, r := range res {
		want := sdk.OutcomeOK
		if i == 2 {
			want = sdk.OutcomePermanent
		}
		if r.Outcome != want {
			t.Errorf("item %d: %v (%v), want %v", i, r.Outcome, r.Err, want)
		}
	}
	if !strings.Contains(res[2].Err.Error(), "MESSAGE_REJECTED") {
		t.Errorf("err = %v", res[2].Err)
	}
}

func TestThrottlingIsRetry(t *testing.T) {
	t.Parallel()
	f, s := setup(t, template)
	f.Set(sdktest.Behaviour{Mode: sdktest.RateLimit})
	for _, r := range s.Send(context.Background(), items(2)) {
		if r.Outcome != sdk.OutcomeRetry || r.StatusCode != 429 || !strings.Contains(r.Response, "TooManyRequestsException") {
			t.Errorf("got %v %d %q", r.Outcome, r.StatusCode, r.Response)
		}
	}
	if len(f.Calls()) != 1 {
		t.Errorf("the SDK retried on its own: %d calls", len(f.Calls()))
	}
}

func TestSlowAnswerPastTimeoutIsUnknown(t *testing.T) {
	t.Parallel()
	f, s := setup(t, template)
	f.SetDelay(3 * time.Second)
	for _, r := range s.Send(context.Background(), items(2)) {
		if r.Outcome != sdk.OutcomeUnknown {
			t.Errorf("got %v (%v), want unknown", r.Outcome, r.Err)
		}
	}
}

func TestAttachmentsGoRawOneByOne(t *testing.T) {
	t.Parallel()
	f, s := setup(t, json.RawMessage(`{"from":"a@example.com","subject":"Grüße {{ first_name }}","text":"t {{ first_name }}",
	 "attachments":[{"filename":"a.txt","content":"aGVsbG8="}]}`))
	res := s.Send(context.Background(), items(3))
	for i, r := range res {
		if r.Outcome != sdk.OutcomeOK {
			t.Errorf("item %d: %v %v", i, r.Outcome, r.Err)
		}
	}
	msgs := f.Messages()
	if len(f.Calls()) != 3 || len(msgs) != 3 {
		t.Fatalf("calls %d messages %d", len(f.Calls()), len(msgs))
	}
	for _, m := range msgs {
		if m.Key == "itm_0001" && (m.Subject != "Grüße U<1>" || !strings.HasPrefix(m.Text, "t U<1>") ||
			len(m.Attachments) != 1 || m.Headers["Message-Id"] != "<itm_0001@example.com>") {
			t.Errorf("raw message = %+v", m)
		}
	}
}

func TestWrongSecretFailsSignatureWithoutLeakingIt(t *testing.T) {
	t.Parallel()
	for _, f := range []*providerfakes.SES{providerfakes.NewSES(region, keyID, "another-secret"), providerfakes.NewSES(region, "AKIAOTHER", secret), providerfakes.NewSES("us-east-2", keyID, secret)} {
		s := provision(t, providerfakes.Start(t, f), template)
		r := s.Send(context.Background(), items(1))[0]
		if r.Outcome != sdk.OutcomePermanent || r.StatusCode != 403 || strings.Contains(r.Err.Error(), secret) {
			t.Errorf("got %v %d %v", r.Outcome, r.StatusCode, r.Err)
		}
	}
}

func TestFakeRequiresSigV4(t *testing.T) {
	t.Parallel()
	f := providerfakes.NewSES(region, keyID, secret)
	url := providerfakes.Start(t, f)
	for auth, want := range map[string]string{
		"": "MissingAuthenticationTokenException",
		"AWS4-HMAC-SHA256 Credential=" + keyID + "/20260101/" + region + "/ses/aws4_request": "IncompleteSignatureException",
		"Bearer x": "IncompleteSignatureException",
	} {
		req, _ := http.NewRequest(http.MethodPost, url+"/v2/email/outbound-emails", strings.NewReader(`{}`))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 403 || resp.Header.Get("X-Amzn-ErrorType") != want {
			t.Errorf("auth %q: %d %s, want 403 %s", auth, resp.StatusCode, resp.Header.Get("X-Amzn-ErrorType"), want)
		}
	}
}

func TestValidateItemRejectsBadInput(t *testing.T) {
	t.Parallel()
	f, s := setup(t, template)
	for _, bad := range []string{`{"first_name":"A"}`, `{"to":"a@@b","first_name":"A"}`, `{"to":"a@example.com"}`, `{"to":"jörg@example.com","first_name":"A"}`} {
		if err := s.ValidateItem(json.RawMessage(bad)); err == nil {
			t.Errorf("ValidateItem(%s) passed", bad)
		}
	}
	for bad, field := range map[string]string{
		`{"to":"jörg@example.com","first_name":"A"}`:                            "to: ",
		`{"to":"a@example.com","from":"jörg@example.com","first_name":"A"}`:     "from: ",
		`{"to":"a@example.com","reply_to":"jörg@example.com","first_name":"A"}`: "reply_to: ",
	} {
		if err := s.ValidateItem(json.RawMessage(bad)); err == nil || !strings.HasPrefix(err.Error(), field) || !strings.Contains(err.Error(), "ASCII") {
			t.Errorf("ValidateItem(%s) = %v, want a %sASCII error", bad, err, field)
		}
	}
	if err := s.ValidateItem(json.RawMessage(`{"to":"a@exämple.com","first_name":"A"}`)); err == nil || !strings.Contains(err.Error(), "punycode") {
		t.Errorf("a non-ASCII domain: %v, want an error pointing to punycode", err)
	}
	if err := s.ValidateItem(json.RawMessage(`{"to":"a@xn--exmple-cua.com","first_name":"A"}`)); err != nil {
		t.Errorf("a punycode domain: %v", err)
	}
	if len(f.Calls()) != 0 {
		t.Error("validation called the API")
	}
}

func TestProvisionErrors(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ cfg, sec, want string }{
		{`{}`, `{"access_key_id":"a"}`, "secret_access_key"},
		{`{"region":"us east"}`, `{"access_key_id":"a","secret_access_key":"b"}`, "region"},
		{`{"base_url":"http://127.0.0.1:1"}`, `{"access_key_id":"a","secret_access_key":"b"}`, "https"},
	} {
		err := new(ses.Provider).Provision(context.Background(), sdk.Env{Config: json.RawMessage(c.cfg), Secrets: json.RawMessage(c.sec)})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Provision(%s) = %v, want %q", c.cfg, err, c.want)
		}
	}
}

func BenchmarkCallsPer1000Items(b *testing.B) {
	f := providerfakes.NewSES(region, keyID, secret)
	s := provision(b, providerfakes.Start(b, f), template)
	its := items(1000)
	for b.Loop() {
		sendAll(s, its)
	}
	b.ReportMetric(float64(len(f.Calls()))/float64(b.N), "calls/1000items")
}
