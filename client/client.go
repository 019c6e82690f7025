// Package client is the Go SDK for BatchSender's HTTP API (/v1).
//
// A Client holds the server's base URL and an API key; every method takes a
// context and returns the domain types of package batchsender. Failed calls
// return an *Error carrying the RFC 9457 problem document the server sent
// (status, title, detail), so callers can show the server's own explanation.
//
// Item uploads stream: BatchUploadItems hands the reader to the request body
// without buffering it, so a multi-gigabyte CSV costs no memory here.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/batchsender/batchsender"
)

// Client calls one BatchSender server with one API key. It is safe for
// concurrent use.
type Client struct {
	base      string
	key       string
	hc        *http.Client
	userAgent string
}

// Option changes a Client built by New.
type Option func(*Client)

// WithHTTPClient makes the client send its requests through hc. Leave hc's
// Timeout at zero: event streams and large uploads run for as long as they
// need, bounded by the contexts given to each call instead.
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.hc = hc } }

// WithUserAgent sets the User-Agent header of every request.
func WithUserAgent(ua string) Option { return func(c *Client) { c.userAgent = ua } }

// New returns a client for the server at baseURL (for example
// "http://127.0.0.1:8080") authenticating with apiKey.
func New(baseURL, apiKey string, opts ...Option) *Client {
	c := &Client{
		base:      strings.TrimRight(baseURL, "/"),
		key:       apiKey,
		userAgent: "batchsender-go-client",
	}
	for _, o := range opts {
		o(c)
	}
	if c.hc == nil {
		c.hc = &http.Client{Transport: &http.Transport{
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConnsPerHost:   8,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: 5 * time.Minute, // an upload of millions of rows is answered only once stored
			ForceAttemptHTTP2:     true,
		}}
	}
	return c
}

// Close releases idle connections of the client's transport.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// Error is a failed API call: the HTTP status and the problem document the
// server answered with.
type Error struct {
	StatusCode int    `json:"status"`
	Type       string `json:"type,omitempty"`
	Title      string `json:"title,omitempty"`
	Detail     string `json:"detail,omitempty"`
	Instance   string `json:"instance,omitempty"`
	// Code is the machine-readable error code (batchsender.EINVALID and the
	// like) when the server sent one.
	Code string `json:"code,omitempty"`
	// ErrorID identifies an internal error in the server's log.
	ErrorID string `json:"error_id,omitempty"`
}

// Error shows status, title and detail: "404 Not Found: batch bat_… not found".
func (e *Error) Error() string {
	title := e.Title
	if title == "" {
		title = http.StatusText(e.StatusCode)
	}
	s := fmt.Sprintf("%d %s", e.StatusCode, title)
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	if e.ErrorID != "" {
		s += " (error id " + e.ErrorID + ")"
	}
	return s
}

// StatusCode returns the HTTP status of an *Error in err's chain, or 0.
func StatusCode(err error) int {
	if e, ok := errors.AsType[*Error](err); ok {
		return e.StatusCode
	}
	return 0
}

// Page is one page of a list. NextCursor is empty on the last page.
type Page[T any] struct {
	Data       []T    `json:"data"`
	NextCursor string `json:"next_cursor,omitempty"`
}

// ConnectionCreateRequest is a new connection: a provider account with its
// plain config and its secrets (sent once, never returned).
type ConnectionCreateRequest struct {
	Provider string `json:"provider"`
	Name     string `json:"name"`
	Config   any    `json:"config,omitempty"`
	Secrets  any    `json:"secrets,omitempty"`
}

// ConnectionCreate creates a connection.
func (c *Client) ConnectionCreate(ctx context.Context, req ConnectionCreateRequest) (batchsender.Connection, error) {
	var out batchsender.Connection
	err := c.do(ctx, http.MethodPost, "/v1/connections", req, nil, &out)
	return out, err
}

// ConnectionGet returns a connection by ID or name.
func (c *Client) ConnectionGet(ctx context.Context, idOrName string) (batchsender.Connection, error) {
	var out batchsender.Connection
	err := c.do(ctx, http.MethodGet, "/v1/connections/"+url.PathEscape(idOrName), nil, nil, &out)
	return out, err
}

// ConnectionList returns the project's connections.
func (c *Client) ConnectionList(ctx context.Context) ([]batchsender.Connection, error) {
	var out Page[batchsender.Connection]
	err := c.do(ctx, http.MethodGet, "/v1/connections", nil, nil, &out)
	return out.Data, err
}

// BatchCreateRequest is a new batch. Without Items the batch is a draft that
// takes uploads (BatchUploadItems) until BatchStart.
type BatchCreateRequest struct {
	Module     string `json:"module"`
	Connection string `json:"connection"` // ID or name
	// Template holds batch-level defaults of item fields (an object).
	Template any `json:"template,omitempty"`
	// Items are JSON objects (maps, structs or json.RawMessage), at most
	// batchsender.MaxInlineItems of them.
	Items   []any                     `json:"items,omitempty"`
	Options *batchsender.BatchOptions `json:"options,omitempty"`
	// IdempotencyKey is sent as the Idempotency-Key header: the same key and
	// body return the batch created first instead of a second one.
	IdempotencyKey string `json:"-"`
}

// BatchCreate creates a batch.
func (c *Client) BatchCreate(ctx context.Context, req BatchCreateRequest) (batchsender.Batch, error) {
	var h http.Header
	if req.IdempotencyKey != "" {
		h = http.Header{"Idempotency-Key": {req.IdempotencyKey}}
	}
	var out batchsender.Batch
	err := c.do(ctx, http.MethodPost, "/v1/batches", req, h, &out)
	return out, err
}

// Content types of item uploads.
const (
	ContentTypeNDJSON = "application/x-ndjson"
	ContentTypeCSV    = "text/csv"
)

// ContentTypeFor returns the upload content type for a file name by its
// extension: .csv → text/csv; .ndjson, .jsonl → application/x-ndjson.
func ContentTypeFor(name string) (string, error) {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".csv":
		return ContentTypeCSV, nil
	case ".ndjson", ".jsonl":
		return ContentTypeNDJSON, nil
	}
	return "", fmt.Errorf("cannot tell the format of %q: name it .csv, .ndjson or .jsonl", name)
}

// BatchUploadItems appends the items read from body to a draft batch,
// streaming it as the request body. contentType is ContentTypeNDJSON or
// ContentTypeCSV. A bad row rejects the whole upload.
func (c *Client) BatchUploadItems(ctx context.Context, id, contentType string, body io.Reader) (batchsender.Batch, error) {
	var out batchsender.Batch
	req, err := c.newRequest(ctx, http.MethodPost, c.batchPath(id, "items"), body)
	if err != nil {
		return out, err
	}
	req.Header.Set("Content-Type", contentType)
	err = c.send(req, &out)
	return out, err
}

// BatchUploadFile uploads a .csv, .ndjson or .jsonl file to a draft batch,
// streaming it from disk.
func (c *Client) BatchUploadFile(ctx context.Context, id, path string) (batchsender.Batch, error) {
	ct, err := ContentTypeFor(path)
	if err != nil {
		return batchsender.Batch{}, err
	}
	f, err := os.Open(path)
	if err != nil {
		return batchsender.Batch{}, fmt.Errorf("opening items file: %w", err)
	}
	defer f.Close()
	// An *os.File body would be sent chunked; the size lets the server
	// refuse an oversized upload before reading it.
	st, err := f.Stat()
	if err != nil {
		return batchsender.Batch{}, fmt.Errorf("reading items file: %w", err)
	}
	req, err := c.newRequest(ctx, http.MethodPost, c.batchPath(id, "items"), f)
	if err != nil {
		return batchsender.Batch{}, err
	}
	req.ContentLength = st.Size()
	req.Header.Set("Content-Type", ct)
	var out batchsender.Batch
	err = c.send(req, &out)
	return out, err
}

// BatchGet returns a batch with its current counts.
func (c *Client) BatchGet(ctx context.Context, id string) (batchsender.Batch, error) {
	var out batchsender.Batch
	err := c.do(ctx, http.MethodGet, c.batchPath(id, ""), nil, nil, &out)
	return out, err
}

// ListParams select a page of a list. Zero values ask for the first page in
// the server's default size.
type ListParams struct {
	Cursor string
	Limit  int
}

func (p ListParams) query() url.Values {
	q := url.Values{}
	if p.Cursor != "" {
		q.Set("cursor", p.Cursor)
	}
	if p.Limit > 0 {
		q.Set("limit", strconv.Itoa(p.Limit))
	}
	return q
}

// BatchList returns a page of the project's batches, newest first.
func (c *Client) BatchList(ctx context.Context, p ListParams) (Page[batchsender.Batch], error) {
	var out Page[batchsender.Batch]
	err := c.do(ctx, http.MethodGet, withQuery("/v1/batches", p.query()), nil, nil, &out)
	return out, err
}

// BatchStart starts a draft: it becomes scheduled (send_at ahead) or running.
func (c *Client) BatchStart(ctx context.Context, id string) (batchsender.Batch, error) {
	return c.action(ctx, id, "start")
}

// BatchPause pauses a scheduled or running batch; items in flight finish.
func (c *Client) BatchPause(ctx context.Context, id string) (batchsender.Batch, error) {
	return c.action(ctx, id, "pause")
}

// BatchResume resumes a paused batch.
func (c *Client) BatchResume(ctx context.Context, id string) (batchsender.Batch, error) {
	return c.action(ctx, id, "resume")
}

// BatchCancel cancels a batch: pending items become cancelled.
func (c *Client) BatchCancel(ctx context.Context, id string) (batchsender.Batch, error) {
	return c.action(ctx, id, "cancel")
}

// BatchRetryFailed puts the batch's failed and unknown items back to
// pending with fresh attempts.
func (c *Client) BatchRetryFailed(ctx context.Context, id string) (batchsender.Batch, error) {
	return c.action(ctx, id, "retry-failed")
}

func (c *Client) action(ctx context.Context, id, action string) (batchsender.Batch, error) {
	var out batchsender.Batch
	err := c.do(ctx, http.MethodPost, c.batchPath(id, action), nil, nil, &out)
	return out, err
}

// ItemListParams select a page of a batch's items.
type ItemListParams struct {
	Status batchsender.ItemStatus // empty for all
	Cursor string
	Limit  int
}

// BatchItems returns one page of a batch's items in row order.
func (c *Client) BatchItems(ctx context.Context, id string, p ItemListParams) (Page[batchsender.Item], error) {
	q := ListParams{Cursor: p.Cursor, Limit: p.Limit}.query()
	if p.Status != "" {
		q.Set("status", string(p.Status))
	}
	var out Page[batchsender.Item]
	err := c.do(ctx, http.MethodGet, withQuery(c.batchPath(id, "items"), q), nil, nil, &out)
	return out, err
}

// BatchItemsAll yields every item of a batch (of one status when status is
// not empty), fetching page after page as the loop asks for more. It stops
// at the first error, which it yields.
func (c *Client) BatchItemsAll(ctx context.Context, id string, status batchsender.ItemStatus) iter.Seq2[batchsender.Item, error] {
	return func(yield func(batchsender.Item, error) bool) {
		p := ItemListParams{Status: status, Limit: 1000}
		for {
			page, err := c.BatchItems(ctx, id, p)
			if err != nil {
				yield(batchsender.Item{}, err)
				return
			}
			for _, it := range page.Data {
				if !yield(it, nil) {
					return
				}
			}
			if page.NextCursor == "" || len(page.Data) == 0 {
				return
			}
			p.Cursor = page.NextCursor
		}
	}
}

// Events follows a batch's progress over Server-Sent Events
// (GET /v1/batches/{id}/events), calling fn with the batch as each event
// reports it. It returns nil once fn has seen the batch in a terminal status
// (completed or cancelled), fn's error if fn fails, and an error when the
// stream ends before that (the caller may call Events again to resume).
func (c *Client) Events(ctx context.Context, id string, fn func(batchsender.Batch) error) error {
	req, err := c.newRequest(ctx, http.MethodGet, c.batchPath(id, "events"), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cache-Control", "no-cache")
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("following events of batch %s: %w", id, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return decodeError(resp)
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "text/event-stream" {
		return fmt.Errorf("following events of batch %s: content type %q, want text/event-stream", id, resp.Header.Get("Content-Type"))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 16<<10), 4<<20)
	var data bytes.Buffer
	event := ""
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 { // end of one event
			if data.Len() > 0 {
				done, err := dispatch(event, data.Bytes(), fn)
				if err != nil || done {
					return err
				}
			}
			data.Reset()
			event = ""
			continue
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "data":
			if data.Len() > 0 {
				data.WriteByte('\n')
			}
			data.Write(value)
		case "event":
			event = string(value)
		}
		// "id", "retry" and comments (": keep-alive") need nothing here.
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("reading events of batch %s: %w", id, err)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("events of batch %s: %w", id, io.ErrUnexpectedEOF)
}

// dispatch hands one event to fn and reports whether the batch is done.
// Events other than batch snapshots (an "error" event, unknown names) are
// passed over unless they carry a problem document.
func dispatch(event string, data []byte, fn func(batchsender.Batch) error) (bool, error) {
	if event == "error" {
		e := &Error{}
		if json.Unmarshal(data, e) == nil && (e.Title != "" || e.Detail != "") {
			return false, e
		}
		return false, fmt.Errorf("event stream error: %s", data)
	}
	var b batchsender.Batch
	if err := json.Unmarshal(data, &b); err != nil || b.ID == "" || b.Status == "" {
		return false, nil
	}
	if err := fn(b); err != nil {
		return false, err
	}
	return b.Status.Terminal(), nil
}

func (c *Client) batchPath(id, sub string) string {
	p := "/v1/batches/" + url.PathEscape(id)
	if sub != "" {
		p += "/" + sub
	}
	return p
}

func withQuery(path string, q url.Values) string {
	if len(q) == 0 {
		return path
	}
	return path + "?" + q.Encode()
}

func (c *Client) newRequest(ctx context.Context, method, path string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, fmt.Errorf("building %s %s: %w", method, path, err)
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.userAgent)
	return req, nil
}

// do sends in as a JSON body (none when nil) and decodes the answer into out.
func (c *Client) do(ctx context.Context, method, path string, in any, h http.Header, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encoding %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := c.newRequest(ctx, method, path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, vs := range h {
		req.Header[k] = vs
	}
	return c.send(req, out)
}

func (c *Client) send(req *http.Request, out any) error {
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return decodeError(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decoding answer to %s %s: %w", req.Method, req.URL.Path, err)
	}
	return nil
}

// decodeError turns a non-2xx answer into an *Error, from its problem
// document when it has one and from the status and body start otherwise.
func decodeError(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &Error{}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if mt == "application/problem+json" || mt == "application/json" {
		_ = json.Unmarshal(body, e)
	}
	e.StatusCode = resp.StatusCode
	if e.Title == "" {
		e.Title = http.StatusText(resp.StatusCode)
	}
	if e.Detail == "" && mt != "application/problem+json" {
		d := strings.TrimSpace(string(body))
		if len(d) > 300 {
			d = d[:300] + "…"
		}
		e.Detail = d
	}
	return e
}
