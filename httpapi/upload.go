package httpapi

import (
	"errors"
	"io"
	"iter"
	"mime"
	"net/http"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/ingest"
	"github.com/batchsender/batchsender/sdk"
)

// Media types of item uploads.
const (
	mediaNDJSON = "application/x-ndjson"
	mediaCSV    = "text/csv"
)

// handleItemsUpload streams an NDJSON or CSV body into a draft batch. The
// body is never held whole: rows flow from the reader through the
// provider's ValidateItem into the store's transaction, and the first bad
// row rolls the whole upload back.
func (s *server) handleItemsUpload() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pid, id := projectID(r), r.PathValue("id")
		ct := r.Header.Get("Content-Type")
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != mediaNDJSON && mt != mediaCSV) {
			s.writeError(w, r, batchsender.Errorf(codeUnsupportedMediaType,
				"Content-Type %q is not accepted here; upload items as %s (one JSON object per line) or %s (a header row, then one item per row)",
				ct, mediaNDJSON, mediaCSV))
			return
		}
		if r.ContentLength > s.MaxUploadBytes {
			s.writeError(w, r, tooLarge(s.MaxUploadBytes))
			return
		}
		b, err := s.Store.BatchGetByID(r.Context(), pid, id)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if b.Status != batchsender.BatchDraft {
			s.writeError(w, r, batchsender.Errorf(batchsender.ECONFLICT,
				"items can only be uploaded to a draft batch; batch %s is %s", b.ID, b.Status))
			return
		}
		_, sender, err := s.compile(r, b.ConnectionID, b.Template)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		body := &limitedBody{r: http.MaxBytesReader(w, r.Body, s.MaxUploadBytes)}
		var rows iter.Seq2[batchsender.NewItem, error]
		if mt == mediaNDJSON {
			rows = ingest.NDJSON(body, maxUploadLine)
		} else {
			rows = ingest.CSV(body)
		}
		b, err = s.Store.BatchItemsAppend(r.Context(), batchsender.BatchItemsAppendParams{
			ProjectID: pid, BatchID: id, Items: validateRows(rows, sender),
		})
		if body.tooLarge != nil {
			s.writeError(w, r, tooLarge(body.tooLarge.Limit))
			return
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		s.encode(w, r, http.StatusOK, toBatchResponse(b))
	})
}

// validateRows passes rows on after the provider accepted each, and ends
// with an error naming the row at the first one it refuses. An upload
// without a single row is refused too: it is almost always a mistake.
func validateRows(rows iter.Seq2[batchsender.NewItem, error], sender sdk.Sender) iter.Seq2[batchsender.NewItem, error] {
	return func(yield func(batchsender.NewItem, error) bool) {
		n := 0
		for it, err := range rows {
			if err != nil {
				yield(batchsender.NewItem{}, err)
				return
			}
			n++
			if err := sender.ValidateItem(it.Data); err != nil {
				yield(batchsender.NewItem{}, batchsender.Errorf(batchsender.EINVALID, "row %d: %v", n, err))
				return
			}
			if !yield(it, nil) {
				return
			}
		}
		if n == 0 {
			yield(batchsender.NewItem{}, batchsender.Errorf(batchsender.EINVALID, "the upload holds no items"))
		}
	}
}

// limitedBody remembers that the upload limit was hit, whatever the reader
// on top makes of the error, so the answer is 413 rather than a row error.
type limitedBody struct {
	r        io.Reader
	tooLarge *http.MaxBytesError
}

func (b *limitedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if mbe, ok := errors.AsType[*http.MaxBytesError](err); ok {
		b.tooLarge = mbe
	}
	return n, err
}
