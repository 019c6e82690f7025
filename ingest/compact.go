package ingest

// compactObject appends b compacted to dst if b is exactly one well-formed
// JSON object, with JSON whitespace allowed around and inside it. It is a
// faster json.Compact for the lines of a large NDJSON upload (encoding/json
// calls a function per byte); ok is false at anything it does not accept,
// and then the caller runs json.Compact, which decides and words the error.
// So the result is json.Compact's whenever ok is true.
func compactObject(dst, b []byte) (out []byte, ok bool) {
	c := compacter{dst: dst, b: b}
	c.ws()
	if c.i >= len(b) || b[c.i] != '{' || !c.value(0) {
		return dst, false
	}
	c.ws()
	if c.i != len(b) {
		return dst, false
	}
	return append(c.dst, b[c.seg:]...), true
}

// maxCompactDepth is the deepest nesting compactObject follows; deeper
// objects take json.Compact (which allows 10,000).
const maxCompactDepth = 256

// compacter copies the bytes it walks past into dst in runs, leaving out
// whitespace between tokens.
type compacter struct {
	dst []byte
	b   []byte
	i   int // next byte to read
	seg int // start of the run not yet copied to dst
}

// ws skips whitespace, ending the current run before it.
func (c *compacter) ws() {
	if c.i >= len(c.b) || !isSpace(c.b[c.i]) {
		return
	}
	c.dst = append(c.dst, c.b[c.seg:c.i]...)
	for c.i < len(c.b) && isSpace(c.b[c.i]) {
		c.i++
	}
	c.seg = c.i
}

func isSpace(ch byte) bool { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' }

func (c *compacter) eat(ch byte) bool {
	if c.i < len(c.b) && c.b[c.i] == ch {
		c.i++
		return true
	}
	return false
}

// value reads one value, starting at a non-space byte.
func (c *compacter) value(depth int) bool {
	if c.i >= len(c.b) || depth > maxCompactDepth {
		return false
	}
	switch ch := c.b[c.i]; {
	case ch == '"':
		return c.str()
	case ch == '{':
		c.i++
		c.ws()
		if c.eat('}') {
			return true
		}
		for {
			if !c.str() {
				return false
			}
			c.ws()
			if !c.eat(':') {
				return false
			}
			c.ws()
			if !c.value(depth + 1) {
				return false
			}
			c.ws()
			if c.eat('}') {
				return true
			}
			if !c.eat(',') {
				return false
			}
			c.ws()
		}
	case ch == '[':
		c.i++
		c.ws()
		if c.eat(']') {
			return true
		}
		for {
			if !c.value(depth + 1) {
				return false
			}
			c.ws()
			if c.eat(']') {
				return true
			}
			if !c.eat(',') {
				return false
			}
			c.ws()
		}
	case ch == '-' || ch >= '0' && ch <= '9':
		return c.number()
	case ch == 't':
		return c.lit("true")
	case ch == 'f':
		return c.lit("false")
	case ch == 'n':
		return c.lit("null")
	}
	return false
}

func (c *compacter) lit(s string) bool {
	if len(c.b)-c.i >= len(s) && string(c.b[c.i:c.i+len(s)]) == s {
		c.i += len(s)
		return true
	}
	return false
}

// str reads a string: valid escapes, no control characters.
func (c *compacter) str() bool {
	if !c.eat('"') {
		return false
	}
	for c.i < len(c.b) {
		ch := c.b[c.i]
		c.i++
		switch {
		case ch == '"':
			return true
		case ch < 0x20:
			return false
		case ch == '\\':
			if c.i >= len(c.b) {
				return false
			}
			e := c.b[c.i]
			c.i++
			switch e {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if len(c.b)-c.i < 4 {
					return false
				}
				for _, h := range c.b[c.i : c.i+4] {
					if !(h >= '0' && h <= '9' || h >= 'a' && h <= 'f' || h >= 'A' && h <= 'F') {
						return false
					}
				}
				c.i += 4
			default:
				return false
			}
		}
	}
	return false
}

// number reads -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (c *compacter) number() bool {
	c.eat('-')
	digits := func() int {
		n := 0
		for c.i < len(c.b) && c.b[c.i] >= '0' && c.b[c.i] <= '9' {
			c.i++
			n++
		}
		return n
	}
	if !c.eat('0') && digits() == 0 {
		return false
	}
	if c.eat('.') && digits() == 0 {
		return false
	}
	if c.eat('e') || c.eat('E') {
		if !c.eat('+') {
			c.eat('-')
		}
		if digits() == 0 {
			return false
		}
	}
	return true
}
