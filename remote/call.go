package remote

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/batchsender/batchsender/webhook"
)

const (
	// maxAnswer bounds a module's answer; 500 results fit many times over.
	maxAnswer = 8 << 20
	// snippetSize is how much of an answer is kept in results and errors.
	snippetSize = 1 << 10
	// maxRetryAfter caps a module's requested delay.
	maxRetryAfter = time.Hour
)

// answer is a module's HTTP answer.
type answer struct {
	status  int
	header  http.Header
	body    []byte
	latency time.Duration
}

// describe says what the module answered, for errors: status and the start
// of the body.
func (a answer) describe() string {
	s := fmt.Sprintf("module answered %d %s", a.status, http.StatusText(a.status))
	if snip := strings.TrimSpace(snippet(a.body, 200)); snip != "" {
		s += ": " + snip
	}
	return s
}

// call sends one signed request to <url>/<path>. The signature covers the
// body (empty for GET) exactly as webhook.http signs deliveries; webhook-id
// is unique per request so a module can drop replays.
func (p *Provider) call(ctx context.Context, method, path string, body []byte) (answer, error) {
	u := *p.base
	u.Path = p.base.Path + "/" + path
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return answer{}, fmt.Errorf("building request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", UserAgent)
	req.Header.Set(HeaderProtocol, strconv.Itoa(ProtocolVersion))
	id := requestID()
	ts := p.now().Unix()
	req.Header.Set(webhook.HeaderID, id)
	req.Header.Set(webhook.HeaderTimestamp, strconv.FormatInt(ts, 10))
	req.Header.Set(webhook.HeaderSignature, webhook.Sign(p.key, id, ts, body))
	start := time.Now()
	resp, err := p.client.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return answer{}, fmt.Errorf("reading the module's answer: %w", err)
	}
	if len(data) > maxAnswer {
		return answer{}, fmt.Errorf("the module's answer is longer than %d bytes", maxAnswer)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: data, latency: time.Since(start)}, nil
}

// requestID returns a fresh webhook-id for one request.
func requestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "req_" + hex.EncodeToString(b[:])
}

// parseRetryAfter reads a Retry-After value, delay-seconds or an HTTP
// date, capped at maxRetryAfter.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0, false
		}
		return min(time.Duration(min(n, int64(maxRetryAfter/time.Second)))*time.Second, maxRetryAfter), true
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(t.Sub(now), 0), maxRetryAfter), true
	}
	return 0, false
}

// snippet returns at most n bytes of b as valid UTF-8 text without NULs.
func snippet(b []byte, n int) string {
	if len(b) > n {
		b = b[:n]
	}
	s := strings.ToValidUTF8(string(b), "\uFFFD")
	s = strings.ReplaceAll(s, "\x00", "\uFFFD")
	for len(s) > n {
		_, size := utf8.DecodeLastRuneInString(s)
		s = s[:len(s)-size]
	}
	return s
}
