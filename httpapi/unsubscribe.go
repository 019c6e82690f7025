package httpapi

import (
	"bytes"
	"html/template"
	"io"
	"net/http"
	"strconv"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/unsubscribe"
)

// maxUnsubscribeBody bounds the one-click POST body, which is
// "List-Unsubscribe=One-Click" and nothing else.
const maxUnsubscribeBody = 4 << 10

// unsubscribePage is what a person who opens the link sees. GET never
// unsubscribes: mail scanners and link previewers fetch every link, so only
// the button's POST (or the mailbox provider's RFC 8058 one-click POST)
// does.
var unsubscribePage = template.Must(template.New("unsubscribe").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>Unsubscribe</title>
<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;line-height:1.5}button{font-size:1rem;padding:.5rem 1.25rem}</style>
</head><body>
{{if .Done}}<h1>You are unsubscribed</h1>
<p>{{.Address}} will get no more of these messages.</p>
{{else}}<h1>Unsubscribe</h1>
<p>Stop sending these messages to {{.Address}}?</p>
<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click"><button type="submit">Unsubscribe</button></form>
{{end}}</body></html>
`))

// unsubscribeToken verifies the {token} of a /u/ request. Every failure is
// the same 404, so the answer tells a prober nothing.
func (s *server) unsubscribeToken(r *http.Request) (unsubscribe.Token, error) {
	if s.Unsubscribe == nil {
		return unsubscribe.Token{}, batchsender.Errorf(batchsender.ENOTFOUND, "unsubscribe link not found")
	}
	t, err := s.Unsubscribe.Verify(r.PathValue("token"))
	if err != nil {
		return unsubscribe.Token{}, batchsender.Errorf(batchsender.ENOTFOUND, "unsubscribe link not found")
	}
	return t, nil
}

func (s *server) handleUnsubscribePage() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t, err := s.unsubscribeToken(r)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		s.writeUnsubscribePage(w, r, t, false)
	})
}

// handleUnsubscribe is the RFC 8058 one-click endpoint and the page's
// button: it suppresses the token's address in its project and channel.
// Unsubscribing twice is as good as once.
func (s *server) handleUnsubscribe() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t, err := s.unsubscribeToken(r)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		// The body says List-Unsubscribe=One-Click; it is read (bounded)
		// but not required, since the signed token is the whole credential.
		_, _ = io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, maxUnsubscribeBody))
		_, err = s.Store.SuppressionsAdd(r.Context(), t.ProjectID, []batchsender.Suppression{{
			Channel: t.Channel, Address: t.Address, Reason: batchsender.ReasonUnsubscribe, Source: "unsubscribe link",
		}})
		if batchsender.IsNotFound(err) {
			err = batchsender.Errorf(batchsender.ENOTFOUND, "unsubscribe link not found") // the project is gone
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		s.writeUnsubscribePage(w, r, t, true)
	})
}

func (s *server) writeUnsubscribePage(w http.ResponseWriter, r *http.Request, t unsubscribe.Token, done bool) {
	var b bytes.Buffer
	if err := unsubscribePage.Execute(&b, struct {
		Address string
		Done    bool
	}{t.Address, done}); err != nil {
		s.writeError(w, r, err)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(b.Len()))
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer") // the URL is a credential
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b.Bytes())
}
