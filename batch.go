package batchsender

import (
	"encoding/json"
	"fmt"
	"time"
)

// BatchStatus is the life-cycle state of a batch:
//
//	draft → scheduled (send_at) → running ⇄ paused → completed | cancelled
//
// A draft takes item uploads; start moves it to scheduled (when send_at lies
// in the future) or running. A running batch becomes completed as soon as no
// item is pending or in flight.
type BatchStatus string

// Batch statuses.
const (
	BatchDraft     BatchStatus = "draft"
	BatchScheduled BatchStatus = "scheduled"
	BatchRunning   BatchStatus = "running"
	BatchPaused    BatchStatus = "paused"
	BatchCompleted BatchStatus = "completed"
	BatchCancelled BatchStatus = "cancelled"
)

// Terminal reports whether no further work will happen for the batch.
func (s BatchStatus) Terminal() bool { return s == BatchCompleted || s == BatchCancelled }

// ItemStatus is the state of one item.
type ItemStatus string

// Item statuses. Pending, in_flight are live; the others are terminal.
const (
	ItemPending   ItemStatus = "pending"   // waiting for its first or next attempt
	ItemInFlight  ItemStatus = "in_flight" // claimed by a worker under a lease
	ItemSucceeded ItemStatus = "succeeded"
	ItemFailed    ItemStatus = "failed"    // permanent failure or attempts exhausted
	ItemCancelled ItemStatus = "cancelled" // the batch was cancelled first
	ItemSkipped   ItemStatus = "skipped"   // not sent on purpose (suppressed)
	ItemUnknown   ItemStatus = "unknown"   // may or may not have reached the provider
)

// Terminal reports whether the item's outcome is final.
func (s ItemStatus) Terminal() bool {
	switch s {
	case ItemSucceeded, ItemFailed, ItemCancelled, ItemSkipped, ItemUnknown:
		return true
	}
	return false
}

// ItemStatuses lists every item status, in display order.
var ItemStatuses = []ItemStatus{ItemPending, ItemInFlight, ItemSucceeded, ItemFailed, ItemCancelled, ItemSkipped, ItemUnknown}

// ParseItemStatus checks s names an item status.
func ParseItemStatus(s string) (ItemStatus, error) {
	for _, st := range ItemStatuses {
		if string(st) == s {
			return st, nil
		}
	}
	return "", Errorf(EINVALID, "unknown item status %q", s)
}

// Counts holds the number of a batch's items in each status. Stores keep it
// current in the same transaction as every item change, so progress reads
// are cheap.
type Counts struct {
	Pending   int64 `json:"pending"`
	InFlight  int64 `json:"in_flight"`
	Succeeded int64 `json:"succeeded"`
	Failed    int64 `json:"failed"`
	Cancelled int64 `json:"cancelled"`
	Skipped   int64 `json:"skipped"`
	Unknown   int64 `json:"unknown"`
}

// Live returns the number of items that still need work.
func (c Counts) Live() int64 { return c.Pending + c.InFlight }

// Add adds n to the count of status s.
func (c *Counts) Add(s ItemStatus, n int64) {
	switch s {
	case ItemPending:
		c.Pending += n
	case ItemInFlight:
		c.InFlight += n
	case ItemSucceeded:
		c.Succeeded += n
	case ItemFailed:
		c.Failed += n
	case ItemCancelled:
		c.Cancelled += n
	case ItemSkipped:
		c.Skipped += n
	case ItemUnknown:
		c.Unknown += n
	}
}

// Get returns the count of status s.
func (c Counts) Get(s ItemStatus) int64 {
	switch s {
	case ItemPending:
		return c.Pending
	case ItemInFlight:
		return c.InFlight
	case ItemSucceeded:
		return c.Succeeded
	case ItemFailed:
		return c.Failed
	case ItemCancelled:
		return c.Cancelled
	case ItemSkipped:
		return c.Skipped
	case ItemUnknown:
		return c.Unknown
	}
	return 0
}

// Option limits and defaults.
const (
	DefaultMaxAttempts    = 8
	MaxMaxAttempts        = 100
	DefaultRetryBaseDelay = Duration(time.Second)
	DefaultRetryMaxDelay  = Duration(time.Hour)
	MaxInlineItems        = 10_000
)

// BatchOptions tune how a batch is carried out. Zero values mean "use the
// connection's or provider's default"; rate and concurrency may only lower
// the connection's limits, never raise them.
type BatchOptions struct {
	RatePerSecond  float64    `json:"rate_per_second,omitempty"`
	Concurrency    int        `json:"concurrency,omitempty"`
	MaxAttempts    int        `json:"max_attempts,omitempty"`
	SendAt         *time.Time `json:"send_at,omitempty"`
	RetryBaseDelay Duration   `json:"retry_base_delay,omitempty"`
	RetryMaxDelay  Duration   `json:"retry_max_delay,omitempty"`
	// AtLeastOnce makes an ambiguous send (outcome unknown) retry instead of
	// stopping at status unknown, accepting a possible double send.
	AtLeastOnce bool `json:"at_least_once,omitempty"`
	// FailureThreshold is the failure-rate guard: the batch pauses itself,
	// with the reason as status_reason, when at least this share of its
	// recent final outcomes (the last 100 on a node, at least 20 of them)
	// are permanent failures. Nil means DefaultFailureThreshold; 0 turns the
	// guard off.
	FailureThreshold *float64 `json:"failure_threshold,omitempty"`
}

// DefaultFailureThreshold is the failure-rate guard's threshold unless a
// batch sets its own: half of the recent outcomes failed for good.
const DefaultFailureThreshold = 0.5

// FailureGuard returns the batch's failure-rate threshold, 0 when the guard
// is off.
func (o BatchOptions) FailureGuard() float64 {
	if o.FailureThreshold == nil {
		return DefaultFailureThreshold
	}
	return *o.FailureThreshold
}

// WithDefaults returns the options with zero fields set to their defaults.
func (o BatchOptions) WithDefaults() BatchOptions {
	if o.MaxAttempts == 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	if o.RetryBaseDelay == 0 {
		o.RetryBaseDelay = DefaultRetryBaseDelay
	}
	if o.RetryMaxDelay == 0 {
		o.RetryMaxDelay = DefaultRetryMaxDelay
	}
	return o
}

// Validate names the first option out of range.
func (o BatchOptions) Validate() error {
	switch {
	case o.RatePerSecond < 0:
		return Errorf(EINVALID, "options.rate_per_second must be positive, got %v", o.RatePerSecond)
	case o.Concurrency < 0 || o.Concurrency > 10_000:
		return Errorf(EINVALID, "options.concurrency must be between 1 and 10000, got %d", o.Concurrency)
	case o.MaxAttempts < 0 || o.MaxAttempts > MaxMaxAttempts:
		return Errorf(EINVALID, "options.max_attempts must be between 1 and %d, got %d", MaxMaxAttempts, o.MaxAttempts)
	case o.RetryBaseDelay < 0:
		return Errorf(EINVALID, "options.retry_base_delay must not be negative")
	case o.RetryMaxDelay < 0:
		return Errorf(EINVALID, "options.retry_max_delay must not be negative")
	case o.FailureThreshold != nil && !(*o.FailureThreshold >= 0 && *o.FailureThreshold <= 1):
		return Errorf(EINVALID, "options.failure_threshold must be between 0 (guard off) and 1, got %v", *o.FailureThreshold)
	}
	return nil
}

// Batch is one sendout: many items carried out through one connection with
// one template and one set of options.
type Batch struct {
	ID           string          `json:"id"`
	ProjectID    string          `json:"project_id"`
	Module       string          `json:"module"`
	ConnectionID string          `json:"connection_id"`
	Provider     string          `json:"provider"`
	Status       BatchStatus     `json:"status"`
	StatusReason string          `json:"status_reason,omitempty"`
	Template     json.RawMessage `json:"template,omitempty"`
	Options      BatchOptions    `json:"options"`
	Total        int64           `json:"total"`
	Counts       Counts          `json:"counts"`
	CreatedAt    time.Time       `json:"created_at"`
	UpdatedAt    time.Time       `json:"updated_at"`
	StartedAt    *time.Time      `json:"started_at,omitempty"`
	CompletedAt  *time.Time      `json:"completed_at,omitempty"`

	IdempotencyKey string `json:"-"`
	RequestHash    string `json:"-"` // hash of the creating request, for Idempotency-Key replays
}

// Item is one unit of work of a batch: one recipient or one record.
type Item struct {
	ID                string          `json:"id"` // stable across attempts; the idempotency key sent to providers
	BatchID           string          `json:"batch_id"`
	ProjectID         string          `json:"-"`
	Seq               int64           `json:"seq"` // 1-based position in the batch (row number of uploads)
	Data              json.RawMessage `json:"data"`
	Status            ItemStatus      `json:"status"`
	Attempts          int             `json:"attempts"`
	NextAttemptAt     time.Time       `json:"next_attempt_at"`
	LastError         string          `json:"last_error,omitempty"`
	ProviderMessageID string          `json:"provider_message_id,omitempty"`
	LeaseOwner        string          `json:"-"`
	LeaseExpiresAt    *time.Time      `json:"-"`
	UpdatedAt         time.Time       `json:"updated_at"`
}

// Attempt is the record of one try at one item.
type Attempt struct {
	ItemID     string        `json:"item_id"`
	Number     int           `json:"number"` // 1-based
	StartedAt  time.Time     `json:"started_at"`
	Latency    time.Duration `json:"latency_ns"`
	Outcome    string        `json:"outcome"` // ok, retry, permanent, unknown, released, skipped
	StatusCode int           `json:"status_code,omitempty"`
	Response   string        `json:"response,omitempty"` // at most the first 1 KiB of the answer
	Error      string        `json:"error,omitempty"`
}

// String describes the attempt for logs.
func (a Attempt) String() string {
	return fmt.Sprintf("attempt %d of %s: %s %d %s", a.Number, a.ItemID, a.Outcome, a.StatusCode, a.Error)
}
