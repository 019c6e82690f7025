// Package tmpl is the one template engine every BatchSender module uses for
// per-item personalisation: email subjects and bodies, SMS texts, webhook
// bodies.
//
// The syntax is Liquid (Shopify's template language, known to the people who
// write sendouts), implemented by github.com/osteele/liquid:
//
//	Hi {{ first_name }}!
//	{{ name | upcase }}, {{ nickname | default: "friend" }}
//	Due {{ due | date: "%Y-%m-%d" }}: {{ amount | money: "EUR" }}
//	{% if vip %}Thanks for being a VIP.{% endif %}
//
// On top of the library this package adds what a batch sender needs:
//
//   - Strictness. Every variable a template uses is required: rendering an
//     item that lacks one (or has it null) fails with a *MissingVariableError
//     naming it, so the API rejects the row at ingest instead of sending
//     "Hi ,". A variable is optional only where the template says it may be
//     absent: in front of a "default" filter, in an if/unless/elsif/case
//     condition, and anywhere inside the block such a condition guards
//     ({% if nickname %}Hi {{ nickname }}{% endif %}). Only the root of a
//     path is checked ("user" in user.name).
//   - HTML escaping. Render(vars, true) escapes every {{ }} output, the way
//     html/template does; "| raw" at the end of an expression opts out, and a
//     trailing "| escape" is not escaped twice.
//   - Safety. The include tag (which reads files) is refused.
//   - Filters: the standard Liquid filters plus "money".
//
// Known limits: output of the cycle tag is not HTML-escaped, and variables
// used only inside {% raw %} or {% comment %} are ignored (as they should be).
package tmpl

import (
	"errors"
	"fmt"
	"html"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/osteele/liquid"
	"github.com/osteele/liquid/parser"
)

// MissingVariableError reports a variable the template needs that the item
// lacks or has as null.
type MissingVariableError struct {
	// Name is the variable's name as written in the template.
	Name string
}

func (e *MissingVariableError) Error() string {
	return fmt.Sprintf("missing variable %q", e.Name)
}

// Template is a parsed template, safe for concurrent use.
type Template struct {
	src      string
	text     *liquid.Template
	html     *liquid.Template
	required []string
	all      []string
}

// autoescapeFilter is the filter name appended to every output expression of
// the HTML variant. Its name cannot clash with a user's filter in practice.
const autoescapeFilter = "bs_autoescape__"

var engine = newEngine()

func newEngine() *liquid.Engine {
	e := liquid.NewEngine()
	e.RegisterFilter("money", moneyFilter)
	e.RegisterFilter("raw", func(v any) any { return v })
	e.RegisterFilter(autoescapeFilter, func(v any) string { return html.EscapeString(stringify(v)) })
	return e
}

// knownFilters are the filters the engine defines (Liquid's standard set,
// money and raw), checked at parse time so that a typo fails before sending.
var knownFilters = map[string]bool{}

func init() {
	for _, f := range strings.Fields(`abs append capitalize ceil compact concat date default divided_by
		downcase escape escape_once first floor inspect join json last lstrip map minus modulo
		newline_to_br plus prepend remove remove_first replace replace_first reverse round rstrip
		size slice sort sort_natural split strip strip_html strip_newlines times truncate
		truncatewords type uniq upcase url_decode url_encode money raw`) {
		knownFilters[f] = true
	}
}

// allowedTags are the Liquid tags a template may use. include is left out on
// purpose: it reads files from the server's disk.
var allowedTags = map[string]bool{
	"if": true, "elsif": true, "else": true, "endif": true,
	"unless": true, "endunless": true,
	"case": true, "when": true, "endcase": true,
	"for": true, "endfor": true, "break": true, "continue": true,
	"tablerow": true, "endtablerow": true,
	"assign": true, "capture": true, "endcapture": true,
	"cycle":   true,
	"comment": true, "endcomment": true,
	"raw": true, "endraw": true,
}

// Parse parses a template. Errors describe the syntax problem and its line.
func Parse(src string) (*Template, error) {
	tokens := parser.Scan(src, parser.SourceLoc{LineNo: 1}, nil)
	var (
		htmlSrc  strings.Builder
		locals   = map[string]bool{"forloop": true, "tablerowloop": true}
		required = map[string]bool{}
		optional = map[string]bool{}
		verbatim string // "raw" or "comment" while inside such a block
		// guards holds, per open if/unless/case block, the variables its
		// conditions test: inside the block they are optional.
		guards []map[string]bool
	)
	guarded := func(name string) bool {
		for _, g := range guards {
			if g[name] {
				return true
			}
		}
		return false
	}
	require := func(expr string) {
		vars, _ := scanExpr(expr)
		for _, v := range vars {
			if guarded(v.name) {
				optional[v.name] = true
			} else {
				required[v.name] = true
			}
		}
	}
	for _, tok := range tokens {
		if verbatim != "" {
			if tok.Type == parser.TagTokenType && tok.Name == "end"+verbatim {
				verbatim = ""
			}
			htmlSrc.WriteString(tok.Source)
			continue
		}
		switch tok.Type {
		case parser.TextTokenType:
			htmlSrc.WriteString(tok.Source)
		case parser.ObjTokenType:
			htmlSrc.WriteString(escapedObject(tok))
			vars, filters := scanExpr(tok.Args)
			for _, f := range filters {
				if !knownFilters[f] {
					return nil, fmt.Errorf("line %d: unknown filter %q", tok.SourceLoc.LineNo, f)
				}
			}
			first := firstFilterIndex(tok.Args)
			for _, v := range vars {
				if slicesContains(filters, "default") && v.pos < first || guarded(v.name) {
					optional[v.name] = true
				} else {
					required[v.name] = true
				}
			}
		case parser.TagTokenType:
			if !allowedTags[tok.Name] {
				return nil, fmt.Errorf("line %d: tag %q is not supported", tok.SourceLoc.LineNo, tok.Name)
			}
			htmlSrc.WriteString(tok.Source)
			switch tok.Name {
			case "raw", "comment":
				verbatim = tok.Name
			case "assign":
				name, expr, _ := strings.Cut(tok.Args, "=")
				locals[strings.TrimSpace(name)] = true
				require(expr)
			case "capture":
				locals[strings.TrimSpace(tok.Args)] = true
			case "for", "tablerow":
				name, expr, _ := strings.Cut(tok.Args, " in ")
				locals[strings.TrimSpace(name)] = true
				require(expr)
			case "if", "unless", "case":
				g := map[string]bool{}
				addVars(g, tok.Args)
				addVars(optional, tok.Args)
				guards = append(guards, g)
			case "elsif", "when":
				if len(guards) > 0 {
					addVars(guards[len(guards)-1], tok.Args)
				}
				addVars(optional, tok.Args)
			case "endif", "endunless", "endcase":
				if len(guards) > 0 {
					guards = guards[:len(guards)-1]
				}
			case "cycle":
				require(tok.Args)
			}
		}
	}
	text, err := parseString(src)
	if err != nil {
		return nil, err
	}
	htm, err := parseString(htmlSrc.String())
	if err != nil {
		return nil, err
	}
	t := &Template{src: src, text: text, html: htm}
	for v := range required {
		if !locals[v] {
			t.required = append(t.required, v)
		}
	}
	for v := range optional {
		if !locals[v] && !required[v] {
			t.all = append(t.all, v)
		}
	}
	t.all = append(t.all, t.required...)
	sort.Strings(t.required)
	sort.Strings(t.all)
	return t, nil
}

// MustParse is Parse for templates known at compile time; it panics on error.
func MustParse(src string) *Template {
	t, err := Parse(src)
	if err != nil {
		panic(err)
	}
	return t
}

// Source returns the template's source text.
func (t *Template) Source() string { return t.src }

// Variables returns the sorted names of the variables the template uses,
// required or optional.
func (t *Template) Variables() []string { return append([]string(nil), t.all...) }

// Required returns the sorted names of the variables every item must have.
func (t *Template) Required() []string { return append([]string(nil), t.required...) }

// Check returns a *MissingVariableError for the first required variable
// (in sorted order) that vars lacks, or nil. It is cheaper than Render and
// meant for validation at ingest.
func (t *Template) Check(vars map[string]any) error {
	for _, name := range t.required {
		if v, ok := vars[name]; !ok || v == nil {
			return &MissingVariableError{Name: name}
		}
	}
	return nil
}

// Render renders the template with vars (an item's fields). With html true
// every output is HTML-escaped. A missing required variable is a
// *MissingVariableError.
func (t *Template) Render(vars map[string]any, htmlMode bool) (string, error) {
	if err := t.Check(vars); err != nil {
		return "", err
	}
	tpl := t.text
	if htmlMode {
		tpl = t.html
	}
	return renderString(tpl, vars)
}

// parseString parses with the library, turning its panics (it panics on
// some malformed input, such as an integer literal out of range, found by
// FuzzParse) into errors: a template is user input and must never crash
// the server.
func parseString(src string) (t *liquid.Template, err error) {
	defer func() {
		if r := recover(); r != nil {
			t, err = nil, fmt.Errorf("parsing template: %v", r)
		}
	}()
	t, perr := engine.ParseString(src)
	if perr != nil {
		return nil, fmt.Errorf("parsing template: %w", perr)
	}
	return t, nil
}

// renderString renders with the library, turning its panics into errors for
// the same reason as parseString.
func renderString(t *liquid.Template, vars map[string]any) (out string, err error) {
	defer func() {
		if r := recover(); r != nil {
			out, err = "", fmt.Errorf("rendering template: %v", r)
		}
	}()
	out, rerr := t.RenderString(vars)
	if rerr != nil {
		return "", fmt.Errorf("rendering template: %w", rerr)
	}
	return out, nil
}

// IsMissingVariable reports whether err is or wraps a *MissingVariableError
// and returns the variable's name.
func IsMissingVariable(err error) (string, bool) {
	var m *MissingVariableError
	if errors.As(err, &m) {
		return m.Name, true
	}
	return "", false
}

// escapedObject rewrites one {{ expr }} token so that its output is escaped,
// unless the expression already ends in raw, escape or escape_once.
func escapedObject(tok parser.Token) string {
	_, filters := scanExpr(tok.Args)
	if n := len(filters); n > 0 {
		switch filters[n-1] {
		case "raw", "escape", "escape_once":
			return tok.Source
		}
	}
	var b strings.Builder
	b.WriteString("{{")
	if strings.HasPrefix(tok.Source, "{{-") {
		b.WriteString("-")
	}
	b.WriteString(" ")
	b.WriteString(tok.Args)
	b.WriteString(" | " + autoescapeFilter + " ")
	if strings.HasSuffix(tok.Source, "-}}") {
		b.WriteString("-")
	}
	b.WriteString("}}")
	return b.String()
}

type varRef struct {
	name string
	pos  int
}

var keywords = map[string]bool{
	"and": true, "or": true, "contains": true, "true": true, "false": true,
	"nil": true, "null": true, "empty": true, "blank": true, "in": true,
	"reversed": true, "limit": true, "offset": true, "cols": true, "with": true,
}

// scanExpr lexes a Liquid expression and returns the root variables it
// references and the names of the filters it applies, in order.
func scanExpr(s string) (vars []varRef, filters []string) {
	prev := byte(0) // last significant punctuation
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '\'' || c == '"':
			j := strings.IndexByte(s[i+1:], c)
			if j < 0 {
				return vars, filters
			}
			i += j + 2
			prev = 'x'
		case c >= '0' && c <= '9':
			for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '.' && i+1 < len(s) && s[i+1] != '.') {
				i++
			}
			prev = 'x'
		case isIdentStart(c):
			j := i
			for j < len(s) && isIdentPart(s[j]) {
				j++
			}
			if j < len(s) && s[j] == '?' {
				j++
			}
			name := s[i:j]
			// A named argument ("limit: 3") is followed by a colon.
			k := j
			for k < len(s) && s[k] == ' ' {
				k++
			}
			named := k < len(s) && s[k] == ':' && prev != '|'
			switch {
			case prev == '|':
				filters = append(filters, name)
			case prev == '.':
			case named || keywords[name]:
			default:
				vars = append(vars, varRef{name: name, pos: i})
			}
			i = j
			prev = 'x'
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		default:
			prev = c
			i++
		}
	}
	return vars, filters
}

func firstFilterIndex(s string) int {
	inQuote := byte(0)
	for i := 0; i < len(s); i++ {
		switch {
		case inQuote != 0:
			if s[i] == inQuote {
				inQuote = 0
			}
		case s[i] == '\'' || s[i] == '"':
			inQuote = s[i]
		case s[i] == '|':
			return i
		}
	}
	return len(s)
}

func addVars(m map[string]bool, expr string) {
	vars, _ := scanExpr(expr)
	for _, v := range vars {
		m[v.name] = true
	}
}

func isIdentStart(c byte) bool { return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func isIdentPart(c byte) bool  { return isIdentStart(c) || c >= '0' && c <= '9' || c == '-' }

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// stringify formats a value the way Liquid prints it.
func stringify(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		return v
	case time.Time:
		return v.Format("2006-01-02 15:04:05 -0700")
	case []byte:
		return string(v)
	case []any:
		var b strings.Builder
		for _, x := range v {
			b.WriteString(stringify(x))
		}
		return b.String()
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	return fmt.Sprint(v)
}

var currencySymbols = map[string]string{"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "INR": "₹"}

// moneyFilter formats a number in major units with two decimals and
// thousands separators: 1234.5 → "1,234.50". With a currency code the
// symbol is put in front when well known ("$1,234.50"), else the code after
// ("1,234.50 CHF"). Strings holding numbers are accepted.
func moneyFilter(v any, currency func(string) string) (string, error) {
	var f float64
	switch n := v.(type) {
	case float64:
		f = n
	case float32:
		f = float64(n)
	case int:
		f = float64(n)
	case int64:
		f = float64(n)
	case string:
		p, err := strconv.ParseFloat(strings.TrimSpace(n), 64)
		if err != nil {
			return "", fmt.Errorf("money: %q is not a number", n)
		}
		f = p
	default:
		return "", fmt.Errorf("money: %v is not a number", v)
	}
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return "", fmt.Errorf("money: %v is not a number", v)
	}
	neg := f < 0
	s := strconv.FormatFloat(math.Abs(f), 'f', 2, 64)
	whole, frac, _ := strings.Cut(s, ".")
	var b strings.Builder
	for i, d := range whole {
		if i > 0 && (len(whole)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(d)
	}
	num := b.String() + "." + frac
	code := strings.ToUpper(strings.TrimSpace(currency("")))
	out := num
	if sym, ok := currencySymbols[code]; ok {
		out = sym + num
	} else if code != "" {
		out = num + " " + code
	}
	if neg {
		out = "-" + out
	}
	return out, nil
}
