package remote

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
)

// JSON Schema documents returned by Info.

const configSchema = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "remote.http connection config",
  "type": "object",
  "additionalProperties": false,
  "required": ["url"],
  "properties": {
    "url": {"type": "string", "format": "uri", "description": "The module's base URL; /info, /validate and /send are appended. Loopback and private addresses need BATCHSENDER_ALLOW_PRIVATE_NETWORKS=true."},
    "timeout": {"type": "string", "default": "10s", "description": "Per-call timeout as a Go duration; more than 0s, at most 5m."},
    "max_chunk": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100, "description": "Most items per /send call; the module's /info max_chunk lowers it."},
    "rate_per_second": {"type": "number", "minimum": 0, "default": 0, "description": "Calls per second to the module; 0 is unlimited."},
    "concurrency": {"type": "integer", "minimum": 0, "maximum": 10000, "default": 0, "description": "Calls in flight to the module; 0 leaves it to the engine (default 8)."}
  }
}`

const secretsSchema = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "remote.http connection secrets",
  "type": "object",
  "additionalProperties": false,
  "required": ["signing_secret"],
  "properties": {
    "signing_secret": {"type": "string", "pattern": "^(whsec_)?[A-Za-z0-9+/]+={0,2}$", "description": "Standard Webhooks secret the module verifies every request with: \"whsec_\" + base64 of 24 to 64 random bytes.", "writeOnly": true}
  }
}`

const itemSchema = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "remote.http item: a JSON object the remote module defines (its GET /info item_schema)",
  "type": "object"
}`

// itemChecks is the part of a module's item_schema checked locally.
type itemChecks struct {
	required []string
	types    map[string][]string
}

// parseItemSchema reads the top-level "required" and properties' "type".
func parseItemSchema(raw json.RawMessage) (itemChecks, error) {
	var c itemChecks
	if len(raw) == 0 || string(raw) == "null" {
		return c, nil
	}
	var s struct {
		Type       any                        `json:"type"`
		Required   []string                   `json:"required"`
		Properties map[string]json.RawMessage `json:"properties"`
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return c, errors.New("not a JSON Schema object")
	}
	if s.Type != nil && s.Type != "object" {
		return c, fmt.Errorf("type %v; an item is an object", s.Type)
	}
	c.required = s.Required
	c.types = map[string][]string{}
	for name, prop := range s.Properties {
		var p struct {
			Type json.RawMessage `json:"type"`
		}
		if json.Unmarshal(prop, &p) != nil || len(p.Type) == 0 {
			continue
		}
		var one string
		var many []string
		if json.Unmarshal(p.Type, &one) == nil {
			many = []string{one}
		} else if json.Unmarshal(p.Type, &many) != nil {
			return c, fmt.Errorf("properties.%s.type is neither a string nor a list", name)
		}
		c.types[name] = many
	}
	return c, nil
}

// check applies the checks to an item, naming the first field at fault
// (fields in sorted order, so the message is stable).
func (c itemChecks) check(obj map[string]json.RawMessage) error {
	for _, name := range c.required {
		if v, ok := obj[name]; !ok || string(v) == "null" {
			return fmt.Errorf("%s: required", name)
		}
	}
	names := make([]string, 0, len(c.types))
	for name := range c.types {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		v, ok := obj[name]
		if !ok {
			continue
		}
		got := jsonType(v)
		okType := false
		for _, want := range c.types[name] {
			if want == got || want == "number" && got == "integer" {
				okType = true
			}
		}
		if !okType {
			return fmt.Errorf("%s: must be of type %v, got %s", name, c.types[name], got)
		}
	}
	return nil
}

// jsonType names the JSON Schema type of a value.
func jsonType(v json.RawMessage) string {
	if len(v) == 0 {
		return "null"
	}
	switch v[0] {
	case '"':
		return "string"
	case '{':
		return "object"
	case '[':
		return "array"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	}
	var f float64
	if json.Unmarshal(v, &f) == nil && f == float64(int64(f)) {
		return "integer"
	}
	return "number"
}
