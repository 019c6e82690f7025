// Package ses is the email.ses provider: Amazon SES v2 through the AWS SDK
// for Go v2 (service/sesv2), with the endpoint overridable (base_url →
// BaseEndpoint) and static credentials from the connection's secrets.
//
// A chunk of up to 50 items goes out as one SendBulkEmail call: the default
// content is an inline template whose subject, HTML and text are the
// variables bs_subject, bs_html and bs_text (triple braces, so SES inserts
// them unescaped: they are already rendered and HTML-escaped by the email
// template), and each entry carries its item's rendered values as
// ReplacementTemplateData, its List-Unsubscribe and custom headers as
// ReplacementHeaders and the item ID as the tag batchsender_item. SES
// answers a status per entry, mapped to one result per item. Templates
// with attachments, which bulk sending does not carry, go one SendEmail
// call per item with the raw MIME message built by package email.
//
// Items whose sender or Reply-To differ (per-item "from"/"reply_to") go in
// separate calls. SES has no idempotency key: a timeout after the request
// left is Unknown. SES sends no rate-limit headers; throttling
// (TooManyRequestsException, LimitExceededException, ACCOUNT_THROTTLED) is
// Retry with the host's backoff. The SDK's own retries are off: the host
// retries.
package ses

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"net/mail"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sesv2"
	"github.com/aws/aws-sdk-go-v2/service/sesv2/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/batchsender/batchsender/email"
	"github.com/batchsender/batchsender/internal/httpsend"
	"github.com/batchsender/batchsender/sdk"
)

// ID is the provider ID.
const ID = "email.ses"

// Defaults and limits.
const (
	DefaultRegion  = "us-east-1"
	DefaultTimeout = 30 * time.Second
	// MaxBulk is SES's limit of entries per SendBulkEmail call.
	MaxBulk = 50
	// TagName is the message tag carrying the item ID.
	TagName = "batchsender_item"
	// rawConcurrency bounds the SendEmail calls in flight for one chunk
	// of messages with attachments.
	rawConcurrency = 8
)

func init() {
	sdk.Register(sdk.Registration{ID: ID, New: func() sdk.Provider { return new(Provider) }})
}

// Duration is the JSON form of the per-call timeout, a string such as "10s"
// between 0 and 5m.
type Duration = httpsend.Duration

// Config is an email.ses connection's configuration.
type Config struct {
	// BaseURL overrides the endpoint (default
	// https://email.{region}.amazonaws.com, chosen by the SDK).
	BaseURL string `json:"base_url,omitempty"`
	// Region is the AWS region (default us-east-1).
	Region string `json:"region,omitempty"`
	// ConfigurationSetName is the configuration set for event publishing.
	ConfigurationSetName string `json:"configuration_set_name,omitempty"`
	// Timeout bounds one API call (default 30s, at most 5m).
	Timeout Duration `json:"timeout,omitempty"`
	// UnsubscribeMailto is an optional address added to List-Unsubscribe.
	UnsubscribeMailto string `json:"unsubscribe_mailto,omitempty"`
}

// Secrets are an email.ses connection's secrets.
type Secrets struct {
	AccessKeyID     string `json:"access_key_id"`
	SecretAccessKey string `json:"secret_access_key"`
	// SessionToken is set for temporary credentials.
	SessionToken string `json:"session_token,omitempty"`
}

// Provider is one email.ses connection.
type Provider struct {
	cfg     Config
	timeout time.Duration
	httpc   *http.Client
	client  *sesv2.Client
	env     sdk.Env
	opts    email.Options
}

// Info implements sdk.Provider. DefaultRate: SES quotas are per account
// and count messages, not calls (sandbox 1 message/s, production accounts
// usually start at 14/s); one bulk call per second is up to 50 messages a
// second, which operators raise or lower to their account's quota.
func (p *Provider) Info() sdk.Info {
	return sdk.Info{
		ID:                 ID,
		Title:              "Amazon SES v2 (SendBulkEmail)",
		MaxChunk:           MaxBulk,
		DefaultRate:        1,
		DefaultConcurrency: 2,
		BillableUnit:       "message",
		ConfigSchema: json.RawMessage(`{"type":"object","additionalProperties":false,"properties":{
  "base_url":{"type":"string","format":"uri","description":"Endpoint override (default https://email.{region}.amazonaws.com)"},
  "region":{"type":"string","description":"AWS region (default us-east-1)"},
  "configuration_set_name":{"type":"string"},
  "timeout":{"type":"string","description":"Per-call timeout, e.g. \"30s\""},
  "unsubscribe_mailto":{"type":"string","description":"Address added to List-Unsubscribe"}}}`),
		SecretsSchema: json.RawMessage(`{"type":"object","required":["access_key_id","secret_access_key"],"additionalProperties":false,"properties":{
  "access_key_id":{"type":"string"},
  "secret_access_key":{"type":"string"},
  "session_token":{"type":"string"}}}`),
		ItemSchema: email.ItemSchema,
	}
}

// Provision implements sdk.Provider.
func (p *Provider) Provision(ctx context.Context, env sdk.Env) error {
	var cfg Config
	var sec Secrets
	if err := httpsend.Decode(env, &cfg, &sec); err != nil {
		return err
	}
	if sec.AccessKeyID == "" || sec.SecretAccessKey == "" {
		return errors.New("secrets: access_key_id and secret_access_key are required")
	}
	if cfg.Region == "" {
		cfg.Region = DefaultRegion
	}
	for _, c := range cfg.Region {
		if !(c == '-' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return fmt.Errorf("config: region: %q is not an AWS region name", cfg.Region)
		}
	}
	var base *string
	if cfg.BaseURL != "" {
		u, err := httpsend.ParseBaseURL(cfg.BaseURL, "", env.AllowPrivateNetworks)
		if err != nil {
			return err
		}
		base = aws.String(u.String())
	}
	opts, err := email.ProviderOptions(&env, cfg.UnsubscribeMailto)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	p.timeout = cfg.Timeout.Or(DefaultTimeout)
	p.cfg, p.env, p.opts = cfg, env, opts
	p.httpc = httpsend.NewClient(env, p.timeout)
	// Built from explicit options, never from the process environment or
	// shared config files: a connection's credentials are its own.
	p.client = sesv2.New(sesv2.Options{
		Region:       cfg.Region,
		BaseEndpoint: base,
		Credentials:  credentials.NewStaticCredentialsProvider(sec.AccessKeyID, sec.SecretAccessKey, sec.SessionToken),
		HTTPClient:   p.httpc,
		Retryer:      aws.NopRetryer{},
	})
	return nil
}

// Compile implements sdk.Provider.
func (p *Provider) Compile(template json.RawMessage) (sdk.Sender, error) {
	c, err := email.Compile(template, p.opts)
	if err != nil {
		return nil, err
	}
	return &sender{p: p, tmpl: c}, nil
}

// Close implements sdk.Provider.
func (p *Provider) Close() error {
	if p.httpc != nil {
		p.httpc.CloseIdleConnections()
	}
	return nil
}

type sender struct {
	p    *Provider
	tmpl *email.Compiled
}

// ValidateItem renders the item without sending it. SES takes only 7-bit
// ASCII addresses (no SMTPUTF8; international domains in punycode), in any
// address of the message, so others are caught here.
func (s *sender) ValidateItem(data json.RawMessage) error {
	m, err := s.tmpl.Preview(data)
	if err != nil {
		return err
	}
	check := func(field string, as []mail.Address) error {
		for _, a := range as {
			if !isASCII(a.Address) {
				return fmt.Errorf("%s: %q: SES accepts only ASCII addresses (no SMTPUTF8; write an international domain in punycode, xn--...)", field, a.Address)
			}
		}
		return nil
	}
	if err := check("to", m.To); err != nil {
		return err
	}
	if err := check("from", []mail.Address{m.From}); err != nil {
		return err
	}
	return check("reply_to", m.ReplyTo)
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// bulkTemplate is the inline template of every bulk call.
var bulkTemplate = &types.EmailTemplateContent{
	Subject: aws.String("{{{bs_subject}}}"),
	Html:    aws.String("{{{bs_html}}}"),
	Text:    aws.String("{{{bs_text}}}"),
}

type rendered struct {
	i  int
	id string
	m  *email.Message
}

// Send implements sdk.Sender.
func (s *sender) Send(ctx context.Context, items []sdk.Item) []sdk.Result {
	res := make([]sdk.Result, len(items))
	var ready []rendered
	for i, it := range items {
		m, err := s.tmpl.Render(it.ID, it.Data)
		if err != nil {
			res[i] = sdk.Permanent(fmt.Errorf("rendering: %w", err))
			continue
		}
		ready = append(ready, rendered{i: i, id: it.ID, m: m})
	}
	if len(ready) == 0 {
		return res
	}
	if len(ready[0].m.Attachments) > 0 {
		s.sendRaw(ctx, ready, res)
		return res
	}
	// One bulk call per sender and Reply-To.
	var order []string
	groups := map[string][]rendered{}
	for _, r := range ready {
		k := r.m.From.String()
		for _, a := range r.m.ReplyTo {
			k += "\x00" + a.String()
		}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
	}
	for _, k := range order {
		s.sendBulk(ctx, groups[k], res)
	}
	return res
}

func tags(id string) []types.MessageTag {
	return []types.MessageTag{{Name: aws.String(TagName), Value: aws.String(tagValue(id))}}
}

// tagValue keeps what SES allows in tag values: ASCII letters, digits,
// '_', '-', '.', '@'.
func tagValue(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c == '_' || c == '-' || c == '.' || c == '@' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			b[i] = '_'
		}
	}
	if len(b) > 256 {
		b = b[:256]
	}
	return string(b)
}

func (s *sender) sendBulk(ctx context.Context, group []rendered, res []sdk.Result) {
	set := func(r sdk.Result) {
		for _, g := range group {
			res[g.i] = r
		}
	}
	if err := ctx.Err(); err != nil {
		set(sdk.Retry(fmt.Errorf("not sent: %w", err)))
		return
	}
	first := group[0].m
	in := &sesv2.SendBulkEmailInput{
		FromEmailAddress: aws.String(first.From.String()),
		DefaultContent: &types.BulkEmailContent{Template: &types.Template{
			TemplateContent: bulkTemplate,
			TemplateData:    aws.String(`{"bs_subject":"","bs_html":"","bs_text":""}`),
		}},
	}
	if s.p.cfg.ConfigurationSetName != "" {
		in.ConfigurationSetName = aws.String(s.p.cfg.ConfigurationSetName)
	}
	for _, a := range first.ReplyTo {
		in.ReplyToAddresses = append(in.ReplyToAddresses, a.String())
	}
	for _, g := range group {
		text, html := g.m.Bodies()
		data, _ := json.Marshal(map[string]string{"bs_subject": g.m.Subject, "bs_html": html, "bs_text": text})
		e := types.BulkEmailEntry{
			Destination:             &types.Destination{ToAddresses: []string{g.m.To[0].String()}},
			ReplacementEmailContent: &types.ReplacementEmailContent{ReplacementTemplate: &types.ReplacementTemplate{ReplacementTemplateData: aws.String(string(data))}},
			ReplacementTags:         tags(g.id),
		}
		for _, h := range append(g.m.UnsubscribeHeaders(), g.m.Headers...) {
			e.ReplacementHeaders = append(e.ReplacementHeaders, types.MessageHeader{Name: aws.String(h.Name), Value: aws.String(h.Value)})
		}
		in.BulkEmailEntries = append(in.BulkEmailEntries, e)
	}
	var out *sesv2.SendBulkEmailOutput
	latency, err := s.call(ctx, func(ctx context.Context) error {
		var err error
		out, err = s.p.client.SendBulkEmail(ctx, in)
		return err
	})
	if err != nil {
		set(err.(failure).result(latency))
		return
	}
	if len(out.BulkEmailEntryResults) != len(group) {
		set(sdk.Unknown(fmt.Errorf("SES answered %d entry results for %d entries", len(out.BulkEmailEntryResults), len(group))))
		return
	}
	for k, g := range group {
		r := entryResult(out.BulkEmailEntryResults[k])
		r.StatusCode, r.Latency = http.StatusOK, latency
		res[g.i] = r
	}
}

// entryResult maps one bulk entry's status.
func entryResult(e types.BulkEmailEntryResult) sdk.Result {
	if e.Status == types.BulkEmailStatusSuccess {
		return sdk.OK(aws.ToString(e.MessageId))
	}
	err := fmt.Errorf("%s: %s", e.Status, aws.ToString(e.Error))
	switch e.Status {
	case types.BulkEmailStatusAccountThrottled, types.BulkEmailStatusTransientFailure, types.BulkEmailStatusFailed:
		return sdk.Retry(err)
	case types.BulkEmailStatusAccountDailyQuotaExceeded:
		// AWS advises waiting before retrying a quota error.
		return sdk.RetryAfter(10*time.Minute, err)
	}
	return sdk.Permanent(err)
}

// sendRaw sends each message as raw MIME with SendEmail.
func (s *sender) sendRaw(ctx context.Context, ready []rendered, res []sdk.Result) {
	sem := make(chan struct{}, rawConcurrency)
	var wg sync.WaitGroup
	for _, r := range ready {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			res[r.i] = s.sendOne(ctx, r)
		}()
	}
	wg.Wait()
}

func (s *sender) sendOne(ctx context.Context, r rendered) sdk.Result {
	if err := ctx.Err(); err != nil {
		return sdk.Retry(fmt.Errorf("not sent: %w", err))
	}
	raw, err := r.m.Bytes()
	if err != nil {
		return sdk.Permanent(fmt.Errorf("building the message: %w", err))
	}
	in := &sesv2.SendEmailInput{
		FromEmailAddress: aws.String(r.m.From.String()),
		Destination:      &types.Destination{ToAddresses: []string{r.m.To[0].String()}},
		Content:          &types.EmailContent{Raw: &types.RawMessage{Data: raw}},
		EmailTags:        tags(r.id),
	}
	if s.p.cfg.ConfigurationSetName != "" {
		in.ConfigurationSetName = aws.String(s.p.cfg.ConfigurationSetName)
	}
	var out *sesv2.SendEmailOutput
	latency, err := s.call(ctx, func(ctx context.Context) error {
		var err error
		out, err = s.p.client.SendEmail(ctx, in)
		return err
	})
	if err != nil {
		return err.(failure).result(latency)
	}
	ok := sdk.OK(aws.ToString(out.MessageId))
	ok.StatusCode, ok.Latency = http.StatusOK, latency
	return ok
}

// failure is a failed SDK call with what is known about it.
type failure struct {
	err    error
	left   bool
	status int
}

func (f failure) Error() string { return f.err.Error() }

// call runs one SDK operation with the call timeout, noting whether the
// request left.
func (s *sender) call(ctx context.Context, op func(context.Context) error) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, s.p.timeout)
	defer cancel()
	var left atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{WroteHeaders: func() { left.Store(true) }})
	start := time.Now()
	err := op(ctx)
	latency := time.Since(start)
	if err == nil {
		return latency, nil
	}
	f := failure{err: err, left: left.Load()}
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) && re.Response != nil {
		f.status = re.Response.StatusCode
	}
	return latency, f
}

// result classifies a failed call. The SDK's error text names the
// operation, the status, the request ID and SES's message; it never carries
// credentials.
func (f failure) result(latency time.Duration) sdk.Result {
	var r sdk.Result
	var api smithy.APIError
	isAPI := errors.As(f.err, &api)
	switch {
	case f.status == 0 && !isAPI:
		// No answer from SES.
		switch {
		case !f.left:
			r = sdk.Retry(fmt.Errorf("%w (not sent)", f.err))
		default:
			r = sdk.Unknown(fmt.Errorf("%w (the request was sent and may have been accepted; SES has no idempotency key)", f.err))
		}
	case f.status == http.StatusTooManyRequests || f.status >= 500 || isAPI && throttling(api.ErrorCode()):
		r = sdk.Retry(f.err)
	default:
		r = sdk.Permanent(f.err)
	}
	r.StatusCode, r.Latency = f.status, latency
	if isAPI {
		r.Response = api.ErrorCode() + ": " + api.ErrorMessage()
	}
	return r
}

// throttling reports SES error codes that mean "slow down".
func throttling(code string) bool {
	switch code {
	case "TooManyRequestsException", "LimitExceededException", "Throttling", "ThrottlingException":
		return true
	}
	return false
}
