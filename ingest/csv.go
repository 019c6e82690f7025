package ingest

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"iter"
	"strings"
	"unicode/utf8"

	"github.com/batchsender/batchsender"
)

// CSV reads comma-separated values (RFC 4180, as encoding/csv reads them):
// the first record is the header and names the fields; every later record is
// one item, a JSON object whose values are the cells as strings.
//
// Header rules:
//   - Names are trimmed of surrounding spaces; a UTF-8 byte order mark is
//     ignored.
//   - A dotted name nests: "payload.name" puts the cell at {"payload":{"name":…}}.
//   - Empty names, empty segments ("a..b", ".a"), duplicate names and
//     conflicting names ("a" beside "a.b") are errors.
//
// Row rules:
//   - An empty cell means "not given": its key is left out, so a default from
//     the batch template applies. An object whose cells are all empty is left
//     out too. To send an empty string or a typed value (number, boolean,
//     array), upload NDJSON instead.
//   - Every row must have as many cells as the header; cells are kept as
//     written (not trimmed) and must be valid UTF-8.
//   - Blank lines are skipped. Rows are numbered from 1 starting after the
//     header; errors name the row and the line of the file.
//   - A row longer than DefaultMaxLine bytes is an error.
func CSV(r io.Reader) iter.Seq2[batchsender.NewItem, error] {
	return csvSeq(r, DefaultMaxLine)
}

func csvSeq(r io.Reader, maxRow int) iter.Seq2[batchsender.NewItem, error] {
	return func(yield func(batchsender.NewItem, error) bool) {
		g := &guardReader{r: r, limit: int64(maxRow) + guardSlack}
		cr := csv.NewReader(g)
		cr.FieldsPerRecord = -1 // checked here, for a clearer message
		cr.ReuseRecord = true

		fail := func(err error) { yield(batchsender.NewItem{}, err) }

		header, err := cr.Read()
		if err == io.EOF {
			return // an empty upload holds no items
		}
		if err != nil {
			fail(csvReadError("header", err))
			return
		}
		plan, err := newPlan(header)
		if err != nil {
			fail(batchsender.Errorf(batchsender.EINVALID, "header: %v", err))
			return
		}
		last := cr.InputOffset()
		g.mark = last

		var buf []byte
		for row := 1; ; row++ {
			rec, err := cr.Read()
			if err == io.EOF {
				return
			}
			if err != nil {
				fail(csvReadError(fmt.Sprintf("row %d", row), err))
				return
			}
			line, _ := cr.FieldPos(0)
			off := cr.InputOffset()
			if off-last > int64(maxRow) {
				fail(batchsender.Errorf(batchsender.EINVALID, "row %d (line %d): longer than %d bytes", row, line, maxRow))
				return
			}
			last = off
			g.mark = off
			if len(rec) != plan.cols {
				cells := "cells"
				if len(rec) == 1 {
					cells = "cell"
				}
				fail(batchsender.Errorf(batchsender.EINVALID, "row %d (line %d): %d %s where the header has %d columns", row, line, len(rec), cells, plan.cols))
				return
			}
			buf = plan.root.encode(buf[:0], rec)
			// One check of the encoded row rather than one per cell: every
			// non-empty cell is in it byte for byte (escapes are ASCII),
			// and the names were checked with the header.
			if !utf8.Valid(buf) {
				fail(batchsender.Errorf(batchsender.EINVALID, "row %d (line %d): not valid UTF-8 (save the file as UTF-8)", row, line))
				return
			}
			data := make([]byte, len(buf))
			copy(data, buf)
			if !yield(batchsender.NewItem{Data: data}, nil) {
				return
			}
		}
	}
}

// csvReadError turns an encoding/csv error into a row error, and passes a
// failure of the underlying reader on wrapped.
func csvReadError(where string, err error) error {
	if errors.Is(err, errRowTooLong) {
		return batchsender.Errorf(batchsender.EINVALID, "%s: longer than %d bytes", where, DefaultMaxLine)
	}
	if pe, ok := errors.AsType[*csv.ParseError](err); ok {
		if pe.Err == csv.ErrFieldCount || pe.Err == csv.ErrQuote || pe.Err == csv.ErrBareQuote {
			return batchsender.Errorf(batchsender.EINVALID, "%s (line %d, column %d): %v", where, pe.Line, pe.Column, pe.Err)
		}
		// Other ParseErrors carry a read error of the underlying reader.
		if pe.Err != nil {
			err = pe.Err
		}
	}
	return fmt.Errorf("reading CSV %s: %w", where, err)
}

// guardSlack covers what encoding/csv's bufio.Reader reads ahead of the
// record it returned.
const guardSlack = 64 << 10

// guardReader fails once more than limit bytes have been read since mark,
// which the CSV loop moves to the end of every record: a single endless row
// cannot make encoding/csv buffer the whole upload.
type guardReader struct {
	r     io.Reader
	n     int64
	mark  int64
	limit int64
}

func (g *guardReader) Read(p []byte) (int, error) {
	if g.n-g.mark > g.limit {
		return 0, errRowTooLong
	}
	n, err := g.r.Read(p)
	g.n += int64(n)
	return n, err
}

// plan is the header compiled into a tree, so a row is encoded in one pass
// without maps or reflection.
type plan struct {
	cols int
	root *node
}

// node is one key of the output object: a leaf takes column col, an object
// (col < 0) has children in header order.
type node struct {
	name     string
	prefix   []byte // `"name":`, escaped once
	col      int
	first    int // the column that created the node, for error messages
	children []*node
	byName   map[string]*node
}

func newPlan(header []string) (*plan, error) {
	root := &node{col: -1, byName: map[string]*node{}}
	seen := make(map[string]int, len(header))
	for i, h := range header {
		if i == 0 {
			h = strings.TrimPrefix(h, bom)
		}
		h = strings.TrimSpace(h)
		if h == "" {
			return nil, fmt.Errorf("column %d has an empty name", i+1)
		}
		if !validUTF8([]string{h}) {
			return nil, fmt.Errorf("column %d: name is not valid UTF-8", i+1)
		}
		if j, dup := seen[h]; dup {
			return nil, fmt.Errorf("columns %d and %d are both named %q", j+1, i+1, h)
		}
		seen[h] = i
		parts := strings.Split(h, ".")
		n := root
		for k, part := range parts {
			if part == "" {
				return nil, fmt.Errorf("column %d: %q has an empty part between dots", i+1, h)
			}
			last := k == len(parts)-1
			child, ok := n.byName[part]
			switch {
			case !ok:
				child = &node{name: part, prefix: append(appendJSONString(nil, part), ':'), col: -1, first: i}
				if last {
					child.col = i
				} else {
					child.byName = map[string]*node{}
				}
				n.byName[part] = child
				n.children = append(n.children, child)
			case last || child.col >= 0:
				// Either h names an object that other columns fill, or a
				// column already took a prefix of h as a plain value.
				return nil, fmt.Errorf("columns %d (%q) and %d (%q) conflict: %q cannot be both a value and an object",
					child.first+1, strings.TrimSpace(strings.TrimPrefix(header[child.first], bom)), i+1, h, strings.Join(parts[:k+1], "."))
			}
			n = child
		}
	}
	return &plan{cols: len(header), root: root}, nil
}

// encode appends the object n for record rec, leaving out empty cells and
// empty sub-objects.
func (n *node) encode(dst []byte, rec []string) []byte {
	dst = append(dst, '{')
	first := true
	for _, c := range n.children {
		if c.col >= 0 {
			v := rec[c.col]
			if v == "" {
				continue
			}
			if !first {
				dst = append(dst, ',')
			}
			first = false
			dst = append(dst, c.prefix...)
			dst = appendJSONString(dst, v)
			continue
		}
		mark := len(dst)
		if !first {
			dst = append(dst, ',')
		}
		dst = append(dst, c.prefix...)
		before := len(dst)
		dst = c.encode(dst, rec)
		if len(dst) == before+2 { // "{}": nothing given below
			dst = dst[:mark]
			continue
		}
		first = false
	}
	return append(dst, '}')
}
