package providerfakes_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

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

// secret is every connection's API key, token or secret access key.
const secret = "sk-0123456789-do-not-show"

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
		func() (providerfakes.Server, sdktest.Fake) { f := providerfakes.NewSendGrid(secret); return f, f },
		`{"base_url":%q}`, `{"api_key":"` + secret + `"}`, 1},
	{"email.postmark", func() sdk.Provider { return new(postmark.Provider) },
		func() (providerfakes.Server, sdktest.Fake) { f := providerfakes.NewPostmark(secret); return f, f },
		`{"base_url":%q}`, `{"server_token":"` + secret + `"}`, 2},
	{"email.resend", func() sdk.Provider { return new(resend.Provider) },
		func() (providerfakes.Server, sdktest.Fake) { f := providerfakes.NewResend(secret); return f, f },
		`{"base_url":%q,"requests_per_second":1000}`, `{"api_key":"` + secret + `"}`, 10},
	{"email.mailgun", func() sdk.Provider { return new(mailgun.Provider) },
		func() (providerfakes.Server, sdktest.Fake) {
			f := providerfakes.NewMailgun("mg.example.com", secret)
			return f, f
		},
		`{"base_url":%q,"domain":"mg.example.com"}`, `{"api_key":"` + secret + `"}`, 1},
	{"email.ses", func() sdk.Provider { return new(ses.Provider) },
		func() (providerfakes.Server, sdktest.Fake) {
			f := providerfakes.NewSES("us-east-1", "AKIDEXAMPLE", secret)
			return f, f
		},
		`{"base_url":%q}`, `{"access_key_id":"AKIDEXAMPLE","secret_access_key":"` + secret + `"}`, 20},
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
			s := providerfakes.Provision(t, prov, json.RawMessage(fmt.Sprintf(p.config, url)), json.RawMessage(p.secrets), tmpl)
			items := providerfakes.Items(1000, func(i int) json.RawMessage {
				return json.RawMessage(fmt.Sprintf(`{"to":"user%d@example.com","first_name":"U%d"}`, i, i))
			})
			chunk := prov.Info().MaxChunk
			for i, r := range providerfakes.SendAll(s, items, chunk) {
				if r.Outcome != sdk.OutcomeOK {
					t.Fatalf("item %d: %v %v", i, r.Outcome, r.Err)
				}
			}
			calls := len(fake.Calls())
			t.Logf("%-15s %3d API calls per 1000 items (MaxChunk %d, target ≤ %d)", p.id, calls, chunk, p.max)
			if calls > p.max {
				t.Errorf("%s: %d calls per 1000 items, target ≤ %d", p.id, calls, p.max)
			}
		})
	}
}

// TestValidateItemRejectsBadAddresses checks every HTTP email provider's
// ValidateItem against addresses that must not reach an API: the error
// names the field and what is wrong, and never carries a secret.
func TestValidateItemRejectsBadAddresses(t *testing.T) {
	tmpl := json.RawMessage(`{"from":"News <news@example.com>","subject":"Hi","text":"Hello"}`)
	bad := []struct{ data, want string }{
		{`{}`, "to: required"},
		{`{"to":""}`, "to: "},
		{`{"to":"nobody"}`, "invalid address"},
		{`{"to":"a@@example.com"}`, "invalid address"},
		{`{"to":"ann@localdomain"}`, "the domain needs a dot"},
		{`{"to":"Ann <ann@example.com"}`, "invalid address"},
		{`{"to":"ann@example.com, bob@example.com"}`, "invalid address"},
		{`{"to":"ann@example.com\r\nBcc: eve@example.com"}`, "line break"},
		{`{"to":42}`, "to: "},
		{`{"to":"ann@example.com","reply_to":"not an address"}`, "reply_to"},
		{`{"to":"ann@example.com","from":"no-at-sign"}`, "from"},
	}
	for _, p := range all {
		t.Run(p.id, func(t *testing.T) {
			t.Parallel()
			srv, fake := p.fake()
			url := providerfakes.Start(t, srv)
			s := providerfakes.Provision(t, p.new(), json.RawMessage(fmt.Sprintf(p.config, url)), json.RawMessage(p.secrets), tmpl)
			if err := s.ValidateItem(json.RawMessage(`{"to":"Ann <ann@example.com>"}`)); err != nil {
				t.Fatalf("a good item: %v", err)
			}
			for _, c := range bad {
				err := s.ValidateItem(json.RawMessage(c.data))
				switch {
				case err == nil:
					t.Errorf("ValidateItem(%s) passed", c.data)
				case !strings.Contains(err.Error(), c.want):
					t.Errorf("ValidateItem(%s) = %q, want it to say %q", c.data, err, c.want)
				case strings.Contains(err.Error(), secret):
					t.Errorf("ValidateItem(%s) shows the secret: %q", c.data, err)
				}
			}
			if n := len(fake.Calls()); n != 0 {
				t.Errorf("validation made %d API calls", n)
			}
		})
	}
}
