package tmpl

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

func render(t *testing.T, src string, vars map[string]any, html bool) string {
	t.Helper()
	tp, err := Parse(src)
	if err != nil {
		t.Fatalf("Parse(%q): %v", src, err)
	}
	out, err := tp.Render(vars, html)
	if err != nil {
		t.Fatalf("Render(%q): %v", src, err)
	}
	return out
}

func TestRenderFilters(t *testing.T) {
	t.Parallel()
	vars := map[string]any{
		"first_name": "Ann", "name": "ann lee", "amount": 1234.5, "neg": -3.0,
		"due": "2026-03-01", "cents": "12", "vip": true, "tags": []any{"a", "b"},
	}
	cases := []struct{ src, want string }{
		{"Hi {{ first_name }}!", "Hi Ann!"},
		{"{{first_name}}", "Ann"},
		{"{{ name | upcase }}", "ANN LEE"},
		{"{{ nickname | default: \"friend\" }}", "friend"},
		{"{{ first_name | default: \"friend\" }}", "Ann"},
		{"{{ due | date: \"%d.%m.%Y\" }}", "01.03.2026"},
		{"{{ amount | money }}", "1,234.50"},
		{"{{ amount | money: \"EUR\" }}", "€1,234.50"},
		{"{{ amount | money: \"chf\" }}", "1,234.50 CHF"},
		{"{{ neg | money: \"USD\" }}", "-$3.00"},
		{"{{ cents | money }}", "12.00"},
		{"{% if vip %}VIP{% endif %}", "VIP"},
		{"{% if missing_flag %}x{% else %}y{% endif %}", "y"},
		{"{% for t in tags %}[{{ t }}]{% endfor %}", "[a][b]"},
		{"{% assign g = first_name | downcase %}{{ g }}", "ann"},
		{"{% raw %}{{ not_a_var }}{% endraw %}", "{{ not_a_var }}"},
	}
	for _, c := range cases {
		if got := render(t, c.src, vars, false); got != c.want {
			t.Errorf("%q: got %q, want %q", c.src, got, c.want)
		}
	}
}

func TestMissingVariableIsAnErrorNamingIt(t *testing.T) {
	t.Parallel()
	for src, name := range map[string]string{
		"Hi {{ first_name }}":                   "first_name",
		"Hi {{ first_name | upcase }}":          "first_name",
		"{{ user.name }}":                       "user",
		"{% for x in things %}{% endfor %}":     "things",
		"{{ a | default: b }}":                  "b",
		"{% assign y = nope %}{{ y }}":          "nope",
		"{{ ok }} and {{ last_name | upcase }}": "last_name",
	} {
		tp, err := Parse(src)
		if err != nil {
			t.Fatal(err)
		}
		_, err = tp.Render(map[string]any{"ok": 1, "a": nil}, false)
		got, ok := IsMissingVariable(err)
		if !ok || got != name {
			t.Errorf("%q: err %v, want missing %q", src, err, name)
		}
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not name %q", err, name)
		}
	}
	// Null counts as missing.
	_, err := MustParse("{{ x }}").Render(map[string]any{"x": nil}, true)
	var m *MissingVariableError
	if !errors.As(err, &m) || m.Name != "x" {
		t.Errorf("null variable: %v", err)
	}
}

func TestVariables(t *testing.T) {
	t.Parallel()
	tp := MustParse(`Hi {{ first_name | upcase }} {{ nick | default: "you" }} {% if vip %}{{ vip_code }}{% endif %}
{% for o in orders limit: 2 %}{{ o.id }} {{ forloop.index }}{% endfor %}{{ "lit" | append: suffix }} {{ user.address.city }} {{ items[idx] }}`)
	if got, want := tp.Variables(), []string{"first_name", "idx", "items", "nick", "orders", "suffix", "user", "vip", "vip_code"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Variables = %v, want %v", got, want)
	}
	if got, want := tp.Required(), []string{"first_name", "idx", "items", "orders", "suffix", "user", "vip_code"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Required = %v, want %v", got, want)
	}
	guarded := MustParse(`{% if nickname %}Hi {{ nickname | upcase }}{% elsif title %}Dear {{ title }} {{ last }}{% else %}Hi{% endif %} {{ nickname }}`)
	if got, want := guarded.Required(), []string{"last", "nickname"}; !reflect.DeepEqual(got, want) {
		t.Errorf("guarded Required = %v, want %v (nickname is used outside its if)", got, want)
	}
	inner := MustParse(`{% if nickname %}Hi {{ nickname }}{% else %}Hello{% endif %}`)
	if got := inner.Required(); len(got) != 0 {
		t.Errorf("inner Required = %v, want none", got)
	}
	if out, err := inner.Render(map[string]any{}, true); err != nil || out != "Hello" {
		t.Errorf("Render without the guarded variable: %q, %v", out, err)
	}
}

func TestHTMLEscaping(t *testing.T) {
	t.Parallel()
	vars := map[string]any{"name": `<b>"Tom" & 'Jerry'</b>`, "snippet": "<i>ok</i>"}
	cases := []struct{ src, text, html string }{
		{"<p>{{ name }}</p>", `<p><b>"Tom" & 'Jerry'</b></p>`, `<p>&lt;b&gt;&#34;Tom&#34; &amp; &#39;Jerry&#39;&lt;/b&gt;</p>`},
		{"{{ name | upcase }}", `<B>"TOM" & 'JERRY'</B>`, `&lt;B&gt;&#34;TOM&#34; &amp; &#39;JERRY&#39;&lt;/B&gt;`},
		{"{{ snippet | raw }}", "<i>ok</i>", "<i>ok</i>"},
		{"{{ snippet | escape }}", "&lt;i&gt;ok&lt;/i&gt;", "&lt;i&gt;ok&lt;/i&gt;"},
		{"a {{- snippet -}} b", "a<i>ok</i>b", "a&lt;i&gt;ok&lt;/i&gt;b"},
		{"{% raw %}{{ x }}{% endraw %}<{{ snippet }}>", "{{ x }}<<i>ok</i>>", "{{ x }}<&lt;i&gt;ok&lt;/i&gt;>"},
	}
	for _, c := range cases {
		if got := render(t, c.src, vars, false); got != c.text {
			t.Errorf("text %q: got %q, want %q", c.src, got, c.text)
		}
		if got := render(t, c.src, vars, true); got != c.html {
			t.Errorf("html %q: got %q, want %q", c.src, got, c.html)
		}
	}
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	for _, src := range []string{
		"{% if x %}unclosed",
		"{% include 'secret.txt' %}",
		"{{ x | nosuchfilter }}",
		"{% endfor %}",
	} {
		if _, err := Parse(src); err == nil {
			t.Errorf("Parse(%q) succeeded, want error", src)
		}
	}
}

func TestRenderErrorsOnBadFilterInput(t *testing.T) {
	t.Parallel()
	_, err := MustParse("{{ x | money }}").Render(map[string]any{"x": "abc"}, false)
	if err == nil || !strings.Contains(err.Error(), "not a number") {
		t.Errorf("money on text: %v", err)
	}
}

// TestGolden renders testdata/*.liquid with testdata/vars.json-like fixed
// variables in text and HTML mode and compares with the .golden files.
func TestGolden(t *testing.T) {
	t.Parallel()
	vars := map[string]any{
		"first_name": "Zoë", "last_name": "O'Brien <admin>", "amount": 99.9,
		"items":  []any{map[string]any{"title": "Tea & Cake", "qty": 2.0}, map[string]any{"title": "Scone", "qty": 1.0}},
		"signup": "2025-12-24T10:00:00Z",
	}
	files, err := filepath.Glob("testdata/*.liquid")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, mode := range []struct {
			ext  string
			html bool
		}{{".text.golden", false}, {".html.golden", true}} {
			got := render(t, string(src), vars, mode.html)
			gf := strings.TrimSuffix(f, ".liquid") + mode.ext
			if *update {
				if err := os.WriteFile(gf, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(gf)
			if err != nil {
				t.Fatalf("%v (run with -update)", err)
			}
			if got != string(want) {
				t.Errorf("%s: got\n%s\nwant\n%s", gf, got, want)
			}
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add("Hi {{ first_name | upcase }} {% if x %}{{ y | default: 'z' }}{% endif %}")
	f.Add("{{ a.b[c] | money: 'EUR' }}")
	f.Fuzz(func(t *testing.T, src string) {
		tp, err := Parse(src)
		if err != nil {
			return
		}
		vars := map[string]any{}
		for _, v := range tp.Variables() {
			vars[v] = "v"
		}
		_, _ = tp.Render(vars, true)
	})
}

func TestDecodeVarsKeepsIntegersExact(t *testing.T) {
	t.Parallel()
	vars, err := DecodeVars([]byte(`{"id": 12345678901234567, "price": 12.5, "n": [1, 2.5], "o": {"k": 3}}`))
	if err != nil {
		t.Fatal(err)
	}
	got := render(t, "{{ id }} {{ price | money }} {{ n | join: ',' }} {{ o.k | plus: 1 }}{% if o.k > 2 %} big{% endif %}", vars, false)
	if want := "12345678901234567 12.50 1,2.5 4 big"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	for _, bad := range []string{`[1]`, `{"a":1} {}`, `nope`} {
		if _, err := DecodeVars([]byte(bad)); err == nil {
			t.Errorf("DecodeVars(%s) succeeded", bad)
		}
	}
}
