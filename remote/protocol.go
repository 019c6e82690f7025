package remote

import "encoding/json"

// ProtocolVersion is the version of the remote module protocol this
// package speaks. It travels in the BatchSender-Protocol header of every
// request and a module's /info may state it in "protocol".
const ProtocolVersion = 1

// HeaderProtocol carries ProtocolVersion on every request.
const HeaderProtocol = "BatchSender-Protocol"

// InfoResponse is the answer to GET <url>/info.
type InfoResponse struct {
	// Protocol is the protocol version the module speaks (1; 0 means 1).
	Protocol int `json:"protocol,omitempty"`
	// ID names the module's own kind, "module.name" in lower case, for
	// instance "chat.echo". It is shown to operators and logged.
	ID string `json:"id"`
	// Title is a short human-readable name.
	Title string `json:"title,omitempty"`
	// MaxChunk is the most items the module takes in one /send call; it
	// lowers the connection's max_chunk (0: no limit of its own).
	MaxChunk int `json:"max_chunk,omitempty"`
	// Validate asks BatchSender to call POST <url>/validate for the
	// template (at Compile) and for every item at ingest.
	Validate bool `json:"validate,omitempty"`
	// Preview says the module answers POST <url>/preview, so template
	// previews (POST /v1/templates/preview) show its rendering.
	Preview bool `json:"preview,omitempty"`
	// ItemSchema is a JSON Schema of one item. BatchSender checks its
	// top-level "required" names and the "type" of top-level properties
	// locally at ingest, whatever Validate says.
	ItemSchema json.RawMessage `json:"item_schema,omitempty"`
	// TemplateSchema is a JSON Schema of the batch template, for people
	// and forms.
	TemplateSchema json.RawMessage `json:"template_schema,omitempty"`
}

// WireItem is one item in a /send or /validate request.
type WireItem struct {
	// ID is the item's ID, the same on every attempt: the module's
	// idempotency key.
	ID string `json:"id"`
	// Seq is the item's 1-based position in its batch.
	Seq int64 `json:"seq"`
	// Attempt is the 1-based attempt number.
	Attempt int `json:"attempt"`
	// Data is the item's JSON object as submitted.
	Data json.RawMessage `json:"data"`
}

// SendRequest is the body of POST <url>/send.
type SendRequest struct {
	// Template is the batch's template object ({} when the batch has none).
	Template json.RawMessage `json:"template"`
	Items    []WireItem      `json:"items"`
}

// WireResult is one item's result in a /send answer.
type WireResult struct {
	// Outcome is "ok", "retry", "permanent" or "unknown".
	Outcome string `json:"outcome"`
	// MessageID is the module's ID of the accepted item (default: the
	// item's ID).
	MessageID string `json:"message_id,omitempty"`
	// RetryAfterSeconds is the least delay before the next attempt, for
	// outcome "retry".
	RetryAfterSeconds float64 `json:"retry_after_seconds,omitempty"`
	// Error explains any outcome but "ok"; it is shown to the batch owner.
	Error string `json:"error,omitempty"`
	// Units is the number of billable units the item used (default 1 for
	// "ok", 0 otherwise).
	Units int `json:"units,omitempty"`
}

// SendResponse is the answer to POST <url>/send: exactly one result per
// request item, in the same order.
type SendResponse struct {
	Results []WireResult `json:"results"`
}

// ValidateItem is one item in a /validate request.
type ValidateItem struct {
	Data json.RawMessage `json:"data"`
}

// ValidateRequest is the body of POST <url>/validate. Items may be empty:
// then only the template is checked.
type ValidateRequest struct {
	Template json.RawMessage `json:"template"`
	Items    []ValidateItem  `json:"items"`
}

// ValidateResponse is the answer to POST <url>/validate.
type ValidateResponse struct {
	// TemplateError is empty when the template is acceptable.
	TemplateError string `json:"template_error,omitempty"`
	// Errors holds one entry per request item, in order: "" (or null)
	// for a valid item, else what is wrong, naming the field.
	Errors []*string `json:"errors"`
}

// PreviewRequest is the body of POST <url>/preview: render items without
// sending them.
type PreviewRequest struct {
	Template json.RawMessage `json:"template"`
	Items    []ValidateItem  `json:"items"`
}

// PreviewResult is one item's rendering, or why it has none.
type PreviewResult struct {
	// Rendered is what the item becomes, a JSON object; absent on error.
	Rendered json.RawMessage `json:"rendered,omitempty"`
	// Error names the field at fault; empty when Rendered is set.
	Error string `json:"error,omitempty"`
}

// PreviewResponse is the answer to POST <url>/preview: one result per
// item, in order.
type PreviewResponse struct {
	Results []PreviewResult `json:"results"`
}
