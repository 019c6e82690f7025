//go:build !unix

package main

import (
	"fmt"
	"os"
)

// lockDataDir only creates the directory on systems without flock: the
// operator must make sure one server runs per data directory.
func lockDataDir(dir string) (release func() error, err error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("creating data directory: %w", err)
	}
	return func() error { return nil }, nil
}
