// Command smtpsink is a local SMTP server for trying BatchSender's email
// module: it accepts every message (and any AUTH PLAIN credentials), keeps
// nothing, and prints each message's envelope, subject and
// List-Unsubscribe link. For development only; it never relays mail.
//
//	go run ./examples/smtpsink -addr 127.0.0.1:2525
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"log"
	"mime"
	"net/mail"
	"os"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:2525", "listen address")
	raw := flag.Bool("raw", false, "print every message whole")
	flag.Parse()
	srv := gosmtp.NewServer(backend{raw: *raw})
	srv.Addr = *addr
	srv.Domain = "smtpsink.local"
	srv.AllowInsecureAuth = true
	srv.ReadTimeout, srv.WriteTimeout = time.Minute, time.Minute
	srv.MaxMessageBytes = 30 << 20
	srv.ErrorLog = log.New(io.Discard, "", 0)
	fmt.Fprintf(os.Stderr, "smtpsink listening on %s\n", *addr)
	if err := srv.ListenAndServe(); err != nil {
		log.Fatal(err)
	}
}

type backend struct{ raw bool }

func (b backend) NewSession(*gosmtp.Conn) (gosmtp.Session, error) { return &session{raw: b.raw}, nil }

type session struct {
	raw  bool
	from string
	to   []string
}

func (s *session) AuthMechanisms() []string { return []string{sasl.Plain} }
func (s *session) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(string, string, string) error { return nil }), nil
}
func (s *session) Mail(from string, _ *gosmtp.MailOptions) error { s.from = from; return nil }
func (s *session) Rcpt(to string, _ *gosmtp.RcptOptions) error   { s.to = append(s.to, to); return nil }
func (s *session) Reset()                                        { s.from, s.to = "", nil }
func (s *session) Logout() error                                 { return nil }

func (s *session) Data(r io.Reader) error {
	body, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if s.raw {
		fmt.Printf("----- from %s to %s\n%s\n", s.from, strings.Join(s.to, ", "), body)
		return nil
	}
	subject, unsub := "?", ""
	if m, err := mail.ReadMessage(bytes.NewReader(body)); err == nil {
		subject = m.Header.Get("Subject")
		if d, err := new(mime.WordDecoder).DecodeHeader(subject); err == nil {
			subject = d
		}
		unsub = m.Header.Get("List-Unsubscribe")
	}
	fmt.Printf("to %s  subject %q\n", strings.Join(s.to, ", "), subject)
	if unsub != "" {
		fmt.Printf("   List-Unsubscribe: %s\n", unsub)
	}
	return nil
}
