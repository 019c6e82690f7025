package providerfakes_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/batchsender/batchsender/internal/providerfakes"
	"github.com/batchsender/batchsender/mailgun"
	"github.com/batchsender/batchsender/postmark"
	"github.com/batchsender/batchsender/resend"
	"github.com/batchsender/batchsender/sdk"
	"github.com/batchsender/batchsender/sdk/sdktest"
	"github.com/batchsender/batchsender/sendgrid"
	"github.com/batchsender/batchsender/ses"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// provider is one HTTP email provider wired to its fake.
type provider struct {
	id      string
	new     func() sdk.Provider
	fake    func() (providerfakes.Server, sdktest.Fake)
	config  string // with %s for the base URL
	secrets string
	// max is the target of API calls per 1,000 items (issue 3).
	max int
}

var all = []provider{
	{"email.sendgrid", func() sdk.Provider { return new(sendgrid.Provider) },
		func() (providerfakes.Server, sdktest.Fake) { f := providerfakes.NewSendGrid("k"); return f, f },
		`{"base_url":%q}`, `{"api_key":"k"}`, 1},
	{"email.postmark", func() sdk.Provider { return new(postmark.Provider) },
		func() (providerfakes.Server, sdktest.Fake) { f := providerfakes.NewPostmark("k"); return f, f },
		`{"base_url":%q}`, `{"server_token":"k"}`, 2},
	{"email.resend", func() sdk.Provider { return new(resend.Provider) },
		func() (providerfakes.Server, sdktest.Fake) { f := providerfakes.NewResend("k"); return f, f },
		`{"base_url":%q,"requests_per_second":1000}`, `{"api_key":"k"}`, 10},
	{"email.mailgun", func() sdk.Provider { return new(mailgun.Provider) },
		func() (providerfakes.Server, sdktest.Fake) {
			f := providerfakes.NewMailgun("mg.example.com", "k")
			return f, f
		},
		`{"base_url":%q,"domain":"mg.example.com"}`, `{"api_key":"k"}`, 1},
	{"email.ses", func() sdk.Provider { return new(ses.Provider) },
		func() (providerfakes.Server, sdktest.Fake) {
			f := providerfakes.NewSES("us-east-1", "AKIDEXAMPLE", "s")
			return f, f
		},
		`{"base_url":%q}`, `{"access_key_id":"AKIDEXAMPLE","secret_access_key":"s"}`, 20},
}

// TestCallsPer1000Items sends 1,000 personalized items through every HTTP
// email provider in chunks of its MaxChunk, as the engine does, and prints
// the number of API calls each needed.
func TestCallsPer1000Items(t *testing.T) {
	tmpl := json.RawMessage(`{"from":"News <news@example.com>","subject":"Hi {{ first_name }}","html":"<p>Hello {{ first_name }}</p>"}`)
	for _, p := range all {
		t.Run(p.id, func(t *testing.T) {
			t.Parallel()
			srv, fake := p.fake()
			url := providerfakes.Start(t, srv)
			prov := p.new()
			err := prov.Provision(context.Background(), sdk.Env{AllowPrivateNetworks: true, Now: time.Now,
				Config: json.RawMessage(fmt.Sprintf(p.config, url)), Secrets: json.RawMessage(p.secrets)})
			if err != nil {
				t.Fatal(err)
			}
			defer prov.Close()
			s, err := prov.Compile(tmpl)
			if err != nil {
				t.Fatal(err)
			}
			items := make([]sdk.Item, 1000)
			for i := range items {
				items[i] = sdk.Item{ID: fmt.Sprintf("itm_%04d", i), Attempt: 1,
					Data: json.RawMessage(fmt.Sprintf(`{"to":"user%d@example.com","first_name":"U%d"}`, i, i))}
			}
			chunk := prov.Info().MaxChunk
			for len(items) > 0 {
				n := min(chunk, len(items))
				for i, r := range s.Send(context.Background(), items[:n]) {
					if r.Outcome != sdk.OutcomeOK {
						t.Fatalf("item %d: %v %v", i, r.Outcome, r.Err)
					}
				}
				items = items[n:]
			}
			calls := len(fake.Calls())
			t.Logf("%-15s %3d API calls per 1000 items (MaxChunk %d, target ≤ %d)", p.id, calls, chunk, p.max)
			if calls > p.max {
				t.Errorf("%s: %d calls per 1000 items, target ≤ %d", p.id, calls, p.max)
			}
		})
	}
}
