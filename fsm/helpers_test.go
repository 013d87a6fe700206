package fsm_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/dfly-ha/dfha/fsm"
	"github.com/dfly-ha/dfha/sdk/api"
	"github.com/hashicorp/raft"
)

// baseTime is the leader's clock at index 0; entry i is stamped baseTime + i seconds, so a
// test can tell which entry set a timestamp.
const baseTime = int64(1_700_000_000) * int64(time.Second)

func timeOf(index uint64) int64 { return baseTime + int64(index)*int64(time.Second) }

// harness feeds an FSM log entries the way the cluster does: one fsm.Batch per raft.Log, at
// increasing indexes. It keeps every entry so that a test can replay them elsewhere.
type harness struct {
	tb      testing.TB
	f       *fsm.FSM
	index   uint64
	entries []*raft.Log
}

func newHarness(tb testing.TB) *harness {
	return &harness{tb: tb, f: fsm.New(nil)}
}

// entry makes the next log entry carrying cmds (and records it).
func (h *harness) entry(cmds ...fsm.Command) *raft.Log {
	h.index++
	l := &raft.Log{Index: h.index, Term: 1, Type: raft.LogCommand,
		Data: fsm.Batch{UnixNano: timeOf(h.index), Commands: cmds}.Encode()}
	h.entries = append(h.entries, l)
	return l
}

// apply applies cmds as one log entry and returns one result per command.
func (h *harness) apply(cmds ...fsm.Command) []fsm.Result {
	h.tb.Helper()
	l := h.entry(cmds...)
	out := h.f.ApplyBatch([]*raft.Log{l})
	if len(out) != 1 {
		h.tb.Fatalf("ApplyBatch of 1 entry returned %d responses", len(out))
	}
	br, ok := out[0].(*fsm.BatchResult)
	if !ok {
		h.tb.Fatalf("ApplyBatch response is %T, want *fsm.BatchResult", out[0])
	}
	if br.Index != l.Index || len(br.Results) != len(cmds) {
		h.tb.Fatalf("BatchResult index %d with %d results, want index %d with %d", br.Index, len(br.Results), l.Index, len(cmds))
	}
	if got := h.f.AppliedIndex(); got != l.Index {
		h.tb.Fatalf("AppliedIndex = %d after applying entry %d", got, l.Index)
	}
	return br.Results
}

// one applies a single command in its own entry.
func (h *harness) one(c fsm.Command) fsm.Result {
	h.tb.Helper()
	return h.apply(c)[0]
}

// must applies cmds as one entry and fails the test unless every command succeeded.
func (h *harness) must(cmds ...fsm.Command) {
	h.tb.Helper()
	for i, r := range h.apply(cmds...) {
		if r.Code != fsm.CodeOK && r.Code != fsm.CodeCreated {
			h.tb.Fatalf("command %d (%T) of entry %d: code %d (%s)", i, cmds[i], h.index, r.Code, r.Msg)
		}
	}
}

func (h *harness) hash() string {
	_, s := h.f.StateHash()
	return s
}

// replay applies every entry h applied to a fresh FSM and returns it.
func (h *harness) replay() *fsm.FSM {
	f := fsm.New(nil)
	f.ApplyBatch(h.entries)
	return f
}

func stateHash(f *fsm.FSM) string {
	_, s := f.StateHash()
	return s
}

// memSink is a raft.SnapshotSink over a buffer.
type memSink struct {
	bytes.Buffer
	writeErr          error
	closed, cancelled bool
}

var _ raft.SnapshotSink = (*memSink)(nil)

func (s *memSink) ID() string { return "mem" }
func (s *memSink) Write(p []byte) (int, error) {
	if s.writeErr != nil {
		return 0, s.writeErr
	}
	return s.Buffer.Write(p)
}
func (s *memSink) Close() error  { s.closed = true; return nil }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }

// persist writes snap into a memSink and returns the bytes.
func persist(tb testing.TB, snap raft.FSMSnapshot) []byte {
	tb.Helper()
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		tb.Fatalf("Persist: %v", err)
	}
	if !sink.closed || sink.cancelled {
		tb.Fatalf("Persist left the sink closed=%v cancelled=%v, want closed only", sink.closed, sink.cancelled)
	}
	snap.Release()
	return sink.Bytes()
}

// closeTracker is the io.ReadCloser Raft hands to Restore.
type closeTracker struct {
	io.Reader
	closed bool
}

func (c *closeTracker) Close() error { c.closed = true; return nil }

// restored returns a new FSM restored from p.
func restored(tb testing.TB, p []byte) *fsm.FSM {
	tb.Helper()
	f := fsm.New(nil)
	rc := &closeTracker{Reader: bytes.NewReader(p)}
	if err := f.Restore(rc); err != nil {
		tb.Fatalf("Restore: %v", err)
	}
	if !rc.closed {
		tb.Fatalf("Restore did not close its reader")
	}
	return f
}

// digest returns a distinct non-zero piece digest per (s, n).
func digest(s string, n int) [32]byte {
	return sha256.Sum256([]byte(fmt.Sprintf("%s/%d", s, n)))
}

func digests(s string, first, count int) [][32]byte {
	out := make([][32]byte, count)
	for i := range out {
		out[i] = digest(s, first+i)
	}
	return out
}

// spansOf turns from,to pairs into spans.
func spansOf(pairs ...uint32) []api.Span {
	out := make([]api.Span, 0, len(pairs)/2)
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, api.Span{From: pairs[i], To: pairs[i+1]})
	}
	return out
}

// sentinel is the error a failing Result's Err must wrap, by code.
func sentinel(c fsm.Code) error {
	switch c {
	case fsm.CodeNotFound:
		return fsm.ErrNotFound
	case fsm.CodeConflict:
		return fsm.ErrConflict
	case fsm.CodeInvalid:
		return fsm.ErrInvalid
	}
	return nil
}

// checkErr asserts that r.Err() agrees with r.Code.
func checkErr(tb testing.TB, r fsm.Result) {
	tb.Helper()
	want := sentinel(r.Code)
	err := r.Err()
	switch {
	case want == nil && err != nil:
		tb.Errorf("Result{Code: %d}.Err() = %v, want nil", r.Code, err)
	case want != nil && !errors.Is(err, want):
		tb.Errorf("Result{Code: %d}.Err() = %v, want it to wrap %v", r.Code, err, want)
	case want != nil && r.Msg == "":
		tb.Errorf("failing Result{Code: %d} has no message", r.Code)
	}
}

// taskID returns a valid task ID (64 lowercase hex characters, as api.TaskID makes them)
// standing for name: the SHA-256 of name.
func taskID(name string) string {
	sum := sha256.Sum256([]byte(name))
	return hex.EncodeToString(sum[:])
}

// Task IDs of the tests, by the names the tests use for them.
var (
	tid1    = taskID("t1")
	tid2    = taskID("t2")
	tid3    = taskID("t3")
	tid4    = taskID("t4")
	tid9    = taskID("t9")
	tidBig  = taskID("big")
	tidNope = taskID("nope") // never registered
)

// Expected digests, normalized as api.NormalizeDigest returns them.
var (
	sha256Digest = "sha256:" + strings.Repeat("ab", 32)
	md5Digest    = "md5:" + strings.Repeat("0", 32)
)

// The common fixture: two members, three peers, task t1 (16 pieces, generation 1) joined
// by p1.
var (
	m1 = fsm.MemberUpsert{ID: "m1", HTTPAddr: "10.0.0.1:8002", RaftAddr: "10.0.0.1:8003"}
	m2 = fsm.MemberUpsert{ID: "m2", HTTPAddr: "10.0.0.2:8002", RaftAddr: "10.0.0.2:8003"}
	p1 = fsm.PeerRegister{ID: "p1", IP: "192.168.1.1", Hostname: "node-1", Port: 65001}
	p2 = fsm.PeerRegister{ID: "p2", IP: "192.168.1.2", Hostname: "node-2", Port: 65002}
	p3 = fsm.PeerRegister{ID: "p3", IP: "192.168.1.3", Hostname: "node-3", Port: 65003}
	t1 = fsm.TaskRegister{TaskID: tid1, URL: "http://origin/a.bin", Digest: sha256Digest, PeerID: "p1",
		Headers: map[string]string{"Authorization": "Bearer x"}, Filter: []string{"token"}}
	t1Meta = fsm.TaskMeta{TaskID: tid1, Generation: 1, Status: fsm.TaskRunning,
		PieceSize: 4 << 20, ContentLength: 16*(4<<20) - 100, PieceCount: 16}
)

// join is the TaskRegister by which peer pid joins the existing task id (a TaskRegister
// always carries the task's URL, even when the task exists).
func join(id, pid string) fsm.TaskRegister {
	return fsm.TaskRegister{TaskID: id, URL: "http://origin/joined", PeerID: pid}
}

func fixture() []fsm.Command {
	return []fsm.Command{m1, m2, p1, p2, p3, t1, t1Meta}
}
