package webhook

import (
	"context"
	"testing"
	"time"
)

func TestSharedDeadlines(t *testing.T) {
	var d sharedDeadlines
	parent, cancelParent := context.WithCancel(context.Background())
	defer cancelParent()
	now := time.Now()
	const timeout = time.Second

	a := d.ctx(parent, now, timeout)
	if dl, ok := a.Deadline(); !ok || dl.Before(now.Add(timeout)) || dl.After(now.Add(timeout+deadlineShare)) {
		t.Fatalf("deadline %v, want within [timeout, timeout+%v] of now", dl.Sub(now), deadlineShare)
	}
	if b := d.ctx(parent, now.Add(deadlineShare/2), timeout); b != a {
		t.Error("a request within the same window got a context of its own")
	}
	late := now.Add(deadlineShare)
	c := d.ctx(parent, late, timeout)
	if c == a {
		t.Error("a request after the window shared the old context, which would cut its timeout short")
	}
	if dl, _ := c.Deadline(); dl.Before(late.Add(timeout)) {
		t.Errorf("later request's deadline %v after its start, want at least the timeout", dl.Sub(late))
	}
	other, cancelOther := context.WithCancel(context.Background())
	defer cancelOther()
	if o := d.ctx(other, late, timeout); o == c {
		t.Error("requests of two parents shared a context")
	}

	cancelParent()
	select {
	case <-a.Done():
	case <-time.After(time.Second):
		t.Fatal("a shared context did not end with its parent")
	}
}
