package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/batchsender/batchsender"
)

// collect drains seq into the items' JSON texts and the error that ended it.
func collect(seq iter.Seq2[batchsender.NewItem, error]) ([]string, error) {
	var out []string
	for it, err := range seq {
		if err != nil {
			return out, err
		}
		out = append(out, string(it.Data))
	}
	return out, nil
}

func TestNDJSON(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		want    []string
		wantErr string // substring of the error; "" for none
	}{
		{name: "ReadsObjects", in: "{\"a\":1}\n{\"b\": [1, 2]}\n", want: []string{`{"a":1}`, `{"b":[1,2]}`}},
		{name: "NoTrailingNewline", in: `{"a":1}`, want: []string{`{"a":1}`}},
		{name: "CRLFAndBOM", in: "\ufeff{\"a\":1}\r\n{\"b\":2}\r\n", want: []string{`{"a":1}`, `{"b":2}`}},
		{name: "SkipsBlankLines", in: "\n  \n{\"a\":1}\n\t\r\n{\"b\":2}\n\n", want: []string{`{"a":1}`, `{"b":2}`}},
		{name: "Empty", in: "", want: nil},
		{name: "RejectsArray", in: "{\"a\":1}\n[1]\n", wantErr: "row 2: expected a JSON object, got an array"},
		{name: "RejectsScalar", in: "\"x\"\n", wantErr: "row 1: expected a JSON object, got a string"},
		{name: "RejectsNull", in: "null\n", wantErr: "row 1: expected a JSON object, got null"},
		{name: "RejectsBrokenJSON", in: "{\"a\":1}\n{\"a\":\n", wantErr: "row 2: invalid JSON"},
		{name: "RejectsTwoValuesOnALine", in: "{\"a\":1} {\"b\":2}\n", wantErr: "row 1: invalid JSON"},
		{name: "NamesLineWhenBlankLinesShift", in: "\n{\"a\":1}\n\nnope\n", wantErr: "row 2 (line 4): invalid JSON"},
		{name: "RejectsInvalidUTF8", in: "{\"a\":\"\xff\"}\n", wantErr: "row 1: not valid UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := collect(NDJSON(strings.NewReader(tt.in), 0))
			checkResult(t, got, err, tt.want, tt.wantErr)
		})
	}
}

func TestNDJSONLineLimit(t *testing.T) {
	t.Parallel()
	t.Run("AcceptsLineAtLimit", func(t *testing.T) {
		t.Parallel()
		line := `{"a":"` + strings.Repeat("x", 20) + `"}` // 28 bytes
		got, err := collect(NDJSON(strings.NewReader(line+"\r\n"+line+"\n"), len(line)))
		checkResult(t, got, err, []string{line, line}, "")
	})
	t.Run("RejectsLongerLine", func(t *testing.T) {
		t.Parallel()
		short := `{"a":1}`
		long := `{"a":"` + strings.Repeat("x", 200) + `"}`
		_, err := collect(NDJSON(strings.NewReader(short+"\n"+long+"\n"), 100))
		checkResult(t, nil, err, nil, "row 2: line longer than 100 bytes")
	})
	t.Run("RejectsHugeLineWithoutReadingItAll", func(t *testing.T) {
		t.Parallel()
		r := &countingReader{r: io.MultiReader(strings.NewReader(`{"a":"`), endless('x'))}
		_, err := collect(NDJSON(r, 1000))
		checkResult(t, nil, err, nil, "row 1: line longer than 1000 bytes")
		if r.n > 1<<20 {
			t.Fatalf("read %d bytes to reject a line over 1000 bytes", r.n)
		}
	})
}

func TestNDJSONPassesReaderErrorsOn(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	r := io.MultiReader(strings.NewReader("{\"a\":1}\n"), errReader{boom})
	got, err := collect(NDJSON(r, 0))
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want wrapping %v", err, boom)
	}
	if batchsender.ErrorCode(err) != batchsender.EINTERNAL {
		t.Fatalf("a reader failure must not look like bad input, got code %q", batchsender.ErrorCode(err))
	}
	if len(got) != 1 {
		t.Fatalf("got %d items before the error, want 1", len(got))
	}
}

func TestNDJSONStopsWhenConsumerStops(t *testing.T) {
	t.Parallel()
	n := 0
	for range NDJSON(strings.NewReader("{}\n{}\n{}\n"), 0) {
		n++
		break
	}
	if n != 1 {
		t.Fatalf("consumed %d", n)
	}
}

func TestNDJSONItemsOwnTheirBytes(t *testing.T) {
	t.Parallel()
	var items []batchsender.NewItem
	for it, err := range NDJSON(strings.NewReader("{\"a\":1}\n{\"b\":2}\n"), 0) {
		if err != nil {
			t.Fatal(err)
		}
		items = append(items, it)
	}
	if string(items[0].Data) != `{"a":1}` || string(items[1].Data) != `{"b":2}` {
		t.Fatalf("items share a buffer: %s %s", items[0].Data, items[1].Data)
	}
}

func TestCSV(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		want    []string
		wantErr string
	}{
		{
			name: "ReadsRowsAsObjects",
			in:   "url,name\nhttps://a.example/x,Ann\nhttps://b.example/y,Bob\n",
			want: []string{`{"url":"https://a.example/x","name":"Ann"}`, `{"url":"https://b.example/y","name":"Bob"}`},
		},
		{
			name: "NestsDottedHeaders",
			in:   "url,payload.name,payload.address.city,headers.X-Tag\nu,Ann,Oslo,t1\n",
			want: []string{`{"url":"u","payload":{"name":"Ann","address":{"city":"Oslo"}},"headers":{"X-Tag":"t1"}}`},
		},
		{
			name: "OmitsEmptyCellsAndEmptyObjects",
			in:   "url,payload.name,payload.age,n\n,,,\nu,,3,\n",
			want: []string{`{}`, `{"url":"u","payload":{"age":"3"}}`},
		},
		{
			name: "ToleratesBOMAndCRLFAndTrimsHeader",
			in:   "\ufeff url , name\r\nu,\"Ann, \"\"the\"\" first\"\r\n",
			want: []string{`{"url":"u","name":"Ann, \"the\" first"}`},
		},
		{
			name: "KeepsMultilineCellsAndEscapes",
			in:   "a,b\n\"line1\nline2\",\"tab\there\\ \x01\"\n",
			want: []string{`{"a":"line1\nline2","b":"tab\there\\ \u0001"}`},
		},
		{name: "EmptyUpload", in: "", want: nil},
		{name: "HeaderOnly", in: "a,b\n", want: nil},
		{name: "SkipsBlankLines", in: "a\n\nx\n\ny\n", want: []string{`{"a":"x"}`, `{"a":"y"}`}},
		{name: "RejectsShortRow", in: "a,b\n1,2\n3\n", wantErr: "row 2 (line 3): 1 cell where the header has 2 columns"},
		{name: "RejectsLongRow", in: "a,b\n1,2,3\n", wantErr: "row 1 (line 2): 3 cells where the header has 2 columns"},
		{name: "RejectsDuplicateHeader", in: "a,b,a\n1,2,3\n", wantErr: `header: columns 1 and 3 are both named "a"`},
		{name: "RejectsEmptyHeader", in: "a,,b\n1,2,3\n", wantErr: "header: column 2 has an empty name"},
		{name: "RejectsEmptySegment", in: "a..b\n1\n", wantErr: `header: column 1: "a..b" has an empty part between dots`},
		{name: "RejectsValueThenObject", in: "a,a.b\n1,2\n", wantErr: `header: columns 1 ("a") and 2 ("a.b") conflict: "a" cannot be both a value and an object`},
		{name: "RejectsObjectThenValue", in: "a.b.c,a.b\n1,2\n", wantErr: `header: columns 1 ("a.b.c") and 2 ("a.b") conflict: "a.b" cannot be both a value and an object`},
		{name: "RejectsBareQuote", in: "a\nx\"y\n", wantErr: "row 1 (line 2, column 2): bare \" in non-quoted-field"},
		{name: "RejectsUnclosedQuote", in: "a\nok\n\"never closed\n", wantErr: "row 2 (line 3, column 15): extraneous or missing \" in quoted-field"},
		{name: "RejectsInvalidUTF8", in: "a\nok\n\xff\n", wantErr: "row 2 (line 3): not valid UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := collect(CSV(strings.NewReader(tt.in)))
			checkResult(t, got, err, tt.want, tt.wantErr)
		})
	}
}

func TestCSVRowLimit(t *testing.T) {
	t.Parallel()
	t.Run("RejectsLongRow", func(t *testing.T) {
		t.Parallel()
		in := "a\nshort\n" + strings.Repeat("x", 200) + "\n"
		_, err := collect(csvSeq(strings.NewReader(in), 100))
		checkResult(t, nil, err, nil, "row 2 (line 3): longer than 100 bytes")
	})
	t.Run("RejectsEndlessQuotedCellWithoutReadingItAll", func(t *testing.T) {
		t.Parallel()
		r := &countingReader{r: io.MultiReader(strings.NewReader("a\n\""), endless('x'))}
		_, err := collect(csvSeq(r, 1000))
		checkResult(t, nil, err, nil, "row 1: longer than")
		if r.n > 1<<20 {
			t.Fatalf("read %d bytes to reject a row over 1000 bytes", r.n)
		}
	})
}

func TestCSVPassesReaderErrorsOn(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	r := io.MultiReader(strings.NewReader("a\n1\n2"), errReader{boom})
	_, err := collect(CSV(r))
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want wrapping %v", err, boom)
	}
	if batchsender.ErrorCode(err) != batchsender.EINTERNAL {
		t.Fatalf("a reader failure must not look like bad input, got code %q", batchsender.ErrorCode(err))
	}
}

func TestErrorsAreInvalid(t *testing.T) {
	t.Parallel()
	_, err := collect(CSV(strings.NewReader("a,a\n")))
	if batchsender.ErrorCode(err) != batchsender.EINVALID {
		t.Fatalf("code = %q, want %q", batchsender.ErrorCode(err), batchsender.EINVALID)
	}
	_, err = collect(NDJSON(strings.NewReader("[]\n"), 0))
	if batchsender.ErrorCode(err) != batchsender.EINVALID {
		t.Fatalf("code = %q, want %q", batchsender.ErrorCode(err), batchsender.EINVALID)
	}
}

func TestAppendJSONStringMatchesEncodingJSON(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"", "plain", `q"uote`, `back\slash`, "ctl\x00\x1f\x7f", "ünïcödé ✓ 😀", "\u2028", "<&>"} {
		got := appendJSONString(nil, s)
		var back string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("%q → %s: %v", s, got, err)
		}
		if back != s {
			t.Fatalf("%q round-tripped to %q", s, back)
		}
	}
}

func checkResult(t *testing.T, got []string, err error, want []string, wantErr string) {
	t.Helper()
	if wantErr != "" {
		if err == nil {
			t.Fatalf("no error, want %q (items %q)", wantErr, got)
		}
		if !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("error %q, want it to contain %q", err, wantErr)
		}
		return
	}
	if err != nil {
		t.Fatalf("unexpected error: %v", err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("items:\n got  %q\n want %q", got, want)
	}
	for _, g := range got {
		checkObject(t, []byte(g))
	}
}

// checkObject fails unless b is one valid UTF-8 JSON object.
func checkObject(t testing.TB, b []byte) {
	t.Helper()
	if !json.Valid(b) || !utf8.Valid(b) {
		t.Fatalf("not valid JSON: %q", b)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil || m == nil {
		t.Fatalf("not a JSON object: %q (%v)", b, err)
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// endless returns a reader that yields c forever.
func endless(c byte) io.Reader { return endlessReader(c) }

type endlessReader byte

func (e endlessReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(e)
	}
	return len(p), nil
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func FuzzNDJSON(f *testing.F) {
	for _, s := range []string{"{\"a\":1}\n", "\ufeff{}\r\n\n[1]\n", "{\"a\":\"\xff\"}", "  \n{\"a\":{\"b\":null}}", "1\n", "{\"a\":1} x"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		for it, err := range NDJSON(bytes.NewReader(in), 256) {
			if err != nil {
				if batchsender.ErrorCode(err) != batchsender.EINVALID {
					t.Fatalf("error code %q for bad input: %v", batchsender.ErrorCode(err), err)
				}
				return
			}
			checkObject(t, it.Data)
		}
	})
}

func FuzzCSV(f *testing.F) {
	for _, s := range []string{"a,b\n1,2\n", "\ufeffa.b,a.c,d\n,,\nx,\"y\nz\",\n", "a,a.b\n1,2\n", "a\n\"x\n", "a\n\xff\n", "a,b\n1\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		for it, err := range csvSeq(bytes.NewReader(in), 256) {
			if err != nil {
				if batchsender.ErrorCode(err) != batchsender.EINVALID {
					t.Fatalf("error code %q for bad input: %v", batchsender.ErrorCode(err), err)
				}
				return
			}
			checkObject(t, it.Data)
		}
	})
}

// BenchmarkCSV parses a million webhook rows (url plus two nested payload
// fields) and reports rows/s.
func BenchmarkCSV(b *testing.B) {
	const rows = 1_000_000
	var in bytes.Buffer
	in.WriteString("url,payload.name,payload.order_id\n")
	for i := range rows {
		fmt.Fprintf(&in, "https://hooks.example.com/in/%d,Customer %d,ord_%08d\n", i%1000, i, i)
	}
	data := in.Bytes()
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for b.Loop() {
		n := 0
		for _, err := range CSV(bytes.NewReader(data)) {
			if err != nil {
				b.Fatal(err)
			}
			n++
		}
		if n != rows {
			b.Fatalf("parsed %d rows", n)
		}
	}
	b.ReportMetric(float64(rows)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
}

// BenchmarkNDJSON is BenchmarkCSV's twin for NDJSON.
func BenchmarkNDJSON(b *testing.B) {
	const rows = 1_000_000
	var in bytes.Buffer
	for i := range rows {
		fmt.Fprintf(&in, `{"url":"https://hooks.example.com/in/%d","payload":{"name":"Customer %d","order_id":"ord_%08d"}}`+"\n", i%1000, i, i)
	}
	data := in.Bytes()
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for b.Loop() {
		n := 0
		for _, err := range NDJSON(bytes.NewReader(data), 0) {
			if err != nil {
				b.Fatal(err)
			}
			n++
		}
		if n != rows {
			b.Fatalf("parsed %d rows", n)
		}
	}
	b.ReportMetric(float64(rows)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
}
