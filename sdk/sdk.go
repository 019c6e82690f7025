// Package sdk is the public contract between BatchSender and its providers.
//
// A module is a channel ("webhook", "email", "sms", "crm"); a provider is one
// way of carrying it out ("webhook.http", "email.smtp"). A provider package
// registers itself from init() with Register, the way Caddy modules do, and
// the binary's set of providers is one list of imports.
//
// Life of a provider instance: New (zero value) → Provision (decode config
// and secrets strictly, build clients) → Compile per batch template →
// ValidateItem at ingest, Send per chunk → Close.
//
// The package depends on the standard library only, so a provider can be
// written and tested in another repository.
package sdk

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"time"
)

// Info describes a provider.
type Info struct {
	// ID is the namespaced provider ID, module first: "webhook.http".
	ID string `json:"id"`
	// Title is a short human-readable name.
	Title string `json:"title"`
	// MaxChunk is the largest number of items one Send call may carry
	// (1 for providers that send one request per item).
	MaxChunk int `json:"max_chunk"`
	// DefaultRate is the default limit of Send calls per second for one
	// connection (0: unlimited). A connection or batch may lower it.
	DefaultRate float64 `json:"default_rate"`
	// DefaultConcurrency is the default number of Send calls in flight at
	// once for one connection.
	DefaultConcurrency int `json:"default_concurrency"`
	// BillableUnit names what Result.Units counts: "request", "message",
	// "sms_segment", "record".
	BillableUnit string `json:"billable_unit"`
	// ConfigSchema, SecretsSchema and ItemSchema are JSON Schema documents
	// (objects) describing the connection config, the connection secrets and
	// one item's fields (after the batch template's defaults apply).
	ConfigSchema  json.RawMessage `json:"config_schema,omitempty"`
	SecretsSchema json.RawMessage `json:"secrets_schema,omitempty"`
	ItemSchema    json.RawMessage `json:"item_schema,omitempty"`
}

// Module returns the module part of the provider ID.
func (i Info) Module() string {
	for j := 0; j < len(i.ID); j++ {
		if i.ID[j] == '.' {
			return i.ID[:j]
		}
	}
	return i.ID
}

// Env is what the host hands a provider when provisioning it.
type Env struct {
	// Config and Secrets are the connection's JSON objects. Decode them with
	// DecodeStrict so that unknown fields are errors.
	Config  json.RawMessage
	Secrets json.RawMessage
	// Logger is the host's logger, already tagged with the connection. Never
	// log secrets or item data through it.
	Logger *slog.Logger
	// Dialer is the dial function outgoing network connections must use: it
	// enforces the operator's network policy (the SSRF guard). Providers that
	// talk HTTP build their transport on it.
	Dialer func(ctx context.Context, network, address string) (net.Conn, error)
	// AllowPrivateNetworks is true when the operator lifted the SSRF guard.
	AllowPrivateNetworks bool
	// PublicURL is the base URL at which BatchSender is reachable, for links
	// put into messages or callbacks handed to providers.
	PublicURL string
	// Now is the host's clock.
	Now func() time.Time
	// UnsubscribeURL returns the one-click unsubscribe link for an item:
	// PublicURL plus a token the host signs and later verifies. Modules whose
	// messages carry such a link (email List-Unsubscribe, RFC 8058) call it
	// per item; nil means the host offers none.
	UnsubscribeURL func(itemID, recipient string) string
}

// Provider is one configured provider account (one connection).
type Provider interface {
	// Info describes the provider. It must not depend on the configuration.
	Info() Info
	// Provision decodes and validates the configuration and secrets and
	// prepares clients. Errors are shown to the user who created the
	// connection, so they must name the field and never contain a secret.
	Provision(ctx context.Context, env Env) error
	// Compile checks a batch template (the batch's "template" object, which
	// may be empty) and returns the sender for that batch.
	Compile(template json.RawMessage) (Sender, error)
	// Close releases pooled connections and other resources.
	Close() error
}

// Sender carries out one batch's items with one compiled template.
type Sender interface {
	// ValidateItem checks one item's data at ingest, before anything is
	// sent. Errors name the field.
	ValidateItem(data json.RawMessage) error
	// Send carries out a chunk of at most Info.MaxChunk items and returns
	// exactly one result per item, in the same order. It honours ctx: when
	// ctx ends, unsent items return Retry results.
	Send(ctx context.Context, items []Item) []Result
}

// Item is one item as a provider sees it.
type Item struct {
	// ID is stable across attempts. Providers pass it on as the idempotency
	// key wherever the provider API accepts one (webhook-id, Idempotency-Key,
	// a deterministic Message-ID).
	ID string
	// Seq is the item's 1-based position in its batch.
	Seq int64
	// Attempt is the 1-based number of this attempt.
	Attempt int
	// Data is the item's JSON object as submitted.
	Data json.RawMessage
}

// IdempotencyKey returns the key to hand to providers for this item.
func (i Item) IdempotencyKey() string { return i.ID }

// Outcome classifies a result.
type Outcome int

// Outcomes. Unknown means the request may or may not have been accepted by
// the provider (for instance a timeout after the request left) and the
// provider offers no idempotency key to make a retry safe.
const (
	OutcomeOK Outcome = iota + 1
	OutcomeRetry
	OutcomePermanent
	OutcomeUnknown
)

// String returns the outcome's name as stored in attempt records.
func (o Outcome) String() string {
	switch o {
	case OutcomeOK:
		return "ok"
	case OutcomeRetry:
		return "retry"
	case OutcomePermanent:
		return "permanent"
	case OutcomeUnknown:
		return "unknown"
	}
	return "invalid"
}

// Result is the outcome of one item's attempt.
type Result struct {
	Outcome Outcome
	// RetryAfter is the least delay the provider asked for (Retry-After);
	// zero lets the host's backoff decide.
	RetryAfter time.Duration
	// Err explains any outcome but OK. Its text is stored and shown to the
	// batch owner: it must not contain secrets.
	Err error
	// MessageID is the provider's ID for the accepted item.
	MessageID string
	// StatusCode is the provider's status (HTTP status, SMTP reply code).
	StatusCode int
	// Response is the start of the provider's answer; the host keeps 1 KiB.
	Response string
	// Latency is how long the call took.
	Latency time.Duration
	// Units is the number of billable units the item used.
	Units int
}

// OK is a success carrying the provider's message ID.
func OK(messageID string) Result { return Result{Outcome: OutcomeOK, MessageID: messageID, Units: 1} }

// Retry is a transient failure: try again after the host's backoff.
func Retry(err error) Result { return Result{Outcome: OutcomeRetry, Err: err} }

// RetryAfter is a transient failure with a least delay the provider asked for.
func RetryAfter(d time.Duration, err error) Result {
	return Result{Outcome: OutcomeRetry, RetryAfter: d, Err: err}
}

// Permanent is a failure no retry can fix (bad recipient, rejected content).
func Permanent(err error) Result { return Result{Outcome: OutcomePermanent, Err: err} }

// Unknown is an ambiguous send that must not be retried blindly.
func Unknown(err error) Result { return Result{Outcome: OutcomeUnknown, Err: err} }
