package providerfakes

import (
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/batchsender/batchsender/sdk/sdktest"
)

// SendGrid fakes SendGrid's v3 Mail Send: POST /v3/mail/send with
// "Authorization: Bearer <key>", a JSON body, 202 Accepted with an empty
// body and X-Message-Id on success, X-RateLimit-Limit/-Remaining/-Reset on
// every answer, and 400 {"errors":[{message,field,help}]} for what the real
// API refuses: no personalizations or more than 1,000, more than 1,000
// recipients, a personalization without "to", invalid addresses, an address
// twice in one request, no subject, no content or text/plain not first,
// substitutions over 10,000 bytes per personalization, reserved headers.
// 401 for missing or wrong keys, 429 {"errors":[{"field":null,"message":
// "too many requests"}]} when rate limited.
//
// Accepted messages are recorded after applying each personalization's
// substitutions to the content. Call.Keys are the personalizations'
// custom_args.batchsender_item_id; a key in RejectKeys makes the whole call
// fail with 400, as SendGrid has no per-personalization outcome.
type SendGrid struct {
	core
	key string
}

// NewSendGrid returns a SendGrid fake accepting the API key.
func NewSendGrid(key string) *SendGrid { return &SendGrid{core: newCore(), key: key} }

type sgAddress struct {
	Email string `json:"email"`
	Name  string `json:"name"`
}

type sgPersonalization struct {
	To            []sgAddress       `json:"to"`
	Cc            []sgAddress       `json:"cc"`
	Bcc           []sgAddress       `json:"bcc"`
	Subject       string            `json:"subject"`
	Headers       map[string]string `json:"headers"`
	Substitutions map[string]string `json:"substitutions"`
	CustomArgs    map[string]string `json:"custom_args"`
}

type sgMail struct {
	Personalizations []sgPersonalization `json:"personalizations"`
	From             *sgAddress          `json:"from"`
	ReplyTo          *sgAddress          `json:"reply_to"`
	Subject          string              `json:"subject"`
	Content          []struct {
		Type  string `json:"type"`
		Value string `json:"value"`
	} `json:"content"`
	TemplateID  string `json:"template_id"`
	Attachments []struct {
		Content  []byte `json:"content"`
		Filename string `json:"filename"`
	} `json:"attachments"`
	Headers map[string]string `json:"headers"`
}

var sgReserved = map[string]bool{"X-Sg-Id": true, "X-Sg-Eid": true, "Received": true, "Dkim-Signature": true,
	"Content-Type": true, "Content-Transfer-Encoding": true, "To": true, "From": true, "Subject": true,
	"Reply-To": true, "Cc": true, "Bcc": true}

func sgError(w http.ResponseWriter, status int, field any, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]any{{"message": msg, "field": field, "help": nil}}})
}

// ServeHTTP implements http.Handler.
func (f *SendGrid) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-RateLimit-Limit", "10000")
	w.Header().Set("X-RateLimit-Remaining", "9999")
	w.Header().Set("X-RateLimit-Reset", strconv.FormatInt(time.Now().Add(time.Second).Unix(), 10))
	if r.URL.Path != "/v3/mail/send" {
		sgError(w, http.StatusNotFound, nil, "not found")
		return
	}
	if r.Method != http.MethodPost {
		sgError(w, http.StatusMethodNotAllowed, nil, "method not allowed")
		return
	}
	switch auth := r.Header.Get("Authorization"); {
	case auth == "":
		sgError(w, http.StatusUnauthorized, nil, "authorization required")
		return
	case auth != "Bearer "+f.key:
		sgError(w, http.StatusUnauthorized, nil, "The provided authorization grant is invalid, expired, or revoked")
		return
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		sgError(w, http.StatusUnsupportedMediaType, nil, "Content-Type should be application/json.")
		return
	}
	raw, err := io.ReadAll(io.LimitReader(r.Body, 31<<20))
	if err != nil || len(raw) > 30<<20 {
		sgError(w, http.StatusRequestEntityTooLarge, nil, "The JSON payload you have included in your request is too large.")
		return
	}
	var m sgMail
	if err := json.Unmarshal(raw, &m); err != nil {
		sgError(w, http.StatusBadRequest, nil, "Bad Request")
		return
	}
	call := sdktest.Call{Items: len(m.Personalizations)}
	for _, p := range m.Personalizations {
		call.Keys = append(call.Keys, p.CustomArgs["batchsender_item_id"])
	}
	if field, msg := f.check(m); msg != "" {
		sgError(w, http.StatusBadRequest, field, msg)
		return
	}
	b, ok := f.begin(r, call)
	if !ok {
		return
	}
	switch b.Mode {
	case sdktest.RateLimit:
		w.Header().Set("X-RateLimit-Remaining", "0")
		w.Header().Set("X-RateLimit-Reset", strconv.FormatInt(time.Now().Add(b.RetryAfter).Add(time.Second-1).Unix(), 10))
		sgError(w, http.StatusTooManyRequests, nil, "too many requests")
		return
	case sdktest.ServerError:
		sgError(w, http.StatusServiceUnavailable, nil, "Service Unavailable")
		return
	case sdktest.Reject:
		sgError(w, http.StatusForbidden, "from", "The from address does not match a verified Sender Identity. Mail cannot be sent until this error is resolved.")
		return
	}
	for i, k := range call.Keys {
		if rejected(b, k) {
			sgError(w, http.StatusBadRequest, fmt.Sprintf("personalizations.%d.to.0.email", i), "Does not contain a valid address.")
			return
		}
	}
	id := fmt.Sprintf("sg%020d", f.nextID())
	for _, p := range m.Personalizations {
		msg := Message{From: m.From.Email, Subject: p.Subject, Headers: map[string]string{},
			Key: p.CustomArgs["batchsender_item_id"], MessageID: id}
		if msg.Subject == "" {
			msg.Subject = m.Subject
		}
		if m.ReplyTo != nil {
			msg.ReplyTo = m.ReplyTo.Email
		}
		for _, a := range p.To {
			msg.To = append(msg.To, strings.ToLower(a.Email))
		}
		for _, c := range m.Content {
			v := c.Value
			for tag, val := range p.Substitutions {
				v = strings.ReplaceAll(v, tag, val)
			}
			switch c.Type {
			case "text/plain":
				msg.Text = v
			case "text/html":
				msg.HTML = v
			}
		}
		for k, v := range m.Headers {
			msg.Headers[http.CanonicalHeaderKey(k)] = v
		}
		for k, v := range p.Headers {
			msg.Headers[http.CanonicalHeaderKey(k)] = v
		}
		for _, a := range m.Attachments {
			msg.Attachments = append(msg.Attachments, a.Filename)
		}
		f.accept(msg)
	}
	w.Header().Set("X-Message-Id", id)
	w.WriteHeader(http.StatusAccepted)
}

// check validates a Mail Send body as SendGrid does.
func (f *SendGrid) check(m sgMail) (field any, msg string) {
	n := len(m.Personalizations)
	if n == 0 {
		return "personalizations", "The personalizations field is required and must have at least one personalization."
	}
	if n > 1000 {
		return "personalizations", "The personalizations field cannot have more than 1000 items."
	}
	if m.From == nil || m.From.Email == "" {
		return "from.email", "The from object must be provided for every email send. It is an object that requires the email parameter, but may also contain a name parameter."
	}
	if !validAddress(m.From.Email) {
		return "from.email", "The from email does not contain a valid address."
	}
	seen := map[string]string{}
	total := 0
	for i, p := range m.Personalizations {
		if len(p.To) == 0 {
			return fmt.Sprintf("personalizations.%d.to", i), "The to array is required for all personalization objects, and must have at least one email object with a valid email address."
		}
		for kind, list := range map[string][]sgAddress{"to": p.To, "cc": p.Cc, "bcc": p.Bcc} {
			for j, a := range list {
				field := fmt.Sprintf("personalizations.%d.%s.%d.email", i, kind, j)
				if !validAddress(a.Email) {
					return field, "Does not contain a valid address."
				}
				addr := strings.ToLower(a.Email)
				if _, dup := seen[addr]; dup {
					return field, fmt.Sprintf("Each email address in the personalization block should be unique between to, cc, and bcc. We found the first duplicate instance of [%s] in the personalizations.%d.%s field.", a.Email, i, kind)
				}
				seen[addr] = field
				total++
			}
		}
		if p.Subject == "" && m.Subject == "" && m.TemplateID == "" {
			return "subject", "The subject is required. You can get around this requirement if you use a template with a subject defined or if every personalization has a subject defined."
		}
		size := 0
		for k, v := range p.Substitutions {
			size += len(k) + len(v)
		}
		if size > 10000 {
			return fmt.Sprintf("personalizations.%d.substitutions", i), "The total size of your substitutions may not exceed 10,000 bytes per personalization object."
		}
		for k := range p.Headers {
			if sgReserved[http.CanonicalHeaderKey(k)] {
				return fmt.Sprintf("personalizations.%d.headers", i), fmt.Sprintf("The %s header is reserved and cannot be set.", k)
			}
		}
	}
	if total > 1000 {
		return "personalizations", "The total number of recipients (to, cc and bcc) may not exceed 1000 per request."
	}
	if m.TemplateID == "" {
		if len(m.Content) == 0 {
			return "content", "Unless a valid template_id is provided, the content parameter is required. There must be at least one defined content block. We typically suggest both text/plain and text/html blocks are included, but only one block is required."
		}
		for i, c := range m.Content {
			if c.Value == "" {
				return fmt.Sprintf("content.%d.value", i), "The content value must be a string at least one character in length."
			}
			if i > 0 && c.Type == "text/plain" {
				return "content", "If present, text/plain content must be first, followed by text/html, followed by any other content."
			}
		}
	}
	return nil, ""
}
