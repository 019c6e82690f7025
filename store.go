package batchsender

import (
	"context"
	"encoding/json"
	"iter"
	"strings"
	"time"
)

// Store persists everything BatchSender knows. The core owns the interface;
// package sqlite and package postgres implement it, and package storetest
// holds the one conformance suite both run.
//
// Every method that reads or changes a project's records takes the project
// ID and treats a record of another project exactly like a missing one
// (ENOTFOUND). Methods return *Error values with codes for expected failures.
type Store interface {
	// ProjectCreate creates a project. ECONFLICT if the name is taken.
	ProjectCreate(ctx context.Context, name string) (Project, error)
	// ProjectGetByName returns the project named name, ENOTFOUND if none.
	ProjectGetByName(ctx context.Context, name string) (Project, error)

	// APIKeyCreate stores a new key. ECONFLICT if the ID exists.
	APIKeyCreate(ctx context.Context, p APIKeyCreateParams) (APIKey, error)
	// APIKeyGetByID returns the key with that public ID, ENOTFOUND if none.
	APIKeyGetByID(ctx context.Context, id string) (APIKey, error)

	// ConnectionCreate stores a connection. ECONFLICT if the project already
	// has one of that name.
	ConnectionCreate(ctx context.Context, p ConnectionCreateParams) (Connection, error)
	// ConnectionGet returns the project's connection whose ID or name is
	// idOrName, ENOTFOUND if none.
	ConnectionGet(ctx context.Context, projectID, idOrName string) (Connection, error)
	// ConnectionGetByID returns a connection of any project; for the engine
	// only, never for requests. ENOTFOUND if none.
	ConnectionGetByID(ctx context.Context, id string) (Connection, error)
	// ConnectionList returns the project's connections, oldest first.
	ConnectionList(ctx context.Context, projectID string) ([]Connection, error)

	// BatchCreate creates a batch and all its items atomically: if Items
	// yields an error, nothing is kept and that error is returned. Items are
	// numbered from 1 in the order given. ECONFLICT if IdempotencyKey is set
	// and already used in the project.
	BatchCreate(ctx context.Context, p BatchCreateParams) (Batch, error)
	// BatchGetByID returns the project's batch, ENOTFOUND if none.
	BatchGetByID(ctx context.Context, projectID, id string) (Batch, error)
	// BatchGetByIdempotencyKey returns the project's batch created with key,
	// ENOTFOUND if none.
	BatchGetByIdempotencyKey(ctx context.Context, projectID, key string) (Batch, error)
	// BatchList returns the project's batches, newest first, starting after
	// the cursor (a batch ID) when one is given. An empty slice when none.
	BatchList(ctx context.Context, p BatchListParams) ([]Batch, error)
	// BatchItemsAppend appends items to a draft batch atomically, numbering
	// them after the existing ones: if Items yields an error nothing of this
	// call is kept. ECONFLICT unless the batch is a draft.
	BatchItemsAppend(ctx context.Context, p BatchItemsAppendParams) (Batch, error)
	// BatchTransition applies a life-cycle action and returns the batch as it
	// is afterwards. ECONFLICT when the action does not apply to the current
	// status (see BatchAction).
	BatchTransition(ctx context.Context, p BatchTransitionParams) (Batch, error)

	// ItemList returns the project's items of one batch in seq order, after
	// the cursor (a seq) and filtered by status when given. ENOTFOUND if the
	// batch is not the project's.
	ItemList(ctx context.Context, p ItemListParams) ([]Item, error)
	// ItemAttemptList returns the attempts made at one item, oldest first.
	// ENOTFOUND if the item is not the project's.
	ItemAttemptList(ctx context.Context, projectID, itemID string) ([]Attempt, error)

	// BatchesRunnable returns running batches that have pending items, for
	// the engine; at most limit of them, in no guaranteed order.
	BatchesRunnable(ctx context.Context, limit int) ([]Batch, error)
	// BatchesActivateDue moves scheduled batches whose send_at has come to
	// running and returns how many moved.
	BatchesActivateDue(ctx context.Context, now time.Time) (int, error)

	// ChunkClaim claims up to Limit due pending items of one running batch,
	// oldest due first: each becomes in_flight under the owner's lease, and
	// its attempt count goes up by one in the same statement. Items of a
	// batch that is not running are never claimed. Returns an empty slice when
	// nothing is due. Two concurrent claims never return the same item (on
	// PostgreSQL they queue on the batch row's lock, then lock the items
	// they take).
	ChunkClaim(ctx context.Context, p ChunkClaimParams) ([]Item, error)
	// ItemResultsWriteMany writes the outcomes of many attempts in one
	// transaction: item status, error, next attempt time, the attempt record
	// and the batch counts; batches left with no live items become
	// completed. A result whose item is no longer in flight under that owner
	// (its lease was rescued) is ignored and not counted in the return value.
	ItemResultsWriteMany(ctx context.Context, results []ItemResult) (int, error)
	// ItemsRelease gives claimed, unsent items back: in_flight → pending,
	// the attempt that was counted at claim taken back. Only items still
	// leased by owner change.
	ItemsRelease(ctx context.Context, owner string, itemIDs []string) (int, error)
	// LeasesRescue returns in-flight items whose lease expired before the
	// given time to pending, or to failed when they have used all attempts
	// (an item that crashes its worker cannot loop forever). Returns how
	// many items moved.
	LeasesRescue(ctx context.Context, expiredBefore time.Time) (int, error)

	// SuppressionsAdd records suppressed addresses of one project
	// (addresses normalized with NormalizeAddress). An address already
	// suppressed on that channel keeps its first record. Returns how many
	// were new.
	SuppressionsAdd(ctx context.Context, projectID string, sups []Suppression) (int, error)
	// SuppressionList returns a page of the project's suppressions of one
	// channel in address order, after the cursor (an address) when given.
	SuppressionList(ctx context.Context, p SuppressionListParams) ([]Suppression, error)
	// SuppressionDelete lifts one suppression, ENOTFOUND if there is none.
	SuppressionDelete(ctx context.Context, projectID, channel, address string) error
	// SuppressionsMatch returns, of the given normalized addresses, those
	// suppressed in the project's channel with their reasons. One query,
	// for the engine before each chunk is sent.
	SuppressionsMatch(ctx context.Context, projectID, channel string, addresses []string) (map[string]SuppressionReason, error)

	// TemplateCreate stores a new version of the project's template named
	// p.Name: version 1 when the name is new, else one more than the latest.
	// ECONFLICT if the name already holds a template of another module.
	TemplateCreate(ctx context.Context, p TemplateCreateParams) (Template, error)
	// TemplateGet returns one version of the project's named template, the
	// latest when version is 0. ENOTFOUND if there is none.
	TemplateGet(ctx context.Context, projectID, name string, version int) (Template, error)
	// TemplateList returns the latest version of each of the project's
	// templates in name order, after the cursor (a name) when given.
	TemplateList(ctx context.Context, p TemplateListParams) ([]Template, error)

	// Close releases the store's resources.
	Close() error
}

// Template is one version of a stored batch template. Versions are never
// changed: a batch created from one keeps a copy, so later versions do not
// change a batch already made.
type Template struct {
	Name      string          `json:"name"`
	Module    string          `json:"module"`
	Version   int             `json:"version"`
	Template  json.RawMessage `json:"template"`
	CreatedAt time.Time       `json:"created_at"`
}

// TemplateCreateParams are the fields of a new template version.
type TemplateCreateParams struct {
	ProjectID string
	Name      string
	Module    string
	Template  json.RawMessage
}

// TemplateListParams select a page of templates.
type TemplateListParams struct {
	ProjectID string
	Cursor    string // the name of the last template of the previous page
	Limit     int
}

// SuppressionReason says why an address is suppressed.
type SuppressionReason string

// Suppression reasons.
const (
	ReasonUnsubscribe SuppressionReason = "unsubscribe"
	ReasonHardBounce  SuppressionReason = "hard_bounce"
	ReasonComplaint   SuppressionReason = "complaint"
	ReasonManual      SuppressionReason = "manual"
)

// ParseSuppressionReason checks s names a suppression reason.
func ParseSuppressionReason(s string) (SuppressionReason, error) {
	switch r := SuppressionReason(s); r {
	case ReasonUnsubscribe, ReasonHardBounce, ReasonComplaint, ReasonManual:
		return r, nil
	}
	return "", Errorf(EINVALID, "unknown suppression reason %q: use unsubscribe, hard_bounce, complaint or manual", s)
}

// Suppression is an address a project must not send to on one channel
// (module): items addressed to it end as skipped.
type Suppression struct {
	Channel   string            `json:"channel"`
	Address   string            `json:"address"`
	Reason    SuppressionReason `json:"reason"`
	Source    string            `json:"source,omitempty"` // where it came from: "api", "unsubscribe link", "sendgrid events"...
	CreatedAt time.Time         `json:"created_at"`
}

// NormalizeAddress returns the form addresses are suppressed and matched
// in: trimmed and lower-case. Mailbox local parts are case-sensitive in
// theory but not in any provider that matters, and a suppression must not
// be dodged by case.
func NormalizeAddress(address string) string {
	return strings.ToLower(strings.TrimSpace(address))
}

// SuppressionListParams select a page of suppressions.
type SuppressionListParams struct {
	ProjectID string
	Channel   string
	Cursor    string // the address of the last suppression of the previous page
	Limit     int
}

// APIKeyCreateParams are the fields of a new key.
type APIKeyCreateParams struct {
	ID         string
	ProjectID  string
	Name       string
	Role       string
	SecretHash []byte
}

// ConnectionCreateParams are the fields of a new connection.
type ConnectionCreateParams struct {
	ProjectID     string
	Provider      string
	Name          string
	Config        json.RawMessage
	SecretsSealed []byte
	SecretNames   []string
}

// NewItem is an item as ingest hands it to the store.
type NewItem struct {
	Data json.RawMessage
}

// BatchCreateParams are the fields of a new batch. Status is draft,
// scheduled or running, as the caller decided.
type BatchCreateParams struct {
	ProjectID      string
	Module         string
	ConnectionID   string
	Provider       string
	Status         BatchStatus
	Template       json.RawMessage
	Options        BatchOptions
	IdempotencyKey string
	RequestHash    string
	Items          iter.Seq2[NewItem, error] // may be nil for an empty draft
}

// BatchListParams select a page of batches.
type BatchListParams struct {
	ProjectID string
	Cursor    string // the ID of the last batch of the previous page
	Limit     int
}

// BatchItemsAppendParams add items to a draft.
type BatchItemsAppendParams struct {
	ProjectID string
	BatchID   string
	Items     iter.Seq2[NewItem, error]
}

// BatchAction is a life-cycle change asked of a batch.
type BatchAction string

// Batch actions and the statuses they apply to.
const (
	// ActionStart: draft → scheduled (send_at in the future) or running.
	ActionStart BatchAction = "start"
	// ActionPause: scheduled or running → paused. In-flight items finish.
	ActionPause BatchAction = "pause"
	// ActionResume: paused → running (or scheduled while send_at is ahead).
	ActionResume BatchAction = "resume"
	// ActionCancel: any non-terminal status → cancelled; pending items
	// become cancelled, in-flight items finish and keep their outcome.
	ActionCancel BatchAction = "cancel"
	// ActionRetryFailed: failed and unknown items go back to pending with
	// fresh attempts; a completed batch becomes running again. Not for
	// cancelled batches.
	ActionRetryFailed BatchAction = "retry_failed"
)

// BatchTransitionParams ask for a life-cycle action.
type BatchTransitionParams struct {
	ProjectID string
	BatchID   string
	Action    BatchAction
	Now       time.Time
	Reason    string // shown as status_reason (e.g. why a batch paused itself)
}

// ItemListParams select a page of a batch's items.
type ItemListParams struct {
	ProjectID string
	BatchID   string
	Status    ItemStatus // empty for all
	AfterSeq  int64
	Limit     int
}

// ChunkClaimParams describe one claim.
type ChunkClaimParams struct {
	BatchID    string
	Owner      string // the claiming worker's ID
	Now        time.Time
	LeaseUntil time.Time
	Limit      int
}

// ItemResult is the engine's verdict on one attempt, ready to be written.
type ItemResult struct {
	ItemID            string
	BatchID           string
	Owner             string
	Status            ItemStatus // pending (retry later), succeeded, failed or unknown
	NextAttemptAt     time.Time  // when Status is pending
	Error             string
	ProviderMessageID string
	Units             int // billable units used (0 when nothing was billed)
	Attempt           Attempt
}

// WorkSignaler is implemented by stores that several processes share
// (PostgreSQL): it wakes idle nodes when new work arrives instead of making
// them poll. Single-process stores do not implement it.
type WorkSignaler interface {
	// WorkSignal tells every node that new work may be due.
	WorkSignal(ctx context.Context) error
	// WorkWait calls wake on every signal until ctx ends.
	WorkWait(ctx context.Context, wake func()) error
}

// LeaderElector is implemented by stores that several processes share: one
// node at a time holds the maintenance role (lease rescue, scheduling,
// retention), and another takes it over when that node dies.
type LeaderElector interface {
	// LeaderTry makes this process the leader if no live process is, and
	// reports whether this process is the leader now.
	LeaderTry(ctx context.Context) (bool, error)
}

// LimitStore is implemented by stores that several processes share
// (PostgreSQL), so that a connection's rate and concurrency limits hold
// across all nodes together. Single-process stores do not implement it; the
// engine then keeps its limits in process. Times are the database's, so the
// nodes' clocks need not agree.
type LimitStore interface {
	// RateTake reserves up to want consecutive call slots of the rate
	// limit key, which allows perSecond calls a second with a burst of one:
	// slot i (from 0) may be used wait + i/perSecond from now. Only slots
	// due within horizon are granted, possibly none; wait then says when
	// the next slot falls due.
	RateTake(ctx context.Context, key string, perSecond float64, want int, horizon time.Duration) (granted int, wait time.Duration, err error)
	// SlotsAcquire leases up to want of the limit concurrency slots of key
	// to owner for ttl, never more than the owner's fair share (limit
	// divided among the owners that asked for slots of key within ttl,
	// rounded up), and registers the owner's demand. It returns how many it
	// leased and the share.
	SlotsAcquire(ctx context.Context, key, owner string, limit, want int, ttl time.Duration) (got, share int, err error)
	// SlotsRenew extends the owner's leases of key by ttl and returns how
	// many it still holds and its fair share.
	SlotsRenew(ctx context.Context, key, owner string, limit int, ttl time.Duration) (held, share int, err error)
	// SlotsRelease gives n of the owner's slots of key back, all of them
	// when n <= 0.
	SlotsRelease(ctx context.Context, key, owner string, n int) error
}
