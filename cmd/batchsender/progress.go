package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/client"
)

// watch follows a batch until it reaches a terminal status, reporting each
// snapshot to p, and returns the final batch. It follows the server's event
// stream and reconnects when the stream drops (a server restart); if the
// server offers no stream it polls instead.
func watch(ctx context.Context, c *client.Client, b batchsender.Batch, p *progress) (batchsender.Batch, error) {
	last := b
	p.update(last)
	if last.Status.Terminal() {
		p.finish(last)
		return last, nil
	}
	poll := false
	failures := 0
	for {
		var err error
		if poll {
			last, err = c.BatchGet(ctx, b.ID)
			if err == nil {
				p.update(last)
				if last.Status.Terminal() {
					break
				}
			}
		} else {
			err = c.Events(ctx, b.ID, func(nb batchsender.Batch) error {
				last = nb
				failures = 0
				p.update(nb)
				return nil
			})
			if err == nil {
				break // the stream delivered the terminal snapshot
			}
			switch client.StatusCode(err) {
			case http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusNotImplemented:
				poll = true // a server without an event stream
				continue
			}
		}
		if ctx.Err() != nil {
			return last, ctx.Err()
		}
		if err != nil {
			if code := client.StatusCode(err); code == http.StatusUnauthorized || code == http.StatusForbidden ||
				(code == http.StatusNotFound && poll) {
				return last, err
			}
			failures++
			if failures > 30 {
				return last, fmt.Errorf("following batch %s: %w", b.ID, err)
			}
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-time.After(time.Second):
		}
	}
	p.finish(last)
	return last, nil
}

// progress draws a batch's progress on a writer: a bar redrawn in place on
// a terminal, or a line at most every logEvery elsewhere (logs, CI).
type progress struct {
	w        io.Writer
	tty      bool
	start    time.Time
	now      func() time.Time
	printed  time.Time
	lastLine string
	started  int64 // items already done when watching began, for the rate
	haveBase bool
}

// logEvery is how often a non-terminal writer gets a progress line.
const logEvery = time.Second

func newProgress(w io.Writer) *progress {
	return &progress{w: w, tty: isTerminal(w), start: time.Now(), now: time.Now}
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func done(c batchsender.Counts) int64 {
	return c.Succeeded + c.Failed + c.Cancelled + c.Skipped + c.Unknown
}

// line renders one snapshot.
func (p *progress) line(b batchsender.Batch) string {
	const width = 30
	d := done(b.Counts)
	if !p.haveBase {
		p.started, p.haveBase = d, true
	}
	frac := 0.0
	if b.Total > 0 {
		frac = float64(d) / float64(b.Total)
	}
	filled := int(frac * width)
	bar := strings.Repeat("=", filled)
	if filled < width {
		bar += ">" + strings.Repeat(" ", width-filled-1)
	}
	rate := ""
	if el := p.now().Sub(p.start).Seconds(); el > 0.5 && d > p.started {
		rate = fmt.Sprintf("  %.0f/s", float64(d-p.started)/el)
	}
	c := b.Counts
	s := fmt.Sprintf("[%s] %d/%d %3.0f%%  succeeded %d  failed %d  in flight %d  pending %d",
		bar, d, b.Total, frac*100, c.Succeeded, c.Failed, c.InFlight, c.Pending)
	if c.Cancelled > 0 {
		s += fmt.Sprintf("  cancelled %d", c.Cancelled)
	}
	if c.Unknown > 0 {
		s += fmt.Sprintf("  unknown %d", c.Unknown)
	}
	s += rate + "  " + string(b.Status)
	if b.StatusReason != "" {
		s += " (" + b.StatusReason + ")"
	}
	return s
}

func (p *progress) update(b batchsender.Batch) {
	l := p.line(b)
	now := p.now()
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s", l)
		return
	}
	if l != p.lastLine && now.Sub(p.printed) >= logEvery {
		fmt.Fprintln(p.w, l)
		p.printed, p.lastLine = now, l
	}
}

// finish prints the final state and a summary.
func (p *progress) finish(b batchsender.Batch) {
	l := p.line(b)
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s\n", l)
	} else if l != p.lastLine {
		fmt.Fprintln(p.w, l)
	}
	c := b.Counts
	fmt.Fprintf(p.w, "Batch %s %s in %s: %d succeeded, %d failed, %d cancelled, %d skipped, %d unknown of %d.\n",
		b.ID, b.Status, p.now().Sub(p.start).Round(100*time.Millisecond), c.Succeeded, c.Failed, c.Cancelled, c.Skipped, c.Unknown, b.Total)
}
