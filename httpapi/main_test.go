package httpapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/batchsender/batchsender/sdk"
)

func TestMain(m *testing.M) {
	sdk.Register(sdk.Registration{ID: "test.echo", New: func() sdk.Provider { return &echoProvider{} }})
	sdk.Register(sdk.Registration{ID: "othermod.noop", New: func() sdk.Provider { return &noopProvider{} }})
	goleak.VerifyTestMain(m)
}

// echoProvider is a provider of module "test" made for these tests. It
// checks config, secrets, template and items strictly, like a real one,
// and never sends anything anywhere.
//
//	config:   {"region": "eu"|"us"}
//	secrets:  {"token": "<non-empty>"}              (required)
//	template: {"to": "...", "panic": bool}
//	item:     {"to": "...", "n": any}  — "to" required unless the template has it
type echoProvider struct {
	token string
}

func (p *echoProvider) Info() sdk.Info {
	return sdk.Info{
		ID: "test.echo", Title: "Echo (tests)", MaxChunk: 10, DefaultConcurrency: 2, BillableUnit: "request",
		ConfigSchema:  json.RawMessage(`{"type":"object","properties":{"region":{"enum":["eu","us"]}}}`),
		SecretsSchema: json.RawMessage(`{"type":"object","required":["token"],"properties":{"token":{"type":"string"}}}`),
		ItemSchema:    json.RawMessage(`{"type":"object","properties":{"to":{"type":"string"},"n":{"type":"integer"}}}`),
	}
}

func (p *echoProvider) Provision(_ context.Context, env sdk.Env) error {
	var cfg struct {
		Region string `json:"region"`
	}
	if err := sdk.DecodeStrict(env.Config, &cfg); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if cfg.Region != "" && cfg.Region != "eu" && cfg.Region != "us" {
		return fmt.Errorf("config.region: must be eu or us")
	}
	var sec struct {
		Token string `json:"token"`
	}
	if err := sdk.DecodeStrict(env.Secrets, &sec); err != nil {
		return fmt.Errorf("secrets: %w", err)
	}
	if sec.Token == "" {
		return errors.New("secrets.token is required")
	}
	p.token = sec.Token
	return nil
}

func (p *echoProvider) Compile(template json.RawMessage) (sdk.Sender, error) {
	var t struct {
		To    string `json:"to"`
		Panic bool   `json:"panic"`
	}
	if err := sdk.DecodeStrict(template, &t); err != nil {
		return nil, err
	}
	if t.Panic {
		panic("echo provider asked to panic by its template")
	}
	return &echoSender{defaultTo: t.To}, nil
}

func (p *echoProvider) Close() error { return nil }

type echoSender struct{ defaultTo string }

func (s *echoSender) ValidateItem(data json.RawMessage) error {
	var it struct {
		To string          `json:"to"`
		N  json.RawMessage `json:"n"` // a number in JSON, a string from CSV
	}
	if err := sdk.DecodeStrict(data, &it); err != nil {
		return err
	}
	if it.To == "" && s.defaultTo == "" {
		return errors.New("to: required (in the item or the template)")
	}
	if strings.ContainsAny(it.To, " ") {
		return fmt.Errorf("to: %q must not contain spaces", it.To)
	}
	return nil
}

func (s *echoSender) Send(_ context.Context, items []sdk.Item) []sdk.Result {
	out := make([]sdk.Result, len(items))
	for i, it := range items {
		out[i] = sdk.OK("echo-" + it.ID)
	}
	return out
}

// noopProvider is a provider of another module, for module mismatch checks.
type noopProvider struct{}

func (noopProvider) Info() sdk.Info {
	return sdk.Info{ID: "othermod.noop", Title: "No-op (tests)", MaxChunk: 1, DefaultConcurrency: 1, BillableUnit: "record"}
}
func (noopProvider) Provision(context.Context, sdk.Env) error { return nil }
func (noopProvider) Compile(json.RawMessage) (sdk.Sender, error) {
	return noopSender{}, nil
}
func (noopProvider) Close() error { return nil }

type noopSender struct{}

func (noopSender) ValidateItem(json.RawMessage) error { return nil }
func (noopSender) Send(_ context.Context, items []sdk.Item) []sdk.Result {
	return make([]sdk.Result, len(items))
}
