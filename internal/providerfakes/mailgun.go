package providerfakes

import (
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/mail"
	"net/url"
	"strconv"
	"strings"

	"github.com/batchsender/batchsender/sdk/sdktest"
)

// Mailgun fakes Mailgun's Messages API: POST /v3/{domain}/messages with
// HTTP Basic auth (user "api", password the API key; 401 "Forbidden"
// otherwise), multipart/form-data or application/x-www-form-urlencoded,
// 200 {"id":"<…@domain>","message":"Queued. Thank you."} on success and
// 400 {"message":…} for what the real API refuses: a missing from, to,
// subject or body, invalid addresses, more than 1,000 recipients,
// recipient-variables that are not a JSON object. An unknown domain is 404.
//
// With recipient-variables, each recipient gets an individual message with
// %recipient.key% replaced in the subject, bodies, h: headers and v:
// variables, which is what the fake records. Call.Keys are the expanded
// v:batchsender_item_id values; a key in RejectKeys fails the whole call
// with 400, as Mailgun has no per-recipient outcome.
type Mailgun struct {
	core
	domain string
	key    string
}

// NewMailgun returns a Mailgun fake for domain accepting the API key.
func NewMailgun(domain, key string) *Mailgun {
	return &Mailgun{core: newCore(), domain: domain, key: key}
}

func mgError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"message": msg})
}

// expandRecipient replaces %recipient.key% with the recipient's values;
// unknown keys stay as they are.
func expandRecipient(s string, v map[string]any) string {
	var b strings.Builder
	for {
		i := strings.Index(s, "%recipient.")
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		j := strings.IndexByte(s[i+len("%recipient."):], '%')
		if j < 0 {
			b.WriteString(s)
			return b.String()
		}
		end := i + len("%recipient.") + j
		name := s[i+len("%recipient.") : end]
		b.WriteString(s[:i])
		if x, ok := v[name]; ok {
			if str, ok := x.(string); ok {
				b.WriteString(str)
			} else {
				raw, _ := json.Marshal(x)
				b.Write(raw)
			}
		} else {
			b.WriteString(s[i : end+1])
		}
		s = s[end+1:]
	}
}

// ServeHTTP implements http.Handler.
func (f *Mailgun) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(parts) != 3 || parts[0] != "v3" || parts[2] != "messages" || r.Method != http.MethodPost {
		mgError(w, http.StatusNotFound, "Not Found")
		return
	}
	if user, pass, ok := r.BasicAuth(); !ok || user != "api" || pass != f.key {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte("Forbidden"))
		return
	}
	if parts[1] != f.domain {
		mgError(w, http.StatusNotFound, "Domain not found: "+parts[1])
		return
	}
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	var (
		form  url.Values
		files []string
		err   error
	)
	switch mt {
	case "multipart/form-data":
		// Read parts directly: Go's ParseMultipartForm caps a form at
		// 1,000 parts, which a batch with repeated "to" fields exceeds
		// while Mailgun takes it.
		form, files, err = readMultipart(r)
	case "application/x-www-form-urlencoded":
		err = r.ParseForm()
		form = r.PostForm
	default:
		mgError(w, http.StatusBadRequest, "Content-Type must be multipart/form-data or application/x-www-form-urlencoded")
		return
	}
	if err != nil {
		mgError(w, http.StatusBadRequest, "Unable to parse the request body")
		return
	}
	get := func(k string) string {
		if v := form[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	var rcpts []*mail.Address
	for _, v := range form["to"] {
		list, err := mail.ParseAddressList(v)
		if err != nil {
			mgError(w, http.StatusBadRequest, "to parameter is not a valid address. please check documentation")
			return
		}
		for _, a := range list {
			if !validAddress(a.Address) {
				mgError(w, http.StatusBadRequest, "to parameter is not a valid address. please check documentation")
				return
			}
		}
		rcpts = append(rcpts, list...)
	}
	vars := map[string]map[string]any{}
	switch {
	case get("from") == "":
		mgError(w, http.StatusBadRequest, "from parameter is missing")
		return
	case !validAddress(get("from")):
		mgError(w, http.StatusBadRequest, "from parameter is not a valid address. please check documentation")
		return
	case len(rcpts) == 0:
		mgError(w, http.StatusBadRequest, "to parameter is missing")
		return
	case len(rcpts) > 1000:
		mgError(w, http.StatusBadRequest, "Too many recipients: the maximum number of recipients in a batch is 1000")
		return
	case get("subject") == "" && get("template") == "":
		mgError(w, http.StatusBadRequest, "subject parameter is missing")
		return
	case get("text") == "" && get("html") == "" && get("template") == "":
		mgError(w, http.StatusBadRequest, "Need at least one of 'text', 'html' or 'template' parameters specified")
		return
	case get("recipient-variables") != "" && json.Unmarshal([]byte(get("recipient-variables")), &vars) != nil:
		mgError(w, http.StatusBadRequest, "recipient-variables parameter is not a valid JSON")
		return
	}
	// Lower-case keys: Mailgun matches recipients case-insensitively.
	lvars := map[string]map[string]any{}
	for k, v := range vars {
		lvars[strings.ToLower(k)] = v
	}
	expand := func(s string, a *mail.Address) string {
		if !strings.Contains(s, "%recipient.") {
			return s
		}
		return expandRecipient(s, lvars[strings.ToLower(a.Address)])
	}
	batch := len(vars) > 0
	call := sdktest.Call{Items: len(rcpts)}
	for _, a := range rcpts {
		call.Keys = append(call.Keys, expand(get("v:batchsender_item_id"), a))
	}
	b, ok := f.begin(r, call)
	if !ok {
		return
	}
	switch b.Mode {
	case sdktest.RateLimit:
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds(b.RetryAfter)))
		mgError(w, http.StatusTooManyRequests, "Too many requests")
		return
	case sdktest.ServerError:
		mgError(w, http.StatusInternalServerError, "Internal Server Error")
		return
	case sdktest.Reject:
		mgError(w, http.StatusBadRequest, "Sandbox subdomains are for test purposes only. Please add your own domain or add the address to authorized recipients in Account Settings.")
		return
	}
	for _, k := range call.Keys {
		if rejected(b, k) {
			mgError(w, http.StatusBadRequest, "to parameter is not a valid address. please check documentation")
			return
		}
	}
	id := fmt.Sprintf("<20261204120000.%d@%s>", f.nextID(), f.domain)
	names := files
	one := func(a *mail.Address, to []string) Message {
		m := Message{From: get("from"), To: to, Subject: expand(get("subject"), a), Text: expand(get("text"), a),
			HTML: expand(get("html"), a), Headers: map[string]string{}, Key: expand(get("v:batchsender_item_id"), a),
			Attachments: names, MessageID: strings.Trim(id, "<>")}
		for k, v := range form {
			if strings.HasPrefix(k, "h:") && len(v) > 0 {
				m.Headers[http.CanonicalHeaderKey(k[2:])] = expand(v[0], a)
			}
		}
		m.ReplyTo = m.Headers["Reply-To"]
		return m
	}
	if batch {
		for _, a := range rcpts {
			f.accept(one(a, []string{strings.ToLower(a.Address)}))
		}
	} else {
		// Without recipient variables everyone gets one message
		// showing the whole To list.
		var all []string
		for _, a := range rcpts {
			all = append(all, strings.ToLower(a.Address))
		}
		f.accept(one(rcpts[0], all))
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{"id": id, "message": "Queued. Thank you."})
}

// readMultipart reads a multipart form's values and attachment file names.
func readMultipart(r *http.Request) (url.Values, []string, error) {
	mr, err := r.MultipartReader()
	if err != nil {
		return nil, nil, err
	}
	form := url.Values{}
	var files []string
	total := int64(0)
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return form, files, nil
		}
		if err != nil {
			return nil, nil, err
		}
		data, err := io.ReadAll(io.LimitReader(p, 26<<20))
		if err != nil {
			return nil, nil, err
		}
		total += int64(len(data))
		if total > 25<<20 {
			return nil, nil, fmt.Errorf("message too large")
		}
		if p.FileName() != "" {
			if p.FormName() == "attachment" || p.FormName() == "inline" {
				files = append(files, p.FileName())
			}
			continue
		}
		form.Add(p.FormName(), string(data))
	}
}
