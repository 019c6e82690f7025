package remote

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/batchsender/batchsender/sdk"
	"github.com/batchsender/batchsender/sdk/sdktest"
)

func TestConformanceGoModule(t *testing.T) {
	t.Parallel()
	sdktest.Run(t, sdktest.Harness{
		New:     func() sdk.Provider { return new(Provider) },
		NewFake: func(t *testing.T) sdktest.Fake { return newFakeModule(t) },
		Connection: func(fake sdktest.Fake) (json.RawMessage, json.RawMessage) {
			return fake.(*fakeModule).connection(nil)
		},
		Template:        json.RawMessage(`{"prefix":"[kit] "}`),
		Item:            sampleItem,
		InvalidItem:     json.RawMessage(`{"to":"user1"}`),
		Secrets:         []string{testSecret, testSecret[len("whsec_"):]},
		IdempotencyKeys: true,
		RetryAfter:      true,
		Timeout:         2 * time.Second,
	})
}
