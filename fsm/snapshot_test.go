package fsm_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"reflect"
	"strings"
	"testing"

	"github.com/dfly-ha/dfha/fsm"
	"github.com/hashicorp/raft"
)

// The rich state: every kind of object, pieces held and cached, digests, bad sources, two
// generations, and objects that were removed again.
var (
	richMembers  = []string{"m1", "m2", "m3", "m9"}
	richPeers    = []string{"p1", "p2", "p3", "p4", "p5", "p6", "p9"}
	richTasks    = []string{tid1, tid2, tid3, tid4, tid9}
	richPreheats = []string{"ph1", "ph2", "ph3", "ph9"}
)

const richPieces = 72 // pieces the dump looks at: past every task's end

func buildRich(h *harness) {
	h.tb.Helper()
	h.must(
		fsm.MemberUpsert{ID: "m1", HTTPAddr: "10.0.0.1:8002", RaftAddr: "10.0.0.1:8003"},
		fsm.MemberUpsert{ID: "m2", HTTPAddr: "10.0.0.2:8002", RaftAddr: "10.0.0.2:8003"},
		fsm.MemberUpsert{ID: "m3", HTTPAddr: "10.0.0.3:8002", RaftAddr: "10.0.0.3:8003"},
	)
	h.must(fsm.MemberAlive{ID: "m3", Alive: false})
	var regs []fsm.Command
	for i := 1; i <= 6; i++ {
		regs = append(regs, fsm.PeerRegister{ID: fmt.Sprintf("p%d", i), IP: fmt.Sprintf("192.168.1.%d", i),
			Hostname: fmt.Sprintf("node-%d", i), Port: uint16(65000 + i)})
	}
	h.must(regs...)
	h.must(
		fsm.TaskRegister{TaskID: tid1, URL: "http://origin/a.bin", Digest: sha256Digest, PeerID: "p1",
			Headers: map[string]string{"Authorization": "Bearer a", "X-Trace": "1"}, Filter: []string{"token"}},
		fsm.TaskRegister{TaskID: tid2, URL: "http://origin/b.bin", PeerID: "p5"},
		fsm.TaskRegister{TaskID: tid3, URL: "http://origin/c.bin"},
		fsm.TaskRegister{TaskID: tid4, URL: "http://origin/d.bin", PeerID: "p1"},
		join(tid1, "p4"),
		join(tid2, "p2"),
	)
	h.must(
		fsm.TaskMeta{TaskID: tid1, Generation: 1, Status: fsm.TaskRunning, PieceSize: 1 << 20, ContentLength: 64 << 20, PieceCount: 64},
		fsm.TaskMeta{TaskID: tid2, Generation: 1, Status: fsm.TaskRunning, PieceSize: -1, ContentLength: -1, PieceCount: -1},
	)
	h.must(
		fsm.PieceReport{TaskID: tid2, PeerID: "p5", Success: true, Spans: spansOf(0, 9)},
		fsm.PiecesCached{TaskID: tid2, MemberID: "m1", Generation: 1, First: 0, Digests: digests("t2g1", 0, 4)},
	)
	h.must(fsm.TaskMeta{TaskID: tid2, Generation: 2, Status: fsm.TaskSuccess, PieceSize: 2 << 20, ContentLength: 60 << 20, PieceCount: 30})
	h.must(
		fsm.PieceReport{TaskID: tid1, PeerID: "p1", Success: true, Spans: spansOf(0, 15, 20, 40)},
		fsm.PieceReport{TaskID: tid1, PeerID: "p2", Success: true, Spans: spansOf(0, 63)},
		fsm.PieceReport{TaskID: tid1, PeerID: "p3", Success: true, Spans: spansOf(5, 5)},
		fsm.PieceReport{TaskID: tid1, PeerID: "p6", Success: true, Spans: spansOf(10, 20)},
		fsm.PieceReport{TaskID: tid2, PeerID: "p5", Generation: 2, Success: true, Spans: spansOf(0, 29)},
		fsm.PieceReport{TaskID: tid4, PeerID: "p1", Success: true, Spans: spansOf(0, 3)},
	)
	h.must(
		fsm.PiecesCached{TaskID: tid1, MemberID: "m1", Generation: 1, First: 0, Digests: digests("t1", 0, 32)},
		fsm.PiecesCached{TaskID: tid1, MemberID: "m2", Generation: 1, First: 16, Digests: digests("t1", 16, 32)},
		fsm.PiecesCached{TaskID: tid2, MemberID: "m2", Generation: 2, First: 0, Digests: digests("t2", 0, 8)},
		fsm.PiecesCached{TaskID: tid2, MemberID: "m1", Generation: 2, First: 12, Digests: digests("t2", 12, 2)}, // 8-11 not cached
	)
	h.must(
		fsm.PieceReport{TaskID: tid1, PeerID: "p3", Source: "p1", Spans: spansOf(0, 3)},
		fsm.PieceReport{TaskID: tid1, PeerID: "p3", Source: "m1", Spans: spansOf(6, 6)},
		fsm.PieceReport{TaskID: tid1, PeerID: "p4", Source: "p2", Spans: spansOf(7, 8)},
		fsm.TaskPeerState{TaskID: tid1, PeerID: "p1", State: fsm.PeerTaskSuccess},
		fsm.TaskPeerState{TaskID: tid2, PeerID: "p5", State: fsm.PeerTaskRunning},
		fsm.TaskPeerState{TaskID: tid3, PeerID: "p3", State: fsm.PeerTaskFailed},
	)
	h.must(
		fsm.PreheatCreate{ID: "ph1", Kind: "file", URL: "http://origin/e.bin", Headers: map[string]string{"Cookie": "c"}},
		fsm.PreheatCreate{ID: "ph2", Kind: "image", URL: "http://registry/v2/x"},
		fsm.PreheatCreate{ID: "ph3", Kind: "file", URL: "http://origin/f.bin"},
	)
	h.must(
		fsm.PreheatUpdate{ID: "ph2", Status: "failed", Error: "registry: 401"},
		fsm.PreheatUpdate{ID: "ph3", Status: "success"},
		fsm.PeerRemove{IDs: []string{"p6"}},
		fsm.TaskDelete{TaskID: tid4},
	)
}

// dump is everything the read API answers about the rich state's objects.
type dump struct {
	Members  []fsm.MemberInfo
	Member   map[string]fsm.MemberInfo
	Peers    map[string]fsm.PeerInfo
	Tasks    map[string]fsm.TaskInfo
	Digests  map[string][]string // task -> per piece "gen:digest" or ""
	Holds    map[string]string   // "task/peer" -> one character per piece
	Held     map[string]int
	Bad      map[string]map[string]uint32
	Preheats map[string]fsm.PreheatInfo
	Counts   [4]int
	Applied  uint64
}

func dumpOf(f *fsm.FSM) dump {
	d := dump{Members: f.Members(), Member: map[string]fsm.MemberInfo{}, Peers: map[string]fsm.PeerInfo{},
		Tasks: map[string]fsm.TaskInfo{}, Digests: map[string][]string{}, Holds: map[string]string{},
		Held: map[string]int{}, Bad: map[string]map[string]uint32{}, Preheats: map[string]fsm.PreheatInfo{},
		Applied: f.AppliedIndex()}
	for _, id := range richMembers {
		if m, ok := f.Member(id); ok {
			d.Member[id] = m
		}
	}
	for _, id := range richPeers {
		if p, ok := f.Peer(id); ok {
			d.Peers[id] = p
		}
	}
	for _, id := range richTasks {
		if t, ok := f.Task(id); ok {
			d.Tasks[id] = t
		}
		ds := make([]string, richPieces)
		for n := range ds {
			if dg, gen, ok := f.PieceDigest(id, uint32(n)); ok {
				ds[n] = fmt.Sprintf("%d:%x", gen, dg[:8])
			}
		}
		d.Digests[id] = ds
		for _, pid := range richPeers {
			var b strings.Builder
			for n := uint32(0); n < richPieces; n++ {
				if f.PeerHolds(id, pid, n) {
					b.WriteByte('x')
				} else {
					b.WriteByte('.')
				}
			}
			d.Holds[id+"/"+pid] = b.String()
		}
		d.Held[id] = f.HeldCount(id)
		d.Bad[id] = f.BadSources(id)
	}
	for _, id := range richPreheats {
		if p, ok := f.Preheat(id); ok {
			d.Preheats[id] = p
		}
	}
	d.Counts[0], d.Counts[1], d.Counts[2], d.Counts[3] = f.Counts()
	return d
}

func diffDumps(tb testing.TB, got, want dump) {
	tb.Helper()
	g, w := reflect.ValueOf(got), reflect.ValueOf(want)
	for i := 0; i < g.NumField(); i++ {
		if !reflect.DeepEqual(g.Field(i).Interface(), w.Field(i).Interface()) {
			tb.Errorf("%s differs:\n got %+v\nwant %+v", g.Type().Field(i).Name, g.Field(i).Interface(), w.Field(i).Interface())
		}
	}
}

// TestRichStateIsRich guards the other tests: the rich state has what they claim to check.
func TestRichStateIsRich(t *testing.T) {
	h := newHarness(t)
	buildRich(h)
	d := dumpOf(h.f)
	if d.Counts != [4]int{3, 5, 3, 3} {
		t.Errorf("Counts = %v, want 3 members, 5 peers, 3 tasks, 3 preheats", d.Counts)
	}
	if d.Held[tid1] != 37+64+1 || d.Held[tid2] != 30 || d.Tasks[tid1].PiecesCached != 48 || d.Tasks[tid2].PiecesCached != 10 {
		t.Errorf("held %v, cached t1 %d t2 %d", d.Held, d.Tasks[tid1].PiecesCached, d.Tasks[tid2].PiecesCached)
	}
	if len(d.Bad[tid1]) != 3 || d.Tasks[tid2].Generation != 2 || d.Tasks[tid1].Peers != 4 || d.Member["m3"].Alive {
		t.Errorf("bad sources %v, t2 %+v, t1 %+v", d.Bad[tid1], d.Tasks[tid2], d.Tasks[tid1])
	}
}

func TestSnapshotRestoreRoundTrip(t *testing.T) {
	h := newHarness(t)
	buildRich(h)
	index, hash := h.f.StateHash()
	want := dumpOf(h.f)

	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	r := restored(t, persist(t, snap))

	gotIndex, gotHash := r.StateHash()
	if gotHash != hash || gotIndex != index || r.AppliedIndex() != h.index {
		t.Errorf("restored StateHash = %d %s, AppliedIndex %d; want %d %s, %d", gotIndex, gotHash, r.AppliedIndex(), index, hash, h.index)
	}
	diffDumps(t, dumpOf(r), want)

	// Restored again from its own snapshot: still equal.
	snap2, err := r.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot of the restored FSM: %v", err)
	}
	if r2 := restored(t, persist(t, snap2)); stateHash(r2) != hash {
		t.Errorf("second round trip changed the state hash")
	}
}

func TestRestoreReplacesState(t *testing.T) {
	src := newHarness(t)
	buildRich(src)
	snap, err := src.f.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	p := persist(t, snap)

	dst := newHarness(t)
	dst.must(fsm.MemberUpsert{ID: "other", HTTPAddr: "10.0.0.7:8002", RaftAddr: "10.0.0.7:8003"},
		fsm.PeerRegister{ID: "p1", IP: "1.1.1.1", Hostname: "elsewhere", Port: 1},
		fsm.TaskRegister{TaskID: tid9, URL: "u", PeerID: "p1"}, fsm.PreheatCreate{ID: "ph9", Kind: "file", URL: "u"})
	for i := 0; i < 100; i++ { // a later applied index than the snapshot's
		dst.must(fsm.PieceReport{TaskID: tid9, PeerID: "p1", Success: true, Spans: spansOf(uint32(i), uint32(i))})
	}
	if err := dst.f.Restore(&closeTracker{Reader: bytes.NewReader(p)}); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if stateHash(dst.f) != stateHash(src.f) || dst.f.AppliedIndex() != src.f.AppliedIndex() {
		t.Errorf("restored over other state: hash or applied index differ from the snapshot's")
	}
	diffDumps(t, dumpOf(dst.f), dumpOf(src.f))
	if _, ok := dst.f.Member("other"); ok {
		t.Errorf("member of the state before Restore survived")
	}
}

// mutations change the rich state, each in one way a snapshot must not see. In this order
// they all succeed one after the other.
var mutations = []struct {
	name string
	cmds []fsm.Command
}{
	{"new pieces for an existing holder", []fsm.Command{fsm.PieceReport{TaskID: tid1, PeerID: "p1", Success: true, Spans: spansOf(16, 19, 41, 63)}}},
	{"first pieces of a joined peer", []fsm.Command{fsm.PieceReport{TaskID: tid1, PeerID: "p4", Success: true, Spans: spansOf(0, 1)}}},
	{"pieces of a peer new to the task", []fsm.Command{fsm.PieceReport{TaskID: tid2, PeerID: "p3", Success: true, Spans: spansOf(3, 3)}}},
	{"bad source", []fsm.Command{fsm.PieceReport{TaskID: tid1, PeerID: "p3", Source: "p1", Spans: spansOf(9, 9)}}},
	{"same generation meta", []fsm.Command{fsm.TaskMeta{TaskID: tid1, Generation: 1, Status: fsm.TaskSuccess, PieceSize: 1 << 20, ContentLength: 64 << 20, PieceCount: 64}}},
	{"cached pieces", []fsm.Command{fsm.PiecesCached{TaskID: tid1, MemberID: "m3", Generation: 1, First: 48, Digests: digests("t1", 48, 3)}}},
	{"cached pieces between cached ones", []fsm.Command{fsm.PiecesCached{TaskID: tid2, MemberID: "m3", Generation: 2, First: 9, Digests: digests("t2", 9, 2)}}},
	{"cached pieces of a member that had some", []fsm.Command{fsm.PiecesCached{TaskID: tid1, MemberID: "m1", Generation: 1, First: 32, Digests: digests("t1", 32, 1)}}},
	{"member liveness", []fsm.Command{fsm.MemberAlive{ID: "m1", Alive: false}}},
	{"member address", []fsm.Command{fsm.MemberUpsert{ID: "m2", HTTPAddr: "new.example:8002", RaftAddr: "new.example:8003"}}},
	{"peer registers again", []fsm.Command{fsm.PeerRegister{ID: "p1", IP: "10.9.9.9", Hostname: "moved", Port: 1}}},
	{"new peer", []fsm.Command{fsm.PeerRegister{ID: "p9", IP: "10.9.9.9", Hostname: "node-9", Port: 65009}}},
	{"peer joins a task", []fsm.Command{join(tid3, "p1")}},
	{"peer task state", []fsm.Command{fsm.TaskPeerState{TaskID: tid1, PeerID: "p1", State: fsm.PeerTaskFailed}}},
	{"new task", []fsm.Command{fsm.TaskRegister{TaskID: tid9, URL: "u9", PeerID: "p2"}}},
	{"preheat progress", []fsm.Command{fsm.PreheatUpdate{ID: "ph1", Status: "running"}}},
	{"new preheat", []fsm.Command{fsm.PreheatCreate{ID: "ph9", Kind: "image", URL: "u"}}},
	{"new generation", []fsm.Command{fsm.TaskMeta{TaskID: tid1, Generation: 2, Status: fsm.TaskRunning, PieceCount: 10}}},
	{"member removal", []fsm.Command{fsm.MemberRemove{ID: "m1"}}},
	{"peer removal", []fsm.Command{fsm.PeerRemove{IDs: []string{"p2"}}}},
	{"task deletion", []fsm.Command{fsm.TaskDelete{TaskID: tid1}}},
}

// allMutations applies every mutation, one entry each, in order.
func allMutations() [][]fsm.Command {
	var out [][]fsm.Command
	for _, m := range mutations {
		out = append(out, m.cmds)
	}
	return out
}

// TestSnapshotIsCopyOnWrite: a snapshot persisted after later changes still holds the state
// of the time it was taken; and the live state is what replaying the log gives.
func TestSnapshotIsCopyOnWrite(t *testing.T) {
	type tc struct {
		name    string
		entries [][]fsm.Command
	}
	cases := []tc{}
	for _, m := range mutations {
		cases = append(cases, tc{m.name, [][]fsm.Command{m.cmds}})
	}
	cases = append(cases, tc{"all of them", allMutations()})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			buildRich(h)
			hash0, dump0 := h.hash(), dumpOf(h.f)
			snap, err := h.f.Snapshot()
			if err != nil {
				t.Fatalf("Snapshot: %v", err)
			}
			for _, cmds := range c.entries {
				h.must(cmds...)
			}
			if h.hash() == hash0 {
				t.Fatalf("the mutation did not change the state: the test proves nothing")
			}
			r := restored(t, persist(t, snap))
			if stateHash(r) != hash0 {
				t.Errorf("snapshot persisted after the change does not hold the state of its time")
			}
			diffDumps(t, dumpOf(r), dump0)
			if got, want := stateHash(h.replay()), h.hash(); got != want {
				t.Errorf("live state after Snapshot differs from a replay of the log")
			}
		})
	}
}

// TestSeveralSnapshots: snapshots taken at different times, persisted in another order, each
// hold their own time's state.
func TestSeveralSnapshots(t *testing.T) {
	h := newHarness(t)
	buildRich(h)
	var snaps []raft.FSMSnapshot
	var hashes []string
	for i, cmds := range allMutations() {
		if i%4 == 0 {
			s, err := h.f.Snapshot()
			if err != nil {
				t.Fatalf("Snapshot: %v", err)
			}
			snaps, hashes = append(snaps, s), append(hashes, h.hash())
		}
		h.must(cmds...)
	}
	for i := len(snaps) - 1; i >= 0; i-- {
		if stateHash(restored(t, persist(t, snaps[i]))) != hashes[i] {
			t.Errorf("snapshot %d does not hold the state of its time", i)
		}
	}
	if stateHash(h.replay()) != h.hash() {
		t.Errorf("live state differs from a replay of the log")
	}
}

// TestPersistWhileApplying: Persist runs while Apply goes on (run with -race).
func TestPersistWhileApplying(t *testing.T) {
	h := newHarness(t)
	buildRich(h)
	hash0 := h.hash()
	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	type out struct {
		p   []byte
		err error
	}
	done := make(chan out, 1)
	start := make(chan struct{})
	go func() {
		<-start
		sink := &memSink{}
		err := snap.Persist(sink)
		done <- out{sink.Bytes(), err}
	}()
	close(start)
	for round := 0; round < 3; round++ {
		for _, cmds := range allMutations() {
			h.apply(cmds...) // results vary by round: removed things stay removed
		}
		if _, err := h.f.Snapshot(); err != nil { // a new epoch while Persist may still run
			t.Fatalf("Snapshot: %v", err)
		}
	}
	o := <-done
	if o.err != nil {
		t.Fatalf("Persist: %v", o.err)
	}
	if stateHash(restored(t, o.p)) != hash0 {
		t.Errorf("snapshot persisted during applies does not hold the state of its time")
	}
	if stateHash(h.replay()) != h.hash() {
		t.Errorf("live state differs from a replay of the log")
	}
}

// TestApplyAfterRestore: a restored FSM goes on applying like the one it came from.
func TestApplyAfterRestore(t *testing.T) {
	h := newHarness(t)
	buildRich(h)
	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	r := &harness{tb: t, f: restored(t, persist(t, snap)), index: h.index}
	for _, cmds := range allMutations() {
		a, b := h.apply(cmds...), r.apply(cmds...)
		if !reflect.DeepEqual(a, b) {
			t.Errorf("results differ after Restore: %+v vs %+v", a, b)
		}
		if h.hash() != r.hash() {
			t.Fatalf("after %T: states differ", cmds[0])
		}
	}
	diffDumps(t, dumpOf(r.f), dumpOf(h.f))
}

func TestRestoreRejectsBadSnapshots(t *testing.T) {
	src := newHarness(t)
	buildRich(src)
	snap, err := src.f.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	good := persist(t, snap)

	h := newHarness(t)
	h.must(fixture()...)
	index0, hash0 := h.f.StateHash()
	try := func(name string, p []byte) {
		t.Helper()
		var err error
		if pn := catch(func() { err = h.f.Restore(&closeTracker{Reader: bytes.NewReader(p)}) }); pn != nil {
			t.Fatalf("%s: Restore panicked: %v", name, pn)
		}
		if err == nil {
			t.Fatalf("%s: Restore accepted it", name)
		}
		if index, hash := h.f.StateHash(); index != index0 || hash != hash0 {
			t.Fatalf("%s: a failed Restore changed the state", name)
		}
	}
	try("empty", nil)
	try("other data", []byte("not a snapshot at all"))
	try("other format version", append([]byte("dfha-fsm"), 2))
	// The member count made far larger than the bytes that follow.
	header := binary.AppendUvarint(binary.AppendUvarint([]byte("dfha-fsm"), 1), src.index)
	if !bytes.HasPrefix(good, header) {
		t.Fatalf("snapshot header is not magic, version 1, applied index")
	}
	// After the header: the ring epoch, then the member count (one byte in this state).
	_, epochLen := binary.Uvarint(good[len(header):])
	header = good[:len(header)+epochLen]
	corrupt := append(binary.AppendUvarint(append([]byte(nil), header...), 1<<40), good[len(header)+1:]...)
	try("corrupt count", corrupt)
	for n := 0; n < len(good); n++ {
		try(fmt.Sprintf("first %d of %d bytes", n, len(good)), append([]byte(nil), good[:n]...))
	}
}

func TestRestoreReadError(t *testing.T) {
	f := fsm.New(nil)
	rc := &closeTracker{Reader: &failingReader{}}
	if err := f.Restore(rc); err == nil || !rc.closed {
		t.Errorf("Restore from a failing reader = %v, closed %v; want an error, closed", err, rc.closed)
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

func TestPersistCancelsOnWriteError(t *testing.T) {
	h := newHarness(t)
	buildRich(h)
	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	defer snap.Release()
	werr := errors.New("disk full")
	sink := &memSink{writeErr: werr}
	if err := snap.Persist(sink); !errors.Is(err, werr) {
		t.Errorf("Persist = %v, want it to wrap %v", err, werr)
	}
	if !sink.cancelled || sink.closed {
		t.Errorf("sink cancelled %v, closed %v; want cancelled only", sink.cancelled, sink.closed)
	}
}

// TestStateHashDeterministic: FSMs fed the same entries hold the same state, however Raft
// groups the entries into ApplyBatch calls.
func TestStateHashDeterministic(t *testing.T) {
	a := newHarness(t)
	buildRich(a)
	for _, cmds := range allMutations() {
		a.apply(cmds...)
	}

	b := fsm.New(nil) // one entry per call
	for _, l := range a.entries {
		b.Apply(l)
	}
	c := a.replay()   // all entries in one call
	d := fsm.New(nil) // in uneven groups
	for i := 0; i < len(a.entries); i += 3 {
		d.ApplyBatch(a.entries[i:min(i+3, len(a.entries))])
	}
	want := a.hash()
	for name, f := range map[string]*fsm.FSM{"Apply": b, "one ApplyBatch": c, "ApplyBatch of 3": d} {
		if index, got := f.StateHash(); got != want || index != a.index {
			t.Errorf("%s: hash %s at %d, want %s at %d", name, got, index, want, a.index)
		}
	}
	for i := 0; i < 5; i++ { // map iteration order differs from call to call
		if a.hash() != want {
			t.Fatalf("StateHash of an unchanged FSM changed")
		}
	}
}

// TestStateHashIgnoresInsertionOrder: commands that commute, applied in different orders
// (so every map is filled in a different order), give equal hashes; a different state
// gives a different one.
func TestStateHashIgnoresInsertionOrder(t *testing.T) {
	groups := func() [][]fsm.Command {
		var members, peers, tasks, pieces, preheats []fsm.Command
		for i := 0; i < 20; i++ {
			members = append(members, fsm.MemberUpsert{ID: fmt.Sprintf("m%02d", i), HTTPAddr: "h:8002", RaftAddr: "r:8003"})
			peers = append(peers, fsm.PeerRegister{ID: fmt.Sprintf("p%02d", i), IP: "10.0.1.1", Hostname: "h", Port: uint16(i + 1)})
			preheats = append(preheats, fsm.PreheatCreate{ID: fmt.Sprintf("ph%02d", i), Kind: "file", URL: "u",
				Headers: map[string]string{"A": "1", "B": "2", "C": fmt.Sprint(i)}})
		}
		for i := 0; i < 5; i++ {
			tid := taskID(fmt.Sprintf("t%d", i))
			for j := 0; j < 20; j += 2 {
				tasks = append(tasks, fsm.TaskRegister{TaskID: tid, URL: "u/" + tid, PeerID: fmt.Sprintf("p%02d", (i+j)%20),
					Headers: map[string]string{"X": tid, "Y": "y"}})
			}
			for j := 0; j < 20; j++ {
				pid := fmt.Sprintf("p%02d", j)
				pieces = append(pieces,
					fsm.PieceReport{TaskID: tid, PeerID: pid, Success: true, Spans: spansOf(uint32(j), uint32(j+3))},
					fsm.PieceReport{TaskID: tid, PeerID: pid, Success: true, Spans: spansOf(uint32(100+j), uint32(100+j))},
					fsm.PieceReport{TaskID: tid, PeerID: pid, Source: fmt.Sprintf("p%02d", (j+1)%20), Spans: spansOf(7, 8)},
					fsm.PiecesCached{TaskID: tid, MemberID: fmt.Sprintf("m%02d", j), Generation: 1, First: uint32(j), Digests: digests(tid, j, 5)},
					fsm.TaskPeerState{TaskID: tid, PeerID: pid, State: fsm.PeerTaskSuccess})
			}
		}
		return [][]fsm.Command{members, peers, tasks, pieces, preheats}
	}
	hashOf := func(seed int64) string {
		h := newHarness(t)
		rng := rand.New(rand.NewSource(seed))
		var all []fsm.Command
		for _, g := range groups() {
			if seed != 0 {
				rng.Shuffle(len(g), func(i, j int) { g[i], g[j] = g[j], g[i] })
			}
			all = append(all, g...)
		}
		h.must(all...)
		return h.hash()
	}
	want := hashOf(0)
	for seed := int64(1); seed <= 5; seed++ {
		if got := hashOf(seed); got != want {
			t.Errorf("order %d: hash %s, want %s", seed, got, want)
		}
	}

	h := newHarness(t)
	var all []fsm.Command
	for _, g := range groups() {
		all = append(all, g...)
	}
	h.must(append(all, fsm.PieceReport{TaskID: taskID("t0"), PeerID: "p00", Success: true, Spans: spansOf(50, 50)})...)
	if h.hash() == want {
		t.Errorf("one more piece held, same hash")
	}
}

// FuzzRestore: Restore never panics on a damaged snapshot, and a state it accepts persists
// and restores to the same state hash.
func FuzzRestore(f *testing.F) {
	h := newHarness(f)
	buildRich(h)
	snap, err := h.f.Snapshot()
	if err != nil {
		f.Fatalf("Snapshot: %v", err)
	}
	f.Add(persist(f, snap))
	empty, err := fsm.New(nil).Snapshot()
	if err != nil {
		f.Fatalf("Snapshot: %v", err)
	}
	f.Add(persist(f, empty))
	f.Add([]byte("dfha-fsm"))
	f.Fuzz(func(t *testing.T, p []byte) {
		r := fsm.New(nil)
		if err := r.Restore(io.NopCloser(bytes.NewReader(p))); err != nil {
			return
		}
		snap, err := r.Snapshot()
		if err != nil {
			t.Fatalf("Snapshot: %v", err)
		}
		if got, want := stateHash(restored(t, persist(t, snap))), stateHash(r); got != want {
			t.Fatalf("restored state does not survive another snapshot round trip")
		}
	})
}
