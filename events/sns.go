package events

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // SNS SignatureVersion 1 is SHA1withRSA; verifying it is not a choice.
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/batchsender/batchsender"
)

// snsHostRE is the only kind of host SNS signing certificates and
// subscription URLs may come from: sns.<region>.amazonaws.com (and the
// China partition's amazonaws.com.cn).
var snsHostRE = regexp.MustCompile(`^sns\.[a-z]{2}(-[a-z]+)+-[0-9]\.amazonaws\.com(\.cn)?$`)

// CheckSNSURL accepts only https URLs on an SNS host, without user info or
// a port other than 443. Anything else in a message is an attempt to make
// this server fetch from somewhere it should not.
func CheckSNSURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("not a URL")
	}
	switch {
	case u.Scheme != "https":
		return errors.New("not https")
	case u.User != nil:
		return errors.New("user info in URL")
	case u.Port() != "" && u.Port() != "443":
		return errors.New("unexpected port")
	case !snsHostRE.MatchString(u.Hostname()):
		return errors.New("not an SNS host")
	}
	return nil
}

// snsMessage is an SNS HTTP(S) delivery.
type snsMessage struct {
	Type             string  `json:"Type"`
	MessageID        string  `json:"MessageId"`
	Token            string  `json:"Token"`
	TopicArn         string  `json:"TopicArn"`
	Subject          *string `json:"Subject"`
	Message          string  `json:"Message"`
	SubscribeURL     string  `json:"SubscribeURL"`
	Timestamp        string  `json:"Timestamp"`
	SignatureVersion string  `json:"SignatureVersion"`
	Signature        string  `json:"Signature"`
	SigningCertURL   string  `json:"SigningCertURL"`
}

// SNSStringToSign returns the bytes SNS signs for a message: selected
// fields as "Name\nvalue\n" in a fixed order that depends on the type.
func (m *snsMessage) stringToSign() (string, error) {
	var b strings.Builder
	add := func(k, v string) { b.WriteString(k + "\n" + v + "\n") }
	switch m.Type {
	case "Notification":
		add("Message", m.Message)
		add("MessageId", m.MessageID)
		if m.Subject != nil {
			add("Subject", *m.Subject)
		}
		add("Timestamp", m.Timestamp)
		add("TopicArn", m.TopicArn)
		add("Type", m.Type)
	case "SubscriptionConfirmation", "UnsubscribeConfirmation":
		add("Message", m.Message)
		add("MessageId", m.MessageID)
		add("SubscribeURL", m.SubscribeURL)
		add("Timestamp", m.Timestamp)
		add("Token", m.Token)
		add("TopicArn", m.TopicArn)
		add("Type", m.Type)
	default:
		return "", errors.New("unknown message type")
	}
	return b.String(), nil
}

// verifySNS checks an SNS message's signature with the certificate at its
// SigningCertURL.
func (r *Receiver) verifySNS(ctx context.Context, m *snsMessage) error {
	if err := CheckSNSURL(m.SigningCertURL); err != nil || !strings.HasSuffix(m.SigningCertURL, ".pem") {
		return ErrUnauthorized
	}
	s, err := m.stringToSign()
	if err != nil {
		return ErrUnauthorized
	}
	sig, err := base64.StdEncoding.DecodeString(m.Signature)
	if err != nil {
		return ErrUnauthorized
	}
	cert, err := r.opts.SNSCertificate(ctx, m.SigningCertURL)
	if err != nil {
		return ErrUnauthorized
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return ErrUnauthorized
	}
	var h crypto.Hash
	var sum []byte
	switch m.SignatureVersion {
	case "1":
		d := sha1.Sum([]byte(s)) //nolint:gosec // see the import
		h, sum = crypto.SHA1, d[:]
	case "2":
		d := sha256.Sum256([]byte(s))
		h, sum = crypto.SHA256, d[:]
	default:
		return ErrUnauthorized
	}
	if rsa.VerifyPKCS1v15(pub, h, sum, sig) != nil {
		return ErrUnauthorized
	}
	return nil
}

// ses reads an SNS delivery carrying SES events.
func (r *Receiver) ses(ctx context.Context, req Request) ([]batchsender.Suppression, error) {
	var s struct {
		TopicArns []string `json:"topic_arns"`
	}
	if err := decodeSettings(req.Config, &s); err != nil {
		return nil, err
	}
	var m snsMessage
	if err := json.Unmarshal(req.Body, &m); err != nil {
		return nil, ErrUnauthorized
	}
	// Any AWS account can make a topic whose messages SNS signs, so only
	// the operator's own topics are believed.
	if !slices.Contains(s.TopicArns, m.TopicArn) {
		return nil, ErrUnauthorized
	}
	if err := r.verifySNS(ctx, &m); err != nil {
		return nil, err
	}
	switch m.Type {
	case "SubscriptionConfirmation":
		if err := CheckSNSURL(m.SubscribeURL); err != nil {
			return nil, ErrUnauthorized
		}
		if err := r.opts.SNSConfirm(ctx, m.SubscribeURL); err != nil {
			return nil, fmt.Errorf("confirming the SNS subscription: %w", err)
		}
		return nil, nil
	case "Notification":
		return sesEvent(m.Message)
	}
	return nil, nil
}

// sesEvent reads one SES event, published through a configuration set
// (eventType) or as an identity notification (notificationType).
func sesEvent(message string) ([]batchsender.Suppression, error) {
	var ev struct {
		EventType        string `json:"eventType"`
		NotificationType string `json:"notificationType"`
		Bounce           struct {
			BounceType        string `json:"bounceType"`
			BouncedRecipients []struct {
				EmailAddress string `json:"emailAddress"`
			} `json:"bouncedRecipients"`
		} `json:"bounce"`
		Complaint struct {
			ComplainedRecipients []struct {
				EmailAddress string `json:"emailAddress"`
			} `json:"complainedRecipients"`
		} `json:"complaint"`
	}
	if err := json.Unmarshal([]byte(message), &ev); err != nil {
		return nil, invalid("SES event: the SNS message is not an SES event: %v", err)
	}
	kind := ev.EventType
	if kind == "" {
		kind = ev.NotificationType
	}
	var out []batchsender.Suppression
	switch kind {
	case "Bounce":
		if ev.Bounce.BounceType != "Permanent" {
			return nil, nil // Transient and Undetermined bounces may pass
		}
		for _, rc := range ev.Bounce.BouncedRecipients {
			if s, ok := suppression(stripName(rc.EmailAddress), batchsender.ReasonHardBounce, "ses events"); ok {
				out = append(out, s)
			}
		}
	case "Complaint":
		for _, rc := range ev.Complaint.ComplainedRecipients {
			if s, ok := suppression(stripName(rc.EmailAddress), batchsender.ReasonComplaint, "ses events"); ok {
				out = append(out, s)
			}
		}
	}
	return out, nil
}

// stripName turns "Name <a@b>" into a@b; SES reports addresses as sent.
func stripName(s string) string {
	if i := strings.LastIndexByte(s, '<'); i >= 0 {
		if j := strings.IndexByte(s[i:], '>'); j > 0 {
			return s[i+1 : i+j]
		}
	}
	return s
}

// snsFetcher is the production certificate source and subscription
// confirmer: HTTPS only, to hosts CheckSNSURL accepted, certificates cached.
type snsFetcher struct {
	client *http.Client
	mu     sync.Mutex
	certs  map[string]*x509.Certificate
}

func newSNSFetcher() *snsFetcher {
	return &snsFetcher{
		client: &http.Client{
			Timeout: 10 * time.Second,
			// A redirect could lead anywhere; SNS does not redirect.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		certs: map[string]*x509.Certificate{},
	}
}

func (f *snsFetcher) get(ctx context.Context, raw string) ([]byte, error) {
	if err := CheckSNSURL(raw); err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, raw, nil)
	if err != nil {
		return nil, err
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("SNS answered %d", resp.StatusCode)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 64<<10))
}

func (f *snsFetcher) certificate(ctx context.Context, raw string) (*x509.Certificate, error) {
	f.mu.Lock()
	c, ok := f.certs[raw]
	f.mu.Unlock()
	if ok {
		return c, nil
	}
	b, err := f.get(ctx, raw)
	if err != nil {
		return nil, fmt.Errorf("fetching the SNS signing certificate: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("the SNS signing certificate is not PEM")
	}
	if c, err = x509.ParseCertificate(blk.Bytes); err != nil {
		return nil, fmt.Errorf("parsing the SNS signing certificate: %w", err)
	}
	f.mu.Lock()
	if len(f.certs) >= 64 {
		clear(f.certs) // SNS rotates rarely; the cache need not be clever
	}
	f.certs[raw] = c
	f.mu.Unlock()
	return c, nil
}

func (f *snsFetcher) confirm(ctx context.Context, raw string) error {
	_, err := f.get(ctx, raw)
	return err
}
