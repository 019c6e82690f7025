package sdk

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"sync"
)

// Registration makes a provider known to the host.
type Registration struct {
	// ID is the provider ID, as Info().ID returns it.
	ID string
	// New returns a fresh, unprovisioned provider.
	New func() Provider
}

var (
	regMu sync.RWMutex
	reg   = map[string]Registration{}
)

// Register adds a provider. It panics on a duplicate or malformed ID, as a
// programming error caught at start.
func Register(r Registration) {
	if r.ID == "" || r.New == nil {
		panic("sdk: Register needs an ID and New")
	}
	if info := r.New().Info(); info.ID != r.ID {
		panic(fmt.Sprintf("sdk: registration %q returns a provider with ID %q", r.ID, info.ID))
	}
	regMu.Lock()
	defer regMu.Unlock()
	if _, dup := reg[r.ID]; dup {
		panic(fmt.Sprintf("sdk: provider %q registered twice", r.ID))
	}
	reg[r.ID] = r
}

// Lookup returns the registration of a provider ID.
func Lookup(id string) (Registration, bool) {
	regMu.RLock()
	defer regMu.RUnlock()
	r, ok := reg[id]
	return r, ok
}

// Registered returns the infos of every registered provider, sorted by ID.
func Registered() []Info {
	regMu.RLock()
	defer regMu.RUnlock()
	out := make([]Info, 0, len(reg))
	for _, r := range reg {
		out = append(out, r.New().Info())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// DecodeStrict decodes a JSON object into v, rejecting unknown fields and
// trailing data. An empty or null input leaves v unchanged.
func DecodeStrict(raw json.RawMessage, v any) error {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("unexpected data after the JSON object")
	}
	return nil
}
