package sdk

import "encoding/json"

// Recipienter is implemented by senders whose items each go to one
// addressable recipient (an email address, a phone number). Before a chunk
// is sent the host looks the recipients up in the project's suppressions
// (unsubscribes, hard bounces, complaints) and ends suppressed items as
// skipped without passing them to Send, so they are neither sent nor billed.
type Recipienter interface {
	// Recipient returns the channel (the module, "email") and the address
	// an item goes to. ok is false when the item has no usable address;
	// such items are sent as usual and fail there if they must. The host
	// normalizes the address (trimmed, lower-case) before matching.
	Recipient(data json.RawMessage) (channel, address string, ok bool)
}
