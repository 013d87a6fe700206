// Package scheduler owns how peers are given work: the policy that picks the next pieces
// and their sources (arriving with its own issue), and the live load it reads, which is not
// replicated: each member keeps the heartbeats it receives in a LoadTable.
//
// How the scheduler sees load: a peer's heartbeat (PUT /peers/{id}/heartbeat) lands on one
// member and is recorded there, in memory, with the time it arrived. Raft carries no
// per-heartbeat writes. The scheduler on a member combines the replicated piece map (who
// holds what) with this table (who is busy); DESIGN.md says how members will share it.
package scheduler

import (
	"sync"
	"time"
)

// Load is what a member knows, live, of one peer.
type Load struct {
	UploadsRunning int
	LastSeen       time.Time
}

// LoadTable holds the latest heartbeat of each peer, in memory. Safe for concurrent use.
type LoadTable struct {
	mu    sync.RWMutex
	peers map[string]Load
	now   func() time.Time
}

// NewLoadTable returns an empty table; now is the clock (nil: time.Now).
func NewLoadTable(now func() time.Time) *LoadTable {
	if now == nil {
		now = time.Now
	}
	return &LoadTable{peers: map[string]Load{}, now: now}
}

// Heartbeat records a peer's heartbeat.
func (t *LoadTable) Heartbeat(peerID string, uploadsRunning int) {
	t.mu.Lock()
	t.peers[peerID] = Load{UploadsRunning: uploadsRunning, LastSeen: t.now()}
	t.mu.Unlock()
}

// Get returns a peer's last known load.
func (t *LoadTable) Get(peerID string) (Load, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	l, ok := t.peers[peerID]
	return l, ok
}

// Forget drops a peer (it left or was expired).
func (t *LoadTable) Forget(peerID string) {
	t.mu.Lock()
	delete(t.peers, peerID)
	t.mu.Unlock()
}

// Len is the number of peers in the table.
func (t *LoadTable) Len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.peers)
}
