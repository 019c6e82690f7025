package tmpl

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
)

// DecodeVars decodes an item's JSON object into template variables. Numbers
// become int64 when they are integers that fit (so that 12345678901234567
// prints as written, not as 1.2345678901234568e+16) and float64 otherwise.
func DecodeVars(raw json.RawMessage) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("decoding item: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("decoding item: unexpected data after the JSON object")
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("decoding item: not a JSON object")
	}
	return fixNumbers(m).(map[string]any), nil
}

func fixNumbers(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			v[k] = fixNumbers(x)
		}
		return v
	case []any:
		for i, x := range v {
			v[i] = fixNumbers(x)
		}
		return v
	case json.Number:
		if i, err := strconv.ParseInt(string(v), 10, 64); err == nil {
			return i
		}
		f, _ := strconv.ParseFloat(string(v), 64)
		return f
	}
	return v
}
