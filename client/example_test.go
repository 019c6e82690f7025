package client_test

import (
	"context"
	"fmt"
	"log"
	"strings"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/client"
)

// Example sends three signed webhooks and follows the batch to its end.
func Example() {
	srv, err := startAPI() // a BatchSender server and a webhook receiver on loopback
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	ctx := context.Background()

	c := client.New(srv.URL, testKey)
	defer c.Close()

	_, err = c.ConnectionCreate(ctx, client.ConnectionCreateRequest{
		Provider: "webhook.http",
		Name:     "hooks",
		Secrets:  map[string]string{"signing_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
	})
	if err != nil {
		log.Fatal(err)
	}
	b, err := c.BatchCreate(ctx, client.BatchCreateRequest{
		Module:     "webhook",
		Connection: "hooks",
		Template:   map[string]any{"url": srv.Receiver + "/orders"},
		Items: []any{
			map[string]any{"payload": map[string]any{"order": 1}},
			map[string]any{"payload": map[string]any{"order": 2}},
			map[string]any{"payload": map[string]any{"order": 3}},
		},
		Options: &batchsender.BatchOptions{MaxAttempts: 3},
	})
	if err != nil {
		log.Fatal(err)
	}

	var final batchsender.Batch
	err = c.Events(ctx, b.ID, func(b batchsender.Batch) error {
		final = b // called at once and on every change until the batch is done
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(final.Status, final.Counts.Succeeded, "of", final.Total)
	// Output: completed 3 of 3
}

// ExampleClient_BatchUploadItems streams a CSV file into a draft batch and
// starts it. A bad row rejects the whole upload; the error names it.
func ExampleClient_BatchUploadItems() {
	srv, err := startAPI()
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	ctx := context.Background()
	c := client.New(srv.URL, testKey)
	defer c.Close()
	if _, err := c.ConnectionCreate(ctx, client.ConnectionCreateRequest{
		Provider: "webhook.http", Name: "hooks",
		Secrets: map[string]string{"signing_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
	}); err != nil {
		log.Fatal(err)
	}

	draft, err := c.BatchCreate(ctx, client.BatchCreateRequest{Module: "webhook", Connection: "hooks"})
	if err != nil {
		log.Fatal(err)
	}
	_, err = c.BatchUploadItems(ctx, draft.ID, client.ContentTypeCSV,
		strings.NewReader("url,payload.name\n"+srv.Receiver+"/a,Ann\n"+srv.Receiver+"/b\n"+srv.Receiver+"/c,Cy,extra\n"))
	fmt.Println(err)

	draft, err = c.BatchUploadItems(ctx, draft.ID, client.ContentTypeCSV,
		strings.NewReader("url,payload.name\n"+srv.Receiver+"/a,Ann\n"+srv.Receiver+"/b,Bob\n"))
	if err != nil {
		log.Fatal(err)
	}
	started, err := c.BatchStart(ctx, draft.ID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(started.Total, "items,", started.Status)
	// Output:
	// 400 Invalid request: row 2 (line 3): 1 cell where the header has 2 columns
	// 2 items, running
}
