package main

// The standard providers. Each registers itself with the SDK registry from
// init(); adding a provider to the binary is one import line here.
import (
	_ "github.com/batchsender/batchsender/webhook" // webhook.http
)
