package scheduler

import (
	"sync"
	"testing"
	"time"
)

func TestLoadTableKeepsTheLatestHeartbeat(t *testing.T) {
	now := time.Unix(1000, 0)
	tab := NewLoadTable(func() time.Time { return now })
	tab.Heartbeat("p1", 3)
	now = now.Add(time.Second)
	tab.Heartbeat("p1", 1)
	l, ok := tab.Get("p1")
	if !ok || l.UploadsRunning != 1 || !l.LastSeen.Equal(now) {
		t.Fatalf("p1: %+v %v, want 1 upload seen at %v", l, ok, now)
	}
	tab.Forget("p1")
	if _, ok := tab.Get("p1"); ok || tab.Len() != 0 {
		t.Fatal("a forgotten peer is still there")
	}
}

func TestLoadTableConcurrentUse(t *testing.T) {
	tab := NewLoadTable(nil)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				id := string(rune('a' + (i+g)%20))
				tab.Heartbeat(id, i)
				tab.Get(id)
				if i%7 == 0 {
					tab.Forget(id)
				}
			}
		}(g)
	}
	wg.Wait()
	if tab.Len() > 20 {
		t.Fatalf("%d peers, at most 20 were ever seen", tab.Len())
	}
}

func TestHeartbeatsPassedOnKeepTheNewest(t *testing.T) {
	now := time.Unix(1000, 0)
	clock := func() time.Time { return now }
	a, b := NewLoadTable(clock), NewLoadTable(clock)
	a.Heartbeat("p1", 2)
	now = now.Add(500 * time.Millisecond)
	b.Heartbeat("p1", 7) // newer, on the other member
	b.Merge(a.Updates(time.Time{}))
	if l, _ := b.Get("p1"); l.UploadsRunning != 7 {
		t.Fatalf("an older heartbeat passed on replaced a newer one: %+v", l)
	}
	a.Merge(b.Updates(time.Time{}))
	if l, _ := a.Get("p1"); l.UploadsRunning != 7 || !l.LastSeen.Equal(now) {
		t.Fatalf("a newer heartbeat passed on was not taken: %+v", l)
	}
	// What a member got passed on is not echoed back.
	if u := a.Updates(time.Time{}); len(u) != 0 {
		t.Fatalf("updates %+v, want none (p1's newest came from b)", u)
	}
}

func TestStalePeersAfterTTLOnly(t *testing.T) {
	start := time.Unix(1000, 0)
	now := start
	tab := NewLoadTable(func() time.Time { return now })
	ttl := 10 * time.Second
	regs := map[string]time.Time{"beating": start, "silent": start, "new": start.Add(25 * time.Second)}
	tab.Heartbeat("beating", 0)
	now = start.Add(5 * time.Second)
	if s := tab.Stale(regs, ttl); len(s) != 0 {
		t.Fatalf("stale %v before the table is one ttl old", s)
	}
	now = start.Add(30 * time.Second)
	tab.Heartbeat("beating", 1)
	s := tab.Stale(regs, ttl)
	if len(s) != 1 || s[0] != "silent" {
		t.Fatalf("stale %v, want [silent]", s)
	}
	live := tab.Live("t", ttl)
	if _, present := live.PeerLoad("silent", start.UnixNano()); present {
		t.Fatal("a silent peer is still a source")
	}
	if _, present := live.PeerLoad("new", regs["new"].UnixNano()); !present {
		t.Fatal("a peer that just registered is not a source")
	}
}

func TestAssignmentsCountAsLoadForAWhile(t *testing.T) {
	now := time.Unix(1000, 0)
	tab := NewLoadTable(func() time.Time { return now })
	tab.Heartbeat("p1", 1)
	tab.Assigned("t", "asker", "p1", 3, false)
	tab.Assigned("t", "asker", "p1", 4, false)
	tab.Assigned("t", "asker", "", 5, true)
	live := tab.Live("t", time.Minute)
	if l, _ := live.PeerLoad("p1", 0); l != 3 {
		t.Fatalf("load %d, want 1 running + 2 assigned", l)
	}
	if live.MemberFetchBy(5) != "asker" || live.MemberFetchBy(4) != "" || tab.Live("other", time.Minute).MemberFetchBy(5) != "" {
		t.Fatal("member fetches are not tracked per task and piece")
	}
	now = now.Add(4 * time.Second)
	if l, _ := live.PeerLoad("p1", 0); l != 1 || live.MemberFetchBy(5) != "" {
		t.Fatalf("load %d and fetch by %q after the windows, want 1 and none", l, live.MemberFetchBy(5))
	}
	tab.Prune(time.Second)
	if tab.Len() != 0 {
		t.Fatal("prune kept a peer silent for longer than asked")
	}
}
