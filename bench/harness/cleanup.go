package harness

import (
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// The cleanups of everything started and not yet stopped, run by Cleanup.
var cleanups struct {
	sync.Mutex
	next int
	fns  map[int]func()
}

// onCleanup registers f to run at Cleanup; the returned func unregisters it (call it once
// f has run by other means).
func onCleanup(f func()) (forget func()) {
	cleanups.Lock()
	defer cleanups.Unlock()
	if cleanups.fns == nil {
		cleanups.fns = map[int]func(){}
	}
	id := cleanups.next
	cleanups.next++
	cleanups.fns[id] = f
	return func() {
		cleanups.Lock()
		delete(cleanups.fns, id)
		cleanups.Unlock()
	}
}

// Cleanup stops everything the harness started that is still running (newest first).
// Benchmark programs defer it in main.
func Cleanup() {
	cleanups.Lock()
	fns := cleanups.fns
	cleanups.fns = nil
	ids := make([]int, 0, len(fns))
	for id := range fns {
		ids = append(ids, id)
	}
	cleanups.Unlock()
	for i := len(ids) - 1; i >= 0; i-- {
		// map order is random: run the newest first
		best := 0
		for j := 1; j <= i; j++ {
			if ids[j] > ids[best] {
				best = j
			}
		}
		ids[best], ids[i] = ids[i], ids[best]
		fns[ids[i]]()
	}
}

// HandleSignals makes SIGINT and SIGTERM run Cleanup and exit with status 130.
func HandleSignals() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-ch
		fmt.Fprintf(os.Stderr, "\n%v: stopping every process started\n", s)
		Cleanup()
		os.Exit(130)
	}()
}
