package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Identity is what a member keeps in its data directory so that a restart needs no flags:
// its ID and the addresses the other members know it by.
type Identity struct {
	ID            string `json:"id"`
	HTTPAddr      string `json:"http_addr"`      // where it listens
	RaftAddr      string `json:"raft_addr"`      // where it listens
	AdvertiseHTTP string `json:"advertise_http"` // what the others use
	AdvertiseRaft string `json:"advertise_raft"`
}

const identityFile = "member.json"

// LoadIdentity reads the identity stored in dataDir. ok is false when there is none (a new
// member).
func LoadIdentity(dataDir string) (id Identity, ok bool, err error) {
	p, err := os.ReadFile(filepath.Join(dataDir, identityFile))
	if errors.Is(err, os.ErrNotExist) {
		return Identity{}, false, nil
	}
	if err != nil {
		return Identity{}, false, fmt.Errorf("read identity: %w", err)
	}
	if err := json.Unmarshal(p, &id); err != nil {
		return Identity{}, false, fmt.Errorf("read identity %s: %w", filepath.Join(dataDir, identityFile), err)
	}
	return id, true, nil
}

// SaveIdentity writes id into dataDir atomically (temp file, fsync, rename).
func SaveIdentity(dataDir string, id Identity) error {
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	p, _ := json.MarshalIndent(id, "", "  ")
	tmp, err := os.CreateTemp(dataDir, identityFile+".*")
	if err != nil {
		return fmt.Errorf("write identity: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(p, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write identity: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write identity: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write identity: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dataDir, identityFile)); err != nil {
		return fmt.Errorf("write identity: %w", err)
	}
	return nil
}
