package webhook

// JSON Schema documents returned by Info. The provider's own validation is
// the authority; these describe it for the API, the UI and generated docs.

const configSchema = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "webhook.http connection config",
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "timeout": {"type": "string", "description": "Per-request timeout as a Go duration, e.g. \"10s\"; more than 0s, at most 5m. A request may run up to 100ms longer (requests starting within 100ms share one timer).", "default": "10s"},
    "max_per_host": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 64, "description": "Most requests in flight to one destination host."},
    "rate_per_second": {"type": "number", "minimum": 0, "maximum": 1000000, "default": 0, "description": "Requests per second for the connection; 0 is unlimited."},
    "concurrency": {"type": "integer", "minimum": 0, "maximum": 10000, "default": 0, "description": "Requests in flight for the connection; 0 leaves it to the engine (default 128)."},
    "user_agent": {"type": "string", "maxLength": 256, "description": "User-Agent header; default BatchSender-Webhooks/1.0."}
  }
}`

const secretsSchema = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "webhook.http connection secrets",
  "type": "object",
  "additionalProperties": false,
  "required": ["signing_secret"],
  "properties": {
    "signing_secret": {"type": "string", "pattern": "^(whsec_)?[A-Za-z0-9+/]+={0,2}$", "description": "Standard Webhooks secret: \"whsec_\" followed by base64 of 24 to 64 random bytes.", "writeOnly": true}
  }
}`

const itemSchema = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "webhook.http item (the batch template gives defaults for every field)",
  "type": "object",
  "additionalProperties": false,
  "required": ["url"],
  "properties": {
    "url": {"type": "string", "format": "uri", "pattern": "^[hH][tT][tT][pP][sS]?://", "description": "Destination, http or https. Internal addresses and localhost are refused unless the operator allows private networks."},
    "method": {"type": "string", "enum": ["POST", "PUT", "PATCH", "DELETE", "GET"], "default": "POST"},
    "headers": {"type": "object", "maxProperties": 64, "additionalProperties": {"type": "string", "maxLength": 8192}, "description": "Extra request headers, merged over the template's (the item wins). Host, Content-Length, hop-by-hop and webhook-* headers are refused."},
    "payload": {"description": "Any JSON value, sent as the request body byte for byte with Content-Type application/json."}
  }
}`
