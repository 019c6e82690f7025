package providerfakes

import (
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/batchsender/batchsender/sdk/sdktest"
)

// Postmark fakes Postmark's email API: POST /email and POST /email/batch
// with X-Postmark-Server-Token, JSON bodies, batch answers 200 with one
// element per message carrying ErrorCode (0 = sent), 401 ErrorCode 10 for
// a missing or wrong token, 422 for invalid requests (ErrorCode 402 invalid
// JSON, 409 JSON required, 410 more than 500 batch messages, 300 invalid
// email request) and 429 when rate limited.
//
// Call.Keys are the messages' Metadata "batchsender_item_id"; in Accept
// mode a message whose key is in RejectKeys gets ErrorCode 406 (inactive
// recipient), as Postmark answers for a suppressed address.
type Postmark struct {
	core
	token string
}

// NewPostmark returns a Postmark fake accepting the server token.
func NewPostmark(token string) *Postmark { return &Postmark{core: newCore(), token: token} }

type pmMessage struct {
	From          string            `json:"From"`
	To            string            `json:"To"`
	Cc            string            `json:"Cc"`
	Bcc           string            `json:"Bcc"`
	ReplyTo       string            `json:"ReplyTo"`
	Subject       string            `json:"Subject"`
	HTMLBody      string            `json:"HtmlBody"`
	TextBody      string            `json:"TextBody"`
	Headers       []pmHeader        `json:"Headers"`
	Tag           string            `json:"Tag"`
	Metadata      map[string]string `json:"Metadata"`
	MessageStream string            `json:"MessageStream"`
	Attachments   []struct {
		Name        string `json:"Name"`
		Content     []byte `json:"Content"`
		ContentType string `json:"ContentType"`
	} `json:"Attachments"`
}

type pmHeader struct {
	Name  string `json:"Name"`
	Value string `json:"Value"`
}

type pmAnswer struct {
	ErrorCode   int    `json:"ErrorCode"`
	Message     string `json:"Message"`
	MessageID   string `json:"MessageID,omitempty"`
	SubmittedAt string `json:"SubmittedAt,omitempty"`
	To          string `json:"To,omitempty"`
}

func pmError(w http.ResponseWriter, status, code int, msg string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(pmAnswer{ErrorCode: code, Message: msg})
}

// ServeHTTP implements http.Handler.
func (f *Postmark) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	batch := r.URL.Path == "/email/batch"
	if r.Method != http.MethodPost || (!batch && r.URL.Path != "/email") {
		http.NotFound(w, r)
		return
	}
	switch tok := r.Header.Get("X-Postmark-Server-Token"); {
	case tok == "":
		pmError(w, http.StatusUnauthorized, 10, "No Account or Server API tokens were supplied in the HTTP headers. Please add a header for either X-Postmark-Server-Token or X-Postmark-Account-Token.")
		return
	case tok != f.token:
		pmError(w, http.StatusUnauthorized, 10, "The Server Token you provided in the X-Postmark-Server-Token request header was invalid. Please verify that you are using a valid token.")
		return
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		pmError(w, http.StatusUnprocessableEntity, 409, "JSON request required: please use Content-Type: application/json.")
		return
	}
	raw, err := io.ReadAll(io.LimitReader(r.Body, 51<<20))
	if err != nil || len(raw) > 50<<20 {
		pmError(w, http.StatusUnprocessableEntity, 300, "Invalid email request: the payload is larger than 50 MB.")
		return
	}
	var msgs []pmMessage
	if batch {
		err = json.Unmarshal(raw, &msgs)
	} else {
		msgs = make([]pmMessage, 1)
		err = json.Unmarshal(raw, &msgs[0])
	}
	if err != nil {
		pmError(w, http.StatusUnprocessableEntity, 402, "Received invalid JSON input.")
		return
	}
	if len(msgs) > 500 {
		pmError(w, http.StatusUnprocessableEntity, 410, "Too many batch messages. You may send up to 500 messages per batch call.")
		return
	}
	call := sdktest.Call{Items: len(msgs)}
	for _, m := range msgs {
		call.Keys = append(call.Keys, m.Metadata["batchsender_item_id"])
	}
	b, ok := f.begin(r, call)
	if !ok {
		return
	}
	switch b.Mode {
	case sdktest.RateLimit:
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds(b.RetryAfter)))
		pmError(w, http.StatusTooManyRequests, 429, "Rate limit exceeded.")
		return
	case sdktest.ServerError:
		pmError(w, http.StatusInternalServerError, 0, "Internal server error.")
		return
	case sdktest.Reject:
		pmError(w, http.StatusUnprocessableEntity, 300, "Invalid email request: the sender signature is not confirmed.")
		return
	}
	answers := make([]pmAnswer, len(msgs))
	for i, m := range msgs {
		answers[i] = f.one(b, m)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	if batch {
		_ = json.NewEncoder(w).Encode(answers)
		return
	}
	if answers[0].ErrorCode != 0 {
		w.WriteHeader(http.StatusUnprocessableEntity)
	}
	_ = json.NewEncoder(w).Encode(answers[0])
}

// one checks and takes one message.
func (f *Postmark) one(b sdktest.Behaviour, m pmMessage) pmAnswer {
	bad := func(msg string) pmAnswer { return pmAnswer{ErrorCode: 300, Message: "Invalid email request: " + msg} }
	if m.From == "" || !validAddress(m.From) {
		return bad("'From' address is missing or invalid.")
	}
	if strings.TrimSpace(m.To) == "" {
		return bad("Zero recipients specified")
	}
	rcpts := 0
	for _, list := range []string{m.To, m.Cc, m.Bcc} {
		if strings.TrimSpace(list) == "" {
			continue
		}
		for _, a := range strings.Split(list, ",") {
			if !validAddress(strings.TrimSpace(a)) {
				return pmAnswer{ErrorCode: 300, Message: fmt.Sprintf("Error parsing 'To': Illegal email address '%s'. It must contain the '@' symbol.", strings.TrimSpace(a))}
			}
			rcpts++
		}
	}
	if rcpts > 50 {
		return bad("You may not have more than 50 recipients per message.")
	}
	if m.HTMLBody == "" && m.TextBody == "" {
		return bad("Provide either email TextBody or HtmlBody or both.")
	}
	if len(m.Metadata) > 10 {
		return bad("Metadata may have at most 10 fields.")
	}
	for k, v := range m.Metadata {
		if len(k) > 20 || len(v) > 80 {
			return bad("Metadata keys may be at most 20 and values 80 characters long.")
		}
	}
	key := m.Metadata["batchsender_item_id"]
	if rejected(b, key) {
		return pmAnswer{ErrorCode: 406, Message: "You tried to send to recipient(s) that have been marked as inactive. Found inactive addresses: " + m.To + "."}
	}
	id := fmt.Sprintf("0a129aee-e1cd-480d-b08d-%012d", f.nextID())
	msg := Message{From: m.From, To: addressList(m.To), ReplyTo: m.ReplyTo, Subject: m.Subject,
		Text: m.TextBody, HTML: m.HTMLBody, Headers: map[string]string{}, Key: key, MessageID: id}
	for _, h := range m.Headers {
		msg.Headers[http.CanonicalHeaderKey(h.Name)] = h.Value
	}
	for _, a := range m.Attachments {
		msg.Attachments = append(msg.Attachments, a.Name)
	}
	f.accept(msg)
	return pmAnswer{ErrorCode: 0, Message: "OK", MessageID: id, SubmittedAt: "2026-12-04T12:00:00.0000000Z", To: m.To}
}
