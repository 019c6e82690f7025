package email

import (
	"html"
	"strings"
)

// HTMLToText derives a plain-text alternative from an HTML body: tags are
// dropped, block elements and <br> become line breaks, list items get a
// "- ", links keep their target as "text (url)", script/style/head content
// is skipped and entities are decoded. It is a readable fallback, not a
// renderer.
func HTMLToText(src string) string {
	var (
		out  strings.Builder
		skip string // closing tag name whose content is skipped
		href []string
	)
	i := 0
	for i < len(src) {
		lt := strings.IndexByte(src[i:], '<')
		if lt < 0 {
			if skip == "" {
				out.WriteString(collapse(html.UnescapeString(src[i:])))
			}
			break
		}
		if skip == "" && lt > 0 {
			out.WriteString(collapse(html.UnescapeString(src[i : i+lt])))
		}
		i += lt
		if strings.HasPrefix(src[i:], "<!--") {
			end := strings.Index(src[i:], "-->")
			if end < 0 {
				break
			}
			i += end + 3
			continue
		}
		gt := strings.IndexByte(src[i:], '>')
		if gt < 0 {
			break
		}
		tag := src[i+1 : i+gt]
		i += gt + 1
		closing := strings.HasPrefix(tag, "/")
		name := strings.ToLower(strings.TrimLeft(tag, "/"))
		if j := strings.IndexAny(name, " \t\r\n/"); j >= 0 {
			name = name[:j]
		}
		if skip != "" {
			if closing && name == skip {
				skip = ""
			}
			continue
		}
		switch name {
		case "script", "style", "head", "title":
			if !closing {
				skip = name
			}
		case "br":
			out.WriteString("\n")
		case "p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "table", "tr", "ul", "ol", "blockquote", "section", "article", "header", "footer", "hr":
			out.WriteString("\n\n")
		case "td", "th":
			if closing {
				out.WriteString(" ")
			}
		case "li":
			if !closing {
				out.WriteString("\n- ")
			}
		case "a":
			if !closing {
				href = append(href, attr(tag, "href"))
			} else if n := len(href); n > 0 {
				u := href[n-1]
				href = href[:n-1]
				if u != "" && !strings.HasPrefix(u, "#") && !strings.HasPrefix(u, "mailto:") {
					out.WriteString(" (" + u + ")")
				}
			}
		}
	}
	return tidy(out.String())
}

// collapse turns runs of white space into one space, as a browser does.
func collapse(s string) string {
	var b strings.Builder
	space := false
	for _, r := range s {
		if r == ' ' || r == '\t' || r == '\n' || r == '\r' {
			if !space {
				b.WriteByte(' ')
			}
			space = true
			continue
		}
		space = false
		b.WriteRune(r)
	}
	return b.String()
}

// tidy trims each line and keeps at most one blank line in a row.
func tidy(s string) string {
	lines := strings.Split(s, "\n")
	var out []string
	blank := true
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if l == "" {
			if !blank {
				out = append(out, "")
			}
			blank = true
			continue
		}
		blank = false
		out = append(out, l)
	}
	for len(out) > 0 && out[len(out)-1] == "" {
		out = out[:len(out)-1]
	}
	return strings.Join(out, "\n")
}

// attr returns an attribute's value from a tag's source, entities decoded.
func attr(tag, name string) string {
	lower := strings.ToLower(tag)
	for from := 0; ; {
		j := strings.Index(lower[from:], name)
		if j < 0 {
			return ""
		}
		j += from
		from = j + len(name)
		if j > 0 && lower[j-1] != ' ' && lower[j-1] != '\t' && lower[j-1] != '\n' {
			continue
		}
		rest := strings.TrimLeft(tag[from:], " \t\n")
		if !strings.HasPrefix(rest, "=") {
			continue
		}
		rest = strings.TrimLeft(rest[1:], " \t\n")
		if rest == "" {
			return ""
		}
		if q := rest[0]; q == '"' || q == '\'' {
			if k := strings.IndexByte(rest[1:], q); k >= 0 {
				return html.UnescapeString(rest[1 : 1+k])
			}
			return ""
		}
		if k := strings.IndexAny(rest, " \t\n>"); k >= 0 {
			rest = rest[:k]
		}
		return html.UnescapeString(rest)
	}
}
