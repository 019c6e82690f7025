package auth_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/auth"
	"github.com/batchsender/batchsender/sqlite"
)

func newStore(t *testing.T) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "auth.db"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("opening store: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

var keyForm = regexp.MustCompile(`^bsk_[a-z2-7]{12}_[A-Za-z0-9_-]{43}$`)

func TestNewKey(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 50 {
		plain, id, hash, err := auth.NewKey()
		if err != nil {
			t.Fatal(err)
		}
		if !keyForm.MatchString(plain) {
			t.Fatalf("key %q is not of the form bsk_<12 base32>_<43 base64url>", plain)
		}
		if !strings.HasPrefix(plain, "bsk_"+id+"_") {
			t.Fatalf("key %q does not carry its ID %q", plain, id)
		}
		if auth.KeyID(plain) != id {
			t.Fatalf("KeyID(%q) = %q, want %q", plain, auth.KeyID(plain), id)
		}
		if string(hash) != string(auth.Hash(plain)) || len(hash) != 32 {
			t.Fatalf("hash is not the SHA-256 of the key")
		}
		if strings.Contains(string(hash), plain) {
			t.Fatal("hash contains the key")
		}
		if seen[id] || seen[plain] {
			t.Fatalf("duplicate key or ID %q", id)
		}
		seen[id], seen[plain] = true, true
	}
}

func TestKeyIDOfOtherForms(t *testing.T) {
	t.Parallel()
	for _, k := range []string{"my-own-bootstrap-key-123", "bsk_short", "bsk_ABCDEFGHIJKL_secret", "bsk_abcdefghijkl-secret"} {
		id := auth.KeyID(k)
		if !regexp.MustCompile(`^h[0-9a-f]{16}$`).MatchString(id) {
			t.Errorf("KeyID(%q) = %q, want a derived h+16 hex ID", k, id)
		}
	}
	if auth.KeyID("a-key-that-is-long-enough") == auth.KeyID("a-key-that-is-long-enougH") {
		t.Error("different keys share a derived ID")
	}
}

func TestCreateKeyAndAuthenticate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := newStore(t)

	plain, key, err := auth.CreateKey(ctx, store, "acme", "ci", batchsender.RoleMember)
	if err != nil {
		t.Fatal(err)
	}
	if key.Role != batchsender.RoleMember || key.Name != "ci" || key.ProjectID == "" {
		t.Fatalf("unexpected key record %+v", key)
	}
	t.Run("AuthenticatesTheKey", func(t *testing.T) {
		got, err := auth.Authenticate(ctx, store, plain)
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != key.ID || got.ProjectID != key.ProjectID {
			t.Fatalf("got key %+v, want %+v", got, key)
		}
	})
	t.Run("SecondKeyJoinsTheSameProject", func(t *testing.T) {
		_, key2, err := auth.CreateKey(ctx, store, "acme", "", batchsender.RoleAdmin)
		if err != nil {
			t.Fatal(err)
		}
		if key2.ProjectID != key.ProjectID || key2.ID == key.ID || key2.Name != "key" {
			t.Fatalf("second key %+v, first %+v", key2, key)
		}
	})
	t.Run("RejectsEveryWrongKeyAlike", func(t *testing.T) {
		id := auth.KeyID(plain)
		other, _, _, _ := auth.NewKey()
		wrongSecret := plain[:len(plain)-1] + flip(plain[len(plain)-1])
		unknownID := "bsk_" + "aaaaaaaaaaaa" + plain[len("bsk_")+12:]
		for name, k := range map[string]string{
			"empty": "", "wrong secret": wrongSecret, "unknown id": unknownID, "other key": other,
			"id only": "bsk_" + id, "garbage": "hello", "huge": strings.Repeat("x", 10000),
		} {
			_, err := auth.Authenticate(ctx, store, k)
			if batchsender.ErrorCode(err) != batchsender.EUNAUTHORIZED {
				t.Errorf("%s: got %v, want EUNAUTHORIZED", name, err)
				continue
			}
			if err.Error() != "unauthorized: invalid API key" {
				t.Errorf("%s: error %q differs from the one answer to every bad key", name, err)
			}
		}
	})
	t.Run("RejectsBadRole", func(t *testing.T) {
		_, _, err := auth.CreateKey(ctx, store, "acme", "x", "root")
		if batchsender.ErrorCode(err) != batchsender.EINVALID {
			t.Fatalf("got %v, want EINVALID", err)
		}
	})
	t.Run("RejectsEmptyProject", func(t *testing.T) {
		_, _, err := auth.CreateKey(ctx, store, " ", "x", batchsender.RoleAdmin)
		if batchsender.ErrorCode(err) != batchsender.EINVALID {
			t.Fatalf("got %v, want EINVALID", err)
		}
	})
}

func flip(c byte) string {
	if c == 'A' {
		return "B"
	}
	return "A"
}

func TestBootstrap(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("AnyLongEnoughStringBecomesAnAdminKeyOfDefault", func(t *testing.T) {
		t.Parallel()
		store := newStore(t)
		const k = "dev-bootstrap-key-0123456789"
		if err := auth.Bootstrap(ctx, store, k); err != nil {
			t.Fatal(err)
		}
		key, err := auth.Authenticate(ctx, store, k)
		if err != nil {
			t.Fatal(err)
		}
		def, err := store.ProjectGetByName(ctx, "default")
		if err != nil {
			t.Fatal(err)
		}
		if key.Role != batchsender.RoleAdmin || key.ProjectID != def.ID {
			t.Fatalf("bootstrap key %+v, want admin of project %s", key, def.ID)
		}
		// A restart with the same key changes nothing.
		if err := auth.Bootstrap(ctx, store, k); err != nil {
			t.Fatalf("second bootstrap: %v", err)
		}
		if _, err := auth.Authenticate(ctx, store, k+"x"); batchsender.ErrorCode(err) != batchsender.EUNAUTHORIZED {
			t.Fatalf("a longer key authenticated: %v", err)
		}
	})
	t.Run("AcceptsAKeyOfTheGeneratedForm", func(t *testing.T) {
		t.Parallel()
		store := newStore(t)
		plain, _, _, err := auth.NewKey()
		if err != nil {
			t.Fatal(err)
		}
		if err := auth.Bootstrap(ctx, store, plain); err != nil {
			t.Fatal(err)
		}
		if err := auth.Bootstrap(ctx, store, plain); err != nil {
			t.Fatal(err)
		}
		if _, err := auth.Authenticate(ctx, store, plain); err != nil {
			t.Fatal(err)
		}
		// Same key ID, another secret: refused rather than silently ignored.
		other := plain[:len(plain)-1] + flip(plain[len(plain)-1])
		if err := auth.Bootstrap(ctx, store, other); batchsender.ErrorCode(err) != batchsender.ECONFLICT {
			t.Fatalf("got %v, want ECONFLICT", err)
		}
	})
	t.Run("RejectsShortOrSpacedKeys", func(t *testing.T) {
		t.Parallel()
		store := newStore(t)
		for _, k := range []string{"", "short", "fifteen-chars-x", "has a space in it okay"} {
			err := auth.Bootstrap(ctx, store, k)
			if batchsender.ErrorCode(err) != batchsender.EINVALID || !strings.Contains(err.Error(), "BATCHSENDER_BOOTSTRAP_KEY") {
				t.Errorf("Bootstrap(%q) = %v, want a clear EINVALID", k, err)
			}
		}
		if _, err := store.ProjectGetByName(ctx, "default"); !batchsender.IsNotFound(err) {
			t.Fatalf("a rejected bootstrap created the default project: %v", err)
		}
	})
}
