//go:build !unix

package storage

import (
	"os"
	"path/filepath"
)

// lockRoot creates ROOT/.lock; without flock the root is not protected from a second driver.
func lockRoot(root string) (*os.File, error) {
	return os.OpenFile(filepath.Join(root, lockName), os.O_RDWR|os.O_CREATE, fileMode)
}
