package fsm

import (
	"errors"
	"fmt"
	"sync"

	"github.com/dfly-ha/dfha/sdk/api"
	"github.com/hashicorp/raft"
	"go.uber.org/zap"
)

// Errors a command's Result maps to. They depend only on the state and the command, so every
// member computes the same ones.
var (
	// ErrNotFound: the command names a task, peer, member or preheat that does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the command disagrees with the state (an old generation, another digest).
	ErrConflict = errors.New("conflict")
	// ErrInvalid: the command is out of bounds for the state (a piece past the end).
	ErrInvalid = errors.New("invalid")
)

// Code is the outcome of one command.
type Code uint8

// Result codes.
const (
	CodeOK       Code = 0
	CodeCreated  Code = 1
	CodeNotFound Code = 2
	CodeConflict Code = 3
	CodeInvalid  Code = 4
	CodeIgnored  Code = 5 // an ignorable command this version does not know
)

// Result is what applying one command gave: a code, a count (newly recorded pieces, removed
// peers) and, for failures, a message.
type Result struct {
	Code Code
	N    uint64
	Msg  string
}

// Err returns nil for success codes and a sentinel-wrapping error otherwise.
func (r Result) Err() error {
	switch r.Code {
	case CodeOK, CodeCreated, CodeIgnored:
		return nil
	case CodeNotFound:
		return fmt.Errorf("%w: %s", ErrNotFound, r.Msg)
	case CodeConflict:
		return fmt.Errorf("%w: %s", ErrConflict, r.Msg)
	default:
		return fmt.Errorf("%w: %s", ErrInvalid, r.Msg)
	}
}

func ok(n int) Result { return Result{Code: CodeOK, N: uint64(n)} }
func notFound(f string, a ...any) Result {
	return Result{Code: CodeNotFound, Msg: fmt.Sprintf(f, a...)}
}
func conflict(f string, a ...any) Result {
	return Result{Code: CodeConflict, Msg: fmt.Sprintf(f, a...)}
}
func invalid(f string, a ...any) Result { return Result{Code: CodeInvalid, Msg: fmt.Sprintf(f, a...)} }

// BatchResult is what Apply returns for one log entry: one Result per command, in order.
type BatchResult struct {
	Index   uint64
	Results []Result
}

// FSM is the replicated state machine. One RWMutex guards the state: Apply takes it for
// writing, readers and Snapshot briefly for reading or copying.
type FSM struct {
	log *zap.Logger

	mu        sync.RWMutex
	s         *state
	applied   uint64        // index of the last log entry applied (or restored)
	appliedCh chan struct{} // closed and replaced whenever applied grows
}

var _ raft.BatchingFSM = (*FSM)(nil)

// New returns an empty FSM.
func New(log *zap.Logger) *FSM {
	if log == nil {
		log = zap.NewNop()
	}
	return &FSM{log: log, s: newState(), appliedCh: make(chan struct{})}
}

// Apply applies one log entry.
func (f *FSM) Apply(l *raft.Log) interface{} {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch applies the log entries Raft delivers together, under one lock. Entries other
// than commands (configuration changes) get a nil result.
func (f *FSM) ApplyBatch(logs []*raft.Log) []interface{} {
	out := make([]interface{}, len(logs))
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, l := range logs {
		if l.Index > f.applied {
			f.applied = l.Index
		}
		if l.Type != raft.LogCommand {
			continue
		}
		b, err := DecodeBatch(l.Data)
		if err != nil {
			// Every member would fail alike: going on would make this member's state a guess.
			panic(fmt.Sprintf("fsm: log entry %d cannot be decoded: %v", l.Index, err))
		}
		res := &BatchResult{Index: l.Index, Results: make([]Result, len(b.Commands))}
		for j, c := range b.Commands {
			res.Results[j] = f.s.apply(c, b.UnixNano)
		}
		out[i] = res
	}
	close(f.appliedCh)
	f.appliedCh = make(chan struct{})
	return out
}

// apply dispatches one command. It reads no clock: now comes from the log entry.
func (s *state) apply(c Command, now int64) Result {
	if err := c.validate(); err != nil {
		return invalid("%v", err)
	}
	switch c := c.(type) {
	case MemberUpsert:
		return s.memberUpsert(c)
	case MemberRemove:
		return s.memberRemove(c)
	case MemberAlive:
		return s.memberAlive(c)
	case PeerRegister:
		return s.peerRegister(c, now)
	case PeerRemove:
		return s.peerRemove(c)
	case TaskRegister:
		return s.taskRegister(c, now)
	case TaskPeerState:
		return s.taskPeerState(c, now)
	case TaskDelete:
		return s.taskDelete(c)
	case PieceReport:
		return s.pieceReport(c, now)
	case TaskMeta:
		return s.taskMeta(c, now)
	case PiecesCached:
		return s.piecesCached(c, now)
	case PreheatCreate:
		return s.preheatCreate(c, now)
	case PreheatUpdate:
		return s.preheatUpdate(c)
	case TaskClaim:
		return s.taskClaim(c)
	case rawCommand:
		return Result{Code: CodeIgnored}
	}
	panic(fmt.Sprintf("fsm: command type %d has no apply function", c.Type()))
}

func (s *state) memberUpsert(c MemberUpsert) Result {
	if m := s.members[c.ID]; m != nil {
		m.httpAddr, m.raftAddr = c.HTTPAddr, c.RaftAddr
		return ok(0)
	}
	s.members[c.ID] = &member{id: c.ID, httpAddr: c.HTTPAddr, raftAddr: c.RaftAddr, alive: true}
	s.liveSetChanged()
	return Result{Code: CodeCreated}
}

func (s *state) memberRemove(c MemberRemove) Result {
	if s.members[c.ID] == nil {
		return notFound("member %s", c.ID)
	}
	delete(s.members, c.ID)
	s.liveSetChanged()
	for id, t := range s.tasks { // its cache leaves with it
		if _, has := t.cached[c.ID]; has {
			delete(s.writableTask(id).cached, c.ID)
		}
	}
	return ok(1)
}

func (s *state) memberAlive(c MemberAlive) Result {
	m := s.members[c.ID]
	if m == nil {
		return notFound("member %s", c.ID)
	}
	if m.alive != c.Alive {
		m.alive = c.Alive
		s.liveSetChanged()
	}
	return ok(0)
}

func (s *state) peerRegister(c PeerRegister, now int64) Result {
	if s.peers[c.ID] != nil {
		p := s.writablePeer(c.ID) // a peer that registers again may have a new address
		p.ip, p.port, p.hostname = c.IP, c.Port, c.Hostname
		return ok(0)
	}
	s.peers[c.ID] = &peer{id: c.ID, ip: c.IP, port: c.Port, hostname: c.Hostname,
		registeredAt: now, tasks: map[string]PeerTaskState{}, epoch: s.epoch}
	return Result{Code: CodeCreated}
}

func (s *state) peerRemove(c PeerRemove) Result {
	removed := 0
	for _, id := range c.IDs {
		p := s.peers[id]
		if p == nil {
			continue
		}
		for tid := range p.tasks {
			if t := s.writableTask(tid); t != nil {
				delete(t.holders, id)
			}
		}
		delete(s.peers, id)
		removed++
	}
	if removed == 0 && len(c.IDs) == 1 {
		return notFound("peer %s", c.IDs[0])
	}
	return ok(removed)
}

func (s *state) taskRegister(c TaskRegister, now int64) Result {
	if c.PeerID != "" && s.peers[c.PeerID] == nil {
		return notFound("peer %s is not registered", c.PeerID)
	}
	res := ok(0)
	if s.tasks[c.TaskID] == nil {
		s.tasks[c.TaskID] = &task{id: c.TaskID, url: c.URL, digest: c.Digest, headers: c.Headers,
			filter: c.Filter, createdAt: now, generation: 1, status: TaskPending,
			pieceSize: -1, contentLength: -1, pieceCount: -1,
			cached: map[string]*bitset{}, holders: map[string]*bitset{}, badSources: map[string]uint32{},
			epoch: s.epoch}
		res = Result{Code: CodeCreated}
	}
	t := s.writableTask(c.TaskID)
	t.accessedAt = now
	if c.PeerID != "" {
		s.join(t, c.PeerID)
	}
	return res
}

// join makes peer pid a peer of task t (t writable). It does nothing if it already is.
func (s *state) join(t *task, pid string) {
	if _, has := t.holders[pid]; !has {
		t.holders[pid] = nil
	}
	if _, has := s.peers[pid].tasks[t.id]; !has {
		s.writablePeer(pid).tasks[t.id] = PeerTaskRegistered
	}
}

func (s *state) taskPeerState(c TaskPeerState, now int64) Result {
	if s.tasks[c.TaskID] == nil {
		return notFound("task %s", c.TaskID)
	}
	if s.peers[c.PeerID] == nil {
		return notFound("peer %s", c.PeerID)
	}
	t := s.writableTask(c.TaskID)
	t.accessedAt = now
	s.join(t, c.PeerID)
	s.writablePeer(c.PeerID).tasks[c.TaskID] = c.State
	return ok(0)
}

func (s *state) taskDelete(c TaskDelete) Result {
	t := s.tasks[c.TaskID]
	if t == nil {
		return notFound("task %s", c.TaskID)
	}
	for pid := range t.holders {
		if s.peers[pid] != nil {
			delete(s.writablePeer(pid).tasks, c.TaskID)
		}
	}
	delete(s.tasks, c.TaskID)
	return ok(1)
}

func (s *state) pieceReport(c PieceReport, now int64) Result {
	t := s.tasks[c.TaskID]
	if t == nil {
		return notFound("task %s", c.TaskID)
	}
	if s.peers[c.PeerID] == nil {
		return notFound("peer %s", c.PeerID)
	}
	if c.Generation != 0 && c.Generation != t.generation {
		return conflict("task %s is at generation %d, not %d", c.TaskID, t.generation, c.Generation)
	}
	if last := c.Spans[len(c.Spans)-1].To; t.pieceCount >= 0 && int64(last) >= t.pieceCount {
		return invalid("piece %d is past the last piece (%d pieces)", last, t.pieceCount)
	}
	wt := s.writableTask(c.TaskID)
	wt.accessedAt = now
	s.join(wt, c.PeerID)
	if !c.Success {
		if c.Source != "" {
			n := 0
			for _, sp := range c.Spans {
				n += sp.Len()
			}
			wt.badSources[c.Source] += uint32(n)
		}
		return ok(0)
	}
	b := s.writableBitset(wt.holders, c.PeerID)
	added := 0
	for _, sp := range c.Spans {
		added += b.setRange(sp.From, sp.To)
	}
	return ok(added)
}

func (s *state) taskMeta(c TaskMeta, now int64) Result {
	t := s.tasks[c.TaskID]
	if t == nil {
		return notFound("task %s", c.TaskID)
	}
	if c.Generation < t.generation {
		return conflict("task %s is at generation %d, not %d", c.TaskID, t.generation, c.Generation)
	}
	if c.PieceCount > api.MaxPieceIndex+1 {
		return invalid("%d pieces is more than %d", c.PieceCount, api.MaxPieceIndex+1)
	}
	if c.MemberID != "" && t.owner != "" && c.MemberID != t.owner {
		return conflict("member %s is not the owner of task %s (owner: %q)", c.MemberID, c.TaskID, t.owner)
	}
	wt := s.writableTask(c.TaskID)
	if c.Generation > wt.generation { // a new generation: nothing of the old one is kept
		wt.digests = nil
		wt.cached = map[string]*bitset{}
		wt.badSources = map[string]uint32{}
		for pid := range wt.holders {
			wt.holders[pid] = nil
		}
	}
	wt.generation, wt.status = c.Generation, c.Status
	wt.pieceSize, wt.contentLength, wt.pieceCount = c.PieceSize, c.ContentLength, c.PieceCount
	wt.accessedAt = now
	return ok(0)
}

func (s *state) piecesCached(c PiecesCached, now int64) Result {
	t := s.tasks[c.TaskID]
	if t == nil {
		return notFound("task %s", c.TaskID)
	}
	if s.members[c.MemberID] == nil {
		return notFound("member %s", c.MemberID)
	}
	if c.Generation != t.generation {
		return conflict("task %s is at generation %d, not %d", c.TaskID, t.generation, c.Generation)
	}
	if len(c.Digests) == 0 {
		return invalid("no pieces")
	}
	last := int64(c.First) + int64(len(c.Digests)) - 1
	if last > api.MaxPieceIndex || (t.pieceCount >= 0 && last >= t.pieceCount) {
		return invalid("piece %d is past the last piece", last)
	}
	var zero [32]byte
	for i, d := range c.Digests { // all or nothing: check before changing anything
		n := int(c.First) + i
		known := n < len(t.digests) && t.digests[n] != zero
		if known && t.digests[n] != d {
			return conflict("piece %d of task %s already has another digest", n, c.TaskID)
		}
		if !known && t.owner != "" && c.MemberID != t.owner {
			// Once claimed, new digests come from the fetching owner only; other members
			// may only add copies of pieces whose digest is known.
			return conflict("member %s is not the owner of task %s (owner: %q)", c.MemberID, c.TaskID, t.owner)
		}
	}
	wt := s.writableTask(c.TaskID)
	wt.accessedAt = now
	if need := int(last) + 1; need > len(wt.digests) {
		wt.digests = append(wt.digests, make([][32]byte, need-len(wt.digests))...)
	}
	copy(wt.digests[c.First:], c.Digests)
	added := s.writableBitset(wt.cached, c.MemberID).setRange(c.First, uint32(last))
	return ok(added)
}

func (s *state) taskClaim(c TaskClaim) Result {
	t := s.tasks[c.TaskID]
	if t == nil {
		return notFound("task %s", c.TaskID)
	}
	if c.Epoch != s.ringEpoch {
		return conflict("ring epoch %d is not the current %d", c.Epoch, s.ringEpoch)
	}
	if owner := s.ownerRing().Owner(c.TaskID); owner != c.MemberID {
		return conflict("member %s does not own task %s at ring epoch %d (owner: %q)", c.MemberID, c.TaskID, c.Epoch, owner)
	}
	if t.owner == c.MemberID && t.ownerEpoch == c.Epoch {
		return ok(0)
	}
	wt := s.writableTask(c.TaskID)
	wt.owner, wt.ownerEpoch = c.MemberID, c.Epoch
	return ok(1)
}

func (s *state) preheatCreate(c PreheatCreate, now int64) Result {
	if s.preheats[c.ID] != nil {
		return ok(0)
	}
	s.preheats[c.ID] = &preheat{id: c.ID, kind: c.Kind, url: c.URL, headers: c.Headers,
		status: "pending", createdAt: now}
	return Result{Code: CodeCreated}
}

func (s *state) preheatUpdate(c PreheatUpdate) Result {
	p := s.preheats[c.ID]
	if p == nil {
		return notFound("preheat %s", c.ID)
	}
	p.status, p.err = c.Status, c.Error
	return ok(0)
}
