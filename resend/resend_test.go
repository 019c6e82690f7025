package resend_test

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
	"github.com/batchsender/batchsender/resend"
	"github.com/batchsender/batchsender/sdk"
	"github.com/batchsender/batchsender/sdk/sdktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const apiKey = "re_test_0123456789abcdef"

var template = json.RawMessage(`{"from":"News <news@example.com>","subject":"Hi {{ first_name }}",
 "html":"<p>Hello {{ first_name }}</p>","headers":{"X-Campaign":"c-{{ first_name }}"}}`)

func item(i int) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"to":"user%d@example.com","first_name":"U%d"}`, i, i))
}

func connection(url string) (json.RawMessage, json.RawMessage) {
	return json.RawMessage(fmt.Sprintf(`{"base_url":%q,"timeout":"2s","requests_per_second":1000}`, url)),
		json.RawMessage(fmt.Sprintf(`{"api_key":%q}`, apiKey))
}

// started is a fake with its URL.
type started struct {
	*providerfakes.Resend
	url string
}

func TestConformance(t *testing.T) {
	sdktest.Run(t, sdktest.Harness{
		New: func() sdk.Provider { return new(resend.Provider) },
		NewFake: func(t *testing.T) sdktest.Fake {
			f := providerfakes.NewResend(apiKey)
			return started{f, providerfakes.Start(t, f)}
		},
		Connection:      func(f sdktest.Fake) (json.RawMessage, json.RawMessage) { return connection(f.(started).url) },
		Template:        template,
		Item:            item,
		InvalidItem:     json.RawMessage(`{"to":"","first_name":"X"}`),
		Secrets:         []string{apiKey},
		IdempotencyKeys: true,
		RetryAfter:      true,
		Timeout:         2 * time.Second,
		Env:             func(env *sdk.Env) { env.UnsubscribeURL = providerfakes.UnsubscribeURL },
	})
}

func provision(t testing.TB, url string, tmpl json.RawMessage) sdk.Sender {
	t.Helper()
	cfg, sec := connection(url)
	return providerfakes.Provision(t, new(resend.Provider), cfg, sec, tmpl)
}

func setup(t *testing.T) (*providerfakes.Resend, sdk.Sender) {
	t.Helper()
	f := providerfakes.NewResend(apiKey)
	return f, provision(t, providerfakes.Start(t, f), template)
}

func items(n int) []sdk.Item { return providerfakes.Items(n, item) }

// sendAll sends items in MaxChunk chunks as the engine would.
func sendAll(s sdk.Sender, its []sdk.Item) []sdk.Result {
	return providerfakes.SendAll(s, its, resend.MaxBatch)
}

func TestThousandItemsTakeTenCallsRenderedPerItem(t *testing.T) {
	t.Parallel()
	f, s := setup(t)
	for i, r := range sendAll(s, items(1000)) {
		if r.Outcome != sdk.OutcomeOK || r.MessageID == "" {
			t.Fatalf("item %d: %v %v", i, r.Outcome, r.Err)
		}
	}
	if calls := len(f.Calls()); calls != 10 {
		t.Errorf("1000 items took %d calls, want 10", calls)
	}
	t.Logf("email.resend: %d API calls per 1000 items", len(f.Calls()))
	msgs := f.Messages()
	if len(msgs) != 1000 {
		t.Fatalf("fake accepted %d messages", len(msgs))
	}
	m := msgs[7]
	if m.Subject != "Hi U7" || m.HTML != "<p>Hello U7</p>" || m.Text != "Hello U7" || m.To[0] != "user7@example.com" ||
		m.Key != "itm_0007" || m.Headers["X-Campaign"] != "c-U7" ||
		m.Headers["List-Unsubscribe"] != "<https://bs.example.com/u/itm_0007>" {
		t.Errorf("message 7 = %+v", m)
	}
}

// retries returns items with this attempt number.
func retries(its []sdk.Item, attempt int) []sdk.Item {
	out := append([]sdk.Item(nil), its...)
	for i := range out {
		out[i].Attempt = attempt
	}
	return out
}

// checkOnce checks that every result is OK and names the one message the
// fake took for its item.
func checkOnce(t *testing.T, f *providerfakes.Resend, its []sdk.Item, res []sdk.Result) {
	t.Helper()
	byKey := map[string][]string{}
	for _, m := range f.Messages() {
		byKey[m.Key] = append(byKey[m.Key], m.MessageID)
	}
	for i, r := range res {
		ids := byKey[its[i].ID]
		if r.Outcome != sdk.OutcomeOK || len(ids) != 1 || r.MessageID != ids[0] {
			t.Errorf("item %d: %v %q (%v); the fake took %q", i, r.Outcome, r.MessageID, r.Err, ids)
		}
	}
}

func TestLostBatchAnswerIsReplayedInTheSameSend(t *testing.T) {
	t.Parallel()
	f, s := setup(t)
	f.LoseAnswers(1)
	its := items(5)
	checkOnce(t, f, its, s.Send(context.Background(), its))
	if len(f.Messages()) != 5 || f.IdempotencyReplays() < 1 {
		t.Errorf("fake took %d messages with %d replays, want 5 and at least 1", len(f.Messages()), f.IdempotencyReplays())
	}
	want := resend.BatchKey([]string{"itm_0000", "itm_0001", "itm_0002", "itm_0003", "itm_0004"})
	for _, k := range f.IdempotencyKeys() {
		if k != want {
			t.Errorf("key %q, want the batch key %q on every try", k, want)
		}
	}
}

func TestBatchAnswerNeverArrivingIsUnknown(t *testing.T) {
	t.Parallel()
	f, s := setup(t)
	f.LoseAnswers(1000)
	for i, r := range s.Send(context.Background(), items(3)) {
		if r.Outcome != sdk.OutcomeUnknown || !strings.Contains(r.Err.Error(), "may have been accepted") {
			t.Errorf("item %d: %v (%v), want unknown", i, r.Outcome, r.Err)
		}
	}
	if len(f.Messages()) != 3 || len(f.IdempotencyKeys()) < 3 {
		t.Errorf("fake took %d messages in %d calls, want 3 in 3 or more tries", len(f.Messages()), len(f.IdempotencyKeys()))
	}
}

func TestRetriesGoAloneUnderTheirItemKey(t *testing.T) {
	t.Parallel()
	f, s := setup(t)
	its := items(4)
	its[1].Attempt, its[3].Attempt = 2, 5
	checkOnce(t, f, its, s.Send(context.Background(), its))
	want := []string{resend.BatchKey([]string{"itm_0000", "itm_0002"}), resend.ItemKey("itm_0001"), resend.ItemKey("itm_0003")}
	if got := f.IdempotencyKeys(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("keys %q, want %q", got, want)
	}
	if calls := f.Calls(); len(calls) != 3 || calls[0].Items != 2 || calls[1].Items != 1 || calls[2].Items != 1 {
		t.Errorf("calls %+v, want a batch of 2 and two single calls", calls)
	}
}

func TestLostRetryAnswerIsRetryAndTheNextAttemptReplays(t *testing.T) {
	t.Parallel()
	f, s := setup(t)
	its := retries(items(2), 2)
	f.LoseAnswers(1000)
	for i, r := range s.Send(context.Background(), its) {
		if r.Outcome != sdk.OutcomeRetry || !strings.Contains(r.Err.Error(), "idempotency key") {
			t.Errorf("attempt 2, item %d: %v (%v), want retry", i, r.Outcome, r.Err)
		}
	}
	f.LoseAnswers(0)
	checkOnce(t, f, its, s.Send(context.Background(), retries(its, 3)))
	if len(f.Messages()) != 2 || f.IdempotencyReplays() < 2 {
		t.Errorf("fake took %d messages with %d replays, want 2 and at least 2", len(f.Messages()), f.IdempotencyReplays())
	}
	for _, k := range f.IdempotencyKeys() {
		if k != resend.ItemKey("itm_0000") && k != resend.ItemKey("itm_0001") {
			t.Errorf("key %q is not an item key", k)
		}
	}
}

func TestChangedPayloadUnderTheItemKeyIsUnknown(t *testing.T) {
	t.Parallel()
	f, s := setup(t)
	its := retries(items(3), 2)
	first := s.Send(context.Background(), its)
	its = retries(its, 3)
	its[1].Data = json.RawMessage(`{"to":"user1@example.com","first_name":"Changed"}`)
	for i, r := range s.Send(context.Background(), its) {
		switch {
		case i == 1:
			if r.Outcome != sdk.OutcomeUnknown || r.StatusCode != 409 || !strings.Contains(r.Err.Error(), "invalid_idempotent_request") {
				t.Errorf("changed item: %v %d %v", r.Outcome, r.StatusCode, r.Err)
			}
		case r.Outcome != sdk.OutcomeOK || r.MessageID != first[i].MessageID:
			t.Errorf("item %d: %v %q, want the replayed %q", i, r.Outcome, r.MessageID, first[i].MessageID)
		}
	}
	if len(f.Messages()) != 3 {
		t.Errorf("%d messages, want the first attempt's 3", len(f.Messages()))
	}
}

func TestKeysStayUnderResendLimit(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 300)
	if k := resend.ItemKey(long); len(k) > 256 || k != resend.ItemKey(long) || k == resend.ItemKey(long+"y") {
		t.Errorf("ItemKey of a 300-byte ID = %q (%d bytes)", k, len(k))
	}
	if k := resend.ItemKey("itm_1"); k != "bs-item-itm_1" {
		t.Errorf("ItemKey(itm_1) = %q", k)
	}
	if resend.BatchKey([]string{"a", "b"}) == resend.BatchKey([]string{"b", "a"}) {
		t.Error("BatchKey ignores the order")
	}
}

func TestPermissiveBatchPerItemErrors(t *testing.T) {
	t.Parallel()
	f, s := setup(t)
	f.Set(sdktest.Behaviour{RejectKeys: []string{"itm_0001", "itm_0003"}})
	res := s.Send(context.Background(), items(5))
	ids := map[string]bool{}
	for i, r := range res {
		want := sdk.OutcomeOK
		if i == 1 || i == 3 {
			want = sdk.OutcomePermanent
		}
		if r.Outcome != want {
			t.Errorf("item %d: %v (%v), want %v", i, r.Outcome, r.Err, want)
		}
		ids[r.MessageID] = true
	}
	msgs := f.Messages()
	if len(msgs) != 3 {
		t.Fatalf("%d messages", len(msgs))
	}
	for i, k := range []int{0, 2, 4} {
		if msgs[i].Key != fmt.Sprintf("itm_%04d", k) || res[k].MessageID != msgs[i].MessageID {
			t.Errorf("message %d: key %s id %s, result %d id %s", i, msgs[i].Key, msgs[i].MessageID, k, res[k].MessageID)
		}
	}
}

func TestRealRateLimitAnswersRetryAfter(t *testing.T) {
	t.Parallel()
	f := providerfakes.NewResend(apiKey)
	f.PerSecond = 2
	s := provision(t, providerfakes.Start(t, f), template)
	var limited []sdk.Result
	for i := range 3 {
		r := s.Send(context.Background(), []sdk.Item{{ID: fmt.Sprintf("itm_r%d", i), Attempt: 1, Data: item(i)}})[0]
		if r.Outcome == sdk.OutcomeRetry {
			limited = append(limited, r)
		}
	}
	if len(limited) == 0 {
		t.Fatal("3 calls within a second were not rate limited at 2/s")
	}
	if r := limited[0]; r.StatusCode != 429 || r.RetryAfter != time.Second || !strings.Contains(r.Err.Error(), "rate_limit_exceeded") {
		t.Errorf("got %d %v %v", r.StatusCode, r.RetryAfter, r.Err)
	}
}

func TestDefaultPacingStaysUnderResendLimit(t *testing.T) {
	t.Parallel()
	f := providerfakes.NewResend(apiKey)
	f.PerSecond = 2
	url := providerfakes.Start(t, f)
	p := new(resend.Provider)
	err := p.Provision(context.Background(), sdk.Env{AllowPrivateNetworks: true,
		Config:  json.RawMessage(fmt.Sprintf(`{"base_url":%q,"timeout":"2s"}`, url)),
		Secrets: json.RawMessage(fmt.Sprintf(`{"api_key":%q}`, apiKey))})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	// Attachments: one request per message, five in one Send.
	s, err := p.Compile(json.RawMessage(`{"from":"a@example.com","subject":"s","text":"t",
	 "attachments":[{"filename":"a.txt","content":"aGVsbG8="}]}`))
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range s.Send(context.Background(), items(5)) {
		if r.Outcome != sdk.OutcomeOK {
			t.Errorf("item %d: %v %v", i, r.Outcome, r.Err)
		}
	}
}

func TestAttachmentsGoOneByOneWithItemKey(t *testing.T) {
	t.Parallel()
	f := providerfakes.NewResend(apiKey)
	s := provision(t, providerfakes.Start(t, f), json.RawMessage(`{"from":"a@example.com","subject":"s","text":"t {{ first_name }}",
	 "attachments":[{"filename":"a.txt","content":"aGVsbG8="}]}`))
	res := s.Send(context.Background(), items(3))
	for i, r := range res {
		if r.Outcome != sdk.OutcomeOK {
			t.Errorf("item %d: %v %v", i, r.Outcome, r.Err)
		}
	}
	if len(f.Calls()) != 3 || len(f.Messages()) != 3 || f.Messages()[0].Attachments[0] != "a.txt" {
		t.Errorf("calls %d messages %+v", len(f.Calls()), f.Messages())
	}
}

func TestWrongKeyIsPermanentWithoutSecret(t *testing.T) {
	t.Parallel()
	f := providerfakes.NewResend("re_other")
	s := provision(t, providerfakes.Start(t, f), template)
	r := s.Send(context.Background(), items(1))[0]
	if r.Outcome != sdk.OutcomePermanent || r.StatusCode != 403 || strings.Contains(r.Err.Error(), apiKey) || !strings.Contains(r.Err.Error(), "invalid_api_key") {
		t.Errorf("got %v %d %v", r.Outcome, r.StatusCode, r.Err)
	}
}

func TestValidateItemRejectsBadInput(t *testing.T) {
	t.Parallel()
	f, s := setup(t)
	for _, bad := range []string{`{"first_name":"A"}`, `{"to":"a@@b","first_name":"A"}`, `{"to":"a@example.com"}`} {
		if err := s.ValidateItem(json.RawMessage(bad)); err == nil {
			t.Errorf("ValidateItem(%s) passed", bad)
		}
	}
	if len(f.Calls()) != 0 {
		t.Error("validation called the API")
	}
}

func TestFakeRejectsWhatResendRejects(t *testing.T) {
	t.Parallel()
	f := providerfakes.NewResend(apiKey)
	url := providerfakes.Start(t, f)
	post := func(body, auth, validation string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, url+"/emails/batch", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		if validation != "" {
			req.Header.Set("x-batch-validation", validation)
		}
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
	one := `{"from":"a@example.com","to":"b@example.com","subject":"s","text":"t"}`
	bad := `{"from":"a@example.com","to":"nope","subject":"s","text":"t"}`
	if st, body := post("["+one+"]", "", ""); st != 401 || !strings.Contains(body, "missing_api_key") {
		t.Errorf("no key: %d %s", st, body)
	}
	if st, _ := post("["+strings.Repeat(one+",", 100)+one+"]", "Bearer "+apiKey, ""); st != 422 {
		t.Errorf("101 emails: %d", st)
	}
	if st, _ := post("["+one+","+bad+"]", "Bearer "+apiKey, ""); st != 422 {
		t.Errorf("strict batch with an invalid email: %d", st)
	}
	if st, body := post("["+one+","+bad+"]", "Bearer "+apiKey, "permissive"); st != 200 || !strings.Contains(body, `"index":1`) {
		t.Errorf("permissive batch: %d %s", st, body)
	}
}

func BenchmarkCallsPer1000Items(b *testing.B) {
	f := providerfakes.NewResend(apiKey)
	s := provision(b, providerfakes.Start(b, f), template)
	its := items(1000)
	for n := 0; b.Loop(); n++ {
		// Fresh IDs per round: the same chunk twice would be an
		// idempotent replay.
		for i := range its {
			its[i].ID = fmt.Sprintf("itm_%d_%04d", n, i)
		}
		sendAll(s, its)
	}
	b.ReportMetric(float64(len(f.Calls()))/float64(b.N), "calls/1000items")
}
