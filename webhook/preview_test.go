package webhook

import (
	"encoding/json"
	"testing"

	"github.com/batchsender/batchsender/sdk"
)

func TestPreviewShowsTheRequest(t *testing.T) {
	t.Parallel()
	p := new(Provider)
	sec, _ := json.Marshal(Secrets{SigningSecret: testSecret})
	if err := p.Provision(t.Context(), sdk.Env{Secrets: sec, AllowPrivateNetworks: true}); err != nil {
		t.Fatal(err)
	}
	s, err := p.Compile(json.RawMessage(`{"url":"https://example.com/hook","headers":{"x-team":"a"},"payload":{"n":0}}`))
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.(sdk.Previewer).Preview(json.RawMessage(`{"method":"PUT","headers":{"X-Item":"7"},"payload":{"n":7}}`))
	want := `{"method":"PUT","url":"https://example.com/hook","headers":{"Content-Type":"application/json","User-Agent":"BatchSender-Webhooks/1.0","X-Item":"7","X-Team":"a"},"body":{"n":7}}`
	if err != nil || string(got) != want {
		t.Errorf("Preview =\n%s, %v\nwant\n%s", got, err, want)
	}
	if _, err := s.(sdk.Previewer).Preview(json.RawMessage(`{"url":"ftp://x"}`)); err == nil {
		t.Error("Preview of a bad URL succeeded")
	}
}
