package smtp

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"math/big"
	"net"
	"net/mail"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"

	"github.com/batchsender/batchsender/sdk/sdktest"
)

const (
	testUser     = "mailer"
	testPassword = "hunter2-correct-horse"
)

// received is one message the fake accepted.
type received struct {
	from    string
	to      []string
	raw     []byte
	session int64
	tls     bool
	helo    string
}

// fakeOptions configure a fake SMTP server.
type fakeOptions struct {
	// tls: "none", "starttls" or "tls".
	tls string
	// mechs lists the AUTH mechanisms offered ("PLAIN", "LOGIN"); nil
	// means PLAIN and LOGIN.
	mechs []string
	// discard drops message bodies (benchmarks).
	discard bool
	// open lets clients send without AUTH.
	open bool
}

// fakeServer is a real SMTP server (emersion/go-smtp) on 127.0.0.1 whose
// answers the test controls. It implements sdktest.Fake.
type fakeServer struct {
	t        testing.TB
	srv      *gosmtp.Server
	addr     string
	port     int
	certPEM  string
	opts     fakeOptions
	quit     chan struct{}
	sessions atomic.Int64
	count    atomic.Int64

	mu    sync.Mutex
	b     sdktest.Behaviour
	hook  func(step string, s *fakeSession) error
	calls []sdktest.Call
	msgs  []received
	perS  map[int64]int
}

func newFake(t testing.TB, opts fakeOptions) *fakeServer {
	t.Helper()
	if opts.tls == "" {
		opts.tls = tlsNone
	}
	if opts.mechs == nil {
		opts.mechs = []string{sasl.Plain, sasl.Login}
	}
	f := &fakeServer{t: t, opts: opts, quit: make(chan struct{}), perS: map[int64]int{}}
	f.srv = gosmtp.NewServer(f)
	f.srv.Domain = "fake.test"
	f.srv.AllowInsecureAuth = true
	f.srv.ReadTimeout = 30 * time.Second
	f.srv.WriteTimeout = 30 * time.Second
	f.srv.MaxMessageBytes = 30 << 20
	f.srv.ErrorLog = log.New(io.Discard, "", 0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if opts.tls != tlsNone {
		cert, certPEM := selfSigned(t)
		f.certPEM = certPEM
		f.srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
		if opts.tls == tlsOn {
			ln = tls.NewListener(ln, f.srv.TLSConfig)
		}
	}
	f.addr = ln.Addr().String()
	f.port = ln.Addr().(*net.TCPAddr).Port
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.srv.Serve(ln)
	}()
	t.Cleanup(func() {
		close(f.quit)
		f.srv.Close()
		// Serve may not have registered ln yet when Close ran.
		ln.Close()
		<-done
	})
	return f
}

// Set implements sdktest.Fake.
func (f *fakeServer) Set(b sdktest.Behaviour) {
	f.mu.Lock()
	f.b = b
	f.mu.Unlock()
}

// Calls implements sdktest.Fake: one call per message that reached DATA.
func (f *fakeServer) Calls() []sdktest.Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]sdktest.Call(nil), f.calls...)
}

func (f *fakeServer) setHook(h func(step string, s *fakeSession) error) {
	f.mu.Lock()
	f.hook = h
	f.mu.Unlock()
}

func (f *fakeServer) messages() []received {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]received(nil), f.msgs...)
}

// perSession returns the number of messages each session carried.
func (f *fakeServer) perSession() map[int64]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[int64]int{}
	for k, v := range f.perS {
		out[k] = v
	}
	return out
}

func (f *fakeServer) state() (sdktest.Behaviour, func(string, *fakeSession) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.b, f.hook
}

// NewSession implements gosmtp.Backend.
func (f *fakeServer) NewSession(c *gosmtp.Conn) (gosmtp.Session, error) {
	return &fakeSession{f: f, c: c, id: f.sessions.Add(1)}, nil
}

type fakeSession struct {
	f      *fakeServer
	c      *gosmtp.Conn
	id     int64
	authed bool
	from   string
	to     []string
}

var (
	errRateLimited = &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 7, 1}, Message: "Throttling failure: Maximum sending rate exceeded"}
	errServer      = &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 3, 0}, Message: "Local error in processing"}
	errMailbox     = &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 1, 1}, Message: "Mailbox unavailable"}
	errPolicy      = &gosmtp.SMTPError{Code: 554, EnhancedCode: gosmtp.EnhancedCode{5, 7, 1}, Message: "Message rejected"}
)

func (s *fakeSession) AuthMechanisms() []string { return s.f.opts.mechs }

func (s *fakeSession) Auth(mech string) (sasl.Server, error) {
	check := func(user, pass string) error {
		if user != testUser || pass != testPassword {
			return gosmtp.ErrAuthFailed
		}
		s.authed = true
		return nil
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, user, pass string) error { return check(user, pass) }), nil
	case sasl.Login:
		return &loginServer{check: check}, nil
	}
	return nil, gosmtp.ErrAuthUnknownMechanism
}

func (s *fakeSession) Mail(from string, _ *gosmtp.MailOptions) error {
	if !s.authed && !s.f.opts.open {
		return gosmtp.ErrAuthRequired
	}
	b, hook := s.f.state()
	s.from = from
	if hook != nil {
		if err := hook("MAIL", s); err != nil {
			return err
		}
	}
	if b.Mode == sdktest.RateLimit {
		return errRateLimited
	}
	return nil
}

func (s *fakeSession) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	b, hook := s.f.state()
	if hook != nil {
		if err := hook("RCPT:"+to, s); err != nil {
			return err
		}
	}
	if b.Mode == sdktest.Reject {
		return errMailbox
	}
	s.to = append(s.to, to)
	return nil
}

func (s *fakeSession) Data(r io.Reader) error {
	var raw []byte
	var err error
	if s.f.opts.discard {
		_, err = io.Copy(io.Discard, r)
	} else {
		raw, err = io.ReadAll(r)
	}
	if err != nil {
		return err
	}
	b, hook := s.f.state()
	key := ""
	if !s.f.opts.discard {
		if m, err := mail.ReadMessage(bytes.NewReader(raw)); err == nil {
			key = m.Header.Get("Message-Id")
		}
	}
	_, isTLS := s.c.TLSConnectionState()
	s.f.count.Add(1)
	s.f.mu.Lock()
	s.f.calls = append(s.f.calls, sdktest.Call{Items: 1, Keys: []string{key}})
	s.f.mu.Unlock()
	if hook != nil {
		if err := hook("DATA", s); err != nil {
			return err
		}
	}
	switch b.Mode {
	case sdktest.ServerError:
		return errServer
	case sdktest.Hang:
		<-s.f.quit
		return errServer
	}
	for _, k := range b.RejectKeys {
		if strings.Contains(key, k) {
			return errPolicy
		}
	}
	s.f.mu.Lock()
	s.f.perS[s.id]++
	if !s.f.opts.discard {
		s.f.msgs = append(s.f.msgs, received{from: s.from, to: s.to, raw: raw, session: s.id, tls: isTLS, helo: s.c.Hostname()})
	}
	s.f.mu.Unlock()
	return nil
}

func (s *fakeSession) Reset() { s.from, s.to = "", nil }

func (s *fakeSession) Logout() error { return nil }

// loginServer is the server side of AUTH LOGIN, which go-sasl lacks.
type loginServer struct {
	check func(user, pass string) error
	user  *string
	step  int
}

func (l *loginServer) Next(response []byte) ([]byte, bool, error) {
	l.step++
	switch l.step {
	case 1:
		if len(response) > 0 { // initial response carries the user name
			u := string(response)
			l.user = &u
			l.step++
			return []byte("Password:"), false, nil
		}
		return []byte("Username:"), false, nil
	case 2:
		u := string(response)
		l.user = &u
		return []byte("Password:"), false, nil
	case 3:
		return nil, true, l.check(*l.user, string(response))
	}
	return nil, false, errors.New("unexpected LOGIN step")
}

// selfSigned makes a certificate for 127.0.0.1 and returns it with its PEM.
func selfSigned(t testing.TB) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "fake smtp"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return cert, string(certPEM)
}
