package email

import (
	"encoding/json"
	"strings"
)

// Recipient implements sdk.Recipienter for every email sender built on a
// Compiled template: an item goes to the address in its "to" field, on
// channel "email".
func (c *Compiled) Recipient(data json.RawMessage) (channel, address string, ok bool) {
	return Recipient(data)
}

// Recipient returns the channel "email" and the address of an item's "to"
// field, lower-cased, or ok false when the item has no valid address.
func Recipient(data json.RawMessage) (channel, address string, ok bool) {
	var it struct {
		To string `json:"to"`
	}
	if err := json.Unmarshal(data, &it); err != nil || strings.TrimSpace(it.To) == "" {
		return "", "", false
	}
	a, err := ParseAddress(it.To)
	if err != nil {
		return "", "", false
	}
	return "email", strings.ToLower(a.Address), true
}
