package remote

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/batchsender/batchsender/netguard"
	"github.com/batchsender/batchsender/sdk"
)

// sender is one batch's template, checked by the module when it asked to
// validate.
type sender struct {
	p        *Provider
	template json.RawMessage // compact JSON object, "{}" when none
}

// Compile implements sdk.Provider. The template is the module's business:
// it must be a JSON object, and when the module's /info asked for
// validation, POST /validate with no items checks it.
func (p *Provider) Compile(template json.RawMessage) (sdk.Sender, error) {
	t := bytes.TrimSpace(template)
	if len(t) == 0 || bytes.Equal(t, []byte("null")) {
		t = []byte("{}")
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(t, &obj); err != nil {
		return nil, errors.New("template: must be a JSON object")
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, t); err != nil {
		return nil, errors.New("template: must be a JSON object")
	}
	s := &sender{p: p, template: buf.Bytes()}
	var out sdk.Sender = s
	if p.module.Preview {
		out = previewSender{s}
	}
	if p.module.Validate {
		res, err := s.validate(nil)
		if err != nil {
			return nil, fmt.Errorf("checking the template with the module: %w", err)
		}
		if res.TemplateError != "" {
			return nil, fmt.Errorf("template: %s", res.TemplateError)
		}
	}
	return out, nil
}

// post sends a signed JSON request with the call timeout and decodes a 200
// answer into v.
func (s *sender) post(path string, req, v any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("encoding the request: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(s.p.cfg.Timeout))
	defer cancel()
	ans, err := s.p.call(ctx, http.MethodPost, path, body)
	if err != nil {
		return describeCallError(ctx, err, time.Duration(s.p.cfg.Timeout))
	}
	if ans.status != http.StatusOK {
		return errors.New(ans.describe())
	}
	if err := json.Unmarshal(ans.body, v); err != nil {
		return fmt.Errorf("malformed /%s answer: %v", path, err)
	}
	return nil
}

// previewSender is the sender of a module that previews.
type previewSender struct{ *sender }

// Preview implements sdk.Previewer through POST /preview.
func (s previewSender) Preview(data json.RawMessage) (json.RawMessage, error) {
	var res PreviewResponse
	if err := s.post("preview", PreviewRequest{Template: s.template, Items: []ValidateItem{{Data: data}}}, &res); err != nil {
		return nil, fmt.Errorf("previewing with the module: %w", err)
	}
	if len(res.Results) != 1 {
		return nil, fmt.Errorf("previewing with the module: malformed /preview answer: %d results for 1 item", len(res.Results))
	}
	r := res.Results[0]
	if r.Error != "" {
		return nil, errors.New(snippet([]byte(r.Error), snippetSize))
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(r.Rendered, &obj) != nil || obj == nil {
		return nil, errors.New("previewing with the module: malformed /preview answer: rendered is not a JSON object")
	}
	return r.Rendered, nil
}

// validate calls POST /validate.
func (s *sender) validate(items []ValidateItem) (ValidateResponse, error) {
	var res ValidateResponse
	if items == nil {
		items = []ValidateItem{}
	}
	if err := s.post("validate", ValidateRequest{Template: s.template, Items: items}, &res); err != nil {
		return res, err
	}
	if len(res.Errors) != len(items) {
		return res, fmt.Errorf("malformed /validate answer: %d errors for %d items", len(res.Errors), len(items))
	}
	return res, nil
}

// ValidateItem implements sdk.Sender: the item must be a JSON object that
// meets the top-level "required" and "type" of the module's item_schema;
// when the module asked for validation, it judges the item too.
func (s *sender) ValidateItem(data json.RawMessage) error {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(data, &obj); err != nil || obj == nil {
		return errors.New("item: must be a JSON object")
	}
	if err := s.p.schema.check(obj); err != nil {
		return err
	}
	if !s.p.module.Validate {
		return nil
	}
	res, err := s.validate([]ValidateItem{{Data: data}})
	if err != nil {
		return fmt.Errorf("validating with the module: %w", err)
	}
	if res.Errors[0] != nil && *res.Errors[0] != "" {
		return errors.New(*res.Errors[0])
	}
	return nil
}

// Send implements sdk.Sender: items go to the module in calls of at most
// the connection's chunk size, concurrently.
func (s *sender) Send(ctx context.Context, items []sdk.Item) []sdk.Result {
	out := make([]sdk.Result, len(items))
	n := max(1, s.p.chunk)
	if len(items) <= n {
		s.sendCall(ctx, items, out)
		return out
	}
	var wg sync.WaitGroup
	for start := 0; start < len(items); start += n {
		end := min(start+n, len(items))
		wg.Go(func() { s.sendCall(ctx, items[start:end], out[start:end]) })
	}
	wg.Wait()
	return out
}

// fill sets every result to r.
func fill(out []sdk.Result, r sdk.Result) {
	for i := range out {
		out[i] = r
	}
}

// sendCall sends one /send call and writes one result per item into out.
func (s *sender) sendCall(ctx context.Context, items []sdk.Item, out []sdk.Result) {
	p := s.p
	if err := ctx.Err(); err != nil {
		fill(out, sdk.Retry(fmt.Errorf("not sent: %w", err)))
		return
	}
	if p.inflight != nil {
		select {
		case p.inflight <- struct{}{}:
			defer func() { <-p.inflight }()
		case <-ctx.Done():
			fill(out, sdk.Retry(fmt.Errorf("not sent: %w", ctx.Err())))
			return
		}
	}
	if p.limiter != nil {
		if err := p.limiter.Wait(ctx); err != nil {
			fill(out, sdk.Retry(fmt.Errorf("not sent: %w", err)))
			return
		}
	}
	req := SendRequest{Template: s.template, Items: make([]WireItem, len(items))}
	for i, it := range items {
		req.Items[i] = WireItem{ID: it.ID, Seq: it.Seq, Attempt: it.Attempt, Data: it.Data}
	}
	body, err := json.Marshal(req)
	if err != nil {
		fill(out, sdk.Permanent(fmt.Errorf("encoding the chunk: %w", err)))
		return
	}
	timeout := time.Duration(p.cfg.Timeout)
	callCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	ans, err := p.call(callCtx, http.MethodPost, "send", body)
	if err != nil {
		var blocked *netguard.BlockedError
		res := sdk.Retry(describeCallError(callCtx, err, timeout))
		if errors.As(err, &blocked) {
			res = sdk.Permanent(fmt.Errorf("not sent: %w", blocked))
		}
		res.Latency = time.Since(start)
		fill(out, res)
		return
	}
	classify(ans, items, out, p.now())
}

// describeCallError explains a failed round trip; ctx is the call's.
func describeCallError(ctx context.Context, err error, timeout time.Duration) error {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("module did not answer within %s", timeout)
	case ctx.Err() != nil:
		return fmt.Errorf("interrupted: %w", ctx.Err())
	}
	return fmt.Errorf("calling the module: %w", err)
}

// classify turns a /send answer into one result per item. Item IDs make
// a repeated call safe, so everything that is not the module's verdict is
// retried: a malformed answer, a wrong number of results, 429 and 5xx.
func classify(ans answer, items []sdk.Item, out []sdk.Result, now time.Time) {
	defer func() {
		for i := range out {
			out[i].StatusCode = ans.status
			out[i].Latency = ans.latency
		}
	}()
	switch code := ans.status; {
	case code == http.StatusOK:
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500:
		err := errors.New(ans.describe())
		if d, ok := parseRetryAfter(ans.header.Get("Retry-After"), now); ok {
			fill(out, sdk.RetryAfter(d, err))
		} else {
			fill(out, sdk.Retry(err))
		}
		return
	default:
		// Other 4xx, 3xx (never followed) and other 2xx: the module
		// refused the whole call.
		fill(out, sdk.Permanent(errors.New(ans.describe())))
		return
	}
	var resp SendResponse
	if err := json.Unmarshal(ans.body, &resp); err != nil {
		fill(out, sdk.Retry(fmt.Errorf("malformed module answer (want {\"results\":[...]}): %v", err)))
		return
	}
	if len(resp.Results) != len(items) {
		fill(out, sdk.Retry(fmt.Errorf("malformed module answer: %d results for %d items", len(resp.Results), len(items))))
		return
	}
	res := make([]sdk.Result, len(items))
	for i, w := range resp.Results {
		r, err := toResult(w, items[i].ID, now)
		if err != nil {
			fill(out, sdk.Retry(fmt.Errorf("malformed module answer: results[%d]: %v", i, err)))
			return
		}
		raw, _ := json.Marshal(w)
		r.Response = snippet(raw, snippetSize)
		res[i] = r
	}
	copy(out, res)
}

// toResult maps one wire result.
func toResult(w WireResult, itemID string, now time.Time) (sdk.Result, error) {
	if w.Units < 0 || w.RetryAfterSeconds < 0 {
		return sdk.Result{}, errors.New("negative units or retry_after_seconds")
	}
	why := func(def string) error {
		if w.Error != "" {
			return errors.New(snippet([]byte(w.Error), snippetSize))
		}
		return errors.New(def)
	}
	var r sdk.Result
	switch w.Outcome {
	case "ok":
		id := w.MessageID
		if id == "" {
			id = itemID
		}
		r = sdk.OK(id)
		if w.Units > 0 {
			r.Units = w.Units
		}
		return r, nil
	case "retry":
		// Capped before converting: a huge number would overflow.
		secs := min(w.RetryAfterSeconds, maxRetryAfter.Seconds())
		r = sdk.RetryAfter(time.Duration(secs*float64(time.Second)), why("module asked to retry"))
	case "permanent":
		r = sdk.Permanent(why("module refused the item"))
	case "unknown":
		r = sdk.Unknown(why("module cannot tell whether the item was sent"))
	default:
		return sdk.Result{}, fmt.Errorf("outcome %q is not ok, retry, permanent or unknown", w.Outcome)
	}
	r.MessageID = w.MessageID
	r.Units = w.Units
	return r, nil
}
