package unsubscribe_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/batchsender/batchsender/unsubscribe"
)

func TestSignVerifyRoundTrip(t *testing.T) {
	t.Parallel()
	s := unsubscribe.NewSigner(bytes.Repeat([]byte{1}, 32), "https://bs.example.com/")
	tok := unsubscribe.Token{ProjectID: "prj_1", Channel: "email", Address: "ann+news@example.com", ItemID: "itm_1"}
	u := s.URL(tok)
	token, ok := strings.CutPrefix(u, "https://bs.example.com/u/")
	if !ok || strings.ContainsAny(token, "/?#+= ") {
		t.Fatalf("URL = %q", u)
	}
	got, err := s.Verify(token)
	if err != nil || got != tok {
		t.Fatalf("Verify = %+v, %v; want %+v", got, err, tok)
	}
}

func TestVerifyRefusesForgeries(t *testing.T) {
	t.Parallel()
	s := unsubscribe.NewSigner(bytes.Repeat([]byte{1}, 32), "")
	other := unsubscribe.NewSigner(bytes.Repeat([]byte{2}, 32), "")
	tok := unsubscribe.Token{ProjectID: "prj_1", Channel: "email", Address: "ann@example.com", ItemID: "itm_1"}
	good := s.Sign(tok)
	payload, sig, _ := strings.Cut(good, ".")
	forgedPayload, _, _ := strings.Cut(s.Sign(unsubscribe.Token{ProjectID: "prj_1", Channel: "email", Address: "bob@example.com"}), ".")
	for name, token := range map[string]string{
		"other key":         other.Sign(tok),
		"swapped payload":   forgedPayload + "." + sig,
		"no signature":      payload,
		"empty":             "",
		"flipped signature": payload + "." + flip(sig),
		"junk":              "!!!.???",
		"too long":          strings.Repeat("a", 5000) + "." + sig,
	} {
		if _, err := s.Verify(token); err != unsubscribe.ErrInvalid {
			t.Errorf("%s: Verify = %v, want ErrInvalid", name, err)
		}
	}
	if s.URL(tok) != "" {
		t.Error("a signer without a public URL made a link")
	}
}

func flip(s string) string {
	b := []byte(s)
	if b[0] == 'A' {
		b[0] = 'B'
	} else {
		b[0] = 'A'
	}
	return string(b)
}
