package fsm_test

import (
	"fmt"
	"reflect"
	"testing"

	"github.com/dfly-ha/dfha/fsm"
	"github.com/dfly-ha/dfha/sdk/api"
	"github.com/hashicorp/raft"
)

func taskOf(t *testing.T, h *harness, id string) fsm.TaskInfo {
	t.Helper()
	ti, ok := h.f.Task(id)
	if !ok {
		t.Fatalf("Task(%q) not found", id)
	}
	return ti
}

func peerOf(t *testing.T, h *harness, id string) fsm.PeerInfo {
	t.Helper()
	p, ok := h.f.Peer(id)
	if !ok {
		t.Fatalf("Peer(%q) not found", id)
	}
	return p
}

func wantPeerTasks(t *testing.T, h *harness, peerID string, want ...string) {
	t.Helper()
	got := peerOf(t, h, peerID).Tasks
	if len(got) != len(want) || (len(want) > 0 && !reflect.DeepEqual(got, want)) {
		t.Errorf("Peer(%q).Tasks = %q, want %q", peerID, got, want)
	}
}

func wantCounts(t *testing.T, h *harness, members, peers, tasks, preheats int) {
	t.Helper()
	m, p, tk, ph := h.f.Counts()
	if m != members || p != peers || tk != tasks || ph != preheats {
		t.Errorf("Counts() = %d members, %d peers, %d tasks, %d preheats; want %d, %d, %d, %d",
			m, p, tk, ph, members, peers, tasks, preheats)
	}
}

// wantHolds checks PeerHolds for pieces 0..n-1 against the pieces listed.
func wantHolds(t *testing.T, h *harness, taskID, peerID string, n uint32, held ...uint32) {
	t.Helper()
	set := map[uint32]bool{}
	for _, p := range held {
		set[p] = true
	}
	for i := uint32(0); i < n; i++ {
		if got := h.f.PeerHolds(taskID, peerID, i); got != set[i] {
			t.Errorf("PeerHolds(%q, %q, %d) = %v, want %v", taskID, peerID, i, got, set[i])
		}
	}
}

func wantDigest(t *testing.T, h *harness, taskID string, n uint32, want [32]byte, gen uint64) {
	t.Helper()
	got, g, ok := h.f.PieceDigest(taskID, n)
	if !ok || got != want || g != gen {
		t.Errorf("PieceDigest(%q, %d) = %x, gen %d, %v; want %x, gen %d, true", taskID, n, got[:4], g, ok, want[:4], gen)
	}
}

func wantNoDigest(t *testing.T, h *harness, taskID string, n uint32) {
	t.Helper()
	if got, _, ok := h.f.PieceDigest(taskID, n); ok {
		t.Errorf("PieceDigest(%q, %d) = %x, want none", taskID, n, got[:4])
	}
}

type step struct {
	cmd  fsm.Command
	code fsm.Code
	n    uint64
}

// TestCommands applies every command type on top of fixture() and checks its Result and its
// effect through the read API. A failing command must leave the state hash unchanged.
func TestCommands(t *testing.T) {
	t2 := fsm.TaskRegister{TaskID: tid2, URL: "http://origin/b.bin", Digest: md5Digest,
		Headers: map[string]string{"X-A": "1", "X-B": "2"}, Filter: []string{"sig", "exp"}}

	cases := []struct {
		name   string
		setup  []fsm.Command // applied after fixture(), as one entry; each must succeed
		before func(t *testing.T, h *harness)
		steps  []step // each its own entry
		check  func(t *testing.T, h *harness)
	}{
		// MemberUpsert
		{
			name:  "MemberUpsert/new member starts alive",
			steps: []step{{fsm.MemberUpsert{ID: "m3", HTTPAddr: "10.0.0.3:8002", RaftAddr: "10.0.0.3:8003"}, fsm.CodeCreated, 0}},
			check: func(t *testing.T, h *harness) {
				if got, ok := h.f.Member("m3"); !ok || got != (fsm.MemberInfo{ID: "m3", HTTPAddr: "10.0.0.3:8002", RaftAddr: "10.0.0.3:8003", Alive: true}) {
					t.Errorf("Member(m3) = %+v, %v", got, ok)
				}
				var ids []string
				for _, m := range h.f.Members() {
					ids = append(ids, m.ID)
				}
				if !reflect.DeepEqual(ids, []string{"m1", "m2", "m3"}) {
					t.Errorf("Members() IDs = %q, want [m1 m2 m3] (sorted)", ids)
				}
				wantCounts(t, h, 3, 3, 1, 0)
			},
		},
		{
			name:  "MemberUpsert/existing member changes addresses and keeps liveness",
			setup: []fsm.Command{fsm.MemberAlive{ID: "m1", Alive: false}},
			steps: []step{{fsm.MemberUpsert{ID: "m1", HTTPAddr: "new-h.example:8002", RaftAddr: "new-r.example:8003"}, fsm.CodeOK, 0}},
			check: func(t *testing.T, h *harness) {
				if got, _ := h.f.Member("m1"); got != (fsm.MemberInfo{ID: "m1", HTTPAddr: "new-h.example:8002", RaftAddr: "new-r.example:8003", Alive: false}) {
					t.Errorf("Member(m1) = %+v", got)
				}
				wantCounts(t, h, 2, 3, 1, 0)
			},
		},
		// MemberRemove
		{
			name:  "MemberRemove/removes the member",
			steps: []step{{fsm.MemberRemove{ID: "m2"}, fsm.CodeOK, 1}},
			check: func(t *testing.T, h *harness) {
				if _, ok := h.f.Member("m2"); ok {
					t.Errorf("Member(m2) still found")
				}
				want := []fsm.MemberInfo{{ID: "m1", HTTPAddr: m1.HTTPAddr, RaftAddr: m1.RaftAddr, Alive: true}}
				if got := h.f.Members(); !reflect.DeepEqual(got, want) {
					t.Errorf("Members() = %+v, want %+v", got, want)
				}
			},
		},
		{
			name:  "MemberRemove/unknown member",
			steps: []step{{fsm.MemberRemove{ID: "nope"}, fsm.CodeNotFound, 0}},
			check: func(t *testing.T, h *harness) { wantCounts(t, h, 2, 3, 1, 0) },
		},
		{
			name: "MemberRemove/drops the member's cached pieces",
			setup: []fsm.Command{
				fsm.PiecesCached{TaskID: tid1, MemberID: "m1", Generation: 1, First: 0, Digests: digests("t1", 0, 4)},
				fsm.PiecesCached{TaskID: tid1, MemberID: "m2", Generation: 1, First: 2, Digests: digests("t1", 2, 4)},
			},
			before: func(t *testing.T, h *harness) {
				if got := taskOf(t, h, tid1).PiecesCached; got != 6 {
					t.Fatalf("PiecesCached = %d before removal, want 6", got)
				}
			},
			steps: []step{{fsm.MemberRemove{ID: "m1"}, fsm.CodeOK, 1}},
			check: func(t *testing.T, h *harness) {
				if got := taskOf(t, h, tid1).PiecesCached; got != 4 {
					t.Errorf("PiecesCached = %d after m1 left, want 4 (pieces 2-5 of m2)", got)
				}
			},
		},
		// MemberAlive
		{
			name:  "MemberAlive/records the verdict",
			steps: []step{{fsm.MemberAlive{ID: "m2", Alive: false}, fsm.CodeOK, 0}},
			check: func(t *testing.T, h *harness) {
				if got, _ := h.f.Member("m2"); got.Alive {
					t.Errorf("Member(m2).Alive = true after MemberAlive false")
				}
				if got, _ := h.f.Member("m1"); !got.Alive {
					t.Errorf("Member(m1).Alive = false, want untouched")
				}
			},
		},
		{
			name:  "MemberAlive/back alive",
			setup: []fsm.Command{fsm.MemberAlive{ID: "m2", Alive: false}},
			steps: []step{{fsm.MemberAlive{ID: "m2", Alive: true}, fsm.CodeOK, 0}},
			check: func(t *testing.T, h *harness) {
				if got, _ := h.f.Member("m2"); !got.Alive {
					t.Errorf("Member(m2).Alive = false after MemberAlive true")
				}
			},
		},
		{
			name:  "MemberAlive/unknown member",
			steps: []step{{fsm.MemberAlive{ID: "nope", Alive: true}, fsm.CodeNotFound, 0}},
		},
		// PeerRegister
		{
			name:  "PeerRegister/new peer",
			steps: []step{{fsm.PeerRegister{ID: "p4", IP: "192.168.1.4", Hostname: "node-4", Port: 1}, fsm.CodeCreated, 0}},
			check: func(t *testing.T, h *harness) {
				p := peerOf(t, h, "p4")
				if p.ID != "p4" || p.IP != "192.168.1.4" || p.Hostname != "node-4" || p.Port != 1 ||
					p.RegisteredAt != timeOf(h.index) || len(p.Tasks) != 0 {
					t.Errorf("Peer(p4) = %+v, registered at %d", p, timeOf(h.index))
				}
				wantCounts(t, h, 2, 4, 1, 0)
			},
		},
		{
			name: "PeerRegister/twice with the same ID is idempotent",
			steps: []step{
				{fsm.PeerRegister{ID: "p4", IP: "192.168.1.4", Hostname: "node-4", Port: 1}, fsm.CodeCreated, 0},
				{fsm.PeerRegister{ID: "p4", IP: "192.168.9.9", Hostname: "node-4b", Port: 2}, fsm.CodeOK, 0},
			},
			check: func(t *testing.T, h *harness) {
				p := peerOf(t, h, "p4")
				if p.IP != "192.168.9.9" || p.Hostname != "node-4b" || p.Port != 2 {
					t.Errorf("Peer(p4) = %+v, want the new address", p)
				}
				if p.RegisteredAt != timeOf(h.index-1) {
					t.Errorf("Peer(p4).RegisteredAt = %d, want the first registration's %d", p.RegisteredAt, timeOf(h.index-1))
				}
				wantCounts(t, h, 2, 4, 1, 0)
			},
		},
		{
			name:  "PeerRegister/again keeps the peer's tasks",
			steps: []step{{fsm.PeerRegister{ID: "p1", IP: "192.168.9.1", Hostname: "node-1", Port: 65001}, fsm.CodeOK, 0}},
			check: func(t *testing.T, h *harness) {
				wantPeerTasks(t, h, "p1", tid1)
				if got := taskOf(t, h, tid1).Peers; got != 1 {
					t.Errorf("Task(t1).Peers = %d, want 1", got)
				}
			},
		},
		// PeerRemove
		{
			name: "PeerRemove/removes the peer and its pieces",
			setup: []fsm.Command{
				join(tid1, "p2"),
				fsm.PieceReport{TaskID: tid1, PeerID: "p1", Success: true, Spans: spansOf(0, 3)},
				fsm.PieceReport{TaskID: tid1, PeerID: "p2", Success: true, Spans: spansOf(2, 9)},
			},
			before: func(t *testing.T, h *harness) {
				if ti := taskOf(t, h, tid1); ti.Peers != 2 || h.f.HeldCount(tid1) != 12 {
					t.Fatalf("before: Peers %d, HeldCount %d; want 2, 12", ti.Peers, h.f.HeldCount(tid1))
				}
			},
			steps: []step{{fsm.PeerRemove{IDs: []string{"p2"}}, fsm.CodeOK, 1}},
			check: func(t *testing.T, h *harness) {
				if _, ok := h.f.Peer("p2"); ok {
					t.Errorf("Peer(p2) still found")
				}
				if got := taskOf(t, h, tid1).Peers; got != 1 {
					t.Errorf("Task(t1).Peers = %d, want 1", got)
				}
				if got := h.f.HeldCount(tid1); got != 4 {
					t.Errorf("HeldCount(t1) = %d, want 4 (p1's pieces only)", got)
				}
				wantHolds(t, h, tid1, "p2", 16)
				wantHolds(t, h, tid1, "p1", 16, 0, 1, 2, 3)
				wantCounts(t, h, 2, 2, 1, 0)
			},
		},
		{
			name:  "PeerRemove/several, some unknown",
			steps: []step{{fsm.PeerRemove{IDs: []string{"p2", "nope", "p3"}}, fsm.CodeOK, 2}},
			check: func(t *testing.T, h *harness) { wantCounts(t, h, 2, 1, 1, 0) },
		},
		{
			name:  "PeerRemove/several, none known (expiry of peers already gone)",
			steps: []step{{fsm.PeerRemove{IDs: []string{"nope", "gone"}}, fsm.CodeOK, 0}},
			check: func(t *testing.T, h *harness) { wantCounts(t, h, 2, 3, 1, 0) },
		},
		{
			name:  "PeerRemove/unknown peer",
			steps: []step{{fsm.PeerRemove{IDs: []string{"nope"}}, fsm.CodeNotFound, 0}},
			check: func(t *testing.T, h *harness) { wantCounts(t, h, 2, 3, 1, 0) },
		},
		// TaskRegister
		{
			name:  "TaskRegister/new task without a peer",
			steps: []step{{t2, fsm.CodeCreated, 0}},
			check: func(t *testing.T, h *harness) {
				want := fsm.TaskInfo{ID: tid2, URL: t2.URL, Digest: t2.Digest, Headers: t2.Headers, Filter: t2.Filter,
					CreatedAt: timeOf(h.index), AccessedAt: timeOf(h.index), Generation: 1, Status: fsm.TaskPending,
					PieceSize: -1, ContentLength: -1, PieceCount: -1}
				if got := taskOf(t, h, tid2); !reflect.DeepEqual(got, want) {
					t.Errorf("Task(t2) = %+v\nwant %+v", got, want)
				}
				wantCounts(t, h, 2, 3, 2, 0)
			},
		},
		{
			name:  "TaskRegister/existing task joins another peer",
			steps: []step{{fsm.TaskRegister{TaskID: tid1, URL: "http://elsewhere/", PeerID: "p2"}, fsm.CodeOK, 0}},
			check: func(t *testing.T, h *harness) {
				ti := taskOf(t, h, tid1)
				if ti.Peers != 2 || ti.URL != t1.URL || ti.CreatedAt != timeOf(1) || ti.AccessedAt != timeOf(h.index) {
					t.Errorf("Task(t1) = %+v; want 2 peers, first URL, created at %d, accessed at %d", ti, timeOf(1), timeOf(h.index))
				}
				wantPeerTasks(t, h, "p2", tid1)
			},
		},
		{
			name:  "TaskRegister/same peer again",
			steps: []step{{t1, fsm.CodeOK, 0}},
			check: func(t *testing.T, h *harness) {
				if got := taskOf(t, h, tid1).Peers; got != 1 {
					t.Errorf("Task(t1).Peers = %d, want 1", got)
				}
				wantPeerTasks(t, h, "p1", tid1)
			},
		},
		{
			name:  "TaskRegister/unknown peer creates nothing",
			steps: []step{{fsm.TaskRegister{TaskID: tid2, URL: "u", PeerID: "nope"}, fsm.CodeNotFound, 0}},
			check: func(t *testing.T, h *harness) {
				if _, ok := h.f.Task(tid2); ok {
					t.Errorf("Task(t2) exists")
				}
				wantCounts(t, h, 2, 3, 1, 0)
			},
		},
		// TaskPeerState
		{
			name:  "TaskPeerState/joins the peer to the task",
			steps: []step{{fsm.TaskPeerState{TaskID: tid1, PeerID: "p2", State: fsm.PeerTaskRunning}, fsm.CodeOK, 0}},
			check: func(t *testing.T, h *harness) {
				wantPeerTasks(t, h, "p2", tid1)
				if ti := taskOf(t, h, tid1); ti.Peers != 2 || ti.AccessedAt != timeOf(h.index) {
					t.Errorf("Task(t1) Peers %d, AccessedAt %d; want 2, %d", ti.Peers, ti.AccessedAt, timeOf(h.index))
				}
			},
		},
		{
			name:  "TaskPeerState/unknown task",
			steps: []step{{fsm.TaskPeerState{TaskID: tidNope, PeerID: "p1", State: fsm.PeerTaskSuccess}, fsm.CodeNotFound, 0}},
		},
		{
			name:  "TaskPeerState/unknown peer",
			steps: []step{{fsm.TaskPeerState{TaskID: tid1, PeerID: "nope", State: fsm.PeerTaskSuccess}, fsm.CodeNotFound, 0}},
		},
		// TaskDelete
		{
			name: "TaskDelete/removes the task from every peer",
			setup: []fsm.Command{
				join(tid1, "p2"),
				fsm.TaskRegister{TaskID: tid2, URL: "u2", PeerID: "p1"},
				fsm.PieceReport{TaskID: tid1, PeerID: "p1", Success: true, Spans: spansOf(0, 3)},
				fsm.PieceReport{TaskID: tid1, PeerID: "p2", Source: "p1", Spans: spansOf(0, 0)},
			},
			steps: []step{{fsm.TaskDelete{TaskID: tid1}, fsm.CodeOK, 1}},
			check: func(t *testing.T, h *harness) {
				if _, ok := h.f.Task(tid1); ok {
					t.Errorf("Task(t1) still found")
				}
				wantPeerTasks(t, h, "p1", tid2)
				wantPeerTasks(t, h, "p2")
				if h.f.HeldCount(tid1) != 0 || h.f.PeerHolds(tid1, "p1", 0) || h.f.BadSources(tid1) != nil {
					t.Errorf("piece map of the deleted task still answers")
				}
				wantCounts(t, h, 2, 3, 1, 0)
			},
		},
		{
			name:  "TaskDelete/unknown task",
			steps: []step{{fsm.TaskDelete{TaskID: tidNope}, fsm.CodeNotFound, 0}},
		},
		// PieceReport
		{
			name: "PieceReport/overlapping reports count only new pieces",
			steps: []step{
				{fsm.PieceReport{TaskID: tid1, PeerID: "p1", Success: true, Spans: spansOf(0, 3)}, fsm.CodeOK, 4},
				{fsm.PieceReport{TaskID: tid1, PeerID: "p1", Success: true, Spans: spansOf(2, 5)}, fsm.CodeOK, 2},
			},
			check: func(t *testing.T, h *harness) {
				if got := h.f.HeldCount(tid1); got != 6 {
					t.Errorf("HeldCount(t1) = %d, want 6", got)
				}
				wantHolds(t, h, tid1, "p1", 16, 0, 1, 2, 3, 4, 5)
			},
		},
		{
			name:  "PieceReport/several spans",
			steps: []step{{fsm.PieceReport{TaskID: tid1, PeerID: "p1", Success: true, Spans: spansOf(0, 1, 4, 5, 15, 15)}, fsm.CodeOK, 5}},
			check: func(t *testing.T, h *harness) { wantHolds(t, h, tid1, "p1", 16, 0, 1, 4, 5, 15) },
		},
		{
			name:  "PieceReport/joins a peer new to the task",
			steps: []step{{fsm.PieceReport{TaskID: tid1, PeerID: "p2", Success: true, Spans: spansOf(7, 7)}, fsm.CodeOK, 1}},
			check: func(t *testing.T, h *harness) {
				wantPeerTasks(t, h, "p2", tid1)
				if got := taskOf(t, h, tid1).Peers; got != 2 {
					t.Errorf("Task(t1).Peers = %d, want 2", got)
				}
				wantHolds(t, h, tid1, "p2", 16, 7)
			},
		},
		{
			name:  "PieceReport/generation 0 means the current one",
			setup: []fsm.Command{fsm.TaskMeta{TaskID: tid1, Generation: 3, PieceCount: 16}},
			steps: []step{{fsm.PieceReport{TaskID: tid1, PeerID: "p1", Success: true, Spans: spansOf(0, 1)}, fsm.CodeOK, 2}},
		},
		{
			name:  "PieceReport/current generation",
			steps: []step{{fsm.PieceReport{TaskID: tid1, PeerID: "p1", Generation: 1, Success: true, Spans: spansOf(0, 1)}, fsm.CodeOK, 2}},
		},
		{
			name:  "PieceReport/old generation conflicts",
			setup: []fsm.Command{fsm.TaskMeta{TaskID: tid1, Generation: 2, PieceCount: 16}},
			steps: []step{{fsm.PieceReport{TaskID: tid1, PeerID: "p2", Generation: 1, Success: true, Spans: spansOf(0, 1)}, fsm.CodeConflict, 0}},
			check: func(t *testing.T, h *harness) { wantPeerTasks(t, h, "p2") },
		},
		{
			name:  "PieceReport/future generation conflicts",
			steps: []step{{fsm.PieceReport{TaskID: tid1, PeerID: "p1", Generation: 2, Success: true, Spans: spansOf(0, 1)}, fsm.CodeConflict, 0}},
		},
		{
			name:  "PieceReport/piece past piece_count is invalid",
			steps: []step{{fsm.PieceReport{TaskID: tid1, PeerID: "p2", Success: true, Spans: spansOf(10, 16)}, fsm.CodeInvalid, 0}},
			check: func(t *testing.T, h *harness) {
				if got := h.f.HeldCount(tid1); got != 0 {
					t.Errorf("HeldCount(t1) = %d, want 0", got)
				}
			},
		},
		{
			name:  "PieceReport/last piece",
			steps: []step{{fsm.PieceReport{TaskID: tid1, PeerID: "p1", Success: true, Spans: spansOf(15, 15)}, fsm.CodeOK, 1}},
		},
		{
			name:  "PieceReport/no pieces is invalid",
			steps: []step{{fsm.PieceReport{TaskID: tid1, PeerID: "p1", Success: true}, fsm.CodeInvalid, 0}},
		},
		{
			name:  "PieceReport/task with unknown piece count",
			setup: []fsm.Command{fsm.TaskRegister{TaskID: tid2, URL: "u2"}},
			steps: []step{{fsm.PieceReport{TaskID: tid2, PeerID: "p1", Success: true, Spans: spansOf(1000, 1003, api.MaxPieceIndex, api.MaxPieceIndex)}, fsm.CodeOK, 5}},
			check: func(t *testing.T, h *harness) {
				if !h.f.PeerHolds(tid2, "p1", api.MaxPieceIndex) || h.f.HeldCount(tid2) != 5 {
					t.Errorf("HeldCount(t2) = %d, want 5 including the last possible piece", h.f.HeldCount(tid2))
				}
			},
		},
		{
			name:  "PieceReport/unknown task",
			steps: []step{{fsm.PieceReport{TaskID: tidNope, PeerID: "p1", Success: true, Spans: spansOf(0, 0)}, fsm.CodeNotFound, 0}},
		},
		{
			name:  "PieceReport/unknown peer",
			steps: []step{{fsm.PieceReport{TaskID: tid1, PeerID: "nope", Success: true, Spans: spansOf(0, 0)}, fsm.CodeNotFound, 0}},
		},
		{
			name: "PieceReport/failures count pieces per bad source",
			steps: []step{
				{fsm.PieceReport{TaskID: tid1, PeerID: "p2", Source: "p1", Spans: spansOf(0, 3)}, fsm.CodeOK, 0},
				{fsm.PieceReport{TaskID: tid1, PeerID: "p3", Source: "p1", Spans: spansOf(4, 5)}, fsm.CodeOK, 0},
				{fsm.PieceReport{TaskID: tid1, PeerID: "p2", Source: "m1", Spans: spansOf(7, 7, 9, 9)}, fsm.CodeOK, 0},
			},
			check: func(t *testing.T, h *harness) {
				if got, want := h.f.BadSources(tid1), map[string]uint32{"p1": 6, "m1": 2}; !reflect.DeepEqual(got, want) {
					t.Errorf("BadSources(t1) = %v, want %v", got, want)
				}
				if got := h.f.HeldCount(tid1); got != 0 {
					t.Errorf("HeldCount(t1) = %d after failures only, want 0", got)
				}
				if got := taskOf(t, h, tid1).Peers; got != 3 {
					t.Errorf("Task(t1).Peers = %d, want 3 (reporting joins)", got)
				}
			},
		},
		{
			name:  "PieceReport/failure without a source",
			steps: []step{{fsm.PieceReport{TaskID: tid1, PeerID: "p1", Spans: spansOf(0, 3)}, fsm.CodeOK, 0}},
			check: func(t *testing.T, h *harness) {
				if got := h.f.BadSources(tid1); len(got) != 0 || h.f.HeldCount(tid1) != 0 {
					t.Errorf("BadSources(t1) = %v, HeldCount %d; want empty, 0", got, h.f.HeldCount(tid1))
				}
			},
		},
		// TaskMeta
		{
			name: "TaskMeta/same generation updates sizes and keeps pieces",
			setup: []fsm.Command{
				fsm.PieceReport{TaskID: tid1, PeerID: "p1", Success: true, Spans: spansOf(0, 3)},
				fsm.PiecesCached{TaskID: tid1, MemberID: "m1", Generation: 1, First: 0, Digests: digests("t1", 0, 2)},
			},
			steps: []step{{fsm.TaskMeta{TaskID: tid1, Generation: 1, Status: fsm.TaskSuccess, PieceSize: 1 << 20, ContentLength: 16 << 20, PieceCount: 16}, fsm.CodeOK, 0}},
			check: func(t *testing.T, h *harness) {
				ti := taskOf(t, h, tid1)
				if ti.Generation != 1 || ti.Status != fsm.TaskSuccess || ti.PieceSize != 1<<20 || ti.ContentLength != 16<<20 ||
					ti.PieceCount != 16 || ti.PiecesCached != 2 || ti.AccessedAt != timeOf(h.index) {
					t.Errorf("Task(t1) = %+v", ti)
				}
				if got := h.f.HeldCount(tid1); got != 4 {
					t.Errorf("HeldCount(t1) = %d, want 4", got)
				}
				wantDigest(t, h, tid1, 1, digest("t1", 1), 1)
			},
		},
		{
			name: "TaskMeta/higher generation starts afresh but keeps the peers",
			setup: []fsm.Command{
				join(tid1, "p2"),
				fsm.PieceReport{TaskID: tid1, PeerID: "p1", Success: true, Spans: spansOf(0, 3)},
				fsm.PieceReport{TaskID: tid1, PeerID: "p2", Source: "p1", Spans: spansOf(4, 4)},
				fsm.PiecesCached{TaskID: tid1, MemberID: "m1", Generation: 1, First: 0, Digests: digests("t1", 0, 4)},
			},
			steps: []step{{fsm.TaskMeta{TaskID: tid1, Generation: 2, Status: fsm.TaskRunning, PieceSize: 1 << 20, ContentLength: 8 << 20, PieceCount: 8}, fsm.CodeOK, 0}},
			check: func(t *testing.T, h *harness) {
				ti := taskOf(t, h, tid1)
				if ti.Generation != 2 || ti.PieceCount != 8 || ti.PiecesCached != 0 || ti.Peers != 2 {
					t.Errorf("Task(t1) = %+v; want generation 2, 8 pieces, none cached, 2 peers", ti)
				}
				if got := h.f.HeldCount(tid1); got != 0 {
					t.Errorf("HeldCount(t1) = %d, want 0", got)
				}
				wantHolds(t, h, tid1, "p1", 16)
				for n := uint32(0); n < 4; n++ {
					wantNoDigest(t, h, tid1, n)
				}
				if got := h.f.BadSources(tid1); len(got) != 0 {
					t.Errorf("BadSources(t1) = %v, want none", got)
				}
				wantPeerTasks(t, h, "p1", tid1)
				wantPeerTasks(t, h, "p2", tid1)
			},
		},
		{
			name:  "TaskMeta/old generation conflicts",
			setup: []fsm.Command{fsm.TaskMeta{TaskID: tid1, Generation: 3, PieceCount: 16}},
			steps: []step{{fsm.TaskMeta{TaskID: tid1, Generation: 2, Status: fsm.TaskFailed, PieceCount: 4}, fsm.CodeConflict, 0}},
			check: func(t *testing.T, h *harness) {
				if ti := taskOf(t, h, tid1); ti.Generation != 3 || ti.PieceCount != 16 {
					t.Errorf("Task(t1) = %+v, want generation 3, 16 pieces", ti)
				}
			},
		},
		{
			name:  "TaskMeta/most pieces allowed",
			steps: []step{{fsm.TaskMeta{TaskID: tid1, Generation: 1, PieceCount: api.MaxPieceIndex + 1}, fsm.CodeOK, 0}},
		},
		{
			name:  "TaskMeta/too many pieces is invalid",
			steps: []step{{fsm.TaskMeta{TaskID: tid1, Generation: 2, PieceCount: api.MaxPieceIndex + 2}, fsm.CodeInvalid, 0}},
		},
		{
			name:  "TaskMeta/unknown task",
			steps: []step{{fsm.TaskMeta{TaskID: tidNope, Generation: 1}, fsm.CodeNotFound, 0}},
		},
		// PiecesCached
		{
			name:  "PiecesCached/records digests",
			steps: []step{{fsm.PiecesCached{TaskID: tid1, MemberID: "m1", Generation: 1, First: 2, Digests: digests("t1", 2, 3)}, fsm.CodeOK, 3}},
			check: func(t *testing.T, h *harness) {
				for n := uint32(2); n <= 4; n++ {
					wantDigest(t, h, tid1, n, digest("t1", int(n)), 1)
				}
				wantNoDigest(t, h, tid1, 1)
				wantNoDigest(t, h, tid1, 5)
				if ti := taskOf(t, h, tid1); ti.PiecesCached != 3 || ti.AccessedAt != timeOf(h.index) {
					t.Errorf("Task(t1) PiecesCached %d, AccessedAt %d; want 3, %d", ti.PiecesCached, ti.AccessedAt, timeOf(h.index))
				}
			},
		},
		{
			name:  "PiecesCached/same digests again, and by another member",
			setup: []fsm.Command{fsm.PiecesCached{TaskID: tid1, MemberID: "m1", Generation: 1, First: 0, Digests: digests("t1", 0, 3)}},
			steps: []step{
				{fsm.PiecesCached{TaskID: tid1, MemberID: "m1", Generation: 1, First: 0, Digests: digests("t1", 0, 3)}, fsm.CodeOK, 0},
				{fsm.PiecesCached{TaskID: tid1, MemberID: "m2", Generation: 1, First: 1, Digests: digests("t1", 1, 3)}, fsm.CodeOK, 3},
			},
			check: func(t *testing.T, h *harness) {
				if got := taskOf(t, h, tid1).PiecesCached; got != 4 {
					t.Errorf("PiecesCached = %d, want 4 (union of 0-2 and 1-3)", got)
				}
			},
		},
		{
			name:  "PiecesCached/another digest conflicts and records nothing",
			setup: []fsm.Command{fsm.PiecesCached{TaskID: tid1, MemberID: "m1", Generation: 1, First: 4, Digests: digests("t1", 4, 2)}},
			steps: []step{{fsm.PiecesCached{TaskID: tid1, MemberID: "m2", Generation: 1, First: 2,
				Digests: [][32]byte{digest("t1", 2), digest("t1", 3), digest("other", 4), digest("t1", 5)}}, fsm.CodeConflict, 0}},
			check: func(t *testing.T, h *harness) {
				wantNoDigest(t, h, tid1, 2)
				wantNoDigest(t, h, tid1, 3)
				wantDigest(t, h, tid1, 4, digest("t1", 4), 1)
				if got := taskOf(t, h, tid1).PiecesCached; got != 2 {
					t.Errorf("PiecesCached = %d, want 2", got)
				}
			},
		},
		{
			name:  "PiecesCached/old generation conflicts",
			setup: []fsm.Command{fsm.TaskMeta{TaskID: tid1, Generation: 2, PieceCount: 16}},
			steps: []step{{fsm.PiecesCached{TaskID: tid1, MemberID: "m1", Generation: 1, First: 0, Digests: digests("t1", 0, 1)}, fsm.CodeConflict, 0}},
		},
		{
			name:  "PiecesCached/piece past piece_count is invalid",
			steps: []step{{fsm.PiecesCached{TaskID: tid1, MemberID: "m1", Generation: 1, First: 14, Digests: digests("t1", 14, 3)}, fsm.CodeInvalid, 0}},
		},
		{
			name:  "PiecesCached/piece past the largest index is invalid",
			setup: []fsm.Command{fsm.TaskRegister{TaskID: tid2, URL: "u2"}},
			steps: []step{{fsm.PiecesCached{TaskID: tid2, MemberID: "m1", Generation: 1, First: api.MaxPieceIndex, Digests: digests("t2", 0, 2)}, fsm.CodeInvalid, 0}},
		},
		{
			name:  "PiecesCached/no digests is invalid",
			steps: []step{{fsm.PiecesCached{TaskID: tid1, MemberID: "m1", Generation: 1}, fsm.CodeInvalid, 0}},
		},
		{
			name:  "PiecesCached/unknown member",
			steps: []step{{fsm.PiecesCached{TaskID: tid1, MemberID: "nope", Generation: 1, Digests: digests("t1", 0, 1)}, fsm.CodeNotFound, 0}},
		},
		{
			name:  "PiecesCached/unknown task",
			steps: []step{{fsm.PiecesCached{TaskID: tidNope, MemberID: "m1", Generation: 1, Digests: digests("t1", 0, 1)}, fsm.CodeNotFound, 0}},
		},
		// PreheatCreate
		{
			name: "PreheatCreate/new preheat is pending",
			steps: []step{{fsm.PreheatCreate{ID: "ph1", Kind: "file", URL: "http://origin/c.bin",
				Headers: map[string]string{"Cookie": "c"}}, fsm.CodeCreated, 0}},
			check: func(t *testing.T, h *harness) {
				want := fsm.PreheatInfo{ID: "ph1", Kind: "file", URL: "http://origin/c.bin", Status: "pending",
					Headers: map[string]string{"Cookie": "c"}, CreatedAt: timeOf(h.index)}
				if got, ok := h.f.Preheat("ph1"); !ok || !reflect.DeepEqual(got, want) {
					t.Errorf("Preheat(ph1) = %+v, %v; want %+v", got, ok, want)
				}
				wantCounts(t, h, 2, 3, 1, 1)
			},
		},
		{
			name: "PreheatCreate/again keeps the first",
			steps: []step{
				{fsm.PreheatCreate{ID: "ph1", Kind: "file", URL: "u1"}, fsm.CodeCreated, 0},
				{fsm.PreheatCreate{ID: "ph1", Kind: "image", URL: "u2"}, fsm.CodeOK, 0},
			},
			check: func(t *testing.T, h *harness) {
				if got, _ := h.f.Preheat("ph1"); got.URL != "u1" || got.Kind != "file" || got.CreatedAt != timeOf(h.index-1) {
					t.Errorf("Preheat(ph1) = %+v, want the first one", got)
				}
				wantCounts(t, h, 2, 3, 1, 1)
			},
		},
		// PreheatUpdate
		{
			name:  "PreheatUpdate/records progress",
			setup: []fsm.Command{fsm.PreheatCreate{ID: "ph1", Kind: "file", URL: "u1"}},
			steps: []step{{fsm.PreheatUpdate{ID: "ph1", Status: "failed", Error: "origin: 404"}, fsm.CodeOK, 0}},
			check: func(t *testing.T, h *harness) {
				if got, _ := h.f.Preheat("ph1"); got.Status != "failed" || got.Error != "origin: 404" || got.URL != "u1" {
					t.Errorf("Preheat(ph1) = %+v", got)
				}
			},
		},
		{
			name:  "PreheatUpdate/unknown preheat",
			steps: []step{{fsm.PreheatUpdate{ID: "nope", Status: "success"}, fsm.CodeNotFound, 0}},
			check: func(t *testing.T, h *harness) { wantCounts(t, h, 2, 3, 1, 0) },
		},
	}

	covered := map[fsm.CommandType]bool{}
	for _, tc := range cases {
		for _, s := range tc.steps {
			covered[s.cmd.Type()] = true
		}
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.must(fixture()...)
			if len(tc.setup) > 0 {
				h.must(tc.setup...)
			}
			if tc.before != nil {
				tc.before(t, h)
			}
			for i, s := range tc.steps {
				before := h.hash()
				r := h.one(s.cmd)
				if r.Code != s.code || r.N != s.n {
					t.Fatalf("step %d %T: Result{Code: %d, N: %d, Msg: %q}, want code %d, N %d", i, s.cmd, r.Code, r.N, r.Msg, s.code, s.n)
				}
				checkErr(t, r)
				if sentinel(r.Code) != nil {
					if after := h.hash(); after != before {
						t.Errorf("step %d %T failed with code %d but changed the state", i, s.cmd, r.Code)
					}
				}
			}
			if tc.check != nil {
				tc.check(t, h)
			}
		})
	}
	for ct := fsm.CmdMemberUpsert; ct <= fsm.CmdPreheatUpdate; ct++ {
		if !covered[ct] {
			t.Errorf("command type %d has no case", ct)
		}
	}
}

// TestTaskPeerStateIsReplicated: the peer's own state is not in the read API, but it is
// replicated state: two FSMs that differ only in it must have different hashes, and equal
// ones equal hashes.
func TestTaskPeerStateIsReplicated(t *testing.T) {
	hashWith := func(s fsm.PeerTaskState) string {
		h := newHarness(t)
		h.must(fixture()...)
		if r := h.one(fsm.TaskPeerState{TaskID: tid1, PeerID: "p1", State: s}); r.Code != fsm.CodeOK {
			t.Fatalf("TaskPeerState: code %d (%s)", r.Code, r.Msg)
		}
		return h.hash()
	}
	states := []fsm.PeerTaskState{fsm.PeerTaskRegistered, fsm.PeerTaskRunning, fsm.PeerTaskSuccess, fsm.PeerTaskFailed}
	seen := map[string]fsm.PeerTaskState{}
	for _, s := range states {
		hs := hashWith(s)
		if hs != hashWith(s) {
			t.Errorf("state %v: equal histories give different hashes", s)
		}
		if prev, dup := seen[hs]; dup {
			t.Errorf("states %v and %v give the same state hash", prev, s)
		}
		seen[hs] = s
	}
}

// TestApplySingleLog: Apply (one entry) answers like ApplyBatch.
func TestApplySingleLog(t *testing.T) {
	h := newHarness(t)
	l := h.entry(m1, m1, fsm.MemberRemove{ID: "nope"})
	out := h.f.Apply(l)
	res, ok := out.(*fsm.BatchResult)
	if !ok {
		t.Fatalf("Apply returned %T, want *fsm.BatchResult", out)
	}
	want := []fsm.Code{fsm.CodeCreated, fsm.CodeOK, fsm.CodeNotFound}
	if res.Index != 1 || len(res.Results) != len(want) {
		t.Fatalf("BatchResult = %+v", res)
	}
	for i, c := range want {
		if res.Results[i].Code != c {
			t.Errorf("result %d: code %d, want %d", i, res.Results[i].Code, c)
		}
	}
	if h.f.AppliedIndex() != 1 {
		t.Errorf("AppliedIndex = %d, want 1", h.f.AppliedIndex())
	}
}

// TestApplyBatchEntries: several entries in one ApplyBatch, with non-command entries among
// them, get one response each (nil for non-commands) and the applied index is the last one.
func TestApplyBatchEntries(t *testing.T) {
	f := fsm.New(nil)
	logs := []*raft.Log{
		{Index: 1, Type: raft.LogConfiguration, Data: []byte("not a batch")},
		{Index: 2, Type: raft.LogCommand, Data: fsm.Batch{UnixNano: 5, Commands: []fsm.Command{p1}}.Encode()},
		{Index: 3, Type: raft.LogNoop},
		{Index: 4, Type: raft.LogCommand, Data: fsm.Batch{UnixNano: 6, Commands: []fsm.Command{p1, t1}}.Encode()},
		{Index: 5, Type: raft.LogBarrier},
	}
	out := f.ApplyBatch(logs)
	if len(out) != len(logs) {
		t.Fatalf("ApplyBatch returned %d responses for %d entries", len(out), len(logs))
	}
	for _, i := range []int{0, 2, 4} {
		if out[i] != nil {
			t.Errorf("response %d (non-command entry) = %v, want nil", i, out[i])
		}
	}
	want := map[int][]fsm.Code{1: {fsm.CodeCreated}, 3: {fsm.CodeOK, fsm.CodeCreated}}
	for i, codes := range want {
		br, ok := out[i].(*fsm.BatchResult)
		if !ok || br.Index != logs[i].Index || len(br.Results) != len(codes) {
			t.Fatalf("response %d = %#v", i, out[i])
		}
		for j, c := range codes {
			if br.Results[j].Code != c {
				t.Errorf("entry %d command %d: code %d, want %d", i, j, br.Results[j].Code, c)
			}
		}
	}
	if got := f.AppliedIndex(); got != 5 {
		t.Errorf("AppliedIndex = %d, want 5", got)
	}
	if p, ok := f.Peer("p1"); !ok || p.RegisteredAt != 5 {
		t.Errorf("Peer(p1) = %+v, %v; want registered at the first entry's time 5", p, ok)
	}
	if ti, ok := f.Task(tid1); !ok || ti.CreatedAt != 6 {
		t.Errorf("Task(t1) = %+v, %v; want created at 6", ti, ok)
	}
}

// TestReadAPIReturnsCopies: what the read API returns can be changed by the caller without
// changing the state.
func TestReadAPIReturnsCopies(t *testing.T) {
	h := newHarness(t)
	h.must(fixture()...)
	h.must(fsm.PreheatCreate{ID: "ph1", Kind: "file", URL: "u", Headers: map[string]string{"A": "1"}},
		fsm.PieceReport{TaskID: tid1, PeerID: "p2", Source: "p1", Spans: spansOf(0, 0)})
	before := h.hash()

	ti := taskOf(t, h, tid1)
	ti.Headers["Authorization"] = "changed"
	ti.Filter[0] = "changed"
	peerOf(t, h, "p1").Tasks[0] = "changed"
	h.f.BadSources(tid1)["p1"] = 99
	ph, _ := h.f.Preheat("ph1")
	ph.Headers["A"] = "changed"

	if h.hash() != before {
		t.Fatalf("changing read API results changed the state")
	}
	if got := taskOf(t, h, tid1); got.Headers["Authorization"] != "Bearer x" || got.Filter[0] != "token" {
		t.Errorf("Task(t1) = %+v after the caller changed a copy", got)
	}
}

func TestResultErr(t *testing.T) {
	for _, c := range []fsm.Code{fsm.CodeOK, fsm.CodeCreated, fsm.CodeIgnored, fsm.CodeNotFound, fsm.CodeConflict, fsm.CodeInvalid} {
		checkErr(t, fsm.Result{Code: c, Msg: "m"})
	}
}

// TestFullRangePieceReportIsCheap: one PieceReport of every possible piece (one span, as a
// peer that finished a 1 Mi-piece task sends it) is applied with a bounded number of
// allocations: Apply holds the FSM's lock meanwhile.
//
// BUG: bitset.set grows the word slice to exactly w+1 words whenever bit i lies past its
// length, ignoring the capacity it allocated, so setting bits 0..n-1 in order reallocates
// once per 64 bits: 16384 allocations and ~2 GiB copied for this one command.
func TestFullRangePieceReportIsCheap(t *testing.T) {
	const runs = 3
	h := newHarness(t)
	h.must(fixture()...)
	h.must(fsm.TaskRegister{TaskID: tidBig, URL: "u"},
		fsm.TaskMeta{TaskID: tidBig, Generation: 1, PieceCount: api.MaxPieceIndex + 1})
	var regs []fsm.Command
	for i := 0; i <= runs; i++ {
		regs = append(regs, fsm.PeerRegister{ID: fmt.Sprintf("big%d", i), IP: "10.1.0.1", Hostname: fmt.Sprintf("big-%d", i), Port: 65000})
	}
	h.must(regs...)
	logs := make([]*raft.Log, runs+1) // AllocsPerRun calls once more than runs
	for i := range logs {
		logs[i] = h.entry(fsm.PieceReport{TaskID: tidBig, PeerID: fmt.Sprintf("big%d", i), Success: true,
			Spans: spansOf(0, api.MaxPieceIndex)})
	}
	next := 0
	allocs := testing.AllocsPerRun(runs, func() {
		h.f.ApplyBatch(logs[next : next+1])
		next++
	})
	if got, want := h.f.HeldCount(tidBig), (runs+1)*(api.MaxPieceIndex+1); got != want {
		t.Fatalf("HeldCount = %d, want %d", got, want)
	}
	if allocs > 100 {
		t.Errorf("applying one PieceReport of %d pieces made %.0f allocations, want at most 100", api.MaxPieceIndex+1, allocs)
	}
}
