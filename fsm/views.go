package fsm

import (
	"context"
	"math/bits"
	"slices"
	"sort"
)

// The read side: copies of state, safe to keep after the lock is released.

// MemberInfo is a member as the replicated state knows it.
type MemberInfo struct {
	ID, HTTPAddr, RaftAddr string
	Alive                  bool
}

// PeerInfo is a peer and the tasks it takes part in (sorted).
type PeerInfo struct {
	ID, IP, Hostname string
	Port             uint16
	RegisteredAt     int64
	Tasks            []string
}

// TaskInfo is a task's public state. Headers are included for the members' own use (the
// owner sends them to the origin); the HTTP API never returns them.
type TaskInfo struct {
	ID, URL, Digest string
	Headers         map[string]string
	Filter          []string
	CreatedAt       int64
	AccessedAt      int64
	Generation      uint64
	Status          TaskStatus
	PieceSize       int64
	ContentLength   int64
	PieceCount      int64
	PiecesCached    int64 // pieces cached by at least one member
	Peers           int64
	Owner           string // the member whose claim to fetch it is committed ("" = none yet)
}

// PreheatInfo is a preheat's state.
type PreheatInfo struct {
	ID, Kind, URL, Status, Error string
	Headers                      map[string]string
	CreatedAt                    int64
}

// AppliedIndex is the index of the last log entry applied.
func (f *FSM) AppliedIndex() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.applied
}

// WaitApplied blocks until the FSM has applied index, or ctx ends (its error is returned).
func (f *FSM) WaitApplied(ctx context.Context, index uint64) error {
	for {
		f.mu.RLock()
		applied, ch := f.applied, f.appliedCh
		f.mu.RUnlock()
		if applied >= index {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Members returns every member, sorted by ID.
func (f *FSM) Members() []MemberInfo {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]MemberInfo, 0, len(f.s.members))
	for _, m := range f.s.members {
		out = append(out, MemberInfo{ID: m.id, HTTPAddr: m.httpAddr, RaftAddr: m.raftAddr, Alive: m.alive})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Member returns one member.
func (f *FSM) Member(id string) (MemberInfo, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	m := f.s.members[id]
	if m == nil {
		return MemberInfo{}, false
	}
	return MemberInfo{ID: m.id, HTTPAddr: m.httpAddr, RaftAddr: m.raftAddr, Alive: m.alive}, true
}

// Peer returns one peer.
func (f *FSM) Peer(id string) (PeerInfo, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	p := f.s.peers[id]
	if p == nil {
		return PeerInfo{}, false
	}
	return PeerInfo{ID: p.id, IP: p.ip, Hostname: p.hostname, Port: p.port,
		RegisteredAt: p.registeredAt, Tasks: sortedKeys(p.tasks)}, true
}

// Task returns one task.
func (f *FSM) Task(id string) (TaskInfo, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	t := f.s.tasks[id]
	if t == nil {
		return TaskInfo{}, false
	}
	return taskInfo(t), true
}

func taskInfo(t *task) TaskInfo {
	return TaskInfo{ID: t.id, URL: t.url, Digest: t.digest, Headers: cloneMap(t.headers),
		Filter: append([]string(nil), t.filter...), CreatedAt: t.createdAt, AccessedAt: t.accessedAt,
		Generation: t.generation, Status: t.status, PieceSize: t.pieceSize,
		ContentLength: t.contentLength, PieceCount: t.pieceCount,
		PiecesCached: int64(unionCount(t.cached, nil)), Peers: int64(len(t.holders)), Owner: t.owner}
}

// PieceDigest returns the SHA-256 of piece n of the task's current generation, if cached.
func (f *FSM) PieceDigest(taskID string, n uint32) (digest [32]byte, generation uint64, ok bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	t := f.s.tasks[taskID]
	if t == nil || int(n) >= len(t.digests) || t.digests[n] == ([32]byte{}) {
		return digest, 0, false
	}
	return t.digests[n], t.generation, true
}

// PeerHolds reports whether a peer holds piece n of a task.
func (f *FSM) PeerHolds(taskID, peerID string, n uint32) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	t := f.s.tasks[taskID]
	if t == nil {
		return false
	}
	b := t.holders[peerID]
	return b != nil && b.has(n)
}

// HeldCount returns how many (peer, piece) pairs the piece map of a task records.
func (f *FSM) HeldCount(taskID string) int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	t := f.s.tasks[taskID]
	if t == nil {
		return 0
	}
	n := 0
	for _, b := range t.holders {
		if b != nil {
			n += b.count
		}
	}
	return n
}

// BadSources returns how many pieces peers reported bad per source, for a task.
func (f *FSM) BadSources(taskID string) map[string]uint32 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	t := f.s.tasks[taskID]
	if t == nil {
		return nil
	}
	return cloneMap(t.badSources)
}

// Preheat returns one preheat.
func (f *FSM) Preheat(id string) (PreheatInfo, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	p := f.s.preheats[id]
	if p == nil {
		return PreheatInfo{}, false
	}
	return PreheatInfo{ID: p.id, Kind: p.kind, URL: p.url, Status: p.status, Error: p.err,
		Headers: cloneMap(p.headers), CreatedAt: p.createdAt}, true
}

// Counts returns the number of members, peers, tasks and preheats.
func (f *FSM) Counts() (members, peers, tasks, preheats int) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return len(f.s.members), len(f.s.peers), len(f.s.tasks), len(f.s.preheats)
}

// unionCount counts the pieces in at least one of the bitsets whose key include accepts
// (nil: all).
func unionCount(m map[string]*bitset, include func(key string) bool) int {
	var words []uint64
	for k, b := range m {
		if b == nil || (include != nil && !include(k)) {
			continue
		}
		if len(b.words) > len(words) {
			words = append(words, make([]uint64, len(b.words)-len(words))...)
		}
		for i, w := range b.words {
			words[i] |= w
		}
	}
	n := 0
	for _, w := range words {
		n += bits.OnesCount64(w)
	}
	return n
}

// RingEpoch is the current epoch of the owners' ring (it grows with every committed change
// of the set of live members).
func (f *FSM) RingEpoch() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.s.ringEpoch
}

// RingOwners returns the task's owners on the ring of live members now (n of them).
func (f *FSM) RingOwners(taskID string, n int) []string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.s.ring.Owners(taskID, n)
}

// OwnedTask is a task that a member owns on the current ring and that is not complete.
type OwnedTask struct {
	TaskInfo
	Claimed    bool   // the member's claim is committed (it may fetch and commit pieces)
	ClaimEpoch uint64 // the ring epoch of the task's current claim, by whomever
	RingEpoch  uint64 // the ring epoch these answers are for
}

// OwnedTasks lists the tasks memberID owns on the ring of live members that need a fetch,
// sorted by ID: pending or running ones, and complete ones some of whose pieces no live
// member has cached any more (their only copies were on members that died).
func (f *FSM) OwnedTasks(memberID string) []OwnedTask {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []OwnedTask
	for _, id := range sortedKeys(f.s.tasks) {
		t := f.s.tasks[id]
		if f.s.ring.Owner(id) != memberID || !(t.status == TaskPending || t.status == TaskRunning || f.s.lostPieces(t)) {
			continue
		}
		out = append(out, OwnedTask{TaskInfo: taskInfo(t), Claimed: t.owner == memberID,
			ClaimEpoch: t.ownerEpoch, RingEpoch: f.s.ringEpoch})
	}
	return out
}

// lostPieces reports whether a complete task has pieces that no live member has cached.
func (s *state) lostPieces(t *task) bool {
	if t.status != TaskSuccess || t.pieceCount <= 0 {
		return false
	}
	live := func(m string) bool { return s.members[m] != nil && s.members[m].alive }
	return int64(unionCount(t.cached, live)) < t.pieceCount
}

// PieceCachedBy returns the members that have cached piece n of the task's current
// generation, sorted.
func (f *FSM) PieceCachedBy(taskID string, n uint32) []string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	t := f.s.tasks[taskID]
	if t == nil {
		return nil
	}
	var out []string
	for _, m := range sortedKeys(t.cached) {
		if b := t.cached[m]; b != nil && b.has(n) {
			out = append(out, m)
		}
	}
	return out
}

// FirstUncached returns the first piece of the task that no live member has cached (or the
// piece count when all are): where an owner taking over resumes the origin fetch.
func (f *FSM) FirstUncached(taskID string) uint32 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	t := f.s.tasks[taskID]
	if t == nil {
		return 0
	}
	for n := uint32(0); ; n++ {
		if t.pieceCount >= 0 && int64(n) >= t.pieceCount {
			return n
		}
		cached := false
		for m, b := range t.cached {
			if b != nil && b.has(n) && f.s.members[m] != nil && f.s.members[m].alive {
				cached = true
				break
			}
		}
		if !cached {
			return n
		}
	}
}

// PeerJoined reports whether a peer takes part in a task.
func (f *FSM) PeerJoined(taskID, peerID string) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	t := f.s.tasks[taskID]
	if t == nil {
		return false
	}
	_, ok := t.holders[peerID]
	return ok
}

// ReplicaTask is a task that a member holds a replica of and that has pieces for it to copy.
type ReplicaTask struct {
	ID         string
	Generation uint64
	Status     TaskStatus
}

// ReplicaTasks lists, sorted by ID, the running or complete tasks whose replica owner
// memberID is (one of RingOwners(id, replicas) after the first) and that have pieces a live
// member other than memberID has cached and memberID has not. None when replicas <= 1.
func (f *FSM) ReplicaTasks(memberID string, replicas int) []ReplicaTask {
	if replicas <= 1 {
		return nil
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []ReplicaTask
	for id, t := range f.s.tasks {
		if t.status != TaskRunning && t.status != TaskSuccess {
			continue
		}
		owners := f.s.ring.Owners(id, replicas)
		if len(owners) < 2 || !slices.Contains(owners[1:], memberID) || len(f.s.toCopy(t, memberID)) == 0 {
			continue
		}
		out = append(out, ReplicaTask{ID: id, Generation: t.generation, Status: t.status})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// PiecesToCopy returns the task's current generation and, in increasing order, the pieces
// of it that a live member other than memberID has cached and memberID has not: what a
// replica copies from the other members.
func (f *FSM) PiecesToCopy(taskID, memberID string) (generation uint64, pieces []uint32) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	t := f.s.tasks[taskID]
	if t == nil {
		return 0, nil
	}
	for w, word := range f.s.toCopy(t, memberID) {
		for word != 0 {
			b := bits.TrailingZeros64(word)
			pieces = append(pieces, uint32(w*64+b))
			word &^= 1 << b
		}
	}
	return t.generation, pieces
}

// toCopy returns, as bitset words, the pieces of t that live members other than memberID
// have cached, less those memberID has (nil when none).
func (s *state) toCopy(t *task, memberID string) []uint64 {
	var words []uint64
	for m, b := range t.cached {
		if b == nil || m == memberID || s.members[m] == nil || !s.members[m].alive {
			continue
		}
		if len(b.words) > len(words) {
			words = append(words, make([]uint64, len(b.words)-len(words))...)
		}
		for i, w := range b.words {
			words[i] |= w
		}
	}
	if mine := t.cached[memberID]; mine != nil {
		for i := range min(len(words), len(mine.words)) {
			words[i] &^= mine.words[i]
		}
	}
	for _, w := range words {
		if w != 0 {
			return words
		}
	}
	return nil
}
