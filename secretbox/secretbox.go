// Package secretbox encrypts connection secrets at rest with AES-256-GCM.
//
// A sealed value is a versioned envelope:
//
//	version (1 byte, 0x01) | nonce (12 random bytes) | ciphertext and GCM tag
//
// The version byte is also authenticated as additional data, so it cannot be
// swapped. Random 96-bit nonces are safe for far more seals than BatchSender
// makes under one key (NIST's limit is 2^32 per key).
//
// Not yet good: there is no key rotation (one key, no key ID in the
// envelope); a new envelope version can add it.
package secretbox

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
)

// KeySize is the key length: AES-256.
const KeySize = 32

const (
	version1  = 0x01
	nonceSize = 12
	overhead  = 1 + nonceSize + 16
)

// ErrOpen is returned (wrapped) when a sealed value cannot be opened: it was
// altered, truncated, or sealed with another key.
var ErrOpen = errors.New("secretbox: message authentication failed (tampered data or wrong key)")

// Box seals and opens secrets with one key. It is safe for concurrent use.
type Box struct {
	aead cipher.AEAD
}

// New returns a Box for a 32-byte key.
func New(key []byte) (*Box, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("secretbox: key must be %d bytes, got %d", KeySize, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("creating AES cipher: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("creating GCM: %w", err)
	}
	return &Box{aead: aead}, nil
}

// Seal encrypts plain into a new envelope with a fresh random nonce.
func (b *Box) Seal(plain []byte) ([]byte, error) {
	out := make([]byte, 1+nonceSize, overhead+len(plain))
	out[0] = version1
	if _, err := rand.Read(out[1 : 1+nonceSize]); err != nil {
		return nil, fmt.Errorf("reading random nonce: %w", err)
	}
	return b.aead.Seal(out, out[1:1+nonceSize], plain, out[:1]), nil
}

// Open decrypts an envelope made by Seal. It fails with an error wrapping
// ErrOpen when the envelope was altered or sealed with another key.
func (b *Box) Open(sealed []byte) ([]byte, error) {
	if len(sealed) < overhead {
		return nil, fmt.Errorf("opening sealed secret: %d bytes is too short: %w", len(sealed), ErrOpen)
	}
	if sealed[0] != version1 {
		return nil, fmt.Errorf("opening sealed secret: unsupported envelope version %d", sealed[0])
	}
	plain, err := b.aead.Open(nil, sealed[1:1+nonceSize], sealed[1+nonceSize:], sealed[:1])
	if err != nil {
		return nil, fmt.Errorf("opening sealed secret: %w", ErrOpen)
	}
	return plain, nil
}
