package httpapi

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/sdk"
)

// Page sizes of the list endpoints.
const (
	defaultBatchPage = 50
	maxBatchPage     = 500
	defaultItemPage  = 100
	maxItemPage      = 1000
	maxIdemKeyLen    = 255
)

// optionsRequest is the "options" object of a new batch, read field by
// field so that every error names its field.
type optionsRequest struct {
	RatePerSecond  float64         `json:"rate_per_second,omitempty"`
	Concurrency    int             `json:"concurrency,omitempty"`
	MaxAttempts    int             `json:"max_attempts,omitempty"`
	SendAt         string          `json:"send_at,omitempty"`
	RetryBaseDelay json.RawMessage `json:"retry_base_delay,omitempty"`
	RetryMaxDelay  json.RawMessage `json:"retry_max_delay,omitempty"`
	AtLeastOnce    bool            `json:"at_least_once,omitempty"`
	// FailureThreshold is a pointer: absent means the default, 0 turns the
	// failure-rate guard off.
	FailureThreshold *float64 `json:"failure_threshold,omitempty"`
}

func (o optionsRequest) parse() (batchsender.BatchOptions, error) {
	opts := batchsender.BatchOptions{
		RatePerSecond: o.RatePerSecond,
		Concurrency:   o.Concurrency,
		MaxAttempts:   o.MaxAttempts,
		AtLeastOnce:   o.AtLeastOnce,

		FailureThreshold: o.FailureThreshold,
	}
	if o.SendAt != "" {
		t, err := time.Parse(time.RFC3339, o.SendAt)
		if err != nil {
			return opts, batchsender.Errorf(batchsender.EINVALID, "options.send_at: %q is not an RFC 3339 time such as \"2026-12-24T18:00:00Z\"", o.SendAt)
		}
		t = t.UTC()
		opts.SendAt = &t
	}
	for _, d := range []struct {
		name string
		raw  json.RawMessage
		dst  *batchsender.Duration
	}{
		{"options.retry_base_delay", o.RetryBaseDelay, &opts.RetryBaseDelay},
		{"options.retry_max_delay", o.RetryMaxDelay, &opts.RetryMaxDelay},
	} {
		if isNull(d.raw) {
			continue
		}
		if err := json.Unmarshal(d.raw, d.dst); err != nil {
			return opts, batchsender.Errorf(batchsender.EINVALID, "%s: %v", d.name, err)
		}
	}
	if err := opts.Validate(); err != nil {
		return opts, err
	}
	if opts.RetryBaseDelay > 0 && opts.RetryMaxDelay > 0 && opts.RetryMaxDelay < opts.RetryBaseDelay {
		return opts, batchsender.Errorf(batchsender.EINVALID, "options.retry_max_delay (%s) must not be less than options.retry_base_delay (%s)",
			time.Duration(opts.RetryMaxDelay), time.Duration(opts.RetryBaseDelay))
	}
	return opts, nil
}

// batchCreateRequest is the body of POST /v1/batches.
type batchCreateRequest struct {
	Module     string          `json:"module"`
	Connection string          `json:"connection"`
	Template   json.RawMessage `json:"template,omitempty"`
	// TemplateRef names a stored template instead of an inline one; it is
	// resolved when the batch is created and the batch keeps that copy.
	TemplateRef *templateRef      `json:"template_ref,omitempty"`
	Items       []json.RawMessage `json:"items,omitempty"` // nil: a draft; non-nil: the batch's items
	Options     optionsRequest    `json:"options"`

	options batchsender.BatchOptions
}

// Validate checks the request's shape; the provider checks template and
// items against the connection afterwards.
func (b *batchCreateRequest) Validate() error {
	switch {
	case b.Module == "":
		return batchsender.Errorf(batchsender.EINVALID, "module is required (for example \"webhook\")")
	case b.Connection == "":
		return batchsender.Errorf(batchsender.EINVALID, "connection is required: the ID or name of one of the project's connections")
	case !slices.Contains(moduleNames(), b.Module):
		return batchsender.Errorf(batchsender.EINVALID, "unknown module %q; modules: %s", b.Module, strings.Join(moduleNames(), ", "))
	case !isNull(b.Template) && !isJSONObject(b.Template):
		return batchsender.Errorf(batchsender.EINVALID, "template must be a JSON object")
	case b.TemplateRef != nil && !isNull(b.Template):
		return batchsender.Errorf(batchsender.EINVALID, "give template or template_ref, not both")
	case b.Items != nil && len(b.Items) == 0:
		return batchsender.Errorf(batchsender.EINVALID, "items is empty; leave it out to create a draft and upload items later")
	case len(b.Items) > batchsender.MaxInlineItems:
		return batchsender.Errorf(batchsender.ETOOLARGE, "items holds %d items, more than the %d allowed inline; create a draft and upload the list as NDJSON or CSV to POST /v1/batches/{id}/items",
			len(b.Items), batchsender.MaxInlineItems)
	}
	if isNull(b.Template) {
		b.Template = nil
	}
	for i, it := range b.Items {
		if !isJSONObject(it) {
			return batchsender.Errorf(batchsender.EINVALID, "items[%d]: must be a JSON object", i)
		}
	}
	var err error
	b.options, err = b.Options.parse()
	return err
}

// hash identifies the request's content for Idempotency-Key replays. It is
// taken over the decoded request, so whitespace and key order at the top
// level do not matter.
func (b *batchCreateRequest) hash() string {
	enc, _ := json.Marshal(b) // RawMessage fields come out compacted
	sum := sha256.Sum256(enc)
	return hex.EncodeToString(sum[:])
}

func (s *server) handleBatchCreate() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pid := projectID(r)
		idemKey := r.Header.Get("Idempotency-Key")
		if len(idemKey) > maxIdemKeyLen || strings.ContainsFunc(idemKey, func(c rune) bool { return c < 0x20 || c > 0x7e }) {
			s.writeError(w, r, batchsender.Errorf(batchsender.EINVALID, "Idempotency-Key must be at most %d printable ASCII characters", maxIdemKeyLen))
			return
		}
		req, err := decode[batchCreateRequest](w, r, s.MaxBodyBytes)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		reqHash := req.hash()
		if idemKey != "" {
			b, err := s.Store.BatchGetByIdempotencyKey(r.Context(), pid, idemKey)
			if err == nil {
				s.replay(w, r, b, idemKey, reqHash)
				return
			}
			if !batchsender.IsNotFound(err) {
				s.writeError(w, r, err)
				return
			}
		}
		if req.TemplateRef != nil {
			if req.Template, err = s.resolveTemplate(r, req.TemplateRef, req.Module); err != nil {
				s.writeError(w, r, err)
				return
			}
		}
		conn, sender, err := s.compile(r, req.Connection, req.Template)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if conn.Module() != req.Module {
			s.writeError(w, r, batchsender.Errorf(batchsender.EINVALID,
				"connection %q belongs to module %q (provider %s), not to module %q", req.Connection, conn.Module(), conn.Provider, req.Module))
			return
		}
		// Every item is checked before anything is stored, so a bad item
		// rejects the whole request and names itself.
		for i, it := range req.Items {
			if err := sender.ValidateItem(it); err != nil {
				s.writeError(w, r, batchsender.Errorf(batchsender.EINVALID, "items[%d]: %v", i, err))
				return
			}
		}
		status := batchsender.BatchDraft
		if req.Items != nil {
			status = batchsender.BatchRunning
			if req.options.SendAt != nil && req.options.SendAt.After(s.Now()) {
				status = batchsender.BatchScheduled
			}
		}
		b, err := s.Store.BatchCreate(r.Context(), batchsender.BatchCreateParams{
			ProjectID:      pid,
			Module:         req.Module,
			ConnectionID:   conn.ID,
			Provider:       conn.Provider,
			Status:         status,
			Template:       compactOrNil(req.Template),
			Options:        req.options,
			IdempotencyKey: idemKey,
			RequestHash:    reqHash,
			Items:          inlineItems(req.Items),
		})
		if batchsender.ErrorCode(err) == batchsender.ECONFLICT && idemKey != "" {
			// A concurrent request with the same key won the race.
			if first, gErr := s.Store.BatchGetByIdempotencyKey(r.Context(), pid, idemKey); gErr == nil {
				s.replay(w, r, first, idemKey, reqHash)
				return
			}
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if b.Status == batchsender.BatchRunning {
			s.wake()
		}
		w.Header().Set("Location", "/v1/batches/"+b.ID)
		s.encode(w, r, http.StatusCreated, toBatchResponse(b))
	})
}

// replay answers a repeated Idempotency-Key: the first batch when the
// request is the same, 409 when it differs.
func (s *server) replay(w http.ResponseWriter, r *http.Request, b batchsender.Batch, key, reqHash string) {
	if b.RequestHash != reqHash {
		s.writeError(w, r, batchsender.Errorf(batchsender.ECONFLICT,
			"Idempotency-Key %q was already used for batch %s with a different request body", key, b.ID))
		return
	}
	w.Header().Set("Idempotent-Replayed", "true")
	w.Header().Set("Location", "/v1/batches/"+b.ID)
	s.encode(w, r, http.StatusCreated, toBatchResponse(b))
}

// compile finds the project's connection and compiles the batch template
// with its provider. An unknown connection is the caller's mistake (400),
// not a missing URL (404).
func (s *server) compile(r *http.Request, connection string, template json.RawMessage) (batchsender.Connection, sdk.Sender, error) {
	conn, err := s.Store.ConnectionGet(r.Context(), projectID(r), connection)
	if batchsender.IsNotFound(err) {
		return conn, nil, batchsender.Errorf(batchsender.EINVALID, "connection %q: no connection with that ID or name in this project", connection)
	}
	if err != nil {
		return conn, nil, err
	}
	p, err := s.Providers.Get(r.Context(), conn)
	if err != nil {
		return conn, nil, fmt.Errorf("provisioning connection %s: %w", conn.ID, err)
	}
	sender, err := p.Compile(template)
	if err != nil {
		return conn, nil, batchsender.Errorf(batchsender.EINVALID, "template: %v", err)
	}
	return conn, sender, nil
}

// inlineItems yields the items of a request, compacted; nil for a draft.
func inlineItems(items []json.RawMessage) func(yield func(batchsender.NewItem, error) bool) {
	if items == nil {
		return nil
	}
	return func(yield func(batchsender.NewItem, error) bool) {
		for _, it := range items {
			if !yield(batchsender.NewItem{Data: compact(it)}, nil) {
				return
			}
		}
	}
}

func compactOrNil(raw json.RawMessage) json.RawMessage {
	if isNull(raw) {
		return nil
	}
	return compact(raw)
}

// batchResponse is a batch as the API shows it.
type batchResponse struct {
	ID           string                   `json:"id"`
	ProjectID    string                   `json:"project_id"`
	Module       string                   `json:"module"`
	ConnectionID string                   `json:"connection_id"`
	Provider     string                   `json:"provider"`
	Status       batchsender.BatchStatus  `json:"status"`
	StatusReason string                   `json:"status_reason,omitempty"`
	Template     json.RawMessage          `json:"template"`
	Options      batchsender.BatchOptions `json:"options"`
	Total        int64                    `json:"total"`
	Counts       batchsender.Counts       `json:"counts"`
	CreatedAt    time.Time                `json:"created_at"`
	UpdatedAt    time.Time                `json:"updated_at"`
	StartedAt    *time.Time               `json:"started_at,omitempty"`
	CompletedAt  *time.Time               `json:"completed_at,omitempty"`
}

func toBatchResponse(b batchsender.Batch) batchResponse {
	r := batchResponse{
		ID: b.ID, ProjectID: b.ProjectID, Module: b.Module, ConnectionID: b.ConnectionID, Provider: b.Provider,
		Status: b.Status, StatusReason: b.StatusReason, Template: b.Template, Options: b.Options,
		Total: b.Total, Counts: b.Counts, CreatedAt: b.CreatedAt, UpdatedAt: b.UpdatedAt,
		StartedAt: b.StartedAt, CompletedAt: b.CompletedAt,
	}
	if isNull(r.Template) {
		r.Template = json.RawMessage("{}")
	}
	return r
}

func (s *server) handleBatchGet() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := s.Store.BatchGetByID(r.Context(), projectID(r), r.PathValue("id"))
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		s.encode(w, r, http.StatusOK, toBatchResponse(b))
	})
}

// pageLimit reads the limit query parameter.
func pageLimit(r *http.Request, def, max int) (int, error) {
	v := r.URL.Query().Get("limit")
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > max {
		return 0, batchsender.Errorf(batchsender.EINVALID, "limit must be an integer from 1 to %d, got %q", max, v)
	}
	return n, nil
}

func (s *server) handleBatchList() http.Handler {
	type response struct {
		Data       []batchResponse `json:"data"`
		NextCursor string          `json:"next_cursor,omitempty"`
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		limit, err := pageLimit(r, defaultBatchPage, maxBatchPage)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		cursor := r.URL.Query().Get("cursor")
		if len(cursor) > 100 {
			s.writeError(w, r, batchsender.Errorf(batchsender.EINVALID, "cursor is not one this API returned"))
			return
		}
		// One more than asked tells whether another page follows.
		batches, err := s.Store.BatchList(r.Context(), batchsender.BatchListParams{ProjectID: projectID(r), Cursor: cursor, Limit: limit + 1})
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		var out response
		if len(batches) > limit {
			batches = batches[:limit]
			out.NextCursor = batches[limit-1].ID
		}
		out.Data = make([]batchResponse, 0, len(batches))
		for _, b := range batches {
			out.Data = append(out.Data, toBatchResponse(b))
		}
		s.encode(w, r, http.StatusOK, out)
	})
}

func (s *server) handleBatchTransition(action batchsender.BatchAction) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pid, id := projectID(r), r.PathValue("id")
		if action == batchsender.ActionStart {
			b, err := s.Store.BatchGetByID(r.Context(), pid, id)
			if err != nil {
				s.writeError(w, r, err)
				return
			}
			if b.Status == batchsender.BatchDraft && b.Total == 0 {
				s.writeError(w, r, batchsender.Errorf(batchsender.ECONFLICT,
					"batch %s has no items yet; upload them with POST /v1/batches/%s/items first", id, id))
				return
			}
		}
		b, err := s.Store.BatchTransition(r.Context(), batchsender.BatchTransitionParams{
			ProjectID: pid, BatchID: id, Action: action, Now: s.Now(),
		})
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if b.Status == batchsender.BatchRunning {
			s.wake()
		}
		s.encode(w, r, http.StatusOK, toBatchResponse(b))
	})
}

func (s *server) handleItemList() http.Handler {
	type response struct {
		Data       []batchsender.Item `json:"data"`
		NextCursor string             `json:"next_cursor,omitempty"`
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		limit, err := pageLimit(r, defaultItemPage, maxItemPage)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		p := batchsender.ItemListParams{ProjectID: projectID(r), BatchID: r.PathValue("id"), Limit: limit + 1}
		if v := q.Get("status"); v != "" {
			if p.Status, err = batchsender.ParseItemStatus(v); err != nil {
				s.writeError(w, r, err)
				return
			}
		}
		if v := q.Get("cursor"); v != "" {
			if p.AfterSeq, err = strconv.ParseInt(v, 10, 64); err != nil || p.AfterSeq < 0 {
				s.writeError(w, r, batchsender.Errorf(batchsender.EINVALID, "cursor %q is not one this API returned", v))
				return
			}
		}
		items, err := s.Store.ItemList(r.Context(), p)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		var out response
		if len(items) > limit {
			items = items[:limit]
			out.NextCursor = strconv.FormatInt(items[limit-1].Seq, 10)
		}
		out.Data = items
		if out.Data == nil {
			out.Data = []batchsender.Item{}
		}
		s.encode(w, r, http.StatusOK, out)
	})
}

func (s *server) handleAttemptList() http.Handler {
	type response struct {
		Data []batchsender.Attempt `json:"data"`
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pid := projectID(r)
		if _, err := s.Store.BatchGetByID(r.Context(), pid, r.PathValue("id")); err != nil {
			s.writeError(w, r, err)
			return
		}
		attempts, err := s.Store.ItemAttemptList(r.Context(), pid, r.PathValue("item_id"))
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if attempts == nil {
			attempts = []batchsender.Attempt{}
		}
		s.encode(w, r, http.StatusOK, response{Data: attempts})
	})
}
