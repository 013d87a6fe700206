package fsm

import (
	"net"
	"strconv"
)

// TaskView is a read-only view of one task for the scheduler, valid only inside the
// callback of FSM.ReadTask (it reads the live state under the FSM's read lock, without
// copying the piece map). It implements scheduler.View.
type TaskView struct {
	s *state
	t *task
}

// ReadTask calls fn with a view of the task, under the read lock; false when the task does
// not exist. fn must not keep the view, nor call other FSM methods.
func (f *FSM) ReadTask(taskID string, fn func(v TaskView)) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	t := f.s.tasks[taskID]
	if t == nil {
		return false
	}
	fn(TaskView{s: f.s, t: t})
	return true
}

// Info returns the task's public state without copying its piece map.
func (v TaskView) Info() (generation uint64, status TaskStatus, pieceSize, contentLength, pieceCount int64) {
	t := v.t
	return t.generation, t.status, t.pieceSize, t.contentLength, t.pieceCount
}

// Digest returns the SHA-256 of piece n, if a member has cached it.
func (v TaskView) Digest(n uint32) ([32]byte, bool) {
	if int(n) >= len(v.t.digests) || v.t.digests[n] == ([32]byte{}) {
		return [32]byte{}, false
	}
	return v.t.digests[n], true
}

// KnownPieces is the number of leading piece slots that may have a digest (pieces past it
// are not cached anywhere yet).
func (v TaskView) KnownPieces() uint32 { return uint32(len(v.t.digests)) }

// Holds reports whether the peer holds piece n.
func (v TaskView) Holds(peerID string, n uint32) bool {
	b := v.t.holders[peerID]
	return b != nil && b.has(n)
}

// HeldBy returns how many pieces the peer holds, and whether it takes part in the task.
func (v TaskView) HeldBy(peerID string) (count int, joined bool) {
	b, joined := v.t.holders[peerID]
	if b == nil {
		return 0, joined
	}
	return b.count, joined
}

// PieceSet is a set of piece numbers.
type PieceSet interface{ Has(n uint32) bool }

// Has reports whether piece n is in the set.
func (b *bitset) Has(n uint32) bool { return b.has(n) }

// Holder is a peer of the task that holds at least one piece.
type Holder struct {
	ID           string
	Addr         string   // IP:port of its upload server
	RegisteredAt int64    // leader clock, unix ns
	Count        int      // pieces it holds
	Pieces       PieceSet // the pieces it holds (read only inside ReadTask)
}

// SampleHolders returns up to max peers that hold pieces of the task, other than skip,
// visiting at most budget entries of the piece map. The order is Go's map order: a
// different sample on every call, so that load spreads over a large swarm.
func (v TaskView) SampleHolders(max, budget int, skip string) []Holder {
	out := make([]Holder, 0, min(max, len(v.t.holders)))
	visited := 0
	for id, b := range v.t.holders {
		if len(out) >= max || visited >= budget {
			break
		}
		visited++
		if b == nil || b.count == 0 || id == skip {
			continue
		}
		p := v.s.peers[id]
		if p == nil {
			continue
		}
		out = append(out, Holder{ID: id, Addr: net.JoinHostPort(p.ip, strconv.Itoa(int(p.port))),
			RegisteredAt: p.registeredAt, Count: b.count, Pieces: b})
	}
	return out
}

// CachedBy returns the live members that have cached piece n, in ID order.
func (v TaskView) CachedBy(n uint32) []MemberInfo {
	var out []MemberInfo
	for _, id := range sortedKeys(v.t.cached) {
		b := v.t.cached[id]
		m := v.s.members[id]
		if b != nil && b.has(n) && m != nil && m.alive {
			out = append(out, MemberInfo{ID: m.id, HTTPAddr: m.httpAddr, RaftAddr: m.raftAddr, Alive: true})
		}
	}
	return out
}

// BadReports returns how many pieces peers reported bad from a source.
func (v TaskView) BadReports(sourceID string) uint32 { return v.t.badSources[sourceID] }

// PeerRegistration is a peer's ID and when it registered (leader clock, unix ns).
type PeerRegistration struct {
	ID           string
	RegisteredAt int64
}

// PeerRegistrations lists every registered peer (for the leader's expiry of peers that
// stopped sending heartbeats).
func (f *FSM) PeerRegistrations() []PeerRegistration {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]PeerRegistration, 0, len(f.s.peers))
	for id, p := range f.s.peers {
		out = append(out, PeerRegistration{ID: id, RegisteredAt: p.registeredAt})
	}
	return out
}
