package httpapi

import (
	"encoding/json"
	"errors"
	"io"
	"iter"
	"mime"
	"net/http"
	"net/mail"
	"regexp"
	"strings"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/ingest"
	"github.com/batchsender/batchsender/sdk"
)

// Suppression import and page limits.
const (
	maxSuppressionImport   = 100_000 // rows of one POST /v1/suppressions
	suppressionAddChunk    = 5_000   // rows per store call
	defaultSuppressionPage = 100
	maxSuppressionPage     = 1000
	maxAddressLength       = 320 // RFC 5321's limit on an email address
)

// channelRE is what a channel (a module name) looks like.
var channelRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)

// suppressionRow is one suppression as a client imports it.
type suppressionRow struct {
	Channel string `json:"channel,omitempty"`
	Address string `json:"address"`
	Reason  string `json:"reason,omitempty"`
	Source  string `json:"source,omitempty"`
}

// suppression checks a row and fills its defaults: channel email, reason
// manual, source api.
func (row suppressionRow) suppression() (batchsender.Suppression, error) {
	if row.Channel == "" {
		row.Channel = "email"
	}
	if row.Reason == "" {
		row.Reason = string(batchsender.ReasonManual)
	}
	if row.Source == "" {
		row.Source = "api"
	}
	if err := checkChannel(row.Channel); err != nil {
		return batchsender.Suppression{}, err
	}
	reason, err := batchsender.ParseSuppressionReason(row.Reason)
	if err != nil {
		return batchsender.Suppression{}, err
	}
	addr, err := checkAddress(row.Channel, row.Address)
	if err != nil {
		return batchsender.Suppression{}, err
	}
	if len(row.Source) > 200 {
		return batchsender.Suppression{}, batchsender.Errorf(batchsender.EINVALID, "source is longer than 200 characters")
	}
	return batchsender.Suppression{Channel: row.Channel, Address: addr, Reason: reason, Source: row.Source}, nil
}

func checkChannel(ch string) error {
	if !channelRE.MatchString(ch) {
		return batchsender.Errorf(batchsender.EINVALID, "channel %q is not a module name such as \"email\"", ch)
	}
	return nil
}

// checkAddress normalizes an address; email addresses must parse as one
// bare address.
func checkAddress(channel, address string) (string, error) {
	a := batchsender.NormalizeAddress(address)
	switch {
	case a == "":
		return "", batchsender.Errorf(batchsender.EINVALID, "address is required")
	case len(a) > maxAddressLength:
		return "", batchsender.Errorf(batchsender.EINVALID, "address is longer than %d characters", maxAddressLength)
	}
	if channel == "email" {
		p, err := mail.ParseAddress(a)
		if err != nil || p.Address != a {
			return "", batchsender.Errorf(batchsender.EINVALID, "address %q is not an email address (give the bare address, without a name)", address)
		}
	}
	return a, nil
}

// suppressionResponse is a suppression as the API shows it.
type suppressionResponse = batchsender.Suppression

func (s *server) handleSuppressionList() http.Handler {
	type response struct {
		Data       []suppressionResponse `json:"data"`
		NextCursor string                `json:"next_cursor,omitempty"`
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		limit, err := pageLimit(r, defaultSuppressionPage, maxSuppressionPage)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		q := r.URL.Query()
		channel := q.Get("channel")
		if channel == "" {
			channel = "email"
		}
		if err := checkChannel(channel); err != nil {
			s.writeError(w, r, err)
			return
		}
		cursor := q.Get("cursor")
		if len(cursor) > maxAddressLength {
			s.writeError(w, r, batchsender.Errorf(batchsender.EINVALID, "cursor is not one this API returned"))
			return
		}
		page, err := s.Store.SuppressionList(r.Context(), batchsender.SuppressionListParams{
			ProjectID: projectID(r), Channel: channel, Cursor: cursor, Limit: limit + 1,
		})
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		var out response
		if len(page) > limit {
			page = page[:limit]
			out.NextCursor = page[limit-1].Address
		}
		out.Data = page
		s.encode(w, r, http.StatusOK, out)
	})
}

// handleSuppressionImport adds suppressions from a JSON array, NDJSON or
// CSV (columns address, channel, reason, source). Every row is checked
// before any is stored, so a bad row (named by its number) adds nothing.
func (s *server) handleSuppressionImport() http.Handler {
	type response struct {
		Received int `json:"received"`
		Added    int `json:"added"`
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ct := r.Header.Get("Content-Type")
		mt, _, err := mime.ParseMediaType(ct)
		if ct == "" {
			mt, err = "application/json", nil
		}
		if err != nil || (mt != "application/json" && mt != mediaNDJSON && mt != mediaCSV) {
			s.writeError(w, r, batchsender.Errorf(codeUnsupportedMediaType,
				"Content-Type %q is not accepted here; send a JSON array (application/json), %s or %s", ct, mediaNDJSON, mediaCSV))
			return
		}
		limit := s.MaxBodyBytes
		if mt != "application/json" {
			limit = s.MaxUploadBytes
		}
		if r.ContentLength > limit {
			s.writeError(w, r, tooLarge(limit))
			return
		}
		body := &limitedBody{r: http.MaxBytesReader(w, r.Body, limit)}
		var rows iter.Seq2[batchsender.NewItem, error]
		switch mt {
		case mediaNDJSON:
			rows = ingest.NDJSON(body, maxUploadLine)
		case mediaCSV:
			rows = ingest.CSV(body)
		default:
			rows = jsonArray(body)
		}
		var sups []batchsender.Suppression
		n := 0
		for it, err := range rows {
			if body.tooLarge != nil {
				s.writeError(w, r, tooLarge(body.tooLarge.Limit))
				return
			}
			if err != nil {
				s.writeError(w, r, err)
				return
			}
			n++
			if n > maxSuppressionImport {
				s.writeError(w, r, batchsender.Errorf(batchsender.ETOOLARGE, "one import holds at most %d suppressions; split the list", maxSuppressionImport))
				return
			}
			var row suppressionRow
			if err := sdk.DecodeStrict(it.Data, &row); err != nil {
				s.writeError(w, r, batchsender.Errorf(batchsender.EINVALID, "row %d: %v", n, err))
				return
			}
			sup, err := row.suppression()
			if err != nil {
				s.writeError(w, r, batchsender.Errorf(batchsender.EINVALID, "row %d: %s", n, batchsender.ErrorMessage(err)))
				return
			}
			sups = append(sups, sup)
		}
		if body.tooLarge != nil {
			s.writeError(w, r, tooLarge(body.tooLarge.Limit))
			return
		}
		if n == 0 {
			s.writeError(w, r, batchsender.Errorf(batchsender.EINVALID, "the request holds no suppressions"))
			return
		}
		out := response{Received: n}
		for len(sups) > 0 {
			part := sups[:min(len(sups), suppressionAddChunk)]
			sups = sups[len(part):]
			added, err := s.Store.SuppressionsAdd(r.Context(), projectID(r), part)
			if err != nil {
				s.writeError(w, r, err)
				return
			}
			out.Added += added
		}
		s.encode(w, r, http.StatusOK, out)
	})
}

// jsonArray yields the elements of a JSON array one at a time, in bounded
// memory, each checked to be an object.
func jsonArray(rd io.Reader) iter.Seq2[batchsender.NewItem, error] {
	return func(yield func(batchsender.NewItem, error) bool) {
		dec := json.NewDecoder(rd)
		if t, err := dec.Token(); err != nil || t != json.Delim('[') {
			if err != nil && !errors.Is(err, io.EOF) {
				yield(batchsender.NewItem{}, decodeError(err))
				return
			}
			yield(batchsender.NewItem{}, batchsender.Errorf(batchsender.EINVALID, "the body must be a JSON array of suppressions"))
			return
		}
		for n := 1; dec.More(); n++ {
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				yield(batchsender.NewItem{}, batchsender.Errorf(batchsender.EINVALID, "row %d: %s", n, batchsender.ErrorMessage(decodeError(err))))
				return
			}
			if !isJSONObject(raw) {
				yield(batchsender.NewItem{}, batchsender.Errorf(batchsender.EINVALID, "row %d: must be a JSON object", n))
				return
			}
			if !yield(batchsender.NewItem{Data: raw}, nil) {
				return
			}
		}
		if _, err := dec.Token(); err != nil {
			yield(batchsender.NewItem{}, decodeError(err))
			return
		}
		if _, err := dec.Token(); !errors.Is(err, io.EOF) {
			yield(batchsender.NewItem{}, batchsender.Errorf(batchsender.EINVALID, "request body holds more than one JSON value"))
		}
	}
}

func (s *server) handleSuppressionDelete() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		channel, address := r.PathValue("channel"), r.PathValue("address")
		if err := checkChannel(channel); err != nil {
			s.writeError(w, r, err)
			return
		}
		if err := s.Store.SuppressionDelete(r.Context(), projectID(r), channel, strings.TrimSpace(address)); err != nil {
			s.writeError(w, r, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}
