package fsm

import (
	"sort"

	"github.com/dfly-ha/dfha/cdn/ring"
)

// TaskStatus is a task's status as the cluster sees it.
type TaskStatus uint8

// Task statuses (values are replicated: append only).
const (
	TaskPending TaskStatus = 0
	TaskRunning TaskStatus = 1
	TaskSuccess TaskStatus = 2
	TaskFailed  TaskStatus = 3
)

var taskStatusNames = [...]string{"pending", "running", "success", "failed"}

func (s TaskStatus) String() string {
	if int(s) < len(taskStatusNames) {
		return taskStatusNames[s]
	}
	return "unknown"
}

// PeerTaskState is a peer's own progress on a task.
type PeerTaskState uint8

// Peer task states (values are replicated: append only).
const (
	PeerTaskRegistered PeerTaskState = 0
	PeerTaskRunning    PeerTaskState = 1
	PeerTaskSuccess    PeerTaskState = 2
	PeerTaskFailed     PeerTaskState = 3
)

var peerTaskStateNames = [...]string{"registered", "running", "success", "failed"}

func (s PeerTaskState) String() string {
	if int(s) < len(peerTaskStateNames) {
		return peerTaskStateNames[s]
	}
	return "unknown"
}

// ParsePeerTaskState maps the API's running/success/failed to a state.
func ParsePeerTaskState(s string) (PeerTaskState, bool) {
	switch s {
	case "running":
		return PeerTaskRunning, true
	case "success":
		return PeerTaskSuccess, true
	case "failed":
		return PeerTaskFailed, true
	}
	return 0, false
}

// The replicated objects. Every object carries the epoch it was written in: after a
// Snapshot (which starts a new epoch) the snapshot shares the objects, and an object from an
// older epoch is cloned before it is changed. Nothing reachable from a snapshot is ever
// mutated, so Persist can encode it while Apply goes on.

type member struct {
	id, httpAddr, raftAddr string
	alive                  bool
}

type peer struct {
	id, ip, hostname string
	port             uint16
	registeredAt     int64
	tasks            map[string]PeerTaskState
	epoch            uint64
}

type task struct {
	id, url, digest string
	headers         map[string]string // never changed after creation: shared by clones
	filter          []string          // likewise
	createdAt       int64
	accessedAt      int64

	generation    uint64
	status        TaskStatus
	pieceSize     int64
	contentLength int64
	pieceCount    int64
	digests       [][32]byte         // per piece of this generation; zero = not cached yet
	cached        map[string]*bitset // member ID -> pieces it has cached
	holders       map[string]*bitset // peer ID -> pieces it holds; every peer of the task has an entry
	badSources    map[string]uint32  // source ID -> pieces reported bad from it
	owner         string             // the member that claimed the fetch (TaskClaim)
	ownerEpoch    uint64             // the ring epoch of that claim
	epoch         uint64
}

type preheat struct {
	id, kind, url, status, err string
	headers                    map[string]string
	createdAt                  int64
}

// state is the whole replicated state. Maps are copied (shallowly) by Snapshot; objects are
// copy-on-write by epoch.
type state struct {
	members  map[string]*member
	peers    map[string]*peer
	tasks    map[string]*task
	preheats map[string]*preheat
	epoch    uint64

	// ringEpoch counts the committed changes of the set of live members; the ring of task
	// owners is a function of that set. ring is derived from members (not encoded) and
	// immutable: a snapshot view may share it.
	ringEpoch uint64
	ring      *ring.Ring
}

// ownerRing returns the ring over the live members. It is rebuilt whenever the live set
// changes, inside Apply (under the write lock), so readers never build it.
func (s *state) ownerRing() *ring.Ring { return s.ring }

// liveSetChanged bumps the ring epoch and rebuilds the ring.
func (s *state) liveSetChanged() {
	s.ringEpoch++
	s.rebuildRing()
}

func (s *state) rebuildRing() {
	var live []string
	for id, m := range s.members {
		if m.alive {
			live = append(live, id)
		}
	}
	s.ring = ring.New(live, 0)
}

func newState() *state {
	return &state{
		members:  map[string]*member{},
		peers:    map[string]*peer{},
		tasks:    map[string]*task{},
		preheats: map[string]*preheat{},
		ring:     ring.New(nil, 0),
	}
}

// view returns a snapshot of s that later Apply calls never change, and starts a new epoch.
func (s *state) view() *state {
	v := &state{
		members:  make(map[string]*member, len(s.members)),
		peers:    make(map[string]*peer, len(s.peers)),
		tasks:    make(map[string]*task, len(s.tasks)),
		preheats: make(map[string]*preheat, len(s.preheats)),
		epoch:    s.epoch,

		ringEpoch: s.ringEpoch,
		ring:      s.ring,
	}
	for k, m := range s.members {
		c := *m // members and preheats are small: copy them outright
		v.members[k] = &c
	}
	for k, p := range s.preheats {
		c := *p
		v.preheats[k] = &c
	}
	for k, p := range s.peers {
		v.peers[k] = p
	}
	for k, t := range s.tasks {
		v.tasks[k] = t
	}
	s.epoch++
	return v
}

// writablePeer returns the peer id, cloned first if a snapshot may share it.
func (s *state) writablePeer(id string) *peer {
	p := s.peers[id]
	if p == nil || p.epoch == s.epoch {
		return p
	}
	c := *p
	c.tasks = make(map[string]PeerTaskState, len(p.tasks))
	for k, v := range p.tasks {
		c.tasks[k] = v
	}
	c.epoch = s.epoch
	s.peers[id] = &c
	return &c
}

// writableTask returns the task id, cloned first if a snapshot may share it. The clone
// shares bitsets (themselves copy-on-write) and the immutable headers and filter.
func (s *state) writableTask(id string) *task {
	t := s.tasks[id]
	if t == nil || t.epoch == s.epoch {
		return t
	}
	c := *t
	c.digests = append([][32]byte(nil), t.digests...)
	c.cached = cloneMap(t.cached)
	c.holders = cloneMap(t.holders)
	c.badSources = cloneMap(t.badSources)
	c.epoch = s.epoch
	s.tasks[id] = &c
	return &c
}

// writableBitset returns m[key] ready to change (created or cloned as needed). t must be
// writable already.
func (s *state) writableBitset(m map[string]*bitset, key string) *bitset {
	b := m[key]
	switch {
	case b == nil:
		b = &bitset{epoch: s.epoch}
	case b.epoch != s.epoch:
		b = b.clone(s.epoch)
	default:
		return b
	}
	m[key] = b
	return b
}

func cloneMap[K comparable, V any](m map[K]V) map[K]V {
	c := make(map[K]V, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
