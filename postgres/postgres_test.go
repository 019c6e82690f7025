package postgres

import (
	"context"
	"testing"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/storetest"
)

// TestConformance runs the shared store suite, each subtest on a store in
// a fresh schema of its own.
func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Exercise(context.Background(), t, func(t *testing.T) batchsender.Store { return newStore(t) })
}
