package fsm

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"

	"github.com/hashicorp/raft"
)

// snapshotMagic starts every snapshot, followed by a format version.
const (
	snapshotMagic   = "dfha-fsm"
	snapshotVersion = 1
)

// Snapshot returns a view of the state that later Apply calls do not change. It copies the
// top-level maps (pointers only) and starts a new copy-on-write epoch: cheap and bounded by
// the number of objects, not their size.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &fsmSnapshot{v: f.s.view(), applied: f.applied}, nil
}

type fsmSnapshot struct {
	v       *state
	applied uint64
}

// Persist encodes the view; it runs while Apply goes on.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	e := encoder{b: make([]byte, 0, 1<<16)}
	e.b = append(e.b, snapshotMagic...)
	e.uvarint(snapshotVersion)
	e.uvarint(s.applied)
	s.v.encode(&e)
	if _, err := sink.Write(e.b); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("write snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}

// Restore replaces the whole state with a snapshot's.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	p, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("read snapshot: %w", err)
	}
	if len(p) < len(snapshotMagic) || string(p[:len(snapshotMagic)]) != snapshotMagic {
		return fmt.Errorf("restore: not a snapshot of this FSM")
	}
	d := decoder{b: p[len(snapshotMagic):]}
	if v := d.uvarint(); v != snapshotVersion {
		return fmt.Errorf("restore: snapshot format %d, this member reads %d", v, snapshotVersion)
	}
	applied := d.uvarint()
	s := decodeState(&d)
	if d.err != nil {
		return fmt.Errorf("restore: %w", d.err)
	}
	f.mu.Lock()
	f.s = s
	f.applied = applied
	close(f.appliedCh)
	f.appliedCh = make(chan struct{})
	f.mu.Unlock()
	return nil
}

// StateHash returns the applied index and the SHA-256 of the replicated state in its
// canonical encoding. Members with equal hashes hold equal state.
func (f *FSM) StateHash() (uint64, string) {
	f.mu.Lock()
	v, applied := f.s.view(), f.applied
	f.mu.Unlock()
	e := encoder{b: make([]byte, 0, 1<<16)}
	v.encode(&e)
	sum := sha256.Sum256(e.b)
	return applied, hex.EncodeToString(sum[:])
}

// encode writes the state canonically: every map in key order.
func (s *state) encode(e *encoder) {
	e.uvarint(s.ringEpoch)
	e.uvarint(uint64(len(s.members)))
	for _, id := range sortedKeys(s.members) {
		m := s.members[id]
		e.str(m.id)
		e.str(m.httpAddr)
		e.str(m.raftAddr)
		e.bool(m.alive)
	}
	e.uvarint(uint64(len(s.peers)))
	for _, id := range sortedKeys(s.peers) {
		p := s.peers[id]
		e.str(p.id)
		e.str(p.ip)
		e.str(p.hostname)
		e.uvarint(uint64(p.port))
		e.varint(p.registeredAt)
		e.uvarint(uint64(len(p.tasks)))
		for _, tid := range sortedKeys(p.tasks) {
			e.str(tid)
			e.u8(uint8(p.tasks[tid]))
		}
	}
	e.uvarint(uint64(len(s.tasks)))
	for _, id := range sortedKeys(s.tasks) {
		t := s.tasks[id]
		e.str(t.id)
		e.str(t.url)
		e.str(t.digest)
		e.strMap(t.headers)
		e.strs(t.filter)
		e.varint(t.createdAt)
		e.varint(t.accessedAt)
		e.uvarint(t.generation)
		e.u8(uint8(t.status))
		e.varint(t.pieceSize)
		e.varint(t.contentLength)
		e.varint(t.pieceCount)
		e.uvarint(uint64(len(t.digests)))
		for _, d := range t.digests {
			e.b = append(e.b, d[:]...)
		}
		encodeBitsets(e, t.cached)
		encodeBitsets(e, t.holders)
		e.uvarint(uint64(len(t.badSources)))
		for _, src := range sortedKeys(t.badSources) {
			e.str(src)
			e.uvarint(uint64(t.badSources[src]))
		}
		e.str(t.owner)
		e.uvarint(t.ownerEpoch)
	}
	e.uvarint(uint64(len(s.preheats)))
	for _, id := range sortedKeys(s.preheats) {
		p := s.preheats[id]
		e.str(p.id)
		e.str(p.kind)
		e.str(p.url)
		e.str(p.status)
		e.str(p.err)
		e.strMap(p.headers)
		e.varint(p.createdAt)
	}
}

func encodeBitsets(e *encoder, m map[string]*bitset) {
	e.uvarint(uint64(len(m)))
	for _, k := range sortedKeys(m) {
		e.str(k)
		if b := m[k]; b != nil {
			b.encode(e)
		} else {
			e.uvarint(0)
		}
	}
}

func decodeBitsets(d *decoder) map[string]*bitset {
	n := d.count(2)
	m := make(map[string]*bitset, n)
	for i := 0; i < n && d.err == nil; i++ {
		k := d.str()
		b := decodeBitset(d, 0)
		if b.count == 0 {
			b = nil // "joined, holds nothing": as Apply leaves it
		}
		m[k] = b
	}
	return m
}

func decodeState(d *decoder) *state {
	s := newState()
	s.ringEpoch = d.uvarint()
	n := d.count(4)
	for i := 0; i < n && d.err == nil; i++ {
		m := &member{id: d.str(), httpAddr: d.str(), raftAddr: d.str(), alive: d.bool()}
		s.members[m.id] = m
	}
	n = d.count(6)
	for i := 0; i < n && d.err == nil; i++ {
		p := &peer{id: d.str(), ip: d.str(), hostname: d.str()}
		p.port = uint16(d.uvarint())
		p.registeredAt = d.varint()
		k := d.count(2)
		p.tasks = make(map[string]PeerTaskState, k)
		for j := 0; j < k && d.err == nil; j++ {
			tid := d.str()
			p.tasks[tid] = PeerTaskState(d.u8())
		}
		s.peers[p.id] = p
	}
	n = d.count(16)
	for i := 0; i < n && d.err == nil; i++ {
		t := &task{id: d.str(), url: d.str(), digest: d.str(), headers: d.strMap(), filter: d.strs()}
		t.createdAt, t.accessedAt = d.varint(), d.varint()
		t.generation = d.uvarint()
		t.status = TaskStatus(d.u8())
		t.pieceSize, t.contentLength, t.pieceCount = d.varint(), d.varint(), d.varint()
		k := d.count(32)
		if k > 0 {
			t.digests = make([][32]byte, k)
			for j := range t.digests {
				copy(t.digests[j][:], d.b[:32])
				d.b = d.b[32:]
			}
		}
		t.cached = decodeBitsets(d)
		t.holders = decodeBitsets(d)
		k = d.count(2)
		t.badSources = make(map[string]uint32, k)
		for j := 0; j < k && d.err == nil; j++ {
			src := d.str()
			t.badSources[src] = uint32(d.uvarint())
		}
		t.owner, t.ownerEpoch = d.str(), d.uvarint()
		s.tasks[t.id] = t
	}
	n = d.count(7)
	for i := 0; i < n && d.err == nil; i++ {
		p := &preheat{id: d.str(), kind: d.str(), url: d.str(), status: d.str(), err: d.str(), headers: d.strMap()}
		p.createdAt = d.varint()
		s.preheats[p.id] = p
	}
	s.rebuildRing()
	return s
}
