package scheduler

import (
	"fmt"
	"slices"
	"testing"

	"github.com/dfly-ha/dfha/fsm"
	"github.com/dfly-ha/dfha/sdk/api"
)

// pieces is a set of piece numbers (fsm.PieceSet).
type pieces map[uint32]bool

func (p pieces) Has(n uint32) bool { return p[n] }

func span(from, to uint32) pieces {
	p := pieces{}
	for n := from; n <= to; n++ {
		p[n] = true
	}
	return p
}

// fakeTask is a task's replicated state, as tests describe it.
type fakeTask struct {
	status     fsm.TaskStatus
	count      int64
	known      uint32 // pieces with a digest
	holders    map[string]pieces
	cachedBy   []fsm.MemberInfo // every known piece is cached by these members
	bad        map[string]uint32
	digestRead int // Digest calls, to check the work per call is bounded
}

func (f *fakeTask) Info() (uint64, fsm.TaskStatus, int64, int64, int64) {
	if f.count < 0 {
		return 1, f.status, -1, -1, -1
	}
	return 1, f.status, 100, f.count*100 - 30, f.count
}

func (f *fakeTask) Digest(n uint32) ([32]byte, bool) {
	f.digestRead++
	if n >= f.known {
		return [32]byte{}, false
	}
	return [32]byte{byte(n), 1}, true
}

func (f *fakeTask) KnownPieces() uint32 { return f.known }

func (f *fakeTask) Holds(peer string, n uint32) bool { return f.holders[peer][n] }

func (f *fakeTask) HeldBy(peer string) (int, bool) {
	p, ok := f.holders[peer]
	return len(p), ok
}

func (f *fakeTask) SampleHolders(max, budget int, skip string) []fsm.Holder {
	var out []fsm.Holder
	for _, id := range slices.Sorted(mapKeys(f.holders)) {
		if len(out) >= max {
			break
		}
		if id == skip || len(f.holders[id]) == 0 {
			continue
		}
		out = append(out, fsm.Holder{ID: id, Addr: "10.0.0.1:" + id, Count: len(f.holders[id]), Pieces: f.holders[id]})
	}
	return out
}

func (f *fakeTask) CachedBy(n uint32) []fsm.MemberInfo {
	if n >= f.known {
		return nil
	}
	return f.cachedBy
}

func (f *fakeTask) BadReports(id string) uint32 { return f.bad[id] }

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// fakeLive is the live load tests describe: loads per peer, gone peers, member fetches.
type fakeLive struct {
	load     map[string]int
	gone     map[string]bool
	fetching map[uint32]bool
}

func (l fakeLive) PeerLoad(id string, _ int64) (int, bool) { return l.load[id], !l.gone[id] }
func (l fakeLive) MemberFetchBy(n uint32) string {
	if l.fetching[n] {
		return "fetcher"
	}
	return ""
}

var members = []fsm.MemberInfo{{ID: "m0", HTTPAddr: "127.0.0.1:8002", Alive: true}, {ID: "m1", HTTPAddr: "127.0.0.1:8012", Alive: true}}

func TestRarestPiecesFirstAndNeverTheAskerNorBadSources(t *testing.T) {
	task := &fakeTask{count: 8, known: 8, cachedBy: members, holders: map[string]pieces{
		"asker": span(0, 1),
		"p1":    span(0, 5), // pieces 2..5 held by p1 and p2, 6 by p3 only
		"p2":    span(2, 5),
		"p3":    {6: true},
		"bad":   span(0, 7),
	}, bad: map[string]uint32{"bad": 1}}
	plan := Policy{}.Schedule(task, fakeLive{}, Request{PeerID: "asker", Limit: 8})
	got := plan.Schedule.Pieces
	var order []uint32
	for _, p := range got {
		order = append(order, p.N)
		for _, s := range p.Sources {
			if s.ID == "asker" || s.ID == "bad" {
				t.Fatalf("piece %d lists source %s", p.N, s.ID)
			}
		}
	}
	// 7: no peer has it (member only); 6: one holder; 2..5: two holders.
	if len(order) != 6 || order[0] != 7 || order[1] != 6 || !slices.Equal(slices.Sorted(slices.Values(order[2:])), []uint32{2, 3, 4, 5}) {
		t.Fatalf("order %v, want 7, 6, then 2..5", order)
	}
	if s := got[1].Sources; len(s) != 3 || s[0] != (api.PieceSource{Kind: api.SourcePeer, ID: "p3", Addr: "10.0.0.1:p3"}) || s[1].Kind != api.SourceMember {
		t.Fatalf("piece 6 sources %+v, want p3 then the members", s)
	}
	if s := got[0].Sources; len(s) != 2 || s[0].Kind != api.SourceMember || !plan.MemberOnly[0] {
		t.Fatalf("piece 7 sources %+v, want members only", s)
	}
	if plan.Schedule.Done || plan.Schedule.PieceCount != 8 || got[0].Size != 70 || got[1].Size != 100 {
		t.Fatalf("schedule %+v: sizes or done wrong", plan.Schedule)
	}
	if got[0].Digest != fmt.Sprintf("sha256:%02x01%060x", 7, 0) {
		t.Fatalf("digest %s", got[0].Digest)
	}
}

func TestSourcesLeastLoadedFirstAndSpreadWithinOneAnswer(t *testing.T) {
	task := &fakeTask{count: 4, known: 4, cachedBy: members, holders: map[string]pieces{
		"asker": {}, "busy": span(0, 3), "idle": span(0, 3), "gone": span(0, 3),
	}}
	live := fakeLive{load: map[string]int{"busy": 5}, gone: map[string]bool{"gone": true}}
	plan := Policy{}.Schedule(task, live, Request{PeerID: "asker", Limit: 4})
	firsts := map[string]int{}
	for _, p := range plan.Schedule.Pieces {
		for _, s := range p.Sources {
			if s.ID == "gone" {
				t.Fatalf("piece %d lists a peer that has gone", p.N)
			}
		}
		if p.Sources[0].Kind != api.SourcePeer {
			t.Fatalf("piece %d: members before peers: %+v", p.N, p.Sources)
		}
		firsts[p.Sources[0].ID]++
	}
	// idle starts at load 0 and busy at 5: idle takes every piece until it is as loaded.
	if firsts["idle"] != 4 {
		t.Fatalf("first sources %v, want idle for all 4", firsts)
	}
	live.load["busy"] = 1
	plan = Policy{}.Schedule(task, live, Request{PeerID: "asker", Limit: 4})
	firsts = map[string]int{}
	for _, p := range plan.Schedule.Pieces {
		firsts[p.Sources[0].ID]++
	}
	if firsts["idle"] < 2 || firsts["busy"] < 1 {
		t.Fatalf("first sources %v, want the load spread over idle and busy", firsts)
	}
}

func TestExcludedSourcesAreLeftOut(t *testing.T) {
	task := &fakeTask{count: 2, known: 2, cachedBy: members, holders: map[string]pieces{"asker": {}, "p1": span(0, 1)}}
	plan := Policy{}.Schedule(task, fakeLive{}, Request{PeerID: "asker", Limit: 2, Exclude: []string{"p1", "m0"}})
	for _, p := range plan.Schedule.Pieces {
		if len(p.Sources) != 1 || p.Sources[0].ID != "m1" {
			t.Fatalf("piece %d sources %+v, want m1 only", p.N, p.Sources)
		}
	}
	plan = Policy{}.Schedule(task, fakeLive{}, Request{PeerID: "asker", Limit: 2, Exclude: []string{"p1", "m0", "m1"}})
	if len(plan.Schedule.Pieces) != 0 {
		t.Fatalf("pieces with every source excluded were planned: %+v", plan.Schedule.Pieces)
	}
}

func TestPieceFetchedFromAMemberIsNotHandedOutTwice(t *testing.T) {
	task := &fakeTask{count: 3, known: 3, cachedBy: members, holders: map[string]pieces{"asker": {}, "fetcher": {}}}
	plan := Policy{}.Schedule(task, fakeLive{fetching: map[uint32]bool{0: true, 2: true}}, Request{PeerID: "asker", Limit: 3})
	if len(plan.Schedule.Pieces) != 1 || plan.Schedule.Pieces[0].N != 1 {
		t.Fatalf("planned %+v, want piece 1 only (0 and 2 are being fetched from members)", plan.Schedule.Pieces)
	}
	// Once the fetching peer has left the task, nobody waits for it.
	delete(task.holders, "fetcher")
	if plan = (Policy{}).Schedule(task, fakeLive{fetching: map[uint32]bool{0: true, 2: true}}, Request{PeerID: "asker", Limit: 12}); len(plan.Schedule.Pieces) != 3 {
		t.Fatalf("planned %+v, want all 3 pieces (the fetching peer left)", plan.Schedule.Pieces)
	}
	// A streaming peer needs its pieces in order: it gets them anyway.
	plan = Policy{}.Schedule(task, fakeLive{fetching: map[uint32]bool{0: true}}, Request{PeerID: "asker", Limit: 3, Mode: api.ModeStream})
	if len(plan.Schedule.Pieces) != 3 || plan.Schedule.Pieces[0].N != 0 {
		t.Fatalf("stream plan %+v, want 0, 1, 2", plan.Schedule.Pieces)
	}
}

// The first peers to ask each get a few of the pieces only members have, not all of them,
// and a peer is not given again what it is fetching from a member.
func TestPiecesOnlyMembersHaveAreSpreadOverAskers(t *testing.T) {
	task := &fakeTask{count: 16, known: 16, cachedBy: members, holders: map[string]pieces{"a": {}, "b": {}}}
	live := &recordingLive{fetches: map[uint32]string{}}
	got := map[string][]uint32{}
	for _, peer := range []string{"a", "b", "a"} {
		plan := Policy{}.Schedule(task, live, Request{PeerID: peer, Limit: 16})
		for i, p := range plan.Schedule.Pieces {
			if !plan.MemberOnly[i] {
				t.Fatalf("piece %d is not member-only", p.N)
			}
			if by := live.fetches[p.N]; by != "" {
				t.Fatalf("piece %d given to %s while %s fetches it", p.N, peer, by)
			}
			live.fetches[p.N] = peer
			got[peer] = append(got[peer], p.N)
		}
	}
	if len(got["a"]) != 8 || len(got["b"]) != 4 {
		t.Fatalf("pieces given %v, want 4 per answer (a asked twice, b once)", got)
	}
}

// recordingLive is a Live whose member fetches the test records.
type recordingLive struct{ fetches map[uint32]string }

func (l *recordingLive) PeerLoad(string, int64) (int, bool) { return 0, true }
func (l *recordingLive) MemberFetchBy(n uint32) string      { return l.fetches[n] }

func TestStreamModeIsAWindowInOrder(t *testing.T) {
	task := &fakeTask{count: 10, known: 8, cachedBy: members, holders: map[string]pieces{
		"asker": {3: true, 4: true}, "p1": {9: true, 6: true},
	}}
	plan := Policy{}.Schedule(task, fakeLive{}, Request{PeerID: "asker", Limit: 4, Mode: api.ModeStream, From: 2})
	var order []uint32
	for _, p := range plan.Schedule.Pieces {
		order = append(order, p.N)
	}
	if !slices.Equal(order, []uint32{2, 5, 6, 7}) {
		t.Fatalf("window %v, want [2 5 6 7] (3, 4 held; 8, 9 not cached yet)", order)
	}
	if plan.Schedule.Pieces[2].Sources[0].ID != "p1" {
		t.Fatalf("piece 6 sources %+v, want p1 first", plan.Schedule.Pieces[2].Sources)
	}
}

func TestPendingAndDoneAnswers(t *testing.T) {
	pending := &fakeTask{count: -1, holders: map[string]pieces{"asker": {}}}
	plan := Policy{}.Schedule(pending, fakeLive{}, Request{PeerID: "asker", Limit: 4})
	if plan.Schedule.Status != "pending" || plan.Schedule.PieceCount != -1 || len(plan.Schedule.Pieces) != 0 || plan.Schedule.Done {
		t.Fatalf("pending: %+v", plan.Schedule)
	}
	done := &fakeTask{status: fsm.TaskSuccess, count: 3, known: 3, cachedBy: members, holders: map[string]pieces{"asker": span(0, 2)}}
	plan = Policy{}.Schedule(done, fakeLive{}, Request{PeerID: "asker", Limit: 4})
	if !plan.Schedule.Done || len(plan.Schedule.Pieces) != 0 {
		t.Fatalf("done: %+v", plan.Schedule)
	}
	empty := &fakeTask{status: fsm.TaskSuccess, count: 0, known: 0, holders: map[string]pieces{"asker": {}}}
	if plan = (Policy{}).Schedule(empty, fakeLive{}, Request{PeerID: "asker", Limit: 4}); !plan.Schedule.Done {
		t.Fatalf("an empty file is done at once: %+v", plan.Schedule)
	}
}

func TestWorkPerCallIsBounded(t *testing.T) {
	const count = 1 << 20
	holders := map[string]pieces{"asker": {}}
	for i := 0; i < 200; i++ {
		holders[fmt.Sprintf("p%03d", i)] = pieces{uint32(i): true}
	}
	task := &fakeTask{count: count, known: count, cachedBy: members, holders: holders}
	p := Policy{ScanPieces: 1000, Sample: 16}
	plan := p.Schedule(task, fakeLive{}, Request{PeerID: "asker", Limit: 256})
	if task.digestRead > 2*1000+256 {
		t.Fatalf("%d digest reads for one call, want about ScanPieces", task.digestRead)
	}
	if n := countMemberOnly(plan); n != 1 || len(plan.Schedule.Pieces) > 256 {
		t.Fatalf("%d pieces planned, %d of them from members only; want at most 256, 1 from members only (a swarm exists)", len(plan.Schedule.Pieces), n)
	}
	// Without a swarm (no other peer holds anything) a quarter of the limit.
	alone := &fakeTask{count: count, known: count, cachedBy: members, holders: map[string]pieces{"asker": {}}}
	plan = p.Schedule(alone, fakeLive{}, Request{PeerID: "asker", Limit: 256})
	if n := countMemberOnly(plan); n != 256/4 {
		t.Fatalf("%d pieces from members only without a swarm, want 64", n)
	}
}

func countMemberOnly(plan Plan) int {
	n := 0
	for _, only := range plan.MemberOnly {
		if only {
			n++
		}
	}
	return n
}

func TestUploadSlotsFollowLoad(t *testing.T) {
	p := Policy{}
	for _, c := range []struct {
		load    int
		seeding bool
		want    int
	}{{0, false, 4}, {3, false, 4}, {4, false, 5}, {20, false, 8}, {20, true, 16}, {5, true, 6}} {
		if got := p.UploadSlots(c.load, c.seeding); got != c.want {
			t.Errorf("UploadSlots(%d, %v) = %d, want %d", c.load, c.seeding, got, c.want)
		}
	}
}
