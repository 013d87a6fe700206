//go:build linux

package storage

import (
	"os"

	"golang.org/x/sys/unix"
)

// readAheadFile asks the kernel to read all of an open file into the page cache at once
// (without waiting), rather than in readahead windows as it is sent.
func readAheadFile(f *os.File) {
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_WILLNEED)
}

// readAhead asks the kernel to start reading a file into the page cache (without waiting),
// so that a reader going through pieces in order finds the next one there.
func readAhead(path string) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	readAheadFile(f)
	f.Close()
}
