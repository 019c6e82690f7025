package smtp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/batchsender/batchsender/email"
	"github.com/batchsender/batchsender/sdk"
)

// trackConn records whether a write failed, so that a failure while the
// message's final "." was being written (Retry) can be told from one while
// waiting for the reply (Unknown).
type trackConn struct {
	net.Conn
	writeFailed atomic.Bool
}

func (t *trackConn) Write(b []byte) (int, error) {
	n, err := t.Conn.Write(b)
	if err != nil {
		t.writeFailed.Store(true)
	}
	return n, err
}

// conn is one SMTP session that carries many messages.
type conn struct {
	cl       *client
	raw      *trackConn
	sent     int
	failed   bool // the last transaction failed: RSET before the next
	inData   bool // the current message's DATA was accepted
	lastUsed time.Time
}

// stage says what became of the connection after a send.
type stage int

const (
	stageOK       stage = iota
	stageRejected       // an SMTP error reply; the session goes on
	stageBroken         // the connection is unusable
)

// send carries one message through MAIL, RCPT and DATA.
func (c *conn) send(ctx context.Context, timeout time.Duration, m *email.Message, raw []byte) (sdk.Result, stage) {
	// Closing the socket is the way to make a blocked read or write return
	// when ctx ends.
	stop := context.AfterFunc(ctx, func() { c.raw.Close() })
	defer stop()
	c.cl.timeout = timeout
	c.inData = false
	c.lastUsed = time.Now()
	fail := func(step string, err error) (sdk.Result, stage) {
		var re *replyError
		if errors.As(err, &re) {
			st := stageRejected
			if re.Code == 421 {
				st = stageBroken // "service closing"
			}
			return smtpResult(step, re), st
		}
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return sdk.Retry(fmt.Errorf("%s: %w", step, err)), stageBroken
	}
	if c.failed {
		if _, _, err := c.cl.cmd(2, "RSET"); err != nil {
			r, _ := fail("RSET", err)
			return r, stageBroken
		}
		c.failed = false
	}
	if err := c.cl.envelope(m.From.Address, m.Recipients()); err != nil {
		var te *txError
		if errors.As(err, &te) {
			return fail(te.step, te.err)
		}
		return fail("MAIL FROM", err)
	}
	c.inData = true
	c.raw.writeFailed.Store(false)
	if err := c.cl.body(raw); err != nil {
		// The final "." did not leave: the server cannot accept a
		// message it did not receive in full.
		r, _ := fail("writing message", err)
		return r, stageBroken
	}
	_, msg, err := c.cl.reply(2)
	if err != nil {
		var re *replyError
		if errors.As(err, &re) {
			return fail("end of DATA", err)
		}
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return sdk.Unknown(fmt.Errorf("message sent, no reply from the server: %w", err)), stageBroken
	}
	r := sdk.OK(m.MessageID)
	r.StatusCode = 250
	r.Response = truncate(msg, responseLimit)
	return r, stageOK
}

// dial opens, secures and authenticates one session.
func (p *Provider) dial(ctx context.Context) (*conn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	nc, err := p.env.Dialer(ctx, "tcp", p.addr)
	if err != nil {
		return nil, err
	}
	tc := &trackConn{Conn: nc}
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	ok := false
	defer func() {
		if !ok {
			nc.Close()
		}
	}()
	var cl *client
	switch p.cfg.TLS {
	case tlsOn:
		tlsc := tls.Client(tc, p.tlsConf)
		if err := tlsc.HandshakeContext(ctx); err != nil {
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		cl = newClient(tc, tlsc, p.timeout)
	default:
		cl = newClient(tc, tc, p.timeout)
	}
	if err := cl.hello(p.cfg.HELO, true); err != nil {
		return nil, fmt.Errorf("EHLO: %w", err)
	}
	if p.cfg.TLS == tlsStart {
		if err := cl.startTLS(p.tlsConf, p.cfg.HELO); err != nil {
			return nil, fmt.Errorf("STARTTLS: %w", err)
		}
	}
	if p.secrets.Username != "" {
		var a sasl.Client
		switch {
		case cl.supportsAuth("PLAIN"):
			a = sasl.NewPlainClient("", p.secrets.Username, p.secrets.Password)
		case cl.supportsAuth("LOGIN"):
			a = sasl.NewLoginClient(p.secrets.Username, p.secrets.Password)
		default:
			return nil, errors.New("the server offers neither AUTH PLAIN nor AUTH LOGIN")
		}
		if err := cl.auth(a); err != nil {
			return nil, fmt.Errorf("AUTH: %w", err)
		}
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	ok = true
	return &conn{cl: cl, raw: tc, lastUsed: time.Now()}, nil
}

// pool keeps idle sessions and bounds the open ones to pool_size: a
// session in use holds a token of sem.
type pool struct {
	p      *Provider
	sem    chan struct{}
	mu     sync.Mutex
	idle   []*conn
	closed bool
}

// get returns an idle session or dials a new one.
func (pl *pool) get(ctx context.Context) (*conn, error) {
	select {
	case pl.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	now := time.Now()
	pl.mu.Lock()
	for len(pl.idle) > 0 {
		c := pl.idle[len(pl.idle)-1]
		pl.idle = pl.idle[:len(pl.idle)-1]
		if now.Sub(c.lastUsed) < idleTimeout {
			pl.mu.Unlock()
			return c, nil
		}
		c.raw.Close() // the server has likely dropped it
	}
	pl.mu.Unlock()
	c, err := pl.p.dial(ctx)
	if err != nil {
		<-pl.sem
		return nil, err
	}
	return c, nil
}

// put returns a healthy session: kept for reuse below the message cap,
// else closed with QUIT.
func (pl *pool) put(c *conn) {
	defer func() { <-pl.sem }()
	pl.mu.Lock()
	if !pl.closed && c.sent < pl.p.cfg.MaxMessagesPerConnection {
		c.lastUsed = time.Now()
		pl.idle = append(pl.idle, c)
		pl.mu.Unlock()
		return
	}
	pl.mu.Unlock()
	quit(c)
}

// drop closes a broken session.
func (pl *pool) drop(c *conn) {
	c.raw.Close()
	<-pl.sem
}

func (pl *pool) close() {
	pl.mu.Lock()
	idle := pl.idle
	pl.idle, pl.closed = nil, true
	pl.mu.Unlock()
	for _, c := range idle {
		quit(c)
	}
}

// quit ends a session politely, waiting at most a second for the reply.
func quit(c *conn) { c.cl.quit() }
