// Package auth makes, stores and checks API keys.
//
// A key reads bsk_<key ID>_<secret>: the key ID is 12 random base32
// characters and doubles as the lookup key in the store; the secret is 32
// random bytes in unpadded base64url. Only the SHA-256 hash of the whole key
// is stored, and it is compared in constant time. A key is shown once, when
// it is made, and can never be read back.
//
// An operator may also choose a key of any form (BATCHSENDER_BOOTSTRAP_KEY).
// Such a key gets a key ID derived from its hash ("h" + 16 hex digits), so
// Authenticate finds it the same way.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/batchsender/batchsender"
)

const (
	// Prefix starts every key made by NewKey, so keys are easy to spot in
	// secret scanners and logs that must be cleaned.
	Prefix = "bsk_"
	// keyIDLen is the number of base32 characters of a key ID (60 bits).
	keyIDLen = 12
	// secretLen is the number of random bytes of a key's secret.
	secretLen = 32
	// MinBootstrapKeyLen is the shortest key an operator may choose.
	MinBootstrapKeyLen = 16
	// maxKeyLen bounds what Authenticate hashes, so a huge header costs nothing.
	maxKeyLen = 512
	// DefaultProject is the project that receives the bootstrap key.
	DefaultProject = "default"
)

// keyIDEncoding writes key IDs in lower-case base32 without padding: no
// underscore, so the key splits unambiguously.
var keyIDEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// errUnauthorized is the one answer to every bad key, so a caller cannot
// tell an unknown key ID from a wrong secret.
func errUnauthorized() error {
	return batchsender.Errorf(batchsender.EUNAUTHORIZED, "invalid API key")
}

// NewKey returns a fresh random key, its key ID and the hash to store.
func NewKey() (plaintext, keyID string, hash []byte, err error) {
	var idRaw [8]byte // 64 random bits, of which the first 60 make the ID
	if _, err := rand.Read(idRaw[:]); err != nil {
		return "", "", nil, fmt.Errorf("reading randomness for a key ID: %w", err)
	}
	keyID = keyIDEncoding.EncodeToString(idRaw[:])[:keyIDLen]
	var secret [secretLen]byte
	if _, err := rand.Read(secret[:]); err != nil {
		return "", "", nil, fmt.Errorf("reading randomness for a key secret: %w", err)
	}
	plaintext = Prefix + keyID + "_" + base64.RawURLEncoding.EncodeToString(secret[:])
	return plaintext, keyID, Hash(plaintext), nil
}

// Hash returns the SHA-256 hash of a whole key, as stored.
func Hash(plaintext string) []byte {
	sum := sha256.Sum256([]byte(plaintext))
	return sum[:]
}

// KeyID returns the key ID under which a key is stored: the ID embedded in a
// bsk_ key, or an ID derived from the hash of a key of any other form.
func KeyID(plaintext string) string {
	if id, ok := parse(plaintext); ok {
		return id
	}
	sum := sha256.Sum256([]byte(plaintext))
	return "h" + hex.EncodeToString(sum[:8])
}

// parse returns the key ID of a well-formed bsk_ key.
func parse(plaintext string) (keyID string, ok bool) {
	rest, found := strings.CutPrefix(plaintext, Prefix)
	if !found || len(rest) < keyIDLen+2 || rest[keyIDLen] != '_' {
		return "", false
	}
	id := rest[:keyIDLen]
	for i := 0; i < len(id); i++ {
		c := id[i]
		if (c < 'a' || c > 'z') && (c < '2' || c > '7') {
			return "", false
		}
	}
	return id, true
}

// dummyHash is compared against when no key matches, so that an unknown key
// ID costs the same work as a wrong secret.
var dummyHash = Hash("bsk_000000000000_dummy")

// Authenticate returns the stored key that plaintext is. Every wrong key,
// whatever is wrong with it, gives the same EUNAUTHORIZED error; a failing
// store gives its own error, which is not the caller's fault.
func Authenticate(ctx context.Context, store batchsender.Store, plaintext string) (batchsender.APIKey, error) {
	if plaintext == "" || len(plaintext) > maxKeyLen {
		return batchsender.APIKey{}, errUnauthorized()
	}
	given := Hash(plaintext)
	key, err := store.APIKeyGetByID(ctx, KeyID(plaintext))
	switch {
	case batchsender.IsNotFound(err):
		subtle.ConstantTimeCompare(given, dummyHash)
		return batchsender.APIKey{}, errUnauthorized()
	case err != nil:
		return batchsender.APIKey{}, fmt.Errorf("looking up API key: %w", err)
	}
	if subtle.ConstantTimeCompare(given, key.SecretHash) != 1 {
		return batchsender.APIKey{}, errUnauthorized()
	}
	return key, nil
}

// CreateKey makes a new key in the named project, creating the project if it
// does not exist yet, and returns the key's plaintext (to show once) and its
// stored record. role is RoleAdmin or RoleMember; an empty keyName becomes
// "key".
func CreateKey(ctx context.Context, store batchsender.Store, projectName, keyName, role string) (plaintext string, key batchsender.APIKey, err error) {
	if err := checkRole(role); err != nil {
		return "", batchsender.APIKey{}, err
	}
	if keyName == "" {
		keyName = "key"
	}
	project, err := EnsureProject(ctx, store, projectName)
	if err != nil {
		return "", batchsender.APIKey{}, err
	}
	plaintext, keyID, hash, err := NewKey()
	if err != nil {
		return "", batchsender.APIKey{}, err
	}
	key, err = store.APIKeyCreate(ctx, batchsender.APIKeyCreateParams{
		ID: keyID, ProjectID: project.ID, Name: keyName, Role: role, SecretHash: hash,
	})
	if err != nil {
		return "", batchsender.APIKey{}, fmt.Errorf("storing API key: %w", err)
	}
	return plaintext, key, nil
}

// EnsureProject returns the named project, creating it if it is new. Two
// callers racing to create the same project both get it.
func EnsureProject(ctx context.Context, store batchsender.Store, name string) (batchsender.Project, error) {
	if strings.TrimSpace(name) == "" {
		return batchsender.Project{}, batchsender.Errorf(batchsender.EINVALID, "project name must not be empty")
	}
	if len(name) > 200 {
		return batchsender.Project{}, batchsender.Errorf(batchsender.EINVALID, "project name must be at most 200 bytes")
	}
	p, err := store.ProjectGetByName(ctx, name)
	if err == nil {
		return p, nil
	}
	if !batchsender.IsNotFound(err) {
		return batchsender.Project{}, fmt.Errorf("looking up project %q: %w", name, err)
	}
	p, err = store.ProjectCreate(ctx, name)
	if batchsender.ErrorCode(err) == batchsender.ECONFLICT {
		// Created by someone else since our look-up.
		p, err = store.ProjectGetByName(ctx, name)
	}
	if err != nil {
		return batchsender.Project{}, fmt.Errorf("creating project %q: %w", name, err)
	}
	return p, nil
}

// Bootstrap makes plaintext an admin key of project "default" unless that key
// exists already, so scripts and Docker Compose can choose a key up front.
// The key may be any string of at least MinBootstrapKeyLen bytes. It is an
// error if plaintext's key ID is taken by a different key.
func Bootstrap(ctx context.Context, store batchsender.Store, plaintext string) error {
	if len(plaintext) < MinBootstrapKeyLen {
		return batchsender.Errorf(batchsender.EINVALID,
			"BATCHSENDER_BOOTSTRAP_KEY must be at least %d characters long, got %d", MinBootstrapKeyLen, len(plaintext))
	}
	if len(plaintext) > maxKeyLen {
		return batchsender.Errorf(batchsender.EINVALID,
			"BATCHSENDER_BOOTSTRAP_KEY must be at most %d characters long, got %d", maxKeyLen, len(plaintext))
	}
	if strings.TrimSpace(plaintext) != plaintext || strings.ContainsAny(plaintext, " \t\r\n") {
		return batchsender.Errorf(batchsender.EINVALID,
			"BATCHSENDER_BOOTSTRAP_KEY must not contain spaces or line breaks: it is sent in an HTTP header")
	}
	for attempt := 0; ; attempt++ {
		done, err := bootstrapOnce(ctx, store, plaintext)
		if done || err != nil {
			return err
		}
		if attempt == 1 {
			return fmt.Errorf("creating bootstrap key: key ID %s keeps conflicting", KeyID(plaintext))
		}
	}
}

// bootstrapOnce reports done once the key exists; false without error means
// another process created the key ID concurrently and the check must run again.
func bootstrapOnce(ctx context.Context, store batchsender.Store, plaintext string) (bool, error) {
	keyID, hash := KeyID(plaintext), Hash(plaintext)
	existing, err := store.APIKeyGetByID(ctx, keyID)
	switch {
	case err == nil:
		if subtle.ConstantTimeCompare(existing.SecretHash, hash) != 1 {
			return false, batchsender.Errorf(batchsender.ECONFLICT,
				"BATCHSENDER_BOOTSTRAP_KEY: key ID %s already belongs to another key", keyID)
		}
		return true, nil
	case !batchsender.IsNotFound(err):
		return false, fmt.Errorf("looking up bootstrap key: %w", err)
	}
	project, err := EnsureProject(ctx, store, DefaultProject)
	if err != nil {
		return false, err
	}
	_, err = store.APIKeyCreate(ctx, batchsender.APIKeyCreateParams{
		ID: keyID, ProjectID: project.ID, Name: "bootstrap", Role: batchsender.RoleAdmin, SecretHash: hash,
	})
	if batchsender.ErrorCode(err) == batchsender.ECONFLICT {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("storing bootstrap key: %w", err)
	}
	return true, nil
}

func checkRole(role string) error {
	switch role {
	case batchsender.RoleAdmin, batchsender.RoleMember:
		return nil
	}
	return batchsender.Errorf(batchsender.EINVALID, "role must be %q or %q, got %q",
		batchsender.RoleAdmin, batchsender.RoleMember, role)
}
