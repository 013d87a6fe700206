// Package scheduler owns how peers are given work: the policy that picks a peer's next
// pieces and their sources (Policy, a pure function of the replicated state and the live
// load), and the live load itself, which is not replicated: each member keeps the
// heartbeats it receives, the ones other members pass on, and the work it handed out, in a
// LoadTable. DESIGN.md says how members share heartbeats and how the leader expires peers.
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

// Update is one peer's latest heartbeat as members pass it on to each other. Age is how
// long ago the sender received it, so that members' clocks need not agree.
type Update struct {
	Peer    string `json:"peer"`
	Uploads int    `json:"uploads"`
	AgeMS   int64  `json:"age_ms"`
}

// entry is a peer's load as this member knows it.
type entry struct {
	Load
	direct   bool      // received by this member (not passed on by another)
	assigned int       // uploads this member sent its way since assignedAt
	since    time.Time // start of the assignment window
}

// memberFetch is a peer sent to the members for a piece that no peer held.
type memberFetch struct {
	peer string
	at   time.Time
}

// LoadTable holds the live load of every peer, in memory: latest heartbeat, the uploads
// this member recently sent its way, and the pieces it recently sent peers to the members
// for. Safe for concurrent use.
type LoadTable struct {
	mu       sync.Mutex
	peers    map[string]*entry
	fetches  map[string]map[uint32]memberFetch // task -> piece -> the latest peer sent to a member for it
	now      func() time.Time
	started  time.Time
	window   time.Duration // how long an assignment counts as load
	inflight time.Duration // how long a fetch from a member counts as in flight
}

// NewLoadTable returns an empty table; now is the clock (nil: time.Now).
func NewLoadTable(now func() time.Time) *LoadTable {
	if now == nil {
		now = time.Now
	}
	return &LoadTable{peers: map[string]*entry{}, fetches: map[string]map[uint32]memberFetch{},
		now: now, started: now(), window: 2 * time.Second, inflight: 3 * time.Second}
}

// Heartbeat records a heartbeat the peer sent to this member.
func (t *LoadTable) Heartbeat(peerID string, uploadsRunning int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.peers[peerID]
	if e == nil {
		e = &entry{}
		t.peers[peerID] = e
	}
	e.UploadsRunning, e.LastSeen, e.direct = uploadsRunning, t.now(), true
}

// Get returns a peer's last known load.
func (t *LoadTable) Get(peerID string) (Load, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.peers[peerID]
	if e == nil {
		return Load{}, false
	}
	return e.Load, true
}

// Forget drops a peer (it left or was expired).
func (t *LoadTable) Forget(peerID string) {
	t.mu.Lock()
	delete(t.peers, peerID)
	t.mu.Unlock()
}

// Len is the number of peers in the table.
func (t *LoadTable) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.peers)
}

// Updates returns the heartbeats this member received itself after since, for the other
// members (what they passed on is not echoed back).
func (t *LoadTable) Updates(since time.Time) []Update {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	var out []Update
	for id, e := range t.peers {
		if e.direct && e.LastSeen.After(since) {
			out = append(out, Update{Peer: id, Uploads: e.UploadsRunning, AgeMS: now.Sub(e.LastSeen).Milliseconds()})
		}
	}
	return out
}

// Merge takes heartbeats another member passed on, keeping per peer the newest one.
func (t *LoadTable) Merge(updates []Update) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	for _, u := range updates {
		seen := now.Add(-time.Duration(max(u.AgeMS, 0)) * time.Millisecond)
		e := t.peers[u.Peer]
		if e == nil {
			e = &entry{}
			t.peers[u.Peer] = e
		} else if !seen.After(e.LastSeen) {
			continue
		}
		e.UploadsRunning, e.LastSeen, e.direct = u.Uploads, seen, false
	}
}

// Stale returns, of the given peers, those with no heartbeat for ttl: their newest
// heartbeat (on any member that passed it on) is older, or there is none and the peer
// registered more than ttl ago. Nothing is stale until the table itself is ttl old: a
// member that just started has not heard from anyone yet.
func (t *LoadTable) Stale(peers map[string]time.Time, ttl time.Duration) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	if now.Sub(t.started) < ttl {
		return nil
	}
	var out []string
	for id, registered := range peers {
		if e := t.peers[id]; e != nil {
			if now.Sub(e.LastSeen) > ttl {
				out = append(out, id)
			}
		} else if now.Sub(registered) > ttl {
			out = append(out, id)
		}
	}
	return out
}

// Assigned records that this member scheduled piece for peer asker: that its first source
// (sourcePeer) has one more upload to serve, or, for a piece no peer held, that asker is
// fetching it from a member.
func (t *LoadTable) Assigned(taskID, asker, sourcePeer string, piece uint32, fromMember bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	if fromMember {
		m := t.fetches[taskID]
		if m == nil {
			m = map[uint32]memberFetch{}
			t.fetches[taskID] = m
		}
		m[piece] = memberFetch{peer: asker, at: now}
		return
	}
	e := t.peers[sourcePeer]
	if e == nil {
		return // not heard of: it will be, or it is gone
	}
	if now.Sub(e.since) > t.window {
		e.assigned, e.since = 0, now
	}
	e.assigned++
}

// Prune drops fetches from members that are no longer in flight, and the peers whose
// heartbeats are older than keep. Call it now and then (the member does, every second).
func (t *LoadTable) Prune(keep time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	for task, m := range t.fetches {
		for n, f := range m {
			if now.Sub(f.at) > t.inflight {
				delete(m, n)
			}
		}
		if len(m) == 0 {
			delete(t.fetches, task)
		}
	}
	for id, e := range t.peers {
		if now.Sub(e.LastSeen) > keep {
			delete(t.peers, id)
		}
	}
}

// Live returns the live load of one task's swarm as the policy reads it, for peers with
// the given heartbeat ttl.
func (t *LoadTable) Live(taskID string, ttl time.Duration) *TaskLoad {
	return &TaskLoad{t: t, task: taskID, ttl: ttl}
}

// TaskLoad implements Live for one task.
type TaskLoad struct {
	t    *LoadTable
	task string
	ttl  time.Duration
}

// PeerLoad implements Live.
func (l *TaskLoad) PeerLoad(peerID string, registeredAt int64) (int, bool) {
	t := l.t
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	e := t.peers[peerID]
	if e == nil {
		// No heartbeat known: present if it registered within a ttl, or if this member
		// has not been up long enough to have heard of it.
		return 0, now.Sub(time.Unix(0, registeredAt)) <= l.ttl || now.Sub(t.started) <= l.ttl
	}
	load := e.UploadsRunning
	if now.Sub(e.since) <= t.window {
		load += e.assigned
	}
	return load, now.Sub(e.LastSeen) <= l.ttl
}

// MemberFetchBy implements Live.
func (l *TaskLoad) MemberFetchBy(n uint32) string {
	t := l.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if f, ok := t.fetches[l.task][n]; ok && t.now().Sub(f.at) <= t.inflight {
		return f.peer
	}
	return ""
}
