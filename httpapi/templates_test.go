package httpapi_test

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

type previewDoc struct {
	Module     string `json:"module"`
	Provider   string `json:"provider"`
	Connection string `json:"connection"`
	Results    []struct {
		Index    int             `json:"index"`
		OK       bool            `json:"ok"`
		Rendered json.RawMessage `json:"rendered"`
		Error    string          `json:"error"`
		Variable string          `json:"variable"`
	} `json:"results"`
}

func TestTemplatePreview(t *testing.T) {
	t.Parallel()
	b := setup(t)
	preview := func(t *testing.T, body map[string]any) previewDoc {
		t.Helper()
		var out previewDoc
		b.do(t, call{method: "POST", path: "/v1/templates/preview", json: body}).expect(t, http.StatusOK).decode(t, &out)
		return out
	}

	t.Run("EmailRendersEachSampleOrNamesItsMissingVariable", func(t *testing.T) {
		out := preview(t, map[string]any{
			"module": "email",
			"template": map[string]any{
				"from": "News <news@example.com>", "subject": "Hi {{ first_name }}",
				"html":    `<p>Hello {{ first_name }}</p><p><a href="{{ unsubscribe_url }}">unsubscribe</a></p>`,
				"headers": map[string]string{"X-Campaign": "{{ campaign | default: \"none\" }}"},
			},
			"items": []map[string]any{
				{"to": "Ann Lee <ann@example.com>", "first_name": "Ann <3"},
				{"to": "bo@example.com"},
				{"to": "not an address", "first_name": "Cy"},
			},
		})
		if out.Module != "email" || out.Provider != "" || len(out.Results) != 3 {
			t.Fatalf("preview %+v", out)
		}
		var m map[string]any
		if err := json.Unmarshal(out.Results[0].Rendered, &m); err != nil || !out.Results[0].OK {
			t.Fatalf("first sample: %+v", out.Results[0])
		}
		want := map[string]any{
			"from": "News <news@example.com>", "subject": "Hi Ann <3",
			"html":             `<p>Hello Ann &lt;3</p><p><a href="https://unsubscribe.invalid/u/preview">unsubscribe</a></p>`,
			"list_unsubscribe": "https://unsubscribe.invalid/u/preview",
			"message_id":       "<preview@example.com>",
		}
		for k, v := range want {
			if m[k] != v {
				t.Errorf("%s = %q, want %q", k, m[k], v)
			}
		}
		if !strings.Contains(string(out.Results[0].Rendered), `"html":"<p>Hello Ann &lt;3</p>`) {
			t.Errorf("rendering is not written as plain JSON: %s", out.Results[0].Rendered)
		}
		if to, _ := m["to"].([]any); len(to) != 1 || to[0] != "Ann Lee <ann@example.com>" {
			t.Errorf("to = %v", m["to"])
		}
		if text, _ := m["text"].(string); !strings.Contains(text, "Hello Ann <3") {
			t.Errorf("text %q is not derived from the html", text)
		}
		if h, _ := m["headers"].(map[string]any); h["X-Campaign"] != "none" {
			t.Errorf("headers %v", m["headers"])
		}
		r := out.Results[1]
		if r.OK || r.Error != `items[1]: subject: missing variable "first_name"` || r.Variable != "first_name" || r.Rendered != nil {
			t.Errorf("second sample: %+v", r)
		}
		if r := out.Results[2]; r.OK || !strings.HasPrefix(r.Error, "items[2]: to:") || r.Variable != "" {
			t.Errorf("third sample: %+v", r)
		}
	})

	t.Run("WebhookThroughItsConnection", func(t *testing.T) {
		secret := "whsec_" + base64.StdEncoding.EncodeToString([]byte("preview-secret-0123456789abcdef"))
		b.addSecret(secret)
		var conn connectionDoc
		b.do(t, call{method: "POST", path: "/v1/connections", json: map[string]any{
			"provider": "webhook.http", "name": "preview-hooks", "secrets": map[string]any{"signing_secret": secret},
		}}).expect(t, http.StatusCreated).decode(t, &conn)
		out := preview(t, map[string]any{
			"connection": "preview-hooks",
			"template":   map[string]any{"url": "https://example.com/hook", "headers": map[string]string{"X-Team": "a"}},
			"items":      []map[string]any{{"payload": map[string]any{"n": 1}}, {"url": "ftp://example.com/x"}},
		})
		if out.Module != "webhook" || out.Provider != "webhook.http" || out.Connection != conn.ID {
			t.Fatalf("preview %+v", out)
		}
		want := `{"method":"POST","url":"https://example.com/hook","headers":{"Content-Type":"application/json","User-Agent":"BatchSender-Webhooks/1.0","X-Team":"a"},"body":{"n":1}}`
		if r := out.Results[0]; !r.OK || string(r.Rendered) != want {
			t.Errorf("first sample: %s %s", r.Rendered, r.Error)
		}
		if r := out.Results[1]; r.OK || !strings.HasPrefix(r.Error, "items[1]: url: scheme must be http or https") {
			t.Errorf("second sample: %+v", r)
		}
	})

	t.Run("RefusesWhatCannotBePreviewed", func(t *testing.T) {
		b.connection(t, b.key, "echo-preview")
		for _, c := range []struct {
			body      map[string]any
			status    int
			want      string
			badSchema bool
		}{
			{map[string]any{"items": []any{map[string]any{}}}, 400, "connection, provider or module is required", false},
			{map[string]any{"provider": "webhook.http", "items": []any{map[string]any{}}}, 400, `module "webhook" previews only through a connection`, false},
			{map[string]any{"connection": "echo-preview", "items": []any{map[string]any{"to": "x"}}}, 400, "provider test.echo cannot preview templates", false},
			{map[string]any{"connection": "echo-preview", "module": "email", "items": []any{map[string]any{}}}, 400, `belongs to module "test"`, false},
			{map[string]any{"connection": "nope", "items": []any{map[string]any{}}}, 400, `connection "nope"`, false},
			{map[string]any{"module": "sms", "items": []any{map[string]any{}}}, 400, `unknown module "sms"`, false},
			{map[string]any{"module": "email", "template": map[string]any{"from": "a@example.com", "html": "x"}, "items": []any{map[string]any{}}}, 400, "template: template.subject: required", false},
			{map[string]any{"module": "email", "template": map[string]any{"from": "a@example.com", "subject": "{% if %}", "text": "x"}, "items": []any{map[string]any{}}}, 400, "template.subject", false},
			{map[string]any{"module": "email", "items": []any{}}, 400, "items is required", true},
			{map[string]any{"module": "email", "items": make([]map[string]any, 101)}, 413, "more than the 100", true},
		} {
			b.do(t, call{method: "POST", path: "/v1/templates/preview", json: c.body, badRequest: c.badSchema}).expectProblem(t, c.status, c.want)
		}
	})
}
