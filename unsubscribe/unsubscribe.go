// Package unsubscribe signs and verifies the tokens of BatchSender's
// one-click unsubscribe links (RFC 8058): PUBLIC_URL/u/{token}.
//
// A token names the project, channel, address and item it was made for and
// carries an HMAC-SHA256 over them, so the link itself is the credential:
// whoever holds it may unsubscribe that one address from that one project,
// nothing more, and no one can make a token for another address. The HMAC
// key is derived from the server's secret key with a fixed label, so it
// never equals the key that seals connection secrets, and every node of a
// cluster (which shares the secret key) verifies every other node's links.
//
// Tokens do not expire: an unsubscribe link in a mail read a year later must
// still work (RFC 8058 and the mailbox providers' bulk sender rules).
package unsubscribe

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
)

// label derives the signing key from the secret key; changing it
// invalidates every link ever sent.
const label = "batchsender unsubscribe token v1"

// maxToken bounds what Verify looks at, so junk costs nothing.
const maxToken = 2048

// ErrInvalid is returned for every token that does not verify. It says
// nothing more on purpose.
var ErrInvalid = errors.New("invalid unsubscribe token")

// Token is what a link unsubscribes.
type Token struct {
	ProjectID string
	Channel   string // the module: "email"
	Address   string // normalized recipient address
	ItemID    string // the item whose message carried the link
}

// Signer makes and checks tokens and links. It is safe for concurrent use.
type Signer struct {
	key  []byte
	base string
}

// NewSigner derives the signing key from the server's secret key. base is
// BATCHSENDER_PUBLIC_URL, the start of every link ("" makes no links).
func NewSigner(secretKey []byte, base string) *Signer {
	m := hmac.New(sha256.New, secretKey)
	m.Write([]byte(label))
	return &Signer{key: m.Sum(nil), base: strings.TrimRight(base, "/")}
}

// Sign returns the token for t: base64url(JSON payload) "." base64url(MAC).
func (s *Signer) Sign(t Token) string {
	payload, _ := json.Marshal([]string{t.ProjectID, t.Channel, t.Address, t.ItemID}) // strings always marshal
	p := base64.RawURLEncoding.EncodeToString(payload)
	return p + "." + base64.RawURLEncoding.EncodeToString(s.mac(p))
}

// Links reports whether the signer makes links (it has a public URL).
func (s *Signer) Links() bool { return s != nil && s.base != "" }

// URL returns the unsubscribe link for t, or "" when there is no public URL.
func (s *Signer) URL(t Token) string {
	if s == nil || s.base == "" {
		return ""
	}
	return s.base + "/u/" + s.Sign(t)
}

// Verify checks a token in constant time and returns what it names.
func (s *Signer) Verify(token string) (Token, error) {
	if len(token) > maxToken {
		return Token{}, ErrInvalid
	}
	p, sig, ok := strings.Cut(token, ".")
	if !ok {
		return Token{}, ErrInvalid
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, s.mac(p)) {
		return Token{}, ErrInvalid
	}
	payload, err := base64.RawURLEncoding.DecodeString(p)
	if err != nil {
		return Token{}, ErrInvalid
	}
	var f []string
	if err := json.Unmarshal(payload, &f); err != nil || len(f) != 4 || f[0] == "" || f[1] == "" || f[2] == "" {
		return Token{}, ErrInvalid
	}
	return Token{ProjectID: f[0], Channel: f[1], Address: f[2], ItemID: f[3]}, nil
}

func (s *Signer) mac(payload string) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(payload))
	return m.Sum(nil)
}
