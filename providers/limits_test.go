package providers_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/batchsender/batchsender/providers"
	"github.com/batchsender/batchsender/sdk"
)

// limitsEnv receives the config each limitsProvider was provisioned with.
var limitsEnv = make(chan json.RawMessage, 10)

// limitsProvider declares rate_per_second in its schema, as webhook.http
// does, but not concurrency.
type limitsProvider struct{}

func (limitsProvider) Info() sdk.Info {
	return sdk.Info{ID: "test.limitsenv", MaxChunk: 1,
		ConfigSchema: json.RawMessage(`{"type":"object","properties":{"rate_per_second":{"type":"number"}}}`)}
}
func (limitsProvider) Provision(_ context.Context, env sdk.Env) error {
	limitsEnv <- env.Config
	return nil
}
func (limitsProvider) Compile(json.RawMessage) (sdk.Sender, error) { return nil, nil }
func (limitsProvider) Close() error                                { return nil }

func init() {
	sdk.Register(sdk.Registration{ID: "test.limitsenv", New: func() sdk.Provider { return limitsProvider{} }})
}

// The engine reads rate_per_second and concurrency from any connection's
// config; a provider sees them only if its schema declares them, so strict
// decoders do not refuse a connection that sets its limits.
func TestHostLimitKeysReachOnlyProvidersThatDeclareThem(t *testing.T) {
	c := providers.NewCache(providers.Config{})
	defer c.Close()
	p, err := c.Provision(context.Background(), "test.limitsenv", json.RawMessage(`{"region":"eu","rate_per_second":5,"concurrency":2}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if got := string(<-limitsEnv); got != `{"rate_per_second":5,"region":"eu"}` {
		t.Fatalf("provider saw config %s, want concurrency (undeclared) removed", got)
	}
	p, err = c.Provision(context.Background(), "test.limitsenv", json.RawMessage(`{"region":"eu"}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if got := string(<-limitsEnv); got != `{"region":"eu"}` {
		t.Fatalf("provider saw config %s, want it unchanged", got)
	}
}
