//go:build unix

package storage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// lockRoot takes an exclusive advisory lock (flock) on ROOT/.lock, so that a second driver
// (another process, or a leftover instance in this one) cannot open the same root and remove
// the temporary files of writes still in progress. The kernel drops it when the process dies.
func lockRoot(root string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(root, lockName), os.O_RDWR|os.O_CREATE, fileMode)
	if err != nil {
		return nil, fmt.Errorf("storage: opening lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("storage: %s is in use by another driver", root)
		}
		return nil, fmt.Errorf("storage: locking %s: %w", root, err)
	}
	return f, nil
}
