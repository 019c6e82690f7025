package sdk

import "encoding/json"

// Previewer is implemented by a Sender that can show what an item becomes
// without sending it; POST /v1/templates/preview uses it. It is optional:
// the host checks for it with a type assertion.
type Previewer interface {
	// Preview renders one item's data through the compiled template and
	// returns the provider's rendering as a JSON object (for an email:
	// from, to, subject, html, text; for a webhook: method, url,
	// headers, body). It fails where ValidateItem would, with errors
	// that name the field or variable. It never sends anything.
	Preview(data json.RawMessage) (json.RawMessage, error)
}
