package fsm

import (
	"encoding/binary"
	"fmt"
	"math"
	"sync"

	"github.com/dfly-ha/dfha/sdk/api"
)

// CommandType identifies a command in a log entry. Zero means unknown; values are only ever
// appended, never reused or renumbered.
type CommandType uint8

// Ignorable marks a command type that members which do not know it may skip. A command
// added in a later version sets this bit when skipping it keeps older members correct (for
// example pure bookkeeping), so that a rolling upgrade does not wedge the cluster. An unknown
// command without the bit stops the member: applying the log without it would diverge.
const Ignorable CommandType = 0x80

// Command types.
const (
	CmdUnknown       CommandType = 0
	CmdMemberUpsert  CommandType = 1
	CmdMemberRemove  CommandType = 2
	CmdMemberAlive   CommandType = 3
	CmdPeerRegister  CommandType = 4
	CmdPeerRemove    CommandType = 5
	CmdTaskRegister  CommandType = 6
	CmdTaskPeerState CommandType = 7
	CmdTaskDelete    CommandType = 8
	CmdPieceReport   CommandType = 9
	CmdTaskMeta      CommandType = 10
	CmdPiecesCached  CommandType = 11
	CmdPreheatCreate CommandType = 12
	CmdPreheatUpdate CommandType = 13
	CmdTaskClaim     CommandType = 14
)

// Command is one typed change of the replicated state.
type Command interface {
	Type() CommandType
	encode(e *encoder)
	validate() error // the command's own bounds; Apply refuses a command that fails them
}

// MemberUpsert adds a member or changes its addresses. New members start alive.
type MemberUpsert struct {
	ID, HTTPAddr, RaftAddr string
}

// MemberRemove removes a member from the state (the Raft configuration is changed apart).
type MemberRemove struct{ ID string }

// MemberAlive records the leader's verdict on a member's liveness.
type MemberAlive struct {
	ID    string
	Alive bool
}

// PeerRegister adds a peer, or updates its address if it registers again with its ID.
type PeerRegister struct {
	ID, IP, Hostname string
	Port             uint16
}

// PeerRemove removes peers (one on DELETE /peers/{id}, several when the leader expires
// silent peers); their pieces leave the piece map.
type PeerRemove struct{ IDs []string }

// TaskRegister creates a task, or joins PeerID to an existing one. Headers are the origin
// headers (credentials included): replicated so that any owner can fetch, never shown.
type TaskRegister struct {
	TaskID, URL, Digest, PeerID string
	Headers                     map[string]string
	Filter                      []string
}

// TaskPeerState records a peer's own progress on a task (running, success, failed).
type TaskPeerState struct {
	TaskID, PeerID string
	State          PeerTaskState
}

// TaskDelete removes a task, its piece map and its peers' references to it.
type TaskDelete struct{ TaskID string }

// PieceReport records that a peer now holds the pieces of Spans (Success), or that it failed
// to get them (Source then names the peer or member that sent bad data). Generation 0
// accepts the current generation.
type PieceReport struct {
	TaskID, PeerID, Source string
	Generation             uint64
	Success                bool
	Spans                  []api.Span
}

// TaskMeta is what the task's owner learned from the origin: sizes and status of a
// generation. A higher generation than the current one starts it afresh: the pieces, digests
// and piece map of the old generation are dropped.
type TaskMeta struct {
	TaskID        string
	MemberID      string // the owner sending it; empty only for commands of the leader itself
	Generation    uint64
	Status        TaskStatus
	PieceSize     int64
	ContentLength int64
	PieceCount    int64
}

// PiecesCached records that member MemberID has cached pieces First.. of the task's
// generation, with their SHA-256 digests.
type PiecesCached struct {
	TaskID, MemberID string
	Generation       uint64
	First            uint32
	Digests          [][32]byte
}

// TaskClaim makes MemberID the task's fetching owner. Apply accepts it only if Epoch is the
// current ring epoch and MemberID is the task's owner on the ring of live members at that
// epoch; afterwards, TaskMeta and new piece digests are accepted from that member only. A
// member that lost ownership (the ring moved) can therefore not commit a second fetch.
type TaskClaim struct {
	TaskID, MemberID string
	Epoch            uint64
}

// PreheatCreate records a preheat request.
type PreheatCreate struct {
	ID, Kind, URL string
	Headers       map[string]string
}

// PreheatUpdate records a preheat's progress.
type PreheatUpdate struct {
	ID, Status, Error string
}

func (MemberUpsert) Type() CommandType  { return CmdMemberUpsert }
func (MemberRemove) Type() CommandType  { return CmdMemberRemove }
func (MemberAlive) Type() CommandType   { return CmdMemberAlive }
func (PeerRegister) Type() CommandType  { return CmdPeerRegister }
func (PeerRemove) Type() CommandType    { return CmdPeerRemove }
func (TaskRegister) Type() CommandType  { return CmdTaskRegister }
func (TaskPeerState) Type() CommandType { return CmdTaskPeerState }
func (TaskDelete) Type() CommandType    { return CmdTaskDelete }
func (PieceReport) Type() CommandType   { return CmdPieceReport }
func (TaskMeta) Type() CommandType      { return CmdTaskMeta }
func (PiecesCached) Type() CommandType  { return CmdPiecesCached }
func (PreheatCreate) Type() CommandType { return CmdPreheatCreate }
func (PreheatUpdate) Type() CommandType { return CmdPreheatUpdate }
func (TaskClaim) Type() CommandType     { return CmdTaskClaim }

func (c MemberUpsert) encode(e *encoder) { e.str(c.ID); e.str(c.HTTPAddr); e.str(c.RaftAddr) }
func (c MemberRemove) encode(e *encoder) { e.str(c.ID) }
func (c MemberAlive) encode(e *encoder)  { e.str(c.ID); e.bool(c.Alive) }
func (c PeerRegister) encode(e *encoder) {
	e.str(c.ID)
	e.str(c.IP)
	e.str(c.Hostname)
	e.uvarint(uint64(c.Port))
}
func (c PeerRemove) encode(e *encoder) { e.strs(c.IDs) }
func (c TaskRegister) encode(e *encoder) {
	e.str(c.TaskID)
	e.str(c.URL)
	e.str(c.Digest)
	e.str(c.PeerID)
	e.strMap(c.Headers)
	e.strs(c.Filter)
}
func (c TaskPeerState) encode(e *encoder) { e.str(c.TaskID); e.str(c.PeerID); e.u8(uint8(c.State)) }
func (c TaskDelete) encode(e *encoder)    { e.str(c.TaskID) }
func (c PieceReport) encode(e *encoder) {
	e.str(c.TaskID)
	e.str(c.PeerID)
	e.str(c.Source)
	e.uvarint(c.Generation)
	e.bool(c.Success)
	e.uvarint(uint64(len(c.Spans)))
	prev := uint32(0)
	for _, s := range c.Spans { // delta-encoded: spans are sorted
		e.uvarint(uint64(s.From - prev))
		e.uvarint(uint64(s.To - s.From))
		prev = s.To
	}
}
func (c TaskMeta) encode(e *encoder) {
	e.str(c.TaskID)
	e.str(c.MemberID)
	e.uvarint(c.Generation)
	e.u8(uint8(c.Status))
	e.varint(c.PieceSize)
	e.varint(c.ContentLength)
	e.varint(c.PieceCount)
}
func (c PiecesCached) encode(e *encoder) {
	e.str(c.TaskID)
	e.str(c.MemberID)
	e.uvarint(c.Generation)
	e.uvarint(uint64(c.First))
	e.uvarint(uint64(len(c.Digests)))
	for _, d := range c.Digests {
		e.b = append(e.b, d[:]...)
	}
}
func (c PreheatCreate) encode(e *encoder) {
	e.str(c.ID)
	e.str(c.Kind)
	e.str(c.URL)
	e.strMap(c.Headers)
}
func (c PreheatUpdate) encode(e *encoder) { e.str(c.ID); e.str(c.Status); e.str(c.Error) }
func (c TaskClaim) encode(e *encoder)     { e.str(c.TaskID); e.str(c.MemberID); e.uvarint(c.Epoch) }

// decoders, by command type. A type missing here is unknown to this version.
var decoders = map[CommandType]func(d *decoder) Command{
	CmdMemberUpsert: func(d *decoder) Command { return MemberUpsert{ID: d.str(), HTTPAddr: d.str(), RaftAddr: d.str()} },
	CmdMemberRemove: func(d *decoder) Command { return MemberRemove{ID: d.str()} },
	CmdMemberAlive:  func(d *decoder) Command { return MemberAlive{ID: d.str(), Alive: d.bool()} },
	CmdPeerRegister: func(d *decoder) Command {
		c := PeerRegister{ID: d.str(), IP: d.str(), Hostname: d.str()}
		c.Port = uint16(d.uvarint())
		return c
	},
	CmdPeerRemove: func(d *decoder) Command { return PeerRemove{IDs: d.strs()} },
	CmdTaskRegister: func(d *decoder) Command {
		return TaskRegister{TaskID: d.str(), URL: d.str(), Digest: d.str(), PeerID: d.str(), Headers: d.strMap(), Filter: d.strs()}
	},
	CmdTaskPeerState: func(d *decoder) Command {
		return TaskPeerState{TaskID: d.str(), PeerID: d.str(), State: PeerTaskState(d.u8())}
	},
	CmdTaskDelete: func(d *decoder) Command { return TaskDelete{TaskID: d.str()} },
	CmdPieceReport: func(d *decoder) Command {
		c := PieceReport{TaskID: d.str(), PeerID: d.str(), Source: d.str(), Generation: d.uvarint(), Success: d.bool()}
		n := d.count(2)
		c.Spans = make([]api.Span, 0, n)
		prev := uint32(0)
		for i := 0; i < n && d.err == nil; i++ { // the exact inverse of encode (uint32 arithmetic)
			gap, length := d.uvarint(), d.uvarint()
			if gap > math.MaxUint32 || length > math.MaxUint32 {
				d.fail("piece span")
				break
			}
			from := prev + uint32(gap)
			to := from + uint32(length)
			c.Spans = append(c.Spans, api.Span{From: from, To: to})
			prev = to
		}
		return c
	},
	CmdTaskMeta: func(d *decoder) Command {
		return TaskMeta{TaskID: d.str(), MemberID: d.str(), Generation: d.uvarint(), Status: TaskStatus(d.u8()),
			PieceSize: d.varint(), ContentLength: d.varint(), PieceCount: d.varint()}
	},
	CmdPiecesCached: func(d *decoder) Command {
		c := PiecesCached{TaskID: d.str(), MemberID: d.str(), Generation: d.uvarint(), First: uint32(d.uvarint())}
		n := d.count(32)
		c.Digests = make([][32]byte, n)
		for i := range c.Digests {
			if len(d.b) < 32 {
				d.fail("digest")
				break
			}
			copy(c.Digests[i][:], d.b[:32])
			d.b = d.b[32:]
		}
		return c
	},
	CmdPreheatCreate: func(d *decoder) Command {
		return PreheatCreate{ID: d.str(), Kind: d.str(), URL: d.str(), Headers: d.strMap()}
	},
	CmdPreheatUpdate: func(d *decoder) Command { return PreheatUpdate{ID: d.str(), Status: d.str(), Error: d.str()} },
	CmdTaskClaim:     func(d *decoder) Command { return TaskClaim{TaskID: d.str(), MemberID: d.str(), Epoch: d.uvarint()} },
}

// entryVersion is the first byte of every log entry this package writes.
const entryVersion = 1

// Batch is the unit of one Raft log entry: the commands the leader merged from concurrent
// requests, and the leader's clock at the time it made the entry (Apply never reads a clock).
type Batch struct {
	UnixNano int64
	Commands []Command
}

// Encode returns the log entry bytes of b.
func (b Batch) Encode() []byte {
	e := encoder{b: make([]byte, 0, 16+64*len(b.Commands))}
	e.u8(entryVersion)
	e.varint(b.UnixNano)
	e.uvarint(uint64(len(b.Commands)))
	var body encoder
	for _, c := range b.Commands {
		body.b = body.b[:0]
		c.encode(&body)
		e.u8(uint8(c.Type()))
		e.raw(body.b)
	}
	return e.b
}

// rawCommand is a command whose type this version does not know (kept only to be skipped).
type rawCommand struct{ t CommandType }

func (r rawCommand) Type() CommandType { return r.t }
func (rawCommand) encode(*encoder)     {}

// DecodeBatch parses a log entry. Commands of unknown ignorable types come back as
// placeholders that Apply skips; an unknown type without the Ignorable bit is an error.
func DecodeBatch(p []byte) (Batch, error) {
	d := decoder{b: p}
	if v := d.u8(); d.err == nil && v != entryVersion {
		return Batch{}, fmt.Errorf("log entry version %d: this member knows only %d", v, entryVersion)
	}
	b := Batch{UnixNano: d.varint()}
	n := d.count(2)
	b.Commands = make([]Command, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		t := CommandType(d.u8())
		body := d.rawBytes()
		if d.err != nil {
			break
		}
		dec, ok := decoders[t]
		if !ok {
			if t&Ignorable == 0 {
				return Batch{}, fmt.Errorf("unknown command type %d", t)
			}
			b.Commands = append(b.Commands, rawCommand{t})
			continue
		}
		cd := decoder{b: body}
		c := dec(&cd)
		if cd.err != nil {
			return Batch{}, fmt.Errorf("command type %d: %w", t, cd.err)
		}
		b.Commands = append(b.Commands, c)
	}
	if d.err != nil {
		return Batch{}, d.err
	}
	return b, nil
}

var sizePool = sync.Pool{New: func() any { return &encoder{b: make([]byte, 0, 256)} }}

// EncodedSize is the number of bytes cmds take in a log entry (or a forwarded request).
// Batching uses it to keep entries and requests bounded.
func EncodedSize(cmds []Command) int {
	e := sizePool.Get().(*encoder)
	n := 0
	for _, c := range cmds {
		e.b = e.b[:0]
		c.encode(e)
		n += 1 + binary.MaxVarintLen32 + len(e.b)
	}
	if cap(e.b) <= 64<<10 {
		sizePool.Put(e)
	}
	return n
}
