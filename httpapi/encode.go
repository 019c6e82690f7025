package httpapi

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/batchsender/batchsender"
)

// Error codes that exist only at the HTTP edge, beside batchsender's.
const (
	codeUnsupportedMediaType = "unsupported_media_type"
	codeMethodNotAllowed     = "method_not_allowed"
	codeUnavailable          = "unavailable"
)

// problemKind is what one error code becomes on the wire.
type problemKind struct {
	status int
	title  string
}

// problemKinds is the one table from error codes to HTTP statuses. A code not
// in it is treated as internal. Every malformed or semantically invalid
// request is a 400: clients need one status to branch on, and the detail
// says what is wrong.
var problemKinds = map[string]problemKind{
	batchsender.EINVALID:      {http.StatusBadRequest, "Invalid request"},
	batchsender.EUNAUTHORIZED: {http.StatusUnauthorized, "Unauthorized"},
	batchsender.EFORBIDDEN:    {http.StatusForbidden, "Forbidden"},
	batchsender.ENOTFOUND:     {http.StatusNotFound, "Not found"},
	codeMethodNotAllowed:      {http.StatusMethodNotAllowed, "Method not allowed"},
	batchsender.ECONFLICT:     {http.StatusConflict, "Conflict"},
	batchsender.ETOOLARGE:     {http.StatusRequestEntityTooLarge, "Request too large"},
	codeUnsupportedMediaType:  {http.StatusUnsupportedMediaType, "Unsupported media type"},
	batchsender.EINTERNAL:     {http.StatusInternalServerError, "Internal error"},
	codeUnavailable:           {http.StatusServiceUnavailable, "Service unavailable"},
}

// problemTypePrefix starts every problem type URI; the code follows.
const problemTypePrefix = "urn:batchsender:problem:"

// problem is an RFC 9457 problem document. Code and ErrorID are extension
// members: Code is the machine-readable error code, ErrorID identifies an
// internal error in the server's log.
type problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail"`
	Instance string `json:"instance,omitempty"`
	Code     string `json:"code"`
	ErrorID  string `json:"error_id,omitempty"`
}

// writeError renders err as a problem document. Internal errors are logged
// with a fresh error ID, which the response carries instead of any detail.
func (s *server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	code := batchsender.ErrorCode(err)
	kind, ok := problemKinds[code]
	if !ok || code == batchsender.EINTERNAL {
		p := internalProblem(r)
		s.Logger.ErrorContext(r.Context(), "internal error",
			slog.String("error_id", p.ErrorID), slog.String("method", r.Method),
			slog.String("path", r.URL.Path), slog.Any("error", err))
		s.writeProblem(w, r, p)
		return
	}
	s.writeProblem(w, r, problem{
		Type:     problemTypePrefix + code,
		Title:    kind.title,
		Status:   kind.status,
		Detail:   batchsender.ErrorMessage(err),
		Instance: r.URL.Path,
		Code:     code,
	})
}

// internalProblem is the answer to an internal error: no detail beyond the
// error ID under which the server logged it.
func internalProblem(r *http.Request) problem {
	kind := problemKinds[batchsender.EINTERNAL]
	id := newErrorID()
	return problem{
		Type:     problemTypePrefix + batchsender.EINTERNAL,
		Title:    kind.title,
		Status:   kind.status,
		Detail:   "internal error; the server log has the details under error_id " + id,
		Instance: r.URL.Path,
		Code:     batchsender.EINTERNAL,
		ErrorID:  id,
	}
}

// writeProblem writes a problem document.
func (s *server) writeProblem(w http.ResponseWriter, r *http.Request, p problem) {
	if p.Status == http.StatusUnauthorized && w.Header().Get("WWW-Authenticate") == "" {
		challenge := `Bearer realm="batchsender"`
		if r.Header.Get("Authorization") != "" {
			challenge += `, error="invalid_token"`
		}
		w.Header().Set("WWW-Authenticate", challenge)
	}
	body, err := marshal(p)
	if err != nil { // cannot happen with these field types
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(p.Status)
	_, _ = w.Write(body)
}

// newErrorID returns a short random ID that ties a 500 to its log line.
func newErrorID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// encode writes v as a JSON response with the status.
func (s *server) encode(w http.ResponseWriter, r *http.Request, status int, v any) {
	body, err := marshal(v)
	if err != nil {
		s.writeError(w, r, fmt.Errorf("encoding %T response: %w", v, err))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// marshal encodes v as one line of JSON. HTML characters stay as they are:
// this is an API, and "<API key>" reads better than "\u003cAPI key\u003e".
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// validator is a request type that checks itself after decoding.
type validator interface {
	Validate() error
}

// decode reads a JSON request body of at most limit bytes into a T, strictly
// (an unknown field is an error, so typos do not pass unnoticed), and
// validates it. Every error it returns is a domain error with a detail fit
// for the caller.
func decode[T any, P interface {
	*T
	validator
}](w http.ResponseWriter, r *http.Request, limit int64) (T, error) {
	var v T
	if err := checkJSONContentType(r); err != nil {
		return v, err
	}
	if r.ContentLength > limit {
		return v, tooLarge(limit) // refused before a byte of it is read
	}
	body := http.MaxBytesReader(w, r.Body, limit)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		return v, decodeError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		if mbe, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return v, tooLarge(mbe.Limit)
		}
		return v, batchsender.Errorf(batchsender.EINVALID, "request body holds more than one JSON value")
	}
	if err := P(&v).Validate(); err != nil {
		return v, err
	}
	return v, nil
}

// checkJSONContentType accepts a JSON media type or none at all. Form
// encoding is tolerated too, because that is what `curl -d` sends unless told
// otherwise; the body is read as JSON either way.
func checkJSONContentType(r *http.Request) error {
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return nil
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json") || mt == "application/x-www-form-urlencoded") {
		return nil
	}
	return batchsender.Errorf(codeUnsupportedMediaType, "Content-Type %q is not accepted here; send application/json", ct)
}

// decodeError explains a JSON decoding failure in the caller's terms.
func decodeError(err error) error {
	if mbe, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return tooLarge(mbe.Limit)
	}
	if se, ok := errors.AsType[*json.SyntaxError](err); ok {
		return batchsender.Errorf(batchsender.EINVALID, "request body is not valid JSON: %v (at byte %d)", se, se.Offset)
	}
	if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
		if te.Field == "" {
			return batchsender.Errorf(batchsender.EINVALID, "request body must be a JSON object, not %s", te.Value)
		}
		return batchsender.Errorf(batchsender.EINVALID, "%s: expected %s, got %s", te.Field, jsonTypeName(te.Type.Kind().String()), te.Value)
	}
	if errors.Is(err, io.EOF) {
		return batchsender.Errorf(batchsender.EINVALID, "request body is empty; send a JSON object")
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return batchsender.Errorf(batchsender.EINVALID, "request body ends in the middle of a JSON value")
	}
	if field, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return batchsender.Errorf(batchsender.EINVALID, "unknown field %s", field)
	}
	if _, ok := errors.AsType[*batchsender.Error](err); ok {
		return err
	}
	return batchsender.Errorf(batchsender.EINVALID, "request body: %v", err)
}

// jsonTypeName names a Go kind the way a JSON client thinks of it.
func jsonTypeName(kind string) string {
	switch kind {
	case "string":
		return "a string"
	case "bool":
		return "true or false"
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64":
		return "an integer"
	case "float32", "float64":
		return "a number"
	case "slice", "array":
		return "an array"
	case "map", "struct":
		return "an object"
	}
	return kind
}

func tooLarge(limit int64) error {
	return batchsender.Errorf(batchsender.ETOOLARGE, "request body exceeds the limit of %d bytes", limit)
}

// isJSONObject reports whether raw holds a JSON object (after whitespace).
func isJSONObject(raw json.RawMessage) bool {
	raw = bytes.TrimLeft(raw, " \t\r\n")
	return len(raw) > 0 && raw[0] == '{'
}
