package peer

import (
	"slices"
	"sync"
	"time"

	"github.com/dfly-ha/dfha/sdk/api"
)

// deadSourceTTL is how long a source that could not be reached stays blacklisted: a member
// that restarts, or a peer that was only overloaded, gets another chance. A source that sent
// bad bytes stays blacklisted for the whole download.
const deadSourceTTL = 10 * time.Second

// blacklist holds the sources one download will not use. Safe for concurrent use.
type blacklist struct {
	mu    sync.Mutex
	until map[string]time.Time // zero: for good
	now   func() time.Time
}

func newBlacklist(now func() time.Time) *blacklist {
	if now == nil {
		now = time.Now
	}
	return &blacklist{until: map[string]time.Time{}, now: now}
}

// add blacklists a source, for good or for deadSourceTTL.
func (b *blacklist) add(id string, forGood bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if t, ok := b.until[id]; ok && t.IsZero() {
		return
	}
	if forGood {
		b.until[id] = time.Time{}
	} else {
		b.until[id] = b.now().Add(deadSourceTTL)
	}
}

// has reports whether a source is blacklisted now.
func (b *blacklist) has(id string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	t, ok := b.until[id]
	if ok && !t.IsZero() && !b.now().Before(t) {
		delete(b.until, id)
		return false
	}
	return ok
}

// list returns the sources blacklisted now, at most api.MaxExclude (those blacklisted for
// good first), for ScheduleQuery.Exclude.
func (b *blacklist) list() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	var forGood, timed []string
	for id, t := range b.until {
		switch {
		case t.IsZero():
			forGood = append(forGood, id)
		case now.Before(t):
			timed = append(timed, id)
		default:
			delete(b.until, id)
		}
	}
	slices.Sort(forGood)
	slices.Sort(timed)
	out := append(forGood, timed...)
	return out[:min(len(out), api.MaxExclude)]
}
