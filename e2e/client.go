package e2e

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Client talks to the BatchSender HTTP API with a bearer key. It decodes
// into plain maps and small local structs on purpose: the tests check the
// wire contract, not the server's Go types.
type Client struct {
	URL  string
	Key  string
	HTTP *http.Client
	// Poll is how often WaitBatch reads the batch; 100 ms when zero.
	// Benchmarks poll more often, so that the clock stops close to the
	// batch's end.
	Poll time.Duration
}

// NewClient returns a client with its own transport, so closing idle
// connections at the end of a test leaves no goroutine behind.
func NewClient(baseURL, key string) *Client {
	return &Client{URL: baseURL, Key: key, HTTP: &http.Client{
		Timeout:   60 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 8},
	}}
}

// Close releases idle connections.
func (c *Client) Close() { c.HTTP.CloseIdleConnections() }

// Response is a raw API answer.
type Response struct {
	Status      int
	ContentType string
	Header      http.Header
	Body        []byte
}

// Decode unmarshals the body into v.
func (r Response) Decode(v any) error {
	if err := json.Unmarshal(r.Body, v); err != nil {
		return fmt.Errorf("decoding %d answer %q: %w", r.Status, truncate(r.Body, 500), err)
	}
	return nil
}

// String shows the answer for failure messages.
func (r Response) String() string {
	return fmt.Sprintf("%d %s %s", r.Status, r.ContentType, truncate(r.Body, 1000))
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// Do sends one request; body may be nil.
func (c *Client) Do(ctx context.Context, method, path, contentType string, body io.Reader, header http.Header) (Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.URL+path, body)
	if err != nil {
		return Response{}, fmt.Errorf("building %s %s: %w", method, path, err)
	}
	if c.Key != "" {
		req.Header.Set("Authorization", "Bearer "+c.Key)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return Response{}, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return Response{}, fmt.Errorf("reading %s %s: %w", method, path, err)
	}
	return Response{Status: resp.StatusCode, ContentType: resp.Header.Get("Content-Type"), Header: resp.Header, Body: b}, nil
}

// JSON sends in (when not nil) as JSON.
func (c *Client) JSON(ctx context.Context, method, path string, in any) (Response, error) {
	var body io.Reader
	ct := ""
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return Response{}, fmt.Errorf("encoding request: %w", err)
		}
		body, ct = bytes.NewReader(b), "application/json"
	}
	return c.Do(ctx, method, path, ct, body, nil)
}

// Counts mirrors the "counts" object of a batch.
type Counts struct {
	Pending   int64 `json:"pending"`
	InFlight  int64 `json:"in_flight"`
	Succeeded int64 `json:"succeeded"`
	Failed    int64 `json:"failed"`
	Cancelled int64 `json:"cancelled"`
	Skipped   int64 `json:"skipped"`
	Unknown   int64 `json:"unknown"`
}

// Done returns how many items are terminal.
func (c Counts) Done() int64 { return c.Succeeded + c.Failed + c.Cancelled + c.Skipped + c.Unknown }

// Batch is the part of a batch document the checks read.
type Batch struct {
	ID           string `json:"id"`
	Status       string `json:"status"`
	StatusReason string `json:"status_reason"`
	Total        int64  `json:"total"`
	Counts       Counts `json:"counts"`
}

// Item is the part of an item document the checks read.
type Item struct {
	ID        string          `json:"id"`
	Seq       int64           `json:"seq"`
	Status    string          `json:"status"`
	Attempts  int             `json:"attempts"`
	LastError string          `json:"last_error"`
	Data      json.RawMessage `json:"data"`
}

// Problem is an RFC 9457 problem document.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

// CreateConnection creates a webhook.http connection and returns its ID.
func (c *Client) CreateConnection(ctx context.Context, name, secret string, config map[string]any) (string, error) {
	if config == nil {
		config = map[string]any{}
	}
	resp, err := c.JSON(ctx, http.MethodPost, "/v1/connections", map[string]any{
		"provider": "webhook.http",
		"name":     name,
		"config":   config,
		"secrets":  map[string]any{"signing_secret": secret},
	})
	if err != nil {
		return "", err
	}
	if resp.Status != http.StatusCreated {
		return "", fmt.Errorf("creating connection: %s", resp)
	}
	var out struct {
		ID string `json:"id"`
	}
	if err := resp.Decode(&out); err != nil {
		return "", err
	}
	return out.ID, nil
}

// CreateBatch posts a batch document and expects 201.
func (c *Client) CreateBatch(ctx context.Context, doc any) (Batch, error) {
	resp, err := c.JSON(ctx, http.MethodPost, "/v1/batches", doc)
	if err != nil {
		return Batch{}, err
	}
	if resp.Status != http.StatusCreated {
		return Batch{}, fmt.Errorf("creating batch: %s", resp)
	}
	var b Batch
	return b, resp.Decode(&b)
}

// UploadItems streams a body of contentType into a draft batch.
func (c *Client) UploadItems(ctx context.Context, batchID, contentType string, body io.Reader) (Response, error) {
	return c.Do(ctx, http.MethodPost, "/v1/batches/"+batchID+"/items", contentType, body, nil)
}

// StartBatch starts a draft batch.
func (c *Client) StartBatch(ctx context.Context, batchID string) error {
	resp, err := c.JSON(ctx, http.MethodPost, "/v1/batches/"+batchID+"/start", nil)
	if err != nil {
		return err
	}
	if resp.Status/100 != 2 {
		return fmt.Errorf("starting batch: %s", resp)
	}
	return nil
}

// GetBatch reads one batch.
func (c *Client) GetBatch(ctx context.Context, id string) (Batch, error) {
	resp, err := c.JSON(ctx, http.MethodGet, "/v1/batches/"+id, nil)
	if err != nil {
		return Batch{}, err
	}
	if resp.Status != http.StatusOK {
		return Batch{}, fmt.Errorf("getting batch: %s", resp)
	}
	var b Batch
	return b, resp.Decode(&b)
}

// ListBatchIDs returns the IDs of every batch of the project, following
// the cursor.
func (c *Client) ListBatchIDs(ctx context.Context) ([]string, error) {
	var ids []string
	cursor := ""
	for range 1000 {
		path := "/v1/batches?limit=100"
		if cursor != "" {
			path += "&cursor=" + url.QueryEscape(cursor)
		}
		resp, err := c.JSON(ctx, http.MethodGet, path, nil)
		if err != nil {
			return nil, err
		}
		if resp.Status != http.StatusOK {
			return nil, fmt.Errorf("listing batches: %s", resp)
		}
		var page struct {
			Data       []Batch `json:"data"`
			NextCursor string  `json:"next_cursor"`
		}
		if err := resp.Decode(&page); err != nil {
			return nil, err
		}
		for _, b := range page.Data {
			ids = append(ids, b.ID)
		}
		if page.NextCursor == "" || len(page.Data) == 0 {
			return ids, nil
		}
		cursor = page.NextCursor
	}
	return nil, fmt.Errorf("listing batches: too many pages")
}

// ListItems returns every item of a batch, optionally of one status,
// following the cursor.
func (c *Client) ListItems(ctx context.Context, batchID, status string) ([]Item, error) {
	var items []Item
	cursor := ""
	for {
		q := url.Values{"limit": {"1000"}}
		if status != "" {
			q.Set("status", status)
		}
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		resp, err := c.JSON(ctx, http.MethodGet, "/v1/batches/"+batchID+"/items?"+q.Encode(), nil)
		if err != nil {
			return nil, err
		}
		if resp.Status != http.StatusOK {
			return nil, fmt.Errorf("listing items: %s", resp)
		}
		var page struct {
			Data       []Item `json:"data"`
			NextCursor string `json:"next_cursor"`
		}
		if err := resp.Decode(&page); err != nil {
			return nil, err
		}
		items = append(items, page.Data...)
		if page.NextCursor == "" || len(page.Data) == 0 {
			return items, nil
		}
		cursor = page.NextCursor
	}
}

// WaitBatch polls the batch until done returns true or the deadline passes.
func (c *Client) WaitBatch(ctx context.Context, id string, timeout time.Duration, done func(Batch) bool) (Batch, error) {
	deadline := time.Now().Add(timeout)
	var last Batch
	var lastErr error
	for {
		b, err := c.GetBatch(ctx, id)
		if err == nil {
			last = b
			if done(b) {
				return b, nil
			}
		}
		lastErr = err
		if time.Now().After(deadline) {
			return last, fmt.Errorf("batch %s not done after %v: status %q counts %+v (last error %v)", id, timeout, last.Status, last.Counts, lastErr)
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-time.After(cmp.Or(c.Poll, 100*time.Millisecond)):
		}
	}
}

// IsProblem reports whether a response is a problem document with a
// non-empty detail and a status matching the HTTP status.
func IsProblem(r Response) (Problem, error) {
	var p Problem
	if !strings.HasPrefix(r.ContentType, "application/problem+json") {
		return p, fmt.Errorf("content type %q, want application/problem+json: %s", r.ContentType, r)
	}
	if err := json.Unmarshal(r.Body, &p); err != nil {
		return p, fmt.Errorf("problem document does not decode: %w: %s", err, r)
	}
	if p.Status != r.Status {
		return p, fmt.Errorf("problem status %d, HTTP status %d", p.Status, r.Status)
	}
	if p.Title == "" || p.Detail == "" {
		return p, fmt.Errorf("problem without title or detail: %s", r)
	}
	return p, nil
}
