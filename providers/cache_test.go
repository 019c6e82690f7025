package providers_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/providers"
	"github.com/batchsender/batchsender/sdk"
	"github.com/batchsender/batchsender/unsubscribe"
)

// captured is the Env the test provider was last provisioned with.
var captured = make(chan sdk.Env, 10)

type envProvider struct{}

func (envProvider) Info() sdk.Info { return sdk.Info{ID: "test.env", MaxChunk: 1} }
func (envProvider) Provision(_ context.Context, env sdk.Env) error {
	captured <- env
	return nil
}
func (envProvider) Compile(json.RawMessage) (sdk.Sender, error) { return nil, nil }
func (envProvider) Close() error                                { return nil }

func init() {
	sdk.Register(sdk.Registration{ID: "test.env", New: func() sdk.Provider { return envProvider{} }})
}

type plain struct{}

func (plain) Open(b []byte) ([]byte, error) { return b, nil }

func TestStoredConnectionsGetSignedUnsubscribeLinks(t *testing.T) {
	signer := unsubscribe.NewSigner(bytes.Repeat([]byte{3}, 32), "https://bs.example.com")
	c := providers.NewCache(providers.Config{Unsealer: plain{}, Unsubscribe: signer, PublicURL: "https://bs.example.com"})
	defer c.Close()
	conn := batchsender.Connection{ID: "con_1", ProjectID: "prj_1", Provider: "test.env", Config: json.RawMessage(`{}`),
		SecretsSealed: []byte(`{"k":"v"}`), UpdatedAt: time.Now()}
	if _, err := c.Get(context.Background(), conn); err != nil {
		t.Fatal(err)
	}
	env := <-captured
	if env.UnsubscribeURL == nil {
		t.Fatal("a stored connection got no UnsubscribeURL")
	}
	link := env.UnsubscribeURL("itm_1", "Ann@Example.com")
	token, ok := strings.CutPrefix(link, "https://bs.example.com/u/")
	if !ok {
		t.Fatalf("link %q", link)
	}
	tok, err := signer.Verify(token)
	want := unsubscribe.Token{ProjectID: "prj_1", Channel: "test", Address: "ann@example.com", ItemID: "itm_1"}
	if err != nil || tok != want {
		t.Fatalf("token = %+v, %v; want %+v", tok, err, want)
	}
	if s, err := c.Secrets(conn); err != nil || string(s) != `{"k":"v"}` {
		t.Fatalf("Secrets = %s, %v", s, err)
	}

	// The host's event webhook settings are not the provider's business.
	withEvents := conn
	withEvents.ID, withEvents.Config = "con_2", json.RawMessage(`{"region":"eu","events":{"public_key":"pk"}}`)
	withEvents.SecretsSealed = []byte(`{"k":"v","events":{"signing_key":"sk"}}`)
	if _, err := c.Get(context.Background(), withEvents); err != nil {
		t.Fatal(err)
	}
	env = <-captured
	if string(env.Config) != `{"region":"eu"}` || string(env.Secrets) != `{"k":"v"}` {
		t.Fatalf("the provider saw %s and %s", env.Config, env.Secrets)
	}
	ec, es, err := c.EventSettings(withEvents)
	if err != nil || string(ec) != `{"public_key":"pk"}` || string(es) != `{"signing_key":"sk"}` {
		t.Fatalf("EventSettings = %s, %s, %v", ec, es, err)
	}

	// Checking a connection before it is stored makes no links: it has no
	// project yet.
	p, err := c.Provision(context.Background(), "test.env", json.RawMessage(`{}`), json.RawMessage(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	_ = p.Close()
	if env := <-captured; env.UnsubscribeURL != nil {
		t.Fatal("an unstored connection got an UnsubscribeURL")
	}
}
