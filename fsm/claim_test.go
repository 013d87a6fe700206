package fsm_test

import (
	"testing"

	"github.com/dfly-ha/dfha/cdn/ring"
	"github.com/dfly-ha/dfha/fsm"
)

// claimSetup registers three live members and one task, and returns the task's ring owner
// and a member that does not own it.
func claimSetup(t *testing.T) (h *harness, owner, other string) {
	h = newHarness(t)
	members := []string{"m1", "m2", "m3"}
	for i, m := range members {
		h.must(fsm.MemberUpsert{ID: m, HTTPAddr: "10.0.0.1:800" + string(rune('1'+i)), RaftAddr: "10.0.0.1:900" + string(rune('1'+i))})
	}
	h.must(fsm.TaskRegister{TaskID: tid1, URL: "http://origin/a.bin"})
	owner = ring.New(members, 0).Owner(tid1)
	for _, m := range members {
		if m != owner {
			other = m
		}
	}
	return h, owner, other
}

func TestTaskClaimFollowsTheRingAndItsEpoch(t *testing.T) {
	h, owner, other := claimSetup(t)
	epoch := h.f.RingEpoch()
	if epoch != 3 {
		t.Fatalf("ring epoch %d after 3 members joined, want 3", epoch)
	}
	if got := h.f.RingOwners(tid1, 1); len(got) != 1 || got[0] != owner {
		t.Fatalf("RingOwners = %v, want [%s]", got, owner)
	}
	if r := h.one(fsm.TaskClaim{TaskID: tid1, MemberID: other, Epoch: epoch}); r.Code != fsm.CodeConflict {
		t.Fatalf("a claim by a member that does not own the task: code %d", r.Code)
	}
	if r := h.one(fsm.TaskClaim{TaskID: tid1, MemberID: owner, Epoch: epoch - 1}); r.Code != fsm.CodeConflict {
		t.Fatalf("a claim at a stale ring epoch: code %d", r.Code)
	}
	if r := h.one(fsm.TaskClaim{TaskID: tid1, MemberID: owner, Epoch: epoch}); r.Code != fsm.CodeOK || r.N != 1 {
		t.Fatalf("the owner's claim: %+v", r)
	}
	if r := h.one(fsm.TaskClaim{TaskID: tid1, MemberID: owner, Epoch: epoch}); r.Code != fsm.CodeOK || r.N != 0 {
		t.Fatalf("the same claim again must be a no-op: %+v", r)
	}
	if ti, _ := h.f.Task(tid1); ti.Owner != owner {
		t.Fatalf("task owner %q, want %q", ti.Owner, owner)
	}
	owned := h.f.OwnedTasks(owner)
	if len(owned) != 1 || !owned[0].Claimed || owned[0].RingEpoch != epoch {
		t.Fatalf("OwnedTasks(%s) = %+v", owner, owned)
	}
	if len(h.f.OwnedTasks(other)) != 0 {
		t.Fatalf("a non-owner lists the task as its own")
	}
}

func TestAClaimLocksOutOtherMembersWrites(t *testing.T) {
	h, owner, other := claimSetup(t)
	h.must(fsm.TaskClaim{TaskID: tid1, MemberID: owner, Epoch: h.f.RingEpoch()})
	before := hashOf(h)
	// Another member can neither describe the task nor introduce digests.
	if r := h.one(fsm.TaskMeta{TaskID: tid1, MemberID: other, Generation: 1, Status: fsm.TaskRunning, PieceSize: 4, ContentLength: 16, PieceCount: 4}); r.Code != fsm.CodeConflict {
		t.Fatalf("TaskMeta from a non-owner: code %d", r.Code)
	}
	if r := h.one(fsm.PiecesCached{TaskID: tid1, MemberID: other, Generation: 1, First: 0, Digests: digests("a", 0, 2)}); r.Code != fsm.CodeConflict {
		t.Fatalf("new digests from a non-owner: code %d", r.Code)
	}
	if hashOf(h) != before {
		t.Fatal("refused writes changed the state")
	}
	// The owner can; afterwards another member may add a copy of a known piece.
	h.must(fsm.TaskMeta{TaskID: tid1, MemberID: owner, Generation: 1, Status: fsm.TaskRunning, PieceSize: 4, ContentLength: 16, PieceCount: 4},
		fsm.PiecesCached{TaskID: tid1, MemberID: owner, Generation: 1, First: 0, Digests: digests("a", 0, 2)})
	if r := h.one(fsm.PiecesCached{TaskID: tid1, MemberID: other, Generation: 1, First: 0, Digests: digests("a", 0, 2)}); r.Code != fsm.CodeOK || r.N != 2 {
		t.Fatalf("a copy of known pieces from another member: %+v", r)
	}
	if got := h.f.PieceCachedBy(tid1, 1); len(got) != 2 {
		t.Fatalf("piece 1 cached by %v, want both members", got)
	}
	if got := h.f.FirstUncached(tid1); got != 2 {
		t.Fatalf("FirstUncached = %d, want 2", got)
	}
}

func TestLivenessMovesOwnershipAndBumpsTheEpoch(t *testing.T) {
	h, owner, _ := claimSetup(t)
	h.must(fsm.TaskClaim{TaskID: tid1, MemberID: owner, Epoch: h.f.RingEpoch()})
	epoch := h.f.RingEpoch()
	h.must(fsm.MemberAlive{ID: owner, Alive: false})
	if h.f.RingEpoch() != epoch+1 {
		t.Fatalf("a death must bump the ring epoch: %d -> %d", epoch, h.f.RingEpoch())
	}
	h.must(fsm.MemberAlive{ID: owner, Alive: false}) // no change, no bump
	if h.f.RingEpoch() != epoch+1 {
		t.Fatal("a liveness write that changes nothing bumped the epoch")
	}
	next := h.f.RingOwners(tid1, 1)[0]
	if next == owner {
		t.Fatal("a dead member still owns the task")
	}
	// The new owner takes over; the old one, back alive, cannot commit new digests.
	h.must(fsm.TaskClaim{TaskID: tid1, MemberID: next, Epoch: h.f.RingEpoch()})
	h.must(fsm.MemberAlive{ID: owner, Alive: true})
	if r := h.one(fsm.PiecesCached{TaskID: tid1, MemberID: owner, Generation: 1, First: 0, Digests: digests("a", 0, 1)}); r.Code != fsm.CodeConflict {
		t.Fatalf("the old owner's new digests after losing the claim: code %d", r.Code)
	}
	// The ring survives a snapshot round trip (it is derived from the members).
	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	f2 := restored(t, persist(t, snap))
	if f2.RingEpoch() != h.f.RingEpoch() || f2.RingOwners(tid1, 1)[0] != h.f.RingOwners(tid1, 1)[0] {
		t.Fatal("restored ring differs")
	}
}

func hashOf(h *harness) string { _, s := h.f.StateHash(); return s }
