package providerfakes

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"sync"

	"golang.org/x/time/rate"

	"github.com/batchsender/batchsender/sdk/sdktest"
)

// Resend fakes Resend's email API: POST /emails and POST /emails/batch with
// "Authorization: Bearer <key>" (401 missing_api_key, 403 invalid_api_key),
// JSON bodies, at most 100 emails per batch, x-batch-validation strict (the
// default: one invalid email fails the call with 422) or permissive (valid
// emails are created, invalid ones are listed in errors[] by index), no
// attachments in batches, Idempotency-Key (at most 256 characters; the same
// key and payload replay the first answer, a different payload is 409
// invalid_idempotent_request, a concurrent duplicate 409
// concurrent_idempotent_requests), rate-limit headers ratelimit-limit,
// ratelimit-remaining, ratelimit-reset on every answer and 429
// rate_limit_exceeded with retry-after.
//
// Call.Keys are the emails' "batchsender_item" tag values; in Accept mode
// an email whose key is in RejectKeys is invalid (as if its "to" were).
type Resend struct {
	core
	key string
	// PerSecond, when set before serving, enforces Resend's request rate
	// (2 per second by default on real accounts) with 429 answers.
	PerSecond int

	imu     sync.Mutex
	idem    map[string]idemEntry
	bucket  *rate.Limiter
	replays int
	keys    []string
	lose    int
}

type idemEntry struct {
	hash   [32]byte
	done   bool
	status int
	body   []byte
}

// NewResend returns a Resend fake accepting the API key.
func NewResend(key string) *Resend {
	return &Resend{core: newCore(), key: key, idem: map[string]idemEntry{}}
}

type rsEmail struct {
	From    string            `json:"from"`
	To      json.RawMessage   `json:"to"`
	Cc      json.RawMessage   `json:"cc"`
	Bcc     json.RawMessage   `json:"bcc"`
	Subject string            `json:"subject"`
	HTML    string            `json:"html"`
	Text    string            `json:"text"`
	ReplyTo json.RawMessage   `json:"reply_to"`
	Headers map[string]string `json:"headers"`
	Tags    []struct {
		Name  string `json:"name"`
		Value string `json:"value"`
	} `json:"tags"`
	Attachments []struct {
		Filename string `json:"filename"`
		Content  []byte `json:"content"`
	} `json:"attachments"`
	ScheduledAt string `json:"scheduled_at"`
}

var tagRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,256}$`)

// stringList reads "a" or ["a","b"].
func stringList(raw json.RawMessage) ([]string, bool) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, true
	}
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return []string{one}, true
	}
	var many []string
	if json.Unmarshal(raw, &many) == nil {
		return many, true
	}
	return nil, false
}

func rsError(w http.ResponseWriter, status int, name, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"statusCode": status, "name": name, "message": msg})
}

func (f *Resend) rateHeaders(w http.ResponseWriter, remaining int) {
	limit := max(f.PerSecond, 2)
	w.Header().Set("ratelimit-limit", strconv.Itoa(limit))
	w.Header().Set("ratelimit-remaining", strconv.Itoa(max(remaining, 0)))
	w.Header().Set("ratelimit-reset", "1")
}

// LoseAnswers makes the next n calls that reach the idempotency check do
// their work as usual (emails created, replays served, the key stored) and
// then lose the answer: the connection is cut before the status line, as
// when a network path drops after Resend took the request.
func (f *Resend) LoseAnswers(n int) {
	f.imu.Lock()
	f.lose = n
	f.imu.Unlock()
}

// IdempotencyKeys returns the Idempotency-Key header of every call that
// reached the idempotency check, in arrival order ("" for none).
func (f *Resend) IdempotencyKeys() []string {
	f.imu.Lock()
	defer f.imu.Unlock()
	return append([]string(nil), f.keys...)
}

// answer writes a JSON answer, or cuts the connection when LoseAnswers
// says to lose it.
func (f *Resend) answer(w http.ResponseWriter, status int, body []byte) {
	f.imu.Lock()
	lost := f.lose > 0
	if lost {
		f.lose--
	}
	f.imu.Unlock()
	if lost {
		panic(http.ErrAbortHandler)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// ServeHTTP implements http.Handler.
func (f *Resend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	batch := r.URL.Path == "/emails/batch"
	if r.Method != http.MethodPost || (!batch && r.URL.Path != "/emails") {
		rsError(w, http.StatusNotFound, "not_found", "The requested endpoint does not exist.")
		return
	}
	auth := r.Header.Get("Authorization")
	switch {
	case auth == "":
		rsError(w, http.StatusUnauthorized, "missing_api_key", "Missing API key in the authorization header. Include the following header Authorization: Bearer YOUR_API_KEY in the request.")
		return
	case auth != "Bearer "+f.key:
		rsError(w, http.StatusForbidden, "invalid_api_key", "API key is invalid")
		return
	}
	if remaining, ok := f.take(); !ok {
		f.rateHeaders(w, 0)
		w.Header().Set("retry-after", "1")
		rsError(w, http.StatusTooManyRequests, "rate_limit_exceeded", fmt.Sprintf("Too many requests. You can only make %d requests per second.", f.PerSecond))
		return
	} else {
		f.rateHeaders(w, remaining)
	}
	raw, err := io.ReadAll(io.LimitReader(r.Body, 41<<20))
	if err != nil {
		rsError(w, http.StatusBadRequest, "validation_error", "Unreadable body.")
		return
	}
	var emails []rsEmail
	if batch {
		err = json.Unmarshal(raw, &emails)
	} else {
		emails = make([]rsEmail, 1)
		err = json.Unmarshal(raw, &emails[0])
	}
	if err != nil {
		rsError(w, http.StatusUnprocessableEntity, "validation_error", "Invalid JSON body.")
		return
	}
	if batch && (len(emails) == 0 || len(emails) > 100) {
		rsError(w, http.StatusUnprocessableEntity, "validation_error", "The batch must contain between 1 and 100 emails.")
		return
	}
	call := sdktest.Call{Items: len(emails)}
	for _, e := range emails {
		k := ""
		for _, t := range e.Tags {
			if t.Name == "batchsender_item" {
				k = t.Value
			}
		}
		call.Keys = append(call.Keys, k)
	}
	b, ok := f.begin(r, call)
	if !ok {
		return
	}
	switch b.Mode {
	case sdktest.RateLimit:
		w.Header().Set("retry-after", strconv.Itoa(retryAfterSeconds(b.RetryAfter)))
		rsError(w, http.StatusTooManyRequests, "rate_limit_exceeded", "Too many requests. You can only make 2 requests per second.")
		return
	case sdktest.ServerError:
		rsError(w, http.StatusInternalServerError, "internal_server_error", "An unexpected error occurred.")
		return
	case sdktest.Reject:
		rsError(w, http.StatusUnprocessableEntity, "validation_error", "The `from` domain is not verified.")
		return
	}
	key := r.Header.Get("Idempotency-Key")
	if len(key) > 256 {
		rsError(w, http.StatusBadRequest, "invalid_idempotency_key", "The Idempotency-Key must be at most 256 characters.")
		return
	}
	hash := sha256.Sum256(append([]byte(r.URL.Path+"\n"+r.Header.Get("x-batch-validation")+"\n"), raw...))
	f.imu.Lock()
	f.keys = append(f.keys, key)
	f.imu.Unlock()
	if key != "" {
		f.imu.Lock()
		e, seen := f.idem[key]
		switch {
		case seen && e.hash != hash:
			f.imu.Unlock()
			rsError(w, http.StatusConflict, "invalid_idempotent_request", "Same idempotency key used with a different request payload. Change your idempotency key or payload.")
			return
		case seen && !e.done:
			f.imu.Unlock()
			rsError(w, http.StatusConflict, "concurrent_idempotent_requests", "Same idempotency key used while original request is still in progress. Try the request again later.")
			return
		case seen:
			f.replays++
			f.imu.Unlock()
			f.answer(w, e.status, e.body)
			return
		}
		f.idem[key] = idemEntry{hash: hash}
		f.imu.Unlock()
	}
	status, body := f.create(b, emails, batch, r.Header.Get("x-batch-validation") == "permissive")
	if key != "" {
		f.imu.Lock()
		if status < 500 {
			f.idem[key] = idemEntry{hash: hash, done: true, status: status, body: body}
		} else {
			delete(f.idem, key)
		}
		f.imu.Unlock()
	}
	f.answer(w, status, body)
}

// take counts a request against the rate: a token bucket refilling
// PerSecond tokens a second, holding at most PerSecond.
func (f *Resend) take() (remaining int, ok bool) {
	if f.PerSecond <= 0 {
		return 2, true
	}
	f.imu.Lock()
	defer f.imu.Unlock()
	if f.bucket == nil {
		f.bucket = rate.NewLimiter(rate.Limit(f.PerSecond), f.PerSecond)
	}
	if !f.bucket.Allow() {
		return 0, false
	}
	return int(f.bucket.Tokens()), true
}

// check validates one email as Resend does; "" means valid.
func (f *Resend) check(b sdktest.Behaviour, e rsEmail, batch bool, key string) string {
	if e.From == "" {
		return "The `from` field is missing."
	}
	if !validAddress(e.From) {
		return "Invalid `from` field. The email address needs to follow the `email@example.com` or `Name <email@example.com>` format."
	}
	to, ok := stringList(e.To)
	if !ok || len(to) == 0 {
		return "The `to` field is missing."
	}
	if len(to) > 50 {
		return "Too many recipients in the `to` field: the maximum is 50."
	}
	for _, a := range to {
		if !validAddress(a) {
			return fmt.Sprintf("Invalid `to` field. The email address needs to follow the `email@example.com` or `Name <email@example.com>` format: %s", a)
		}
	}
	if rejected(b, key) {
		return "Invalid `to` field. The recipient was rejected."
	}
	if e.Subject == "" {
		return "The `subject` field is missing."
	}
	if e.HTML == "" && e.Text == "" {
		return "Missing `html` or `text` field."
	}
	for _, t := range e.Tags {
		if !tagRE.MatchString(t.Name) || !tagRE.MatchString(t.Value) {
			return "Tags should only contain ASCII letters (a–z, A–Z), numbers (0–9), underscores (_), or dashes (-)."
		}
	}
	if batch && (len(e.Attachments) > 0 || e.ScheduledAt != "") {
		return "The batch endpoint does not support `attachments` or `scheduled_at`."
	}
	return ""
}

// create validates and takes emails, returning the answer.
func (f *Resend) create(b sdktest.Behaviour, emails []rsEmail, batch, permissive bool) (int, []byte) {
	type idObj struct {
		ID string `json:"id"`
	}
	type errObj struct {
		Index   int    `json:"index"`
		Message string `json:"message"`
	}
	problems := make([]string, len(emails))
	for i, e := range emails {
		problems[i] = f.check(b, e, batch, keyOf(e))
		if problems[i] != "" && (!batch || !permissive) {
			return http.StatusUnprocessableEntity, mustJSON(map[string]any{"statusCode": 422, "name": "validation_error", "message": problems[i]})
		}
	}
	data := []idObj{}
	var errs []errObj
	for i, e := range emails {
		if problems[i] != "" {
			errs = append(errs, errObj{i, problems[i]})
			continue
		}
		id := fmt.Sprintf("49a3999c-0ce1-4ea6-ab68-%012d", f.nextID())
		to, _ := stringList(e.To)
		for k := range to {
			to[k] = bareAddress(to[k])
		}
		reply, _ := stringList(e.ReplyTo)
		m := Message{From: e.From, To: to, Subject: e.Subject, HTML: e.HTML, Text: e.Text,
			Headers: map[string]string{}, Key: keyOf(e), MessageID: id}
		if len(reply) > 0 {
			m.ReplyTo = reply[0]
		}
		for k, v := range e.Headers {
			m.Headers[http.CanonicalHeaderKey(k)] = v
		}
		for _, a := range e.Attachments {
			m.Attachments = append(m.Attachments, a.Filename)
		}
		f.accept(m)
		data = append(data, idObj{id})
	}
	if !batch {
		return http.StatusOK, mustJSON(data[0])
	}
	out := map[string]any{"data": data}
	if permissive {
		out["errors"] = errs
		if errs == nil {
			out["errors"] = []errObj{}
		}
	}
	return http.StatusOK, mustJSON(out)
}

func keyOf(e rsEmail) string {
	for _, t := range e.Tags {
		if t.Name == "batchsender_item" {
			return t.Value
		}
	}
	return ""
}

func mustJSON(v any) []byte {
	var buf bytes.Buffer
	_ = json.NewEncoder(&buf).Encode(v)
	return bytes.TrimSpace(buf.Bytes())
}

// IdempotencyReplays returns how many calls were answered from the
// idempotency store.
func (f *Resend) IdempotencyReplays() int {
	f.imu.Lock()
	defer f.imu.Unlock()
	return f.replays
}
