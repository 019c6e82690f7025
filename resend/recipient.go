package resend

import (
	"encoding/json"

	"github.com/batchsender/batchsender/sdk"
)

var _ sdk.Recipienter = (*sender)(nil)

// Recipient implements sdk.Recipienter, so the host skips items addressed
// to suppressed recipients.
func (s *sender) Recipient(data json.RawMessage) (channel, address string, ok bool) {
	return s.tmpl.Recipient(data)
}
