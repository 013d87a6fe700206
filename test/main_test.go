package test

import (
	"os"
	"testing"
)

// TestMain removes the binaries the process tests compiled.
func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}
