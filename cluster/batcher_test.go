package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dfly-ha/dfha/fsm"
)

// echoSink answers each command with N = its peer ID's number, so that a caller can check it
// got its own results; it records batch sizes.
type echoSink struct {
	mu      sync.Mutex
	batches []int
	bytes   []int
	delay   time.Duration
	index   atomic.Uint64
}

func (s *echoSink) sink(cmds []fsm.Command) (uint64, []fsm.Result, error) {
	time.Sleep(s.delay)
	res := make([]fsm.Result, len(cmds))
	for i, c := range cmds {
		var n uint64
		fmt.Sscanf(c.(fsm.PeerRegister).ID, "p%d", &n)
		res[i] = fsm.Result{N: n}
	}
	s.mu.Lock()
	s.batches = append(s.batches, len(cmds))
	s.bytes = append(s.bytes, fsm.EncodedSize(cmds))
	s.mu.Unlock()
	return s.index.Add(1), res, nil
}

func peerCmd(i int, hostname string) fsm.Command {
	return fsm.PeerRegister{ID: fmt.Sprintf("p%d", i), IP: "127.0.0.1", Port: 1, Hostname: hostname}
}

func TestBatcherMergesConcurrentProposalsAndRoutesResults(t *testing.T) {
	s := &echoSink{delay: 2 * time.Millisecond}
	b := newBatcher(s.sink, 2, 4096, 4<<20, nil)
	defer b.close()
	const n = 2000
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, res, err := b.submit(context.Background(), []fsm.Command{peerCmd(i, "h"), peerCmd(i+n, "h")})
			if err != nil || len(res) != 2 || res[0].N != uint64(i) || res[1].N != uint64(i+n) {
				errs <- fmt.Errorf("proposal %d got %+v, %v", i, res, err)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	total := 0
	for _, c := range s.batches {
		total += c
	}
	if total != 2*n {
		t.Fatalf("sink saw %d commands, want %d", total, 2*n)
	}
	if len(s.batches) >= n/4 {
		t.Fatalf("%d sink calls for %d concurrent proposals: they were not merged", len(s.batches), n)
	}
}

func TestBatcherBoundsBatchBytes(t *testing.T) {
	s := &echoSink{delay: 5 * time.Millisecond}
	const maxBytes = 64 << 10
	b := newBatcher(s.sink, 1, 4096, maxBytes, nil)
	defer b.close()
	big := strings.Repeat("h", 200) // ~230 encoded bytes a command
	var wg sync.WaitGroup
	for i := 0; i < 1500; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if _, _, err := b.submit(context.Background(), []fsm.Command{peerCmd(i, big)}); err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, n := range s.bytes {
		if n > maxBytes {
			t.Fatalf("batch %d is %d bytes, over the %d bound", i, n, maxBytes)
		}
	}
	if len(s.bytes) < 1500*230/maxBytes {
		t.Fatalf("only %d batches for %d bytes", len(s.bytes), 1500*230)
	}
}

func TestBatcherCloseReleasesWaiters(t *testing.T) {
	block := make(chan struct{})
	b := newBatcher(func(cmds []fsm.Command) (uint64, []fsm.Result, error) {
		<-block
		return 0, nil, ErrShutdown
	}, 1, 16, 1<<20, nil)
	done := make(chan error, 3)
	for i := 0; i < 3; i++ {
		go func(i int) {
			_, _, err := b.submit(context.Background(), []fsm.Command{peerCmd(i, "h")})
			done <- err
		}(i)
	}
	time.Sleep(20 * time.Millisecond) // let them queue behind the blocked sink
	go b.close()
	close(block)
	for i := 0; i < 3; i++ {
		select {
		case err := <-done:
			if !errors.Is(err, ErrShutdown) {
				t.Fatalf("waiter got %v, want ErrShutdown", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a waiter was left blocked after close")
		}
	}
}
