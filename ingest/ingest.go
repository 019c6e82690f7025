// Package ingest turns uploaded item lists (NDJSON and CSV) into a stream of
// batchsender.NewItem values, one JSON object each, in bounded memory.
//
// Both readers return an iter.Seq2 that the store consumes inside the one
// transaction that creates or extends a batch: the first bad row ends the
// sequence with an EINVALID error naming the 1-based row, the store rolls
// back, and nothing of the upload is kept. Errors of the underlying reader
// (a client that hangs up, an http.MaxBytesError) are passed on wrapped, so
// the HTTP layer can tell "too large" from "malformed".
//
// Memory is bounded by the longest line (NDJSON) or row (CSV), not by the
// size of the upload; each yielded item owns its bytes.
//
// What is not here: schema checks per provider (the provider's ValidateItem
// does that) and de-duplication of rows.
package ingest

import (
	"errors"
	"unicode/utf8"
)

// DefaultMaxLine is the longest NDJSON line or CSV row accepted when the
// caller passes no limit: 1 MiB, far above any sane item and small enough
// that one bad upload cannot exhaust memory.
const DefaultMaxLine = 1 << 20

// errRowTooLong is returned by the guarded reader when one CSV row grows past
// the limit.
var errRowTooLong = errors.New("row too long")

// bom is the UTF-8 byte order mark some spreadsheet programs put first.
const bom = "\ufeff"

// appendJSONString appends s as a JSON string. s must be valid UTF-8 (the
// callers check). Only '"', '\\' and control characters need escaping; the
// hand-written loop is several times faster than encoding/json here, which
// matters at a million rows.
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"':
			dst = append(dst, '\\', '"')
		case '\\':
			dst = append(dst, '\\', '\\')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// validUTF8 reports whether every string is valid UTF-8.
func validUTF8(ss []string) bool {
	for _, s := range ss {
		if !utf8.ValidString(s) {
			return false
		}
	}
	return true
}
