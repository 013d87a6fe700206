package main

import (
	"os"
	"syscall"
)

// dropCache asks the kernel to drop the cached pages of a file (posix_fadvise DONTNEED;
// its pages are clean), so that the next read comes from the disk.
func dropCache(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	const posixFadvDontneed = 4
	if _, _, errno := syscall.Syscall6(syscall.SYS_FADVISE64, f.Fd(), 0, 0, posixFadvDontneed, 0, 0); errno != 0 {
		return errno
	}
	return nil
}
