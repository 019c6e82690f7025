package engine

import (
	"fmt"
	"math/rand/v2"
	"time"
	"unicode/utf8"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/sdk"
)

// Sizes of what an attempt record keeps.
const (
	maxResponse = 1024 // bytes of the provider's answer
	maxError    = 2048 // bytes of an error text
)

// classify turns a provider's result for one item into the verdict the store
// writes. Attempts were counted at claim, so it.Attempts is this attempt's
// number.
func (r *runner) classify(it batchsender.Item, res sdk.Result, started time.Time, latency time.Duration, now time.Time) batchsender.ItemResult {
	if res.Latency > 0 {
		latency = res.Latency
	}
	errText := ""
	if res.Err != nil {
		errText = truncate(res.Err.Error(), maxError)
	}
	out := batchsender.ItemResult{
		ItemID:  it.ID,
		BatchID: r.batch.ID,
		Owner:   r.e.cfg.NodeID,
		Attempt: batchsender.Attempt{
			ItemID:     it.ID,
			Number:     it.Attempts,
			StartedAt:  started,
			Latency:    latency,
			Outcome:    res.Outcome.String(),
			StatusCode: res.StatusCode,
			Response:   truncate(res.Response, maxResponse),
			Error:      errText,
		},
	}
	outcome := res.Outcome
	switch outcome {
	case sdk.OutcomeOK, sdk.OutcomeRetry, sdk.OutcomePermanent, sdk.OutcomeUnknown:
	default:
		// A provider bug: never trust it with a verdict.
		outcome = sdk.OutcomeRetry
		errText = truncate(fmt.Sprintf("provider %s returned an invalid outcome %d", r.batch.Provider, int(res.Outcome)), maxError)
		out.Attempt.Outcome, out.Attempt.Error = outcome.String(), errText
	}
	if outcome != sdk.OutcomeOK && errText == "" {
		errText = "provider gave no reason"
		out.Attempt.Error = errText
	}
	if outcome == sdk.OutcomeUnknown && r.opts.AtLeastOnce {
		outcome = sdk.OutcomeRetry
	}

	switch outcome {
	case sdk.OutcomeOK:
		out.Status = batchsender.ItemSucceeded
		out.ProviderMessageID = res.MessageID
		out.Units = res.Units
		r.e.stats.succeeded.Add(1)
	case sdk.OutcomePermanent:
		out.Status = batchsender.ItemFailed
		out.Error = errText
		out.Units = res.Units
		r.e.stats.failed.Add(1)
	case sdk.OutcomeUnknown:
		out.Status = batchsender.ItemUnknown
		out.Error = errText
		out.Units = res.Units
		r.e.stats.unknown.Add(1)
	case sdk.OutcomeRetry:
		out.Units = res.Units
		if it.Attempts >= r.opts.MaxAttempts {
			out.Status = batchsender.ItemFailed
			out.Error = truncate(fmt.Sprintf("giving up after %d attempts: %s", it.Attempts, errText), maxError)
			r.e.stats.failed.Add(1)
			break
		}
		out.Status = batchsender.ItemPending
		out.Error = errText
		out.NextAttemptAt = ceilMillis(now.Add(max(res.RetryAfter, backoff(r.opts, it.Attempts))))
		r.e.stats.retried.Add(1)
	}
	return out
}

// backoff returns the delay before the attempt after attempt number n:
// exponential with full jitter, a random duration in
// [0, min(RetryMaxDelay, RetryBaseDelay·2^(n-1))], so that many items failing
// together do not come back together. opts carry their defaults.
func backoff(opts batchsender.BatchOptions, n int) time.Duration {
	base, ceiling := time.Duration(opts.RetryBaseDelay), time.Duration(opts.RetryMaxDelay)
	if base <= 0 || ceiling <= 0 {
		return 0
	}
	d := ceiling
	if n < 1 {
		n = 1
	}
	if shift := n - 1; shift < 62 && base <= ceiling>>shift {
		d = base << shift
	}
	return rand.N(d + 1)
}

// ceilMillis rounds t up to a whole millisecond: stores keep times in
// milliseconds, and rounding down could let a retry go before its
// Retry-After.
func ceilMillis(t time.Time) time.Time {
	if c := t.Truncate(time.Millisecond); !c.Equal(t) {
		return c.Add(time.Millisecond)
	}
	return t
}

// truncate cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
