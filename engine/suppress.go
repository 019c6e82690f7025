package engine

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/sdk"
)

// skipSuppressed sets aside the items of a chunk whose recipients the
// project has suppressed (unsubscribed, bounced, complained): they end as
// skipped with the reason, are never handed to the provider and bill
// nothing. One store lookup per chunk, and none at all for senders that do
// not implement sdk.Recipienter.
//
// When the lookup fails the whole chunk is held back as a retry rather than
// sent: mailing someone who unsubscribed is worse than mailing late.
func (r *runner) skipSuppressed(ctx context.Context, items []batchsender.Item) (send []batchsender.Item, skipped []batchsender.ItemResult, err error) {
	rc, ok := r.sender.(sdk.Recipienter)
	if !ok || len(items) == 0 {
		return items, nil, nil
	}
	type target struct{ channel, address string }
	targets := make([]target, len(items))
	byChannel := map[string][]string{}
	for i, it := range items {
		ch, addr, ok := rc.Recipient(it.Data)
		if !ok || ch == "" {
			continue
		}
		addr = batchsender.NormalizeAddress(addr)
		targets[i] = target{ch, addr}
		byChannel[ch] = append(byChannel[ch], addr)
	}
	matched := map[target]batchsender.SuppressionReason{}
	for ch, addrs := range byChannel {
		m, err := r.e.store.SuppressionsMatch(ctx, r.batch.ProjectID, ch, addrs)
		if err != nil {
			return nil, nil, fmt.Errorf("checking suppressions: %w", err)
		}
		for a, reason := range m {
			matched[target{ch, a}] = reason
		}
	}
	if len(matched) == 0 {
		return items, nil, nil
	}
	now := r.e.now()
	send = make([]batchsender.Item, 0, len(items))
	for i, it := range items {
		reason, ok := matched[targets[i]]
		if !ok {
			send = append(send, it)
			continue
		}
		msg := fmt.Sprintf("suppressed: %s on %s (%s)", targets[i].address, targets[i].channel, reason)
		skipped = append(skipped, batchsender.ItemResult{
			ItemID: it.ID, BatchID: r.batch.ID, Owner: r.e.cfg.NodeID,
			Status: batchsender.ItemSkipped, Error: msg, Units: 0,
			Attempt: batchsender.Attempt{ItemID: it.ID, Number: it.Attempts, StartedAt: now, Outcome: "skipped", Error: msg},
		})
	}
	r.log.Debug("skipping suppressed recipients", slog.Int("items", len(skipped)))
	return send, skipped, nil
}

// sendable returns the items of a chunk that may be sent, and the results
// of those that are settled without sending: suppressed items as skipped,
// or, when the suppressions could not be read, every item as a retry.
func (r *runner) sendable(ctx context.Context, items []batchsender.Item) (send []batchsender.Item, settled []batchsender.ItemResult) {
	send, skipped, err := r.skipSuppressed(ctx, items)
	if err == nil {
		return send, skipped
	}
	r.log.Warn("holding a chunk back: its suppressions could not be read", slog.Int("items", len(items)), slog.Any("error", err))
	now := r.e.now()
	settled = make([]batchsender.ItemResult, len(items))
	for i, it := range items {
		settled[i] = r.classify(it, sdk.Retry(err), now, 0, now)
	}
	return nil, settled
}
