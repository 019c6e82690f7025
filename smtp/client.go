package smtp

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
)

// replyError is an SMTP error reply (4xx or 5xx, or an unexpected code).
type replyError struct {
	Code int
	// Msg is the reply text, starting with the enhanced status code when
	// the server sends one ("5.1.1 Mailbox unavailable").
	Msg string
}

func (e *replyError) Error() string { return fmt.Sprintf("%d %s", e.Code, e.Msg) }

// client is a small SMTP client (RFC 5321) for submission. It exists,
// instead of a general library client, for PIPELINING (RFC 2920): MAIL,
// RCPT and DATA leave in one write and the body in a second, so a message
// costs two round trips instead of four, which is most of the cost of a
// pooled session. Every command is bounded by timeout through deadlines;
// closing the socket is how the caller cancels.
type client struct {
	raw     *trackConn // the TCP connection, under TLS when there is TLS
	nc      net.Conn   // raw, or the TLS connection over it
	r       *textproto.Reader
	w       *bufio.Writer
	ext     map[string]string
	timeout time.Duration
}

func newClient(raw *trackConn, nc net.Conn, timeout time.Duration) *client {
	c := &client{raw: raw, timeout: timeout}
	c.setConn(nc)
	return c
}

func (c *client) setConn(nc net.Conn) {
	c.nc = nc
	c.r = textproto.NewReader(bufio.NewReader(nc))
	c.w = bufio.NewWriterSize(nc, 32<<10)
}

func (c *client) deadline() { c.nc.SetDeadline(time.Now().Add(c.timeout)) }

// reply reads one reply and checks its code class against want (2 or 3;
// 0 accepts any code).
func (c *client) reply(want int) (int, string, error) {
	code, msg, err := c.r.ReadResponse(0)
	if err != nil {
		return 0, "", err
	}
	if want != 0 && code/100 != want {
		return code, msg, &replyError{Code: code, Msg: strings.ReplaceAll(msg, "\n", " ")}
	}
	return code, msg, nil
}

// cmd sends one command and reads its reply.
func (c *client) cmd(want int, line string) (int, string, error) {
	c.deadline()
	if _, err := c.w.WriteString(line + "\r\n"); err != nil {
		return 0, "", err
	}
	if err := c.w.Flush(); err != nil {
		return 0, "", err
	}
	return c.reply(want)
}

// hello reads the greeting (when greet) and says EHLO, falling back to HELO.
func (c *client) hello(name string, greet bool) error {
	if greet {
		c.deadline()
		if _, _, err := c.reply(2); err != nil {
			return fmt.Errorf("greeting: %w", err)
		}
	}
	_, msg, err := c.cmd(2, "EHLO "+name)
	var re *replyError
	if errors.As(err, &re) && re.Code >= 500 {
		c.ext = map[string]string{}
		_, _, err = c.cmd(2, "HELO "+name)
		return err
	}
	if err != nil {
		return err
	}
	c.ext = map[string]string{}
	lines := strings.Split(msg, "\n")
	for _, l := range lines[1:] {
		k, v, _ := strings.Cut(l, " ")
		c.ext[strings.ToUpper(k)] = v
	}
	return nil
}

func (c *client) startTLS(conf *tls.Config, name string) error {
	if _, ok := c.ext["STARTTLS"]; !ok {
		return errors.New("the server does not offer STARTTLS")
	}
	if _, _, err := c.cmd(2, "STARTTLS"); err != nil {
		return err
	}
	tc := tls.Client(c.raw, conf)
	c.deadline()
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	c.setConn(tc)
	return c.hello(name, false)
}

func (c *client) supportsAuth(mech string) bool {
	for _, m := range strings.Fields(c.ext["AUTH"]) {
		if strings.EqualFold(m, mech) {
			return true
		}
	}
	return false
}

// auth runs a SASL exchange (RFC 4954).
func (c *client) auth(a sasl.Client) error {
	mech, ir, err := a.Start()
	if err != nil {
		return err
	}
	line := "AUTH " + mech
	if ir != nil {
		enc := "="
		if len(ir) > 0 {
			enc = base64.StdEncoding.EncodeToString(ir)
		}
		line += " " + enc
	}
	for {
		code, msg, err := c.cmd(0, line)
		if err != nil {
			return err
		}
		switch code {
		case 235:
			return nil
		case 334:
			challenge, err := base64.StdEncoding.DecodeString(msg)
			if err != nil {
				c.cmd(0, "*")
				return errors.New("AUTH: undecodable challenge")
			}
			resp, err := a.Next(challenge)
			if err != nil {
				c.cmd(0, "*")
				return err
			}
			line = base64.StdEncoding.EncodeToString(resp)
		default:
			return &replyError{Code: code, Msg: msg}
		}
	}
}

// txError is a failed step of a mail transaction.
type txError struct {
	step string
	err  error
}

func (e *txError) Error() string { return e.step + ": " + e.err.Error() }
func (e *txError) Unwrap() error { return e.err }

// envelope sends MAIL, RCPT and DATA, pipelined when the server offers
// PIPELINING, and returns nil once the server is ready for the body (354).
func (c *client) envelope(from string, to []string) error {
	cmds := make([]string, 0, len(to)+2)
	steps := make([]string, 0, len(to)+2)
	cmds = append(cmds, "MAIL FROM:<"+from+">")
	steps = append(steps, "MAIL FROM")
	for _, r := range to {
		cmds = append(cmds, "RCPT TO:<"+r+">")
		steps = append(steps, "RCPT TO")
	}
	cmds = append(cmds, "DATA")
	steps = append(steps, "DATA")
	if _, ok := c.ext["PIPELINING"]; !ok {
		for i, line := range cmds {
			want := 2
			if i == len(cmds)-1 {
				want = 3
			}
			if _, _, err := c.cmd(want, line); err != nil {
				return &txError{steps[i], err}
			}
		}
		return nil
	}
	c.deadline()
	for _, line := range cmds {
		c.w.WriteString(line + "\r\n")
	}
	if err := c.w.Flush(); err != nil {
		return &txError{"MAIL FROM", err}
	}
	var first error
	for i := range cmds {
		want := 2
		if i == len(cmds)-1 {
			want = 3
		}
		code, _, err := c.reply(want)
		if err != nil {
			var re *replyError
			if !errors.As(err, &re) {
				return &txError{steps[i], err} // the connection failed
			}
			if first == nil {
				first = &txError{steps[i], err}
			}
			continue
		}
		if code == 354 && first != nil {
			// DATA was accepted although an earlier command failed:
			// send an empty message to close it, and expect refusal.
			c.cmd(0, ".")
		}
	}
	return first
}

// body writes the message, dot-stuffed, and the final ".". It returns
// whether every byte, the "." included, was handed to the connection.
func (c *client) body(msg []byte) error {
	c.deadline()
	dw := textproto.NewWriter(c.w).DotWriter()
	if _, err := dw.Write(msg); err != nil {
		return err
	}
	return dw.Close() // writes ".\r\n" and flushes
}

// quit says QUIT, waiting at most a second, and closes the connection.
func (c *client) quit() {
	c.timeout = time.Second
	c.cmd(2, "QUIT")
	c.nc.Close()
}

var _ io.Closer = (*trackConn)(nil)
