package fsm_test

import (
	"slices"
	"testing"

	"github.com/dfly-ha/dfha/fsm"
)

func TestReplicaViewsListWhatAReplicaHasToCopy(t *testing.T) {
	h, owner, _ := claimSetup(t)
	owners := h.f.RingOwners(tid1, 2)
	if len(owners) != 2 || owners[0] != owner {
		t.Fatalf("RingOwners(2) = %v, want the primary %s first", owners, owner)
	}
	replica := owners[1]
	var third string
	for _, m := range []string{"m1", "m2", "m3"} {
		if !slices.Contains(owners, m) {
			third = m
		}
	}
	if got := h.f.ReplicaTasks(replica, 2); len(got) != 0 {
		t.Fatalf("a task without pieces to copy is listed: %+v", got)
	}
	h.must(fsm.TaskClaim{TaskID: tid1, MemberID: owner, Epoch: h.f.RingEpoch()},
		fsm.TaskMeta{TaskID: tid1, MemberID: owner, Generation: 1, Status: fsm.TaskRunning, PieceSize: 4, ContentLength: 40, PieceCount: 10},
		fsm.PiecesCached{TaskID: tid1, MemberID: owner, Generation: 1, First: 0, Digests: digests("a", 0, 5)})

	got := h.f.ReplicaTasks(replica, 2)
	if len(got) != 1 || got[0].ID != tid1 || got[0].Generation != 1 || got[0].Status != fsm.TaskRunning {
		t.Fatalf("ReplicaTasks(replica) = %+v", got)
	}
	for _, m := range []string{owner, third} {
		if got := h.f.ReplicaTasks(m, 2); len(got) != 0 {
			t.Fatalf("ReplicaTasks(%s), not a replica owner: %+v", m, got)
		}
	}
	if got := h.f.ReplicaTasks(replica, 1); len(got) != 0 {
		t.Fatalf("with one owner per task there are no replicas: %+v", got)
	}

	// The replica has copied pieces 0 and 1: 2..4 remain.
	h.must(fsm.PiecesCached{TaskID: tid1, MemberID: replica, Generation: 1, First: 0, Digests: digests("a", 0, 2)})
	if gen, pieces := h.f.PiecesToCopy(tid1, replica); gen != 1 || !slices.Equal(pieces, []uint32{2, 3, 4}) {
		t.Fatalf("PiecesToCopy = %d %v, want 1 [2 3 4]", gen, pieces)
	}
	h.must(fsm.PiecesCached{TaskID: tid1, MemberID: replica, Generation: 1, First: 2, Digests: digests("a", 2, 3)})
	if _, pieces := h.f.PiecesToCopy(tid1, replica); len(pieces) != 0 {
		t.Fatalf("all copied, yet PiecesToCopy = %v", pieces)
	}
	if got := h.f.ReplicaTasks(replica, 2); len(got) != 0 {
		t.Fatalf("a replica with every piece still lists the task: %+v", got)
	}

	// Pieces only a dead member holds cannot be copied.
	h.must(fsm.PiecesCached{TaskID: tid1, MemberID: owner, Generation: 1, First: 5, Digests: digests("a", 5, 2)},
		fsm.MemberAlive{ID: owner, Alive: false})
	if _, pieces := h.f.PiecesToCopy(tid1, third); !slices.Equal(pieces, []uint32{0, 1, 2, 3, 4}) {
		t.Fatalf("PiecesToCopy(third) with the primary dead = %v, want the replica's 0..4", pieces)
	}
	// The replica is the primary now, and the third member its replica.
	if o := h.f.RingOwners(tid1, 2); o[0] != replica || o[1] != third {
		t.Fatalf("owners after the primary died: %v, want [%s %s]", o, replica, third)
	}
	if got := h.f.ReplicaTasks(third, 2); len(got) != 1 || got[0].ID != tid1 {
		t.Fatalf("the new replica does not list the task: %+v", got)
	}
	if got := h.f.ReplicaTasks(replica, 2); len(got) != 0 {
		t.Fatalf("the new primary lists the task as a replica: %+v", got)
	}

	// A new generation leaves nothing to copy.
	h.must(fsm.TaskClaim{TaskID: tid1, MemberID: replica, Epoch: h.f.RingEpoch()},
		fsm.TaskMeta{TaskID: tid1, MemberID: replica, Generation: 2, Status: fsm.TaskRunning, PieceSize: 4, ContentLength: 8, PieceCount: 2})
	if gen, pieces := h.f.PiecesToCopy(tid1, third); gen != 2 || len(pieces) != 0 {
		t.Fatalf("PiecesToCopy after a new generation = %d %v", gen, pieces)
	}
}
