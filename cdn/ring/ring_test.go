package ring

import (
	"encoding/hex"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/cespare/xxhash/v2"
)

const numTasks = 10000

// taskIDs returns n task IDs shaped like real ones (64 lowercase hex chars),
// the same for the same seed.
func taskIDs(seed uint64, n int) []string {
	rng := rand.New(rand.NewPCG(seed, 0x64666861))
	ids := make([]string, n)
	var b [32]byte
	for i := range ids {
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		ids[i] = hex.EncodeToString(b[:])
	}
	return ids
}

// memberIDs returns "m0" .. "m<n-1>", the IDs test/procs gives its members.
func memberIDs(n int) []string {
	ms := make([]string, n)
	for i := range ms {
		ms[i] = "m" + strconv.Itoa(i)
	}
	return ms
}

func TestSameMembersInAnyOrderGiveSameOwners(t *testing.T) {
	ids := taskIDs(1, numTasks)
	ms := memberIDs(10)
	want := New(ms, 0)

	rev := slices.Clone(ms)
	slices.Reverse(rev)
	inputs := [][]string{rev, append(slices.Clone(rev), "m3", "m0", "", "m9")} // duplicates, empty ID
	rng := rand.New(rand.NewPCG(2, 2))
	for range 3 {
		s := slices.Clone(ms)
		rng.Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
		inputs = append(inputs, s)
	}

	for _, in := range inputs {
		got := New(in, 0)
		if !slices.Equal(got.Members(), ms) {
			t.Fatalf("New(%v).Members() = %v, want %v", in, got.Members(), ms)
		}
		for _, id := range ids {
			for _, n := range []int{1, 2, 3} {
				if g, w := got.Owners(id, n), want.Owners(id, n); !slices.Equal(g, w) {
					t.Fatalf("New(%v).Owners(%s, %d) = %v, want %v", in, id, n, g, w)
				}
			}
		}
	}
}

// TestDocumentedScheme checks Owners against a literal, brute-force reading of
// the package comment, so that a change to the replicated scheme cannot pass
// unnoticed: every member must compute the same ring.
func TestDocumentedScheme(t *testing.T) {
	ms := []string{"m2", "supernode-b.example", "m0", "m1", "A_1"}
	const vnodes = 64
	r := New(ms, vnodes)

	type point struct {
		hash   uint64
		member string
	}
	var points []point
	for _, m := range ms {
		for i := range vnodes {
			points = append(points, point{xxhash.Sum64String(m + "#" + strconv.Itoa(i)), m})
		}
	}
	// first point clockwise from h: the smallest hash >= h (wrapping to the
	// smallest overall), equal hashes ordered by member ID.
	less := func(a, b point) bool { return a.hash < b.hash || a.hash == b.hash && a.member < b.member }
	for _, id := range taskIDs(3, 2000) {
		h := xxhash.Sum64String(id)
		var want []string
		from := point{hash: h}
		for len(want) < len(ms) {
			var next, lowest *point
			for i := range points {
				p := &points[i]
				if slices.Contains(want, p.member) {
					continue
				}
				if p.hash >= from.hash && (next == nil || less(*p, *next)) {
					next = p
				}
				if lowest == nil || less(*p, *lowest) {
					lowest = p
				}
			}
			if next == nil {
				next = lowest
			}
			want = append(want, next.member)
			from = *next
		}
		for n := 1; n <= len(ms); n++ {
			if got := r.Owners(id, n); !slices.Equal(got, want[:n]) {
				t.Fatalf("Owners(%s, %d) = %v, want %v", id, n, got, want[:n])
			}
		}
	}
}

// TestGolden pins a few answers of the default ring. If it fails, the ring
// scheme changed, and with it which member owns which task in a running
// cluster: that needs a coordinated upgrade, not a new golden value.
func TestGolden(t *testing.T) {
	r := New(memberIDs(5), 0)
	for _, tc := range []struct {
		id     string
		owners []string
	}{
		{"0000000000000000000000000000000000000000000000000000000000000000", []string{"m0", "m1", "m2"}},
		{"ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", []string{"m0", "m2", "m3"}},
		{"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", []string{"m1", "m0", "m3"}},
		{"dd39bd9f4ab6197da76a23e6c2d4251d68795754ebf14b25ea9c7280d00e8092", []string{"m4", "m2", "m1"}},
		{"6267e498536eb129b4b8cf3dd44d47e31f3d267cc90c369f1f618cd9f68a992a", []string{"m0", "m3", "m4"}},
		{"96fcbc82a830e0b895075a1bacd056165b850fb4d5f355c8762160a3f623f565", []string{"m2", "m0", "m1"}},
	} {
		if got := r.Owners(tc.id, 3); !slices.Equal(got, tc.owners) {
			t.Errorf("Owners(%s, 3) = %q, want %q", tc.id, got, tc.owners)
		}
	}
}

func TestOwnersAreDistinctMembers(t *testing.T) {
	ms := memberIDs(10)
	r := New(ms, 0)
	for _, id := range taskIDs(4, 1000) {
		for n := -1; n <= len(ms)+2; n++ {
			got := r.Owners(id, n)
			if n <= 0 {
				if got != nil {
					t.Fatalf("Owners(%s, %d) = %v, want nil", id, n, got)
				}
				continue
			}
			if len(got) != min(n, len(ms)) {
				t.Fatalf("Owners(%s, %d) has %d members, want %d", id, n, len(got), min(n, len(ms)))
			}
			if got[0] != r.Owner(id) {
				t.Fatalf("Owners(%s, %d)[0] = %s, Owner = %s", id, n, got[0], r.Owner(id))
			}
			set := slices.Sorted(slices.Values(got))
			if len(slices.Compact(set)) != len(got) {
				t.Fatalf("Owners(%s, %d) = %v: repeated member", id, n, got)
			}
			for _, m := range got {
				if !slices.Contains(ms, m) {
					t.Fatalf("Owners(%s, %d) = %v: %s is no member", id, n, got, m)
				}
			}
			if n >= len(ms) && !slices.Equal(set, ms) {
				t.Fatalf("Owners(%s, %d) = %v, want all members", id, n, got)
			}
			// a longer list extends a shorter one
			if shorter := r.Owners(id, n-1); !slices.Equal(shorter, got[:len(shorter)]) {
				t.Fatalf("Owners(%s, %d) = %v is no prefix of Owners(%s, %d) = %v", id, n-1, shorter, id, n, got)
			}
		}
	}
}

func TestEmptyRing(t *testing.T) {
	for _, ms := range [][]string{nil, {}, {""}} {
		r := New(ms, 0)
		if got := r.Owner(taskIDs(5, 1)[0]); got != "" {
			t.Errorf("New(%q).Owner = %q, want \"\"", ms, got)
		}
		for _, n := range []int{-1, 0, 1, 3} {
			if got := r.Owners(taskIDs(5, 1)[0], n); got != nil {
				t.Errorf("New(%q).Owners(id, %d) = %q, want nil", ms, n, got)
			}
		}
		if got := r.Members(); len(got) != 0 {
			t.Errorf("New(%q).Members() = %q, want none", ms, got)
		}
	}
}

func TestSingleMemberOwnsEverything(t *testing.T) {
	r := New([]string{"m0"}, 0)
	for _, id := range taskIDs(6, 100) {
		if got := r.Owners(id, 3); !slices.Equal(got, []string{"m0"}) {
			t.Fatalf("Owners(%s, 3) = %v, want [m0]", id, got)
		}
	}
}

func TestVirtualNodesDefault(t *testing.T) {
	ms := memberIDs(4)
	want := New(ms, DefaultVirtualNodes)
	for _, vn := range []int{0, -1} {
		r := New(ms, vn)
		for _, id := range taskIDs(7, 1000) {
			if g, w := r.Owners(id, 2), want.Owners(id, 2); !slices.Equal(g, w) {
				t.Fatalf("New(ms, %d).Owners(%s, 2) = %v, want %v (as with DefaultVirtualNodes)", vn, id, g, w)
			}
		}
	}
}

func TestMembersIsACopy(t *testing.T) {
	r := New([]string{"b", "a"}, 0)
	got := r.Members()
	got[0] = "x"
	if !slices.Equal(r.Members(), []string{"a", "b"}) {
		t.Fatalf("Members() after changing the returned slice = %v, want [a b]", r.Members())
	}
}

// TestBalance checks that every member owns within ±15% of 1/N of the tasks.
func TestBalance(t *testing.T) {
	ids := taskIDs(8, numTasks)
	for _, n := range []int{3, 5, 10} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			r := New(memberIDs(n), 0)
			count := map[string]int{}
			for _, id := range ids {
				count[r.Owner(id)]++
			}
			ideal := float64(len(ids)) / float64(n)
			worst := 0.0
			for _, m := range r.Members() {
				dev := float64(count[m])/ideal - 1
				if dev > 0.15 || dev < -0.15 {
					t.Errorf("%s owns %d of %d tasks: %+.1f%% from 1/%d", m, count[m], len(ids), 100*dev, n)
				}
				worst = max(worst, dev, -dev)
			}
			t.Logf("%d members: max deviation from 1/N %.1f%%", n, 100*worst)
		})
	}
}

// TestShareOfHashSpace measures each member's exact share of the hash space
// (the sum of the arcs its points end), free of the sampling noise of a
// finite set of task IDs: it is the share of tasks a member owns, and the
// share that moves when it joins or leaves, as the number of tasks grows.
func TestShareOfHashSpace(t *testing.T) {
	for n := 3; n <= 10; n++ {
		r := New(memberIDs(n), 0)
		share := make([]float64, n)
		for i, h := range r.hashes {
			prev := r.hashes[(i+len(r.hashes)-1)%len(r.hashes)]
			share[r.owners[i]] += float64(h-prev) / (1 << 64) // arc (prev, h], wrapping
		}
		worst := 0.0
		for i, s := range share {
			dev := s*float64(n) - 1
			if dev > 0.1 || dev < -0.1 {
				t.Errorf("N=%d: %s owns %.4f of the hash space: %+.1f%% from 1/N", n, r.members[i], s, 100*dev)
			}
			worst = max(worst, dev, -dev)
		}
		t.Logf("N=%2d: max deviation of a member's hash-space share from 1/N %.1f%%", n, 100*worst)
	}
}

// owners computes every task's owners (n of them) once.
func owners(r *Ring, ids []string, n int) [][]string {
	out := make([][]string, len(ids))
	for i, id := range ids {
		out[i] = r.Owners(id, n)
	}
	return out
}

// TestJoinMovesOnlyToNewMember is the CDN acceptance criterion: when a member
// joins N others, at most 1.1/(N+1) of the tasks change owner, all of them to
// the new member; with 2 replicas, an owner set changes only to take it in.
func TestJoinMovesOnlyToNewMember(t *testing.T) {
	ids := taskIDs(9, numTasks)
	for n := 3; n <= 10; n++ {
		ms := memberIDs(n + 1)
		joiner := ms[n]
		before, after := New(ms[:n], 0), New(ms, 0)
		b1, a1 := owners(before, ids, 1), owners(after, ids, 1)
		b2, a2 := owners(before, ids, 2), owners(after, ids, 2)
		moved, moved2 := 0, 0
		for i, id := range ids {
			if b1[i][0] != a1[i][0] {
				moved++
				if a1[i][0] != joiner {
					t.Fatalf("N=%d, %s joins: task %s moved from %s to %s", n, joiner, id, b1[i][0], a1[i][0])
				}
			}
			if !slices.Equal(b2[i], a2[i]) {
				moved2++
				if !slices.Contains(a2[i], joiner) {
					t.Fatalf("N=%d, %s joins: owners of %s changed from %v to %v", n, joiner, id, b2[i], a2[i])
				}
			}
		}
		limit := 1.1 / float64(n+1)
		frac := float64(moved) / float64(len(ids))
		if frac > limit {
			t.Errorf("N=%d, %s joins: %.4f of tasks changed owner, want at most 1.1/(N+1) = %.4f", n, joiner, frac, limit)
		}
		t.Logf("N=%2d join: %.4f moved = %.3f/(N+1); replica sets changed: %.4f", n, frac, frac*float64(n+1), float64(moved2)/float64(len(ids)))
	}
}

// TestLeaveMovesOnlyLeaversTasks: when one of N members leaves (each in
// turn), only its tasks change owner, at most 1.1/N of them; with 2 replicas,
// an owner set changes only if it held the leaver.
func TestLeaveMovesOnlyLeaversTasks(t *testing.T) {
	ids := taskIDs(10, numTasks)
	for n := 3; n <= 10; n++ {
		ms := memberIDs(n)
		before := New(ms, 0)
		b1, b2 := owners(before, ids, 1), owners(before, ids, 2)
		worst := 0.0
		for _, leaver := range ms {
			after := New(slices.DeleteFunc(slices.Clone(ms), func(m string) bool { return m == leaver }), 0)
			a1, a2 := owners(after, ids, 1), owners(after, ids, 2)
			moved := 0
			for i, id := range ids {
				if b1[i][0] != a1[i][0] {
					moved++
					if b1[i][0] != leaver {
						t.Fatalf("N=%d, %s leaves: task %s moved from %s to %s", n, leaver, id, b1[i][0], a1[i][0])
					}
				}
				if !slices.Equal(b2[i], a2[i]) && !slices.Contains(b2[i], leaver) {
					t.Fatalf("N=%d, %s leaves: owners of %s changed from %v to %v", n, leaver, id, b2[i], a2[i])
				}
			}
			limit := 1.1 / float64(n)
			frac := float64(moved) / float64(len(ids))
			if frac > limit {
				t.Errorf("N=%d, %s leaves: %.4f of tasks changed owner, want at most 1.1/N = %.4f", n, leaver, frac, limit)
			}
			worst = max(worst, frac)
		}
		t.Logf("N=%2d leave (worst of the N leavers): %.4f moved = %.3f/N", n, worst, worst*float64(n))
	}
}

func TestConcurrentUse(t *testing.T) {
	r := New(memberIDs(5), 0)
	ids := taskIDs(11, 500)
	want := owners(r, ids, 2)
	var wg sync.WaitGroup
	errs := make(chan string, 4)
	for range 4 {
		wg.Go(func() {
			for i, id := range ids {
				if got := r.Owners(id, 2); !slices.Equal(got, want[i]) {
					errs <- id
					return
				}
				_ = r.Owner(id)
				_ = r.Members()
			}
		})
	}
	wg.Wait()
	close(errs)
	for id := range errs {
		t.Errorf("concurrent Owners(%s, 2) differs from the sequential answer", id)
	}
}

func BenchmarkOwners(b *testing.B) {
	r := New(memberIDs(10), 0)
	ids := taskIDs(12, 1024)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		_ = r.Owners(ids[i&1023], 2)
		i++
	}
}

func BenchmarkOwner(b *testing.B) {
	r := New(memberIDs(10), 0)
	ids := taskIDs(12, 1024)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		_ = r.Owner(ids[i&1023])
		i++
	}
}

func BenchmarkNew(b *testing.B) {
	ms := memberIDs(10)
	b.ReportAllocs()
	for b.Loop() {
		_ = New(ms, 0)
	}
}
