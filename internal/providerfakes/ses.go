package providerfakes

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/mail"
	"regexp"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/batchsender/batchsender/sdk/sdktest"
)

// SES fakes Amazon SES v2's sending operations, REST-JSON:
// POST /v2/email/outbound-emails (SendEmail: Simple, Raw or inline
// Template content) and POST /v2/email/outbound-bulk-emails
// (SendBulkEmail). Every request must be signed with AWS Signature
// Version 4 for service "ses": the Authorization header must read
// "AWS4-HMAC-SHA256 Credential=<key id>/<yyyymmdd>/<region>/ses/aws4_request,
// SignedHeaders=…, Signature=<64 hex>" with an X-Amz-Date, and the fake
// recomputes the signature with the secret key it was given. Errors are
// the status, an X-Amzn-ErrorType header and {"message":…}: 403
// MissingAuthenticationTokenException / UnrecognizedClientException /
// InvalidSignatureException, 400 BadRequestException (missing fields, bad
// addresses, more than 50 bulk entries or 50 recipients per message), 400
// MessageRejected, 429 TooManyRequestsException ("Maximum sending rate
// exceeded.", and like SES no rate-limit or Retry-After header).
//
// Bulk answers are 200 with a Status per entry, in order. Call.Keys are the
// batchsender_item tags (ReplacementTags, EmailTags); in Accept mode a bulk
// entry whose key is in RejectKeys gets MESSAGE_REJECTED, a single send 400
// MessageRejected. Templates are rendered with {{name}} (HTML-escaped) and
// {{{name}}} (raw) from TemplateData merged with each entry's
// ReplacementTemplateData.
type SES struct {
	core
	keyID, secret, region string
}

// NewSES returns a SES fake for region accepting these credentials.
func NewSES(region, accessKeyID, secretAccessKey string) *SES {
	return &SES{core: newCore(), keyID: accessKeyID, secret: secretAccessKey, region: region}
}

func sesError(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Amzn-ErrorType", typ)
	w.Header().Set("X-Amzn-RequestId", "d5b9f2f6-0000-4000-8000-000000000000")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"message": msg})
}

var authRE = regexp.MustCompile(`^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([a-z0-9-]+)/ses/aws4_request, ?SignedHeaders=([a-z0-9;-]+), ?Signature=([0-9a-f]{64})$`)

// verify checks the SigV4 signature; it returns the error type and message
// to answer, or "".
func (f *SES) verify(r *http.Request, body []byte) (string, string) {
	auth := r.Header.Get("Authorization")
	if auth == "" {
		return "MissingAuthenticationTokenException", "Missing Authentication Token"
	}
	m := authRE.FindStringSubmatch(auth)
	if m == nil {
		return "IncompleteSignatureException", "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters for AWS4-HMAC-SHA256."
	}
	keyID, day, region, signed, sig := m[1], m[2], m[3], m[4], m[5]
	if keyID != f.keyID {
		return "UnrecognizedClientException", "The security token included in the request is invalid."
	}
	if region != f.region {
		return "InvalidSignatureException", fmt.Sprintf("Credential should be scoped to a valid region, not '%s'.", region)
	}
	at, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
	if err != nil || at.Format("20060102") != day {
		return "IncompleteSignatureException", "Date must be in ISO-8601 'basic format' and match the credential scope."
	}
	if d := time.Since(at); d > 5*time.Minute || d < -5*time.Minute {
		return "InvalidSignatureException", "Signature expired: the request time is too far from the server time."
	}
	// Re-sign the same request with the secret and compare.
	req, _ := http.NewRequestWithContext(context.Background(), r.Method, "http://"+r.Host+r.URL.RequestURI(), bytes.NewReader(body))
	req.Host = r.Host
	for _, h := range strings.Split(signed, ";") {
		if h != "host" && h != "content-length" {
			req.Header[http.CanonicalHeaderKey(h)] = r.Header.Values(h)
		}
	}
	sum := sha256.Sum256(body)
	creds := aws.Credentials{AccessKeyID: f.keyID, SecretAccessKey: f.secret, SessionToken: r.Header.Get("X-Amz-Security-Token")}
	if err := v4.NewSigner().SignHTTP(context.Background(), creds, req, hex.EncodeToString(sum[:]), "ses", f.region, at); err != nil {
		return "InvalidSignatureException", "Unable to verify the signature."
	}
	if want := authRE.FindStringSubmatch(req.Header.Get("Authorization")); want == nil || want[5] != sig {
		return "InvalidSignatureException", "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
	}
	return "", ""
}

type sesTag struct {
	Name  string `json:"Name"`
	Value string `json:"Value"`
}

type sesHeader struct {
	Name  string `json:"Name"`
	Value string `json:"Value"`
}

type sesDestination struct {
	ToAddresses  []string `json:"ToAddresses"`
	CcAddresses  []string `json:"CcAddresses"`
	BccAddresses []string `json:"BccAddresses"`
}

type sesTemplate struct {
	TemplateName    string `json:"TemplateName"`
	TemplateArn     string `json:"TemplateArn"`
	TemplateContent *struct {
		Subject string `json:"Subject"`
		HTML    string `json:"Html"`
		Text    string `json:"Text"`
	} `json:"TemplateContent"`
	TemplateData string      `json:"TemplateData"`
	Headers      []sesHeader `json:"Headers"`
}

type sesBulk struct {
	FromEmailAddress string   `json:"FromEmailAddress"`
	ReplyToAddresses []string `json:"ReplyToAddresses"`
	DefaultContent   *struct {
		Template *sesTemplate `json:"Template"`
	} `json:"DefaultContent"`
	DefaultEmailTags []sesTag `json:"DefaultEmailTags"`
	BulkEmailEntries []struct {
		Destination             *sesDestination `json:"Destination"`
		ReplacementTags         []sesTag        `json:"ReplacementTags"`
		ReplacementHeaders      []sesHeader     `json:"ReplacementHeaders"`
		ReplacementEmailContent *struct {
			ReplacementTemplate *struct {
				ReplacementTemplateData string `json:"ReplacementTemplateData"`
			} `json:"ReplacementTemplate"`
		} `json:"ReplacementEmailContent"`
	} `json:"BulkEmailEntries"`
}

type sesSingle struct {
	FromEmailAddress string          `json:"FromEmailAddress"`
	Destination      *sesDestination `json:"Destination"`
	ReplyToAddresses []string        `json:"ReplyToAddresses"`
	EmailTags        []sesTag        `json:"EmailTags"`
	Content          *struct {
		Simple *struct {
			Subject struct {
				Data string `json:"Data"`
			} `json:"Subject"`
			Body struct {
				Text *struct {
					Data string `json:"Data"`
				} `json:"Text"`
				HTML *struct {
					Data string `json:"Data"`
				} `json:"Html"`
			} `json:"Body"`
			Headers []sesHeader `json:"Headers"`
		} `json:"Simple"`
		Raw *struct {
			Data []byte `json:"Data"`
		} `json:"Raw"`
		Template *sesTemplate `json:"Template"`
	} `json:"Content"`
}

func tagOf(tags []sesTag) string {
	for _, t := range tags {
		if t.Name == "batchsender_item" {
			return t.Value
		}
	}
	return ""
}

// sesAddress checks an address as SES does: valid, and 7-bit before the @.
func sesAddress(s string) bool {
	if !validAddress(s) {
		return false
	}
	a, _ := mail.ParseAddress(s)
	local := a.Address[:strings.LastIndexByte(a.Address, '@')]
	for i := 0; i < len(local); i++ {
		if local[i] >= 0x80 {
			return false
		}
	}
	return true
}

func checkDestination(d *sesDestination) string {
	if d == nil {
		return "Destination is required."
	}
	n := len(d.ToAddresses) + len(d.CcAddresses) + len(d.BccAddresses)
	if n == 0 {
		return "Destination must contain at least one recipient."
	}
	if n > 50 {
		return "Recipient count exceeds 50."
	}
	for _, l := range [][]string{d.ToAddresses, d.CcAddresses, d.BccAddresses} {
		for _, a := range l {
			if !sesAddress(a) {
				return "Illegal address: " + a
			}
		}
	}
	return ""
}

// ServeHTTP implements http.Handler.
func (f *SES) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	bulk := r.URL.Path == "/v2/email/outbound-bulk-emails"
	if r.Method != http.MethodPost || (!bulk && r.URL.Path != "/v2/email/outbound-emails") {
		sesError(w, http.StatusNotFound, "UnknownOperationException", "")
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 41<<20))
	if err != nil {
		sesError(w, http.StatusBadRequest, "SerializationException", "Unreadable body.")
		return
	}
	if typ, msg := f.verify(r, body); typ != "" {
		sesError(w, http.StatusForbidden, typ, msg)
		return
	}
	if bulk {
		f.bulk(w, r, body)
	} else {
		f.single(w, r, body)
	}
}

// mode applies a non-Accept behaviour; true means answered.
func (f *SES) mode(w http.ResponseWriter, b sdktest.Behaviour) bool {
	switch b.Mode {
	case sdktest.RateLimit:
		sesError(w, http.StatusTooManyRequests, "TooManyRequestsException", "Maximum sending rate exceeded.")
	case sdktest.ServerError:
		sesError(w, http.StatusInternalServerError, "InternalFailure", "The request processing has failed because of an unknown error, exception or failure.")
	case sdktest.Reject:
		sesError(w, http.StatusBadRequest, "MessageRejected", "Email address is not verified. The following identities failed the check in region "+strings.ToUpper(f.region)+": the sender.")
	default:
		return false
	}
	return true
}

func (f *SES) bulk(w http.ResponseWriter, r *http.Request, body []byte) {
	var in sesBulk
	if err := json.Unmarshal(body, &in); err != nil {
		sesError(w, http.StatusBadRequest, "SerializationException", "Invalid JSON.")
		return
	}
	switch {
	case in.FromEmailAddress == "" || !sesAddress(in.FromEmailAddress):
		sesError(w, http.StatusBadRequest, "BadRequestException", "Missing or invalid FromEmailAddress.")
		return
	case in.DefaultContent == nil || in.DefaultContent.Template == nil ||
		in.DefaultContent.Template.TemplateName == "" && in.DefaultContent.Template.TemplateArn == "" && in.DefaultContent.Template.TemplateContent == nil:
		sesError(w, http.StatusBadRequest, "BadRequestException", "DefaultContent must contain a Template with a TemplateName, TemplateArn or TemplateContent.")
		return
	case len(in.BulkEmailEntries) == 0 || len(in.BulkEmailEntries) > 50:
		sesError(w, http.StatusBadRequest, "BadRequestException", "BulkEmailEntries must contain between 1 and 50 entries.")
		return
	}
	for _, a := range in.ReplyToAddresses {
		if !sesAddress(a) {
			sesError(w, http.StatusBadRequest, "BadRequestException", "Illegal address: "+a)
			return
		}
	}
	for _, e := range in.BulkEmailEntries {
		if msg := checkDestination(e.Destination); msg != "" {
			sesError(w, http.StatusBadRequest, "BadRequestException", msg)
			return
		}
	}
	call := sdktest.Call{Items: len(in.BulkEmailEntries)}
	for _, e := range in.BulkEmailEntries {
		call.Keys = append(call.Keys, tagOf(e.ReplacementTags))
	}
	b, ok := f.begin(r, call)
	if !ok || f.mode(w, b) {
		return
	}
	tpl := in.DefaultContent.Template
	if tpl.TemplateContent == nil {
		// Stored templates are not kept by the fake.
		sesError(w, http.StatusNotFound, "NotFoundException", "Template "+tpl.TemplateName+" does not exist.")
		return
	}
	type result struct {
		Status    string  `json:"Status"`
		Error     *string `json:"Error,omitempty"`
		MessageID *string `json:"MessageId,omitempty"`
	}
	out := make([]result, len(in.BulkEmailEntries))
	for i, e := range in.BulkEmailEntries {
		key := call.Keys[i]
		if rejected(b, key) {
			msg := "Email address is not verified. The following identities failed the check in region " + strings.ToUpper(f.region) + ": " + e.Destination.ToAddresses[0]
			out[i] = result{Status: "MESSAGE_REJECTED", Error: &msg}
			continue
		}
		data := map[string]any{}
		_ = json.Unmarshal([]byte(tpl.TemplateData), &data)
		if e.ReplacementEmailContent != nil && e.ReplacementEmailContent.ReplacementTemplate != nil {
			repl := map[string]any{}
			if err := json.Unmarshal([]byte(e.ReplacementEmailContent.ReplacementTemplate.ReplacementTemplateData), &repl); err != nil {
				msg := "ReplacementTemplateData is not valid JSON."
				out[i] = result{Status: "INVALID_PARAMETER", Error: &msg}
				continue
			}
			for k, v := range repl {
				data[k] = v
			}
		}
		id := fmt.Sprintf("0100018c-0000-0000-0000-%012d-000000", f.nextID())
		m := Message{From: in.FromEmailAddress, Subject: renderHandlebars(tpl.TemplateContent.Subject, data),
			HTML: renderHandlebars(tpl.TemplateContent.HTML, data), Text: renderHandlebars(tpl.TemplateContent.Text, data),
			Headers: map[string]string{}, Key: key, MessageID: id}
		for _, a := range e.Destination.ToAddresses {
			m.To = append(m.To, bareAddress(a))
		}
		if len(in.ReplyToAddresses) > 0 {
			m.ReplyTo = in.ReplyToAddresses[0]
		}
		for _, h := range append(tpl.Headers, e.ReplacementHeaders...) {
			m.Headers[http.CanonicalHeaderKey(h.Name)] = h.Value
		}
		f.accept(m)
		out[i] = result{Status: "SUCCESS", MessageID: &id}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"BulkEmailEntryResults": out})
}

func (f *SES) single(w http.ResponseWriter, r *http.Request, body []byte) {
	var in sesSingle
	if err := json.Unmarshal(body, &in); err != nil {
		sesError(w, http.StatusBadRequest, "SerializationException", "Invalid JSON.")
		return
	}
	kinds := 0
	if in.Content != nil {
		for _, set := range []bool{in.Content.Simple != nil, in.Content.Raw != nil, in.Content.Template != nil} {
			if set {
				kinds++
			}
		}
	}
	if kinds != 1 {
		sesError(w, http.StatusBadRequest, "BadRequestException", "Content must contain exactly one of Simple, Raw or Template.")
		return
	}
	if in.Content.Raw == nil {
		if in.FromEmailAddress == "" || !sesAddress(in.FromEmailAddress) {
			sesError(w, http.StatusBadRequest, "BadRequestException", "Missing or invalid FromEmailAddress.")
			return
		}
		if msg := checkDestination(in.Destination); msg != "" {
			sesError(w, http.StatusBadRequest, "BadRequestException", msg)
			return
		}
	}
	key := tagOf(in.EmailTags)
	b, ok := f.begin(r, sdktest.Call{Items: 1, Keys: []string{key}})
	if !ok || f.mode(w, b) {
		return
	}
	if rejected(b, key) {
		sesError(w, http.StatusBadRequest, "MessageRejected", "Email address is not verified.")
		return
	}
	id := fmt.Sprintf("0100018c-0000-0000-0000-%012d-000000", f.nextID())
	m := Message{From: in.FromEmailAddress, Headers: map[string]string{}, Key: key, MessageID: id}
	if in.Destination != nil {
		for _, a := range in.Destination.ToAddresses {
			m.To = append(m.To, bareAddress(a))
		}
	}
	switch c := in.Content; {
	case c.Simple != nil:
		m.Subject = c.Simple.Subject.Data
		if c.Simple.Body.Text != nil {
			m.Text = c.Simple.Body.Text.Data
		}
		if c.Simple.Body.HTML != nil {
			m.HTML = c.Simple.Body.HTML.Data
		}
		for _, h := range c.Simple.Headers {
			m.Headers[http.CanonicalHeaderKey(h.Name)] = h.Value
		}
	case c.Raw != nil:
		if err := parseRaw(c.Raw.Data, &m); err != nil {
			sesError(w, http.StatusBadRequest, "BadRequestException", "Illegal raw message: "+err.Error())
			return
		}
		if !sesAddress(m.From) || len(m.To) == 0 {
			sesError(w, http.StatusBadRequest, "BadRequestException", "The raw message needs valid From and To.")
			return
		}
	case c.Template != nil && c.Template.TemplateContent != nil:
		data := map[string]any{}
		_ = json.Unmarshal([]byte(c.Template.TemplateData), &data)
		m.Subject = renderHandlebars(c.Template.TemplateContent.Subject, data)
		m.HTML = renderHandlebars(c.Template.TemplateContent.HTML, data)
		m.Text = renderHandlebars(c.Template.TemplateContent.Text, data)
	default:
		sesError(w, http.StatusNotFound, "NotFoundException", "Template does not exist.")
		return
	}
	if len(in.ReplyToAddresses) > 0 {
		m.ReplyTo = in.ReplyToAddresses[0]
	}
	f.accept(m)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{"MessageId": id})
}

// parseRaw reads a MIME message's headers, bodies and attachment names.
func parseRaw(raw []byte, m *Message) error {
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return err
	}
	dec := new(mime.WordDecoder)
	m.Subject, _ = dec.DecodeHeader(msg.Header.Get("Subject"))
	if a, err := mail.ParseAddress(msg.Header.Get("From")); err == nil {
		m.From = a.Address
	}
	if list, err := msg.Header.AddressList("To"); err == nil {
		for _, a := range list {
			m.To = append(m.To, strings.ToLower(a.Address))
		}
	}
	for k, v := range msg.Header {
		m.Headers[http.CanonicalHeaderKey(k)] = v[0]
	}
	return walkPart(msg.Header.Get("Content-Type"), msg.Body, m)
}

func walkPart(ctype string, body io.Reader, m *Message) error {
	mt, params, err := mime.ParseMediaType(ctype)
	if err != nil {
		mt = "text/plain"
	}
	if strings.HasPrefix(mt, "multipart/") {
		mr := multipart.NewReader(body, params["boundary"])
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if p.FileName() != "" {
				m.Attachments = append(m.Attachments, p.FileName())
				continue
			}
			if err := walkPart(p.Header.Get("Content-Type"), p, m); err != nil {
				return err
			}
		}
	}
	data, err := io.ReadAll(body)
	if err != nil {
		return err
	}
	switch mt {
	case "text/plain":
		m.Text = string(data)
	case "text/html":
		m.HTML = string(data)
	}
	return nil
}

var handlebarsRE = regexp.MustCompile(`\{\{\{\s*([A-Za-z0-9_.]+)\s*\}\}\}|\{\{\s*([A-Za-z0-9_.]+)\s*\}\}`)

// renderHandlebars substitutes {{{name}}} raw and {{name}} HTML-escaped.
func renderHandlebars(s string, data map[string]any) string {
	return handlebarsRE.ReplaceAllStringFunc(s, func(tok string) string {
		sm := handlebarsRE.FindStringSubmatch(tok)
		name, raw := sm[2], false
		if sm[1] != "" {
			name, raw = sm[1], true
		}
		v, ok := data[name]
		if !ok {
			return ""
		}
		str, isStr := v.(string)
		if !isStr {
			b, _ := json.Marshal(v)
			str = string(b)
		}
		if raw {
			return str
		}
		return html.EscapeString(str)
	})
}
