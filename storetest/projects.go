package storetest

import (
	"bytes"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/batchsender/batchsender"
)

func init() {
	register(
		test{"ProjectCreateAndGetByName", func(t *testing.T, f *fixture) {
			p, err := f.s.ProjectCreate(f.ctx, "acme")
			if err != nil {
				t.Fatalf("ProjectCreate: %v", err)
			}
			if p.ID == "" || p.Name != "acme" {
				t.Fatalf("ProjectCreate = %+v", p)
			}
			near(t, "CreatedAt", p.CreatedAt, time.Now())
			got, err := f.s.ProjectGetByName(f.ctx, "acme")
			if err != nil {
				t.Fatalf("ProjectGetByName: %v", err)
			}
			if got.ID != p.ID || got.Name != p.Name || !got.CreatedAt.Equal(p.CreatedAt) {
				t.Fatalf("ProjectGetByName = %+v, want %+v", got, p)
			}
		}},
		test{"ProjectCreateConflictsOnName", func(t *testing.T, f *fixture) {
			_, err := f.s.ProjectCreate(f.ctx, f.a.Name)
			wantCode(t, err, batchsender.ECONFLICT)
		}},
		test{"ProjectGetByNameNotFound", func(t *testing.T, f *fixture) {
			_, err := f.s.ProjectGetByName(f.ctx, "nope")
			wantCode(t, err, batchsender.ENOTFOUND)
		}},
		test{"APIKeyCreateAndGet", func(t *testing.T, f *fixture) {
			hash := bytes.Repeat([]byte{0xab}, 32)
			k, err := f.s.APIKeyCreate(f.ctx, batchsender.APIKeyCreateParams{
				ID: "key_1", ProjectID: f.a.ID, Name: "ci", Role: batchsender.RoleAdmin, SecretHash: hash,
			})
			if err != nil {
				t.Fatalf("APIKeyCreate: %v", err)
			}
			got, err := f.s.APIKeyGetByID(f.ctx, "key_1")
			if err != nil {
				t.Fatalf("APIKeyGetByID: %v", err)
			}
			if got.ID != "key_1" || got.ProjectID != f.a.ID || got.Name != "ci" || got.Role != batchsender.RoleAdmin ||
				!bytes.Equal(got.SecretHash, hash) || !got.CreatedAt.Equal(k.CreatedAt) {
				t.Fatalf("APIKeyGetByID = %+v, created %+v", got, k)
			}
			near(t, "CreatedAt", got.CreatedAt, time.Now())
		}},
		test{"APIKeyCreateConflictsOnID", func(t *testing.T, f *fixture) {
			p := batchsender.APIKeyCreateParams{ID: "key_1", ProjectID: f.a.ID, Name: "a", Role: batchsender.RoleMember, SecretHash: []byte{1}}
			if _, err := f.s.APIKeyCreate(f.ctx, p); err != nil {
				t.Fatalf("APIKeyCreate: %v", err)
			}
			p.ProjectID = f.b.ID
			_, err := f.s.APIKeyCreate(f.ctx, p)
			wantCode(t, err, batchsender.ECONFLICT)
		}},
		test{"APIKeyGetByIDNotFound", func(t *testing.T, f *fixture) {
			_, err := f.s.APIKeyGetByID(f.ctx, "key_missing")
			wantCode(t, err, batchsender.ENOTFOUND)
		}},
		test{"ConnectionCreateAndGet", func(t *testing.T, f *fixture) {
			c := f.conA
			if c.ID == "" || c.ProjectID != f.a.ID || c.Provider != "webhook.http" || c.Name != "hooks" {
				t.Fatalf("ConnectionCreate = %+v", c)
			}
			for _, key := range []string{c.ID, c.Name} {
				got, err := f.s.ConnectionGet(f.ctx, f.a.ID, key)
				if err != nil {
					t.Fatalf("ConnectionGet(%q): %v", key, err)
				}
				sameConnection(t, got, c)
			}
			got, err := f.s.ConnectionGetByID(f.ctx, c.ID)
			if err != nil {
				t.Fatalf("ConnectionGetByID: %v", err)
			}
			sameConnection(t, got, c)
		}},
		test{"ConnectionCreateConflictsOnNameInProject", func(t *testing.T, f *fixture) {
			_, err := f.s.ConnectionCreate(f.ctx, batchsender.ConnectionCreateParams{
				ProjectID: f.a.ID, Provider: "email.smtp", Name: "hooks", Config: json.RawMessage(`{}`),
			})
			wantCode(t, err, batchsender.ECONFLICT)
			// The same name in another project is fine; fixture B has one.
			if f.conB.Name != f.conA.Name {
				t.Fatalf("fixture connections should share a name")
			}
		}},
		test{"ConnectionGetReturnsNotFoundForOtherProject", func(t *testing.T, f *fixture) {
			for _, key := range []string{f.conB.ID, "missing", "con_missing"} {
				_, err := f.s.ConnectionGet(f.ctx, f.a.ID, key)
				wantCode(t, err, batchsender.ENOTFOUND)
			}
			// By name, each project sees its own connection.
			got, err := f.s.ConnectionGet(f.ctx, f.b.ID, "hooks")
			if err != nil || got.ID != f.conB.ID {
				t.Fatalf("ConnectionGet(B, hooks) = %s, %v; want %s", got.ID, err, f.conB.ID)
			}
			_, err = f.s.ConnectionGetByID(f.ctx, "con_missing")
			wantCode(t, err, batchsender.ENOTFOUND)
		}},
		test{"ConnectionListOldestFirstOwnProjectOnly", func(t *testing.T, f *fixture) {
			c2 := f.connection(t, f.a.ID, "second")
			c3 := f.connection(t, f.a.ID, "third")
			got, err := f.s.ConnectionList(f.ctx, f.a.ID)
			if err != nil {
				t.Fatalf("ConnectionList: %v", err)
			}
			var names []string
			for _, c := range got {
				names = append(names, c.ID)
			}
			if want := []string{f.conA.ID, c2.ID, c3.ID}; !slices.Equal(names, want) {
				t.Fatalf("ConnectionList = %v, want %v", names, want)
			}
			p, err := f.s.ProjectCreate(f.ctx, "empty")
			if err != nil {
				t.Fatalf("ProjectCreate: %v", err)
			}
			got, err = f.s.ConnectionList(f.ctx, p.ID)
			if err != nil || len(got) != 0 {
				t.Fatalf("ConnectionList(empty project) = %v, %v", got, err)
			}
		}},
	)
}

func sameConnection(t *testing.T, got, want batchsender.Connection) {
	t.Helper()
	if got.ID != want.ID || got.ProjectID != want.ProjectID || got.Provider != want.Provider || got.Name != want.Name ||
		!bytes.Equal(got.SecretsSealed, want.SecretsSealed) || !slices.Equal(got.SecretNames, want.SecretNames) ||
		!got.CreatedAt.Equal(want.CreatedAt) {
		t.Fatalf("connection = %+v, want %+v", got, want)
	}
	sameJSON(t, "Config", got.Config, want.Config)
}
