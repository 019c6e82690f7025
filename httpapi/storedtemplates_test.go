package httpapi_test

import (
	"encoding/json"
	"net/http"
	"testing"
)

type templateDoc struct {
	Name     string          `json:"name"`
	Module   string          `json:"module"`
	Version  int             `json:"version"`
	Template json.RawMessage `json:"template"`
}

func (b *bundle) storeTemplate(t *testing.T, name, module string, tmpl any) templateDoc {
	t.Helper()
	var d templateDoc
	b.do(t, call{method: "POST", path: "/v1/templates", json: map[string]any{"name": name, "module": module, "template": tmpl}}).
		expect(t, http.StatusCreated).decode(t, &d)
	return d
}

func TestStoredTemplates(t *testing.T) {
	t.Parallel()
	b := setup(t)
	email := map[string]any{"from": "News <news@example.com>", "subject": "Hi {{ first_name }}", "text": "Hello {{ first_name }}"}
	v1 := b.storeTemplate(t, "welcome", "email", email)
	if v1.Version != 1 || v1.Module != "email" {
		t.Fatalf("v1 = %+v", v1)
	}
	email["subject"] = "Hello again {{ first_name }}"
	v2 := b.storeTemplate(t, "welcome", "email", email)
	if v2.Version != 2 {
		t.Fatalf("v2 = %+v", v2)
	}
	var got templateDoc
	b.do(t, call{method: "GET", path: "/v1/templates/welcome"}).expect(t, http.StatusOK).decode(t, &got)
	if got.Version != 2 || string(got.Template) != string(v2.Template) {
		t.Fatalf("latest = %+v", got)
	}
	b.do(t, call{method: "GET", path: "/v1/templates/welcome/versions/1"}).expect(t, http.StatusOK).decode(t, &got)
	if got.Version != 1 || string(got.Template) != string(v1.Template) {
		t.Fatalf("version 1 = %+v", got)
	}
	b.storeTemplate(t, "alerts", "test", map[string]any{"to": "ops"})
	var list struct {
		Data       []templateDoc `json:"data"`
		NextCursor string        `json:"next_cursor"`
	}
	b.do(t, call{method: "GET", path: "/v1/templates?limit=1"}).expect(t, http.StatusOK).decode(t, &list)
	if len(list.Data) != 1 || list.Data[0].Name != "alerts" || list.NextCursor != "alerts" {
		t.Fatalf("first page %+v", list)
	}
	b.do(t, call{method: "GET", path: "/v1/templates?cursor=alerts"}).expect(t, http.StatusOK).decode(t, &list)
	if len(list.Data) != 1 || list.Data[0].Name != "welcome" || list.Data[0].Version != 2 {
		t.Fatalf("second page %+v", list)
	}

	// Refusals: a template that does not compile, an unknown module, a name
	// taken by another module, another project's template.
	b.do(t, call{method: "POST", path: "/v1/templates", json: map[string]any{"name": "bad", "module": "email",
		"template": map[string]any{"from": "x@example.com", "subject": "Hi {% if x %}", "text": "t"}}}).expectProblem(t, http.StatusBadRequest, "subject")
	b.do(t, call{method: "POST", path: "/v1/templates", json: map[string]any{"name": "x", "module": "fax", "template": map[string]any{}}}).
		expectProblem(t, http.StatusBadRequest, "unknown module")
	b.do(t, call{method: "POST", path: "/v1/templates", json: map[string]any{"name": "welcome", "module": "test", "template": map[string]any{}}}).
		expectProblem(t, http.StatusConflict, "module")
	b.do(t, call{method: "GET", path: "/v1/templates/welcome", key: &b.keyB}).expectProblem(t, http.StatusNotFound)
	b.do(t, call{method: "GET", path: "/v1/templates/welcome/versions/3"}).expectProblem(t, http.StatusNotFound)
}

func TestBatchFromStoredTemplate(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.connection(t, b.key, "hooks")
	b.storeTemplate(t, "ops", "test", map[string]any{"to": "first"})
	d := b.batch(t, map[string]any{"module": "test", "connection": "hooks", "template_ref": map[string]any{"name": "ops"}})
	if string(d.Template) != `{"to":"first"}` {
		t.Fatalf("batch template %s", d.Template)
	}
	// A new version does not change the batch already made; a batch may
	// still ask for the old version.
	b.storeTemplate(t, "ops", "test", map[string]any{"to": "second"})
	if got := b.getBatch(t, d.ID); string(got.Template) != `{"to":"first"}` {
		t.Fatalf("the batch's template changed to %s", got.Template)
	}
	if d2 := b.batch(t, map[string]any{"module": "test", "connection": "hooks", "template_ref": map[string]any{"name": "ops"}}); string(d2.Template) != `{"to":"second"}` {
		t.Fatalf("latest: %s", d2.Template)
	}
	if d3 := b.batch(t, map[string]any{"module": "test", "connection": "hooks", "template_ref": map[string]any{"name": "ops", "version": 1}}); string(d3.Template) != `{"to":"first"}` {
		t.Fatalf("version 1: %s", d3.Template)
	}

	b.storeTemplate(t, "mail", "email", map[string]any{"from": "a@example.com", "subject": "s", "text": "t"})
	for _, tc := range []struct {
		body map[string]any
		want string
	}{
		{map[string]any{"module": "test", "connection": "hooks", "template_ref": map[string]any{"name": "nope"}}, "not found"},
		{map[string]any{"module": "test", "connection": "hooks", "template_ref": map[string]any{"name": "ops", "version": 9}}, "no version 9"},
		{map[string]any{"module": "test", "connection": "hooks", "template_ref": map[string]any{"name": "mail"}}, "module"},
		{map[string]any{"module": "test", "connection": "hooks", "template_ref": map[string]any{"name": "ops"}, "template": map[string]any{"to": "x"}}, "not both"},
	} {
		b.do(t, call{method: "POST", path: "/v1/batches", json: tc.body}).expectProblem(t, http.StatusBadRequest, tc.want)
	}
}
