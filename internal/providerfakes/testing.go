package providerfakes

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/batchsender/batchsender/sdk"
)

// UnsubscribeURL is the unsubscribe link the providers' tests give their
// connections: https://bs.example.com/u/<item ID>.
func UnsubscribeURL(itemID, _ string) string { return "https://bs.example.com/u/" + itemID }

// Provision provisions p with config and secrets the way the providers'
// tests do (loopback allowed, a plain dialer, the real clock,
// UnsubscribeURL), closes it when the test ends and returns the sender
// compiled from tmpl. It fails the test on any error.
func Provision(t testing.TB, p sdk.Provider, config, secrets, tmpl json.RawMessage) sdk.Sender {
	t.Helper()
	err := p.Provision(context.Background(), sdk.Env{Config: config, Secrets: secrets, AllowPrivateNetworks: true,
		Dialer: (&net.Dialer{}).DialContext, Now: time.Now, UnsubscribeURL: UnsubscribeURL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	s, err := p.Compile(tmpl)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Items returns n first-attempt items with the IDs itm_0000, itm_0001, ...
// and data(i) as their data.
func Items(n int, data func(i int) json.RawMessage) []sdk.Item {
	out := make([]sdk.Item, n)
	for i := range out {
		out[i] = sdk.Item{ID: fmt.Sprintf("itm_%04d", i), Seq: int64(i + 1), Attempt: 1, Data: data(i)}
	}
	return out
}

// SendAll sends its in chunks of at most chunk items, as the engine would,
// and returns the results in order.
func SendAll(s sdk.Sender, its []sdk.Item, chunk int) []sdk.Result {
	var res []sdk.Result
	for len(its) > 0 {
		n := min(len(its), chunk)
		res = append(res, s.Send(context.Background(), its[:n])...)
		its = its[n:]
	}
	return res
}
