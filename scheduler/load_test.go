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
