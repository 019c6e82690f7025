package ingest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"unicode/utf8"

	"github.com/batchsender/batchsender"
)

// NDJSON reads newline-delimited JSON: each non-blank line is one item and
// must hold exactly one JSON object. Blank lines (only spaces, tabs or a
// carriage return) are skipped and do not count as rows; a UTF-8 byte order
// mark before the first line is ignored. Lines may end in "\n" or "\r\n".
//
// Each item's Data is the object compacted (insignificant whitespace
// removed). Rows are numbered from 1 in the order of the items, so "row 3"
// is the third item; the error also names the physical line when blank lines
// make the two differ.
//
// maxLine bounds one line in bytes (DefaultMaxLine when ≤ 0); a longer line is
// an error, so memory stays bounded whatever the client sends.
func NDJSON(r io.Reader, maxLine int) iter.Seq2[batchsender.NewItem, error] {
	if maxLine <= 0 {
		maxLine = DefaultMaxLine
	}
	return func(yield func(batchsender.NewItem, error) bool) {
		sc := bufio.NewScanner(r)
		// The scanner needs room for the line plus its "\r\n".
		sc.Buffer(make([]byte, 0, min(64<<10, maxLine+2)), maxLine+2)
		var row, line int
		var buf bytes.Buffer
		for sc.Scan() {
			line++
			b := sc.Bytes() // ScanLines already dropped "\n" and a trailing "\r"
			if line == 1 {
				b = bytes.TrimPrefix(b, []byte(bom))
			}
			if len(bytes.Trim(b, " \t\r")) == 0 {
				continue
			}
			row++
			if len(b) > maxLine {
				yield(batchsender.NewItem{}, batchsender.Errorf(batchsender.EINVALID, "%s: line longer than %d bytes", rowLine(row, line), maxLine))
				return
			}
			data, err := objectLine(&buf, b)
			if err != nil {
				yield(batchsender.NewItem{}, batchsender.Errorf(batchsender.EINVALID, "%s: %v", rowLine(row, line), err))
				return
			}
			if !yield(batchsender.NewItem{Data: data}, nil) {
				return
			}
		}
		if err := sc.Err(); err != nil {
			if errors.Is(err, bufio.ErrTooLong) {
				yield(batchsender.NewItem{}, batchsender.Errorf(batchsender.EINVALID, "%s: line longer than %d bytes", rowLine(row+1, line+1), maxLine))
				return
			}
			yield(batchsender.NewItem{}, fmt.Errorf("reading NDJSON after row %d: %w", row, err))
		}
	}
}

// objectLine checks that b is one JSON object and returns it compacted in a
// fresh slice: by compactObject for the usual line, else by json.Compact,
// which also words the error.
func objectLine(buf *bytes.Buffer, b []byte) (json.RawMessage, error) {
	if !utf8.Valid(b) {
		return nil, errors.New("not valid UTF-8 (save the file as UTF-8)")
	}
	if out, ok := compactObject(make([]byte, 0, len(b)), b); ok {
		return out, nil
	}
	buf.Reset()
	if err := json.Compact(buf, b); err != nil {
		return nil, fmt.Errorf("invalid JSON: %v", err)
	}
	out := buf.Bytes()
	if len(out) == 0 || out[0] != '{' {
		return nil, fmt.Errorf("expected a JSON object, got %s", kindOf(out))
	}
	return bytes.Clone(out), nil
}

// kindOf names the JSON type of a valid, compact value for error messages.
func kindOf(v []byte) string {
	switch {
	case len(v) == 0:
		return "nothing"
	case v[0] == '[':
		return "an array"
	case v[0] == '"':
		return "a string"
	case v[0] == 't' || v[0] == 'f':
		return "a boolean"
	case v[0] == 'n':
		return "null"
	default:
		return "a number"
	}
}

// rowLine names a position as "row R" or "row R (line L)" when they differ.
func rowLine(row, line int) string {
	if row == line {
		return fmt.Sprintf("row %d", row)
	}
	return fmt.Sprintf("row %d (line %d)", row, line)
}
