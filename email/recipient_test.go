package email_test

import (
	"encoding/json"
	"testing"

	"github.com/batchsender/batchsender/email"
)

func TestRecipient(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		data string
		addr string
		ok   bool
	}{
		{`{"to":"Ann <Ann@Example.com>","first_name":"Ann"}`, "ann@example.com", true},
		{`{"to":" bob@example.com "}`, "bob@example.com", true},
		{`{"to":"not an address"}`, "", false},
		{`{"first_name":"x"}`, "", false},
		{`[1]`, "", false},
	} {
		ch, addr, ok := email.Recipient(json.RawMessage(tc.data))
		if ok != tc.ok || addr != tc.addr || (ok && ch != "email") {
			t.Errorf("Recipient(%s) = %q, %q, %v; want email, %q, %v", tc.data, ch, addr, ok, tc.addr, tc.ok)
		}
	}
}
