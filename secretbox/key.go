package secretbox

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// KeyFileName is the name of the generated key file in the data directory.
const KeyFileName = "secret.key"

// LoadKey returns the 32-byte secrets key.
//
// When envValue (the operator's BATCHSENDER_SECRET_KEY) is set, it must be
// base64 (standard or URL alphabet, padded or not) or hex of exactly 32
// bytes. Otherwise the key is read from <dataDir>/secret.key, which is
// created with a fresh random key and mode 0600 when missing. A key file
// that group or others may access is refused, since anyone who reads it can
// read every stored secret.
//
// The generated file holds the key as standard base64 text and a newline,
// the same form BATCHSENDER_SECRET_KEY accepts, so an operator can move it
// into the environment; a file of exactly 32 raw bytes is accepted too.
func LoadKey(envValue string, dataDir string) ([]byte, error) {
	if v := strings.TrimSpace(envValue); v != "" {
		key, err := ParseKey(v)
		if err != nil {
			// Never echo the value: it is (a mistyped) secret.
			return nil, fmt.Errorf("BATCHSENDER_SECRET_KEY: %w", err)
		}
		return key, nil
	}
	if dataDir == "" {
		return nil, errors.New("no BATCHSENDER_SECRET_KEY and no data directory for a key file")
	}
	path := filepath.Join(dataDir, KeyFileName)
	key, err := readKeyFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return createKeyFile(dataDir, path)
	}
	return key, err
}

// ParseKey decodes a 32-byte key written as base64 (standard or URL
// alphabet, with or without padding) or hex. Errors never contain the
// value.
func ParseKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if len(s) == 2*KeySize {
		if key, err := hex.DecodeString(s); err == nil {
			return key, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		key, err := enc.DecodeString(s)
		if err != nil {
			continue
		}
		if len(key) != KeySize {
			return nil, fmt.Errorf("key decodes to %d bytes, want exactly %d (generate one with: openssl rand -base64 32)", len(key), KeySize)
		}
		return key, nil
	}
	return nil, fmt.Errorf("key is neither base64 nor hex of %d bytes (generate one with: openssl rand -base64 32)", KeySize)
}

func readKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening key file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("reading key file %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("key file %s is not a regular file", path)
	}
	if runtime.GOOS != "windows" && st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("key file %s has mode %04o, so group or others can read it; run chmod 600 %s", path, st.Mode().Perm(), path)
	}
	data, err := io.ReadAll(io.LimitReader(f, 1024))
	if err != nil {
		return nil, fmt.Errorf("reading key file %s: %w", path, err)
	}
	if len(data) == KeySize {
		return data, nil
	}
	key, err := ParseKey(string(bytes.TrimSpace(data)))
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return key, nil
}

// createKeyFile writes a new random key. It writes a temporary file and
// links it into place, so a concurrent starter never reads a half-written
// key and the first writer wins.
func createKeyFile(dataDir, path string) ([]byte, error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating data directory: %w", err)
	}
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generating key: %w", err)
	}
	tmp, err := os.CreateTemp(dataDir, ".secret.key-*")
	if err != nil {
		return nil, fmt.Errorf("creating key file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		_ = tmp.Close()
		return nil, fmt.Errorf("setting key file mode: %w", err)
	}
	if _, err := tmp.WriteString(base64.StdEncoding.EncodeToString(key) + "\n"); err != nil {
		_ = tmp.Close()
		return nil, fmt.Errorf("writing key file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		_ = tmp.Close()
		return nil, fmt.Errorf("syncing key file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("closing key file: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return readKeyFile(path)
		}
		return nil, fmt.Errorf("installing key file: %w", err)
	}
	if d, err := os.Open(dataDir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return key, nil
}
