//go:build !linux

package storage

import "os"

// readAhead and readAheadFile are no-ops where posix_fadvise is not available.
func readAhead(string)         {}
func readAheadFile(f *os.File) {}
