package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/mail"
	"slices"
	"strings"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/email"
	"github.com/batchsender/batchsender/sdk"
	"github.com/batchsender/batchsender/tmpl"
)

// maxPreviewItems bounds the sample items of one preview.
const maxPreviewItems = 100

// previewRequest is the body of POST /v1/templates/preview.
type previewRequest struct {
	Module     string            `json:"module,omitempty"`
	Provider   string            `json:"provider,omitempty"`
	Connection string            `json:"connection,omitempty"`
	Template   json.RawMessage   `json:"template,omitempty"`
	Items      []json.RawMessage `json:"items"`
}

// Validate checks the request's shape and settles its module.
func (p *previewRequest) Validate() error {
	if p.Provider != "" {
		if _, ok := sdk.Lookup(p.Provider); !ok {
			return batchsender.Errorf(batchsender.EINVALID, "unknown provider %q; registered providers: %s", p.Provider, strings.Join(providerIDs(), ", "))
		}
		mod := sdk.Info{ID: p.Provider}.Module()
		if p.Module != "" && p.Module != mod {
			return batchsender.Errorf(batchsender.EINVALID, "provider %q belongs to module %q, not to module %q", p.Provider, mod, p.Module)
		}
		p.Module = mod
	}
	switch {
	case p.Module == "" && p.Connection == "":
		return batchsender.Errorf(batchsender.EINVALID, "connection, provider or module is required: a connection previews exactly what a batch on it would send")
	case p.Module != "" && !slices.Contains(moduleNames(), p.Module) && modulePreviewers[p.Module] == nil:
		return batchsender.Errorf(batchsender.EINVALID, "unknown module %q; modules: %s", p.Module, strings.Join(moduleNames(), ", "))
	case !isNull(p.Template) && !isJSONObject(p.Template):
		return batchsender.Errorf(batchsender.EINVALID, "template must be a JSON object")
	case len(p.Items) == 0:
		return batchsender.Errorf(batchsender.EINVALID, "items is required: at least one sample item to render")
	case len(p.Items) > maxPreviewItems:
		return batchsender.Errorf(batchsender.ETOOLARGE, "items holds %d sample items, more than the %d a preview renders", len(p.Items), maxPreviewItems)
	}
	if isNull(p.Template) {
		p.Template = nil
	}
	for i, it := range p.Items {
		if !isJSONObject(it) {
			return batchsender.Errorf(batchsender.EINVALID, "items[%d]: must be a JSON object", i)
		}
	}
	return nil
}

// previewResult is one sample item's rendering or the reason it has none.
type previewResult struct {
	Index    int             `json:"index"`
	OK       bool            `json:"ok"`
	Rendered json.RawMessage `json:"rendered,omitempty"`
	Error    string          `json:"error,omitempty"`
	// Variable is the template variable the item lacks, when that is
	// the problem.
	Variable string `json:"variable,omitempty"`
}

type previewResponse struct {
	Module     string          `json:"module"`
	Provider   string          `json:"provider,omitempty"`
	Connection string          `json:"connection,omitempty"`
	Results    []previewResult `json:"results"`
}

// modulePreviewers render templates of modules whose rendering does not
// depend on the provider, so they preview without a connection. Email is
// one: every email provider renders through package email.
var modulePreviewers = map[string]func(template json.RawMessage) (sdk.Previewer, error){
	"email": compileEmailPreview,
}

func (s *server) handleTemplatePreview() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, err := decode[previewRequest](w, r, s.MaxBodyBytes)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		out := previewResponse{Module: req.Module, Provider: req.Provider}
		var pv sdk.Previewer
		if req.Connection != "" {
			conn, sender, err := s.compile(r, req.Connection, req.Template)
			if err != nil {
				s.writeError(w, r, err)
				return
			}
			switch {
			case req.Module != "" && conn.Module() != req.Module:
				s.writeError(w, r, batchsender.Errorf(batchsender.EINVALID,
					"connection %q belongs to module %q (provider %s), not to module %q", req.Connection, conn.Module(), conn.Provider, req.Module))
				return
			case req.Provider != "" && conn.Provider != req.Provider:
				s.writeError(w, r, batchsender.Errorf(batchsender.EINVALID,
					"connection %q uses provider %s, not %s", req.Connection, conn.Provider, req.Provider))
				return
			}
			out.Module, out.Provider, out.Connection = conn.Module(), conn.Provider, conn.ID
			pv, _ = sender.(sdk.Previewer)
		}
		if pv == nil {
			compile := modulePreviewers[out.Module]
			if compile == nil {
				what := fmt.Sprintf("module %q previews only through a connection: give \"connection\"", out.Module)
				if req.Connection != "" {
					what = fmt.Sprintf("provider %s cannot preview templates", out.Provider)
				}
				s.writeError(w, r, batchsender.Errorf(batchsender.EINVALID, "%s", what))
				return
			}
			if pv, err = compile(req.Template); err != nil {
				s.writeError(w, r, batchsender.Errorf(batchsender.EINVALID, "template: %v", err))
				return
			}
		}
		out.Results = make([]previewResult, len(req.Items))
		for i, it := range req.Items {
			res := previewResult{Index: i}
			rendered, err := pv.Preview(it)
			if err != nil {
				res.Error = fmt.Sprintf("items[%d]: %v", i, err)
				res.Variable, _ = tmpl.IsMissingVariable(err)
			} else {
				res.OK, res.Rendered = true, rendered
			}
			out.Results[i] = res
		}
		s.encode(w, r, http.StatusOK, out)
	})
}

// emailPreview renders email templates the way every email provider does.
type emailPreview struct{ c *email.Compiled }

// previewUnsubscribeURL stands for the signed per-item link in previews.
const previewUnsubscribeURL = "https://unsubscribe.invalid/u/preview"

func compileEmailPreview(template json.RawMessage) (sdk.Previewer, error) {
	if template == nil {
		return nil, errors.New("the email module needs a template with from, subject and html or text")
	}
	c, err := email.Compile(template, email.Options{
		// Set so that {{ unsubscribe_url }} renders; Preview puts a
		// placeholder in its place.
		UnsubscribeURL: func(string, string) string { return previewUnsubscribeURL },
	})
	if err != nil {
		return nil, err
	}
	return emailPreview{c}, nil
}

// emailView is a rendered email as the preview shows it.
type emailView struct {
	From            string            `json:"from"`
	To              []string          `json:"to"`
	ReplyTo         []string          `json:"reply_to,omitempty"`
	Subject         string            `json:"subject"`
	HTML            string            `json:"html,omitempty"`
	Text            string            `json:"text"`
	Headers         map[string]string `json:"headers,omitempty"`
	MessageID       string            `json:"message_id"`
	ListUnsubscribe string            `json:"list_unsubscribe,omitempty"`
	Attachments     []attachmentView  `json:"attachments,omitempty"`
}

type attachmentView struct {
	Filename    string `json:"filename"`
	ContentType string `json:"content_type,omitempty"`
	Size        int    `json:"size"`
}

// Preview implements sdk.Previewer.
func (e emailPreview) Preview(data json.RawMessage) (json.RawMessage, error) {
	m, err := e.c.Preview(data)
	if err != nil {
		return nil, err
	}
	v := emailView{
		From: addrText(m.From), Subject: m.Subject, HTML: m.HTML, Text: m.Text,
		MessageID: m.MessageID, ListUnsubscribe: m.ListUnsubscribe,
	}
	if v.Text == "" {
		// What the message carries as its text part.
		v.Text = email.HTMLToText(m.HTML)
	}
	for _, a := range m.To {
		v.To = append(v.To, addrText(a))
	}
	for _, a := range m.ReplyTo {
		v.ReplyTo = append(v.ReplyTo, addrText(a))
	}
	if len(m.Headers) > 0 {
		v.Headers = make(map[string]string, len(m.Headers))
		for _, h := range m.Headers {
			v.Headers[h.Name] = h.Value
		}
	}
	for _, a := range m.Attachments {
		v.Attachments = append(v.Attachments, attachmentView{Filename: a.Filename, ContentType: a.ContentType, Size: len(a.Content)})
	}
	return marshalUnescaped(v)
}

// addrText writes an address for people: "Name <addr>" without the
// RFC 2047 encoding the message itself uses.
func addrText(a mail.Address) string {
	if a.Name == "" {
		return a.Address
	}
	return a.Name + " <" + a.Address + ">"
}

// marshalUnescaped encodes v as JSON without escaping <, > and &, so a
// rendered HTML body reads as written.
func marshalUnescaped(v any) (json.RawMessage, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
