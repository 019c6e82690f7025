package secretbox

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/batchsender/batchsender/providers"
)

func newKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func newBox(t *testing.T, key []byte) *Box {
	t.Helper()
	b, err := New(key)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSealOpenRoundTrip(t *testing.T) {
	t.Parallel()
	b := newBox(t, newKey(t))
	for _, plain := range [][]byte{nil, []byte(""), []byte(`{"signing_secret":"whsec_abc"}`), bytes.Repeat([]byte("x"), 100000)} {
		sealed, err := b.Seal(plain)
		if err != nil {
			t.Fatal(err)
		}
		if sealed[0] != 0x01 {
			t.Fatalf("version byte = %#x, want 0x01", sealed[0])
		}
		if len(plain) > 8 && bytes.Contains(sealed, plain[:8]) {
			t.Fatal("sealed value contains plaintext")
		}
		got, err := b.Open(sealed)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, plain) {
			t.Fatalf("Open(Seal(p)) = %q, want %q", got, plain)
		}
	}
}

func TestSealUsesFreshNonces(t *testing.T) {
	t.Parallel()
	b := newBox(t, newKey(t))
	s1, _ := b.Seal([]byte("same"))
	s2, _ := b.Seal([]byte("same"))
	if bytes.Equal(s1, s2) {
		t.Fatal("two seals of the same plaintext are equal")
	}
}

func TestOpenDetectsTampering(t *testing.T) {
	t.Parallel()
	b := newBox(t, newKey(t))
	sealed, err := b.Seal([]byte("secret value"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(sealed); i++ {
		bad := bytes.Clone(sealed)
		bad[i] ^= 0x01
		if _, err := b.Open(bad); !errors.Is(err, ErrOpen) {
			t.Fatalf("Open with byte %d flipped = %v, want ErrOpen", i, err)
		}
	}
	bad := bytes.Clone(sealed)
	bad[0] = 0x02
	if _, err := b.Open(bad); err == nil || !strings.Contains(err.Error(), "version") {
		t.Fatalf("Open with unknown version = %v, want a version error", err)
	}
	for _, n := range []int{0, 1, 13, overhead - 1} {
		if _, err := b.Open(sealed[:n]); !errors.Is(err, ErrOpen) {
			t.Fatalf("Open of %d bytes = %v, want ErrOpen", n, err)
		}
	}
}

func TestOpenFailsWithWrongKey(t *testing.T) {
	t.Parallel()
	sealed, err := newBox(t, newKey(t)).Seal([]byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newBox(t, newKey(t)).Open(sealed); !errors.Is(err, ErrOpen) {
		t.Fatalf("Open with another key = %v, want ErrOpen", err)
	}
}

func TestNewRejectsBadKeyLength(t *testing.T) {
	t.Parallel()
	for _, n := range []int{0, 16, 24, 31, 33} {
		if _, err := New(make([]byte, n)); err == nil {
			t.Errorf("New(%d bytes) = nil error", n)
		}
	}
}

func TestLoadKeyFromEnv(t *testing.T) {
	t.Parallel()
	key := newKey(t)
	for name, v := range map[string]string{
		"std":        base64.StdEncoding.EncodeToString(key),
		"raw std":    base64.RawStdEncoding.EncodeToString(key),
		"url":        base64.URLEncoding.EncodeToString(key),
		"raw url":    base64.RawURLEncoding.EncodeToString(key),
		"hex":        hex.EncodeToString(key),
		"HEX":        strings.ToUpper(hex.EncodeToString(key)),
		"whitespace": " " + base64.StdEncoding.EncodeToString(key) + "\n",
	} {
		got, err := LoadKey(v, "")
		if err != nil {
			t.Errorf("%s: LoadKey: %v", name, err)
			continue
		}
		if !bytes.Equal(got, key) {
			t.Errorf("%s: LoadKey returned another key", name)
		}
	}
}

func TestLoadKeyRejectsBadEnvValues(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for name, v := range map[string]string{
		"short base64": base64.StdEncoding.EncodeToString(make([]byte, 16)),
		"long base64":  base64.StdEncoding.EncodeToString(make([]byte, 40)),
		"short hex":    hex.EncodeToString(make([]byte, 31)),
		"garbage":      "not a key!",
		"passphrase":   "correct horse battery staple",
	} {
		_, err := LoadKey(v, dir)
		if err == nil {
			t.Errorf("%s: LoadKey accepted %q", name, v)
			continue
		}
		if !strings.Contains(err.Error(), "BATCHSENDER_SECRET_KEY") {
			t.Errorf("%s: error %q does not name the setting", name, err)
		}
		if strings.Contains(err.Error(), v) {
			t.Errorf("%s: error %q echoes the value", name, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, KeyFileName)); !os.IsNotExist(err) {
		t.Fatal("a bad env value fell back to creating a key file")
	}
}

func TestLoadKeyCreatesPrivateKeyFile(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "data")
	key, err := LoadKey("", dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(key) != KeySize {
		t.Fatalf("key is %d bytes", len(key))
	}
	path := filepath.Join(dir, KeyFileName)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode = %04o, want 0600", st.Mode().Perm())
	}
	again, err := LoadKey("", dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(key, again) {
		t.Fatal("second LoadKey returned a different key")
	}
	// The file content is accepted as BATCHSENDER_SECRET_KEY too.
	data, _ := os.ReadFile(path)
	fromEnv, err := LoadKey(string(data), "")
	if err != nil || !bytes.Equal(fromEnv, key) {
		t.Fatalf("key file content as env value: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("data dir holds %d entries, want only the key file", len(entries))
	}
}

func TestLoadKeyConcurrentStartersAgree(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	keys := make([][]byte, 8)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Go(func() {
			k, err := LoadKey("", dir)
			if err != nil {
				t.Error(err)
			}
			keys[i] = k
		})
	}
	wg.Wait()
	for _, k := range keys[1:] {
		if !bytes.Equal(k, keys[0]) {
			t.Fatal("concurrent LoadKey calls returned different keys")
		}
	}
}

func TestLoadKeyRefusesReadableKeyFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if _, err := LoadKey("", dir); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, KeyFileName)
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := LoadKey("", dir)
		if err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Fatalf("mode %04o: LoadKey = %v, want refusal naming chmod 600", mode, err)
		}
	}
}

func TestLoadKeyReadsRawAndRejectsCorruptFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key := newKey(t)
	path := filepath.Join(dir, KeyFileName)
	if err := os.WriteFile(path, key, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := LoadKey("", dir)
	if err != nil || !bytes.Equal(got, key) {
		t.Fatalf("raw key file: %v", err)
	}
	if err := os.WriteFile(path, []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKey("", dir); err == nil {
		t.Fatal("corrupt key file accepted")
	}
}

func TestEnvKeyWinsOverFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if _, err := LoadKey("", dir); err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	got, err := LoadKey(base64.StdEncoding.EncodeToString(key), dir)
	if err != nil || !bytes.Equal(got, key) {
		t.Fatalf("env key did not win: %v", err)
	}
}

// Box is what the provider cache opens connection secrets with.
var _ providers.Unsealer = (*Box)(nil)
