package webhook

import (
	"sync"
)

// Large uploads call ValidateItem once per row, a million times for a
// million-row list, and a strict encoding/json decode of every row was
// most of the upload's CPU. validateFast checks the common shape of an
// item (an object of url, method, headers and payload, no escapes in the
// url, method or header names) with a hand-written scanner that only
// checks the payload is well-formed JSON and never decodes it, and
// checks each distinct URL only once per batch template. It only ever
// accepts: whenever it is unsure or finds something wrong, ValidateItem
// runs the full decode, which decides and words the error. So its answer
// is the full path's answer, only faster on the rows that are fine.

// urlCacheSize bounds the URLs a sender remembers as valid. Uploads
// usually repeat one or a few URLs; a list of all-distinct URLs just
// stops being cached when the cache is full.
const urlCacheSize = 256

// maxFastDepth is the deepest payload nesting the fast scanner follows;
// deeper payloads take the full decode (encoding/json allows 10,000).
const maxFastDepth = 64

// urlCache remembers URLs that passed parseURL under the sender's policy.
// The check is a pure function of the string and the policy (no DNS), so
// a URL that passed once passes again.
type urlCache struct {
	mu sync.Mutex
	ok map[string]struct{}
}

func (c *urlCache) has(u string) bool {
	c.mu.Lock()
	_, ok := c.ok[u]
	c.mu.Unlock()
	return ok
}

func (c *urlCache) add(u string) {
	c.mu.Lock()
	if c.ok == nil {
		c.ok = make(map[string]struct{}, 8)
	}
	if len(c.ok) < urlCacheSize {
		c.ok[u] = struct{}{}
	}
	c.mu.Unlock()
}

// validateFast reports whether data is certainly a valid item for s. false
// means "not sure", never "invalid".
func (s *sender) validateFast(data []byte) bool {
	it, ok := scanFields(data)
	if !ok {
		return false
	}
	if it.URL == "" {
		return s.tmplURL != nil
	}
	if s.urls.has(it.URL) {
		return true
	}
	if _, err := parseURL(it.URL, s.p.allowPrivate); err != nil {
		return false
	}
	s.urls.add(it.URL)
	return true
}

// scanFields reads an item of the common shape with the hand-written
// scanner and returns the fields the full decode would return (headers
// checked and canonicalised, a null payload as none; the URL is not
// checked). Send resolves every item again, so this spares each delivery
// a strict encoding/json decode. ok false means "not sure": the caller
// takes the full decode, which decides and words any error.
func scanFields(data []byte) (it fields, ok bool) {
	sc := scanner{b: data}
	sc.ws()
	if !sc.eat('{') {
		return it, false
	}
	var url, method []byte
	var seen uint8 // bit per known key: duplicates take the full path
	var headers map[string]string
	sc.ws()
	if !sc.eat('}') {
		for {
			sc.ws()
			key, ok := sc.plainString()
			if !ok {
				return it, false
			}
			sc.ws()
			if !sc.eat(':') {
				return it, false
			}
			sc.ws()
			var bit uint8
			switch string(key) {
			case "url":
				bit = 1
				if url, ok = sc.plainString(); !ok {
					return it, false
				}
			case "method":
				bit = 2
				if method, ok = sc.plainString(); !ok {
					return it, false
				}
			case "headers":
				bit = 4
				if headers, ok = sc.headers(); !ok {
					return it, false
				}
			case "payload":
				bit = 8
				start := sc.i
				if !sc.value(0) {
					return it, false
				}
				// The value's own bytes, as json.RawMessage keeps them.
				it.Payload = data[start:sc.i:sc.i]
			default:
				return it, false // unknown here: the full path refuses it, or matches a key case-insensitively
			}
			if seen&bit != 0 {
				return it, false
			}
			seen |= bit
			sc.ws()
			if sc.eat('}') {
				break
			}
			if !sc.eat(',') {
				return it, false
			}
		}
	}
	sc.ws()
	if sc.i != len(sc.b) {
		return it, false
	}
	if len(method) > 0 {
		if !methods[string(method)] {
			return it, false
		}
		it.Method = string(method)
	}
	if headers != nil {
		h, err := checkHeaders(headers)
		if err != nil {
			return it, false
		}
		it.Headers = h
	}
	if string(it.Payload) == "null" {
		it.Payload = nil
	}
	if len(url) > 0 {
		it.URL = string(url)
	}
	return it, true
}

// scanner walks JSON bytes. Its methods return false at anything they do
// not handle, which sends the item to the full decode.
type scanner struct {
	b []byte
	i int
}

func (sc *scanner) ws() {
	for sc.i < len(sc.b) {
		switch sc.b[sc.i] {
		case ' ', '\t', '\n', '\r':
			sc.i++
		default:
			return
		}
	}
}

func (sc *scanner) eat(c byte) bool {
	if sc.i < len(sc.b) && sc.b[sc.i] == c {
		sc.i++
		return true
	}
	return false
}

// plainString reads a string without escapes, control characters or
// bytes beyond ASCII, and returns its contents (the JSON text is then the
// value itself).
func (sc *scanner) plainString() ([]byte, bool) {
	if !sc.eat('"') {
		return nil, false
	}
	start := sc.i
	for sc.i < len(sc.b) {
		c := sc.b[sc.i]
		switch {
		case c == '"':
			sc.i++
			return sc.b[start : sc.i-1], true
		case c < 0x20 || c == '\\' || c >= 0x80:
			return nil, false
		}
		sc.i++
	}
	return nil, false
}

// headers reads an object of plain strings.
func (sc *scanner) headers() (map[string]string, bool) {
	if !sc.eat('{') {
		return nil, false // null and other values take the full path
	}
	h := make(map[string]string, 2)
	sc.ws()
	if sc.eat('}') {
		return h, true
	}
	for {
		sc.ws()
		k, ok := sc.plainString()
		if !ok {
			return nil, false
		}
		sc.ws()
		if !sc.eat(':') {
			return nil, false
		}
		sc.ws()
		v, ok := sc.plainString()
		if !ok {
			return nil, false
		}
		if _, dup := h[string(k)]; dup {
			return nil, false
		}
		h[string(k)] = string(v)
		sc.ws()
		if sc.eat('}') {
			return h, true
		}
		if !sc.eat(',') {
			return nil, false
		}
	}
}

// value skips one well-formed JSON value.
func (sc *scanner) value(depth int) bool {
	if sc.i >= len(sc.b) || depth > maxFastDepth {
		return false
	}
	switch c := sc.b[sc.i]; {
	case c == '"':
		return sc.str()
	case c == '{':
		sc.i++
		sc.ws()
		if sc.eat('}') {
			return true
		}
		for {
			sc.ws()
			if !sc.str() {
				return false
			}
			sc.ws()
			if !sc.eat(':') {
				return false
			}
			sc.ws()
			if !sc.value(depth + 1) {
				return false
			}
			sc.ws()
			if sc.eat('}') {
				return true
			}
			if !sc.eat(',') {
				return false
			}
		}
	case c == '[':
		sc.i++
		sc.ws()
		if sc.eat(']') {
			return true
		}
		for {
			sc.ws()
			if !sc.value(depth + 1) {
				return false
			}
			sc.ws()
			if sc.eat(']') {
				return true
			}
			if !sc.eat(',') {
				return false
			}
		}
	case c == '-' || c >= '0' && c <= '9':
		return sc.number()
	case c == 't':
		return sc.lit("true")
	case c == 'f':
		return sc.lit("false")
	case c == 'n':
		return sc.lit("null")
	}
	return false
}

func (sc *scanner) lit(s string) bool {
	if len(sc.b)-sc.i >= len(s) && string(sc.b[sc.i:sc.i+len(s)]) == s {
		sc.i += len(s)
		return true
	}
	return false
}

// str skips a string: valid escapes, no control characters. Bytes beyond
// ASCII pass as they are, as encoding/json lets them.
func (sc *scanner) str() bool {
	if !sc.eat('"') {
		return false
	}
	for sc.i < len(sc.b) {
		c := sc.b[sc.i]
		sc.i++
		switch {
		case c == '"':
			return true
		case c < 0x20:
			return false
		case c == '\\':
			if sc.i >= len(sc.b) {
				return false
			}
			e := sc.b[sc.i]
			sc.i++
			switch e {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if len(sc.b)-sc.i < 4 {
					return false
				}
				for _, h := range sc.b[sc.i : sc.i+4] {
					if !(h >= '0' && h <= '9' || h >= 'a' && h <= 'f' || h >= 'A' && h <= 'F') {
						return false
					}
				}
				sc.i += 4
			default:
				return false
			}
		}
	}
	return false
}

// number skips a number in JSON's grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (sc *scanner) number() bool {
	sc.eat('-')
	digits := func() int {
		n := 0
		for sc.i < len(sc.b) && sc.b[sc.i] >= '0' && sc.b[sc.i] <= '9' {
			sc.i++
			n++
		}
		return n
	}
	if sc.eat('0') {
		// no more integer digits after a leading zero
	} else if digits() == 0 {
		return false
	}
	if sc.eat('.') && digits() == 0 {
		return false
	}
	if sc.eat('e') || sc.eat('E') {
		if !sc.eat('+') {
			sc.eat('-')
		}
		if digits() == 0 {
			return false
		}
	}
	return true
}
