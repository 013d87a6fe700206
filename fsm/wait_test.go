package fsm_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/dfly-ha/dfha/fsm"
	"github.com/hashicorp/raft"
)

// waitAsync runs WaitApplied in a goroutine; the channel gets its result.
func waitAsync(ctx context.Context, f *fsm.FSM, index uint64) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f.WaitApplied(ctx, index) }()
	return ch
}

// within waits for ch to deliver, failing the test after d.
func within(t *testing.T, ch <-chan error, d time.Duration) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(d):
		t.Fatalf("WaitApplied did not return within %v", d)
		return nil
	}
}

// stillWaiting checks that ch delivers nothing for a short while.
func stillWaiting(t *testing.T, ch <-chan error, what string) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("WaitApplied returned %v %s", err, what)
	case <-time.After(20 * time.Millisecond):
	}
}

func TestWaitAppliedReturnsAtOnceForAppliedIndex(t *testing.T) {
	h := newHarness(t)
	h.must(m1)
	h.must(m2)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a cancelled context: only an immediate answer can be nil
	for _, index := range []uint64{0, 1, 2} {
		if err := h.f.WaitApplied(ctx, index); err != nil {
			t.Errorf("WaitApplied(%d) with applied index 2 = %v, want nil", index, err)
		}
	}
	if err := h.f.WaitApplied(ctx, 3); !errors.Is(err, context.Canceled) {
		t.Errorf("WaitApplied(3) with a cancelled context = %v, want context.Canceled", err)
	}
}

func TestWaitAppliedBlocksUntilApplied(t *testing.T) {
	h := newHarness(t)
	h.must(m1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	done := waitAsync(ctx, h.f, 3)
	stillWaiting(t, done, "before index 3 was applied")
	h.must(m2) // index 2: not yet
	stillWaiting(t, done, "when only index 2 was applied")
	h.must(p1) // index 3
	if err := within(t, done, 5*time.Second); err != nil {
		t.Fatalf("WaitApplied(3) = %v, want nil", err)
	}
	if got := h.f.AppliedIndex(); got < 3 {
		t.Errorf("WaitApplied returned with AppliedIndex %d", got)
	}
}

// TestWaitAppliedManyWaiters: every waiter wakes when a batch passes its index.
func TestWaitAppliedManyWaiters(t *testing.T) {
	h := newHarness(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var waits []<-chan error
	for i := uint64(1); i <= 10; i++ {
		waits = append(waits, waitAsync(ctx, h.f, i))
	}
	h.f.ApplyBatch([]*raft.Log{h.entry(m1), h.entry(m2), h.entry(p1)}) // indexes 1-3 in one call
	for i := 0; i < 3; i++ {
		if err := within(t, waits[i], 5*time.Second); err != nil {
			t.Errorf("waiter for index %d: %v", i+1, err)
		}
	}
	for i := 3; i < 10; i++ {
		h.must(fsm.MemberAlive{ID: "m1", Alive: i%2 == 0})
	}
	for i := 3; i < 10; i++ {
		if err := within(t, waits[i], 5*time.Second); err != nil {
			t.Errorf("waiter for index %d: %v", i+1, err)
		}
	}
}

func TestWaitAppliedContextEnds(t *testing.T) {
	h := newHarness(t)
	h.must(m1)

	ctx, cancel := context.WithCancel(context.Background())
	done := waitAsync(ctx, h.f, 100)
	stillWaiting(t, done, "before the context was cancelled")
	h.must(m2) // applying something else does not end the wait
	stillWaiting(t, done, "after an unrelated apply")
	cancel()
	if err := within(t, done, 5*time.Second); !errors.Is(err, context.Canceled) {
		t.Errorf("WaitApplied after cancel = %v, want context.Canceled", err)
	}

	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if err := within(t, waitAsync(ctx, h.f, 100), 5*time.Second); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitApplied past its deadline = %v, want context.DeadlineExceeded", err)
	}
}

// TestWaitAppliedWokenByRestore: a snapshot restored past the awaited index ends the wait.
func TestWaitAppliedWokenByRestore(t *testing.T) {
	src := newHarness(t)
	buildRich(src)
	snap, err := src.f.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	p := persist(t, snap)

	f := fsm.New(nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := waitAsync(ctx, f, src.index)
	stillWaiting(t, done, "before Restore")
	if err := f.Restore(&closeTracker{Reader: bytes.NewReader(p)}); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if err := within(t, done, 5*time.Second); err != nil {
		t.Errorf("WaitApplied(%d) after Restore = %v, want nil", src.index, err)
	}
}
