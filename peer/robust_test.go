package peer

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dfly-ha/dfha/peer/peertest"
	tc "github.com/dfly-ha/dfha/test/cluster"
)

// Regression tests for faults the real cluster does not produce on demand: the one-member
// fake cluster of fake_test.go answers them.

const fakeURL = "http://origin.test/file"

func TestReportsRefusedByTheClusterBackOffAndFailTheDownload(t *testing.T) {
	const pieceSize = 1 << 10
	data := peertest.RandomBytes(41, 600*pieceSize)

	t.Run("always", func(t *testing.T) {
		f := newFakeCluster(t, pieceSize, data)
		f.reportStatus = func(*fakeCluster) int { return 500 }
		p := startFakePeer(t, f, nil)
		dir := t.TempDir()
		start := time.Now()
		_, err := p.Download(testCtx(t, 30*time.Second), Request{URL: fakeURL, Output: filepath.Join(dir, "out")})
		puts := f.count("PUT /tasks/{id}/pieces")
		f.mu.Lock()
		maxLimit := f.maxLimit
		f.mu.Unlock()
		t.Logf("after %s: %v; %d reports, largest limit %d", time.Since(start).Round(time.Millisecond), err, puts, maxLimit)
		// A clear error about the reports, long before the test's deadline; a few reports
		// spaced out, not a loop that resends at once.
		if err == nil || errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "report") {
			t.Fatalf("err %v, want a failure about refused reports", err)
		}
		if puts > 12 {
			t.Fatalf("%d reports sent to a cluster that refuses them all: no backoff", puts)
		}
		// Unconfirmed successes must not inflate the scheduling limit: 16 asked for, plus
		// what is in flight and queued (bounded by the workers and the answer), plus at most
		// two report batches.
		if maxLimit > 16+4+20+2*DefaultReportBatch {
			t.Fatalf("a scheduling call asked for %d pieces: the unconfirmed reports inflate the limit", maxLimit)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Fatalf("a failed download left %d files", len(entries))
		}
	})

	t.Run("for a while", func(t *testing.T) {
		f := newFakeCluster(t, pieceSize, data)
		refused := 0
		f.reportStatus = func(*fakeCluster) int {
			if refused < 3 {
				refused++
				return 500
			}
			return 0
		}
		p := startFakePeer(t, f, nil)
		out := filepath.Join(t.TempDir(), "out")
		if _, err := p.Download(testCtx(t, 30*time.Second), Request{URL: fakeURL, Output: out}); err != nil {
			t.Fatal(err)
		}
		checkOutput(t, out, data)
		if puts := f.count("PUT /tasks/{id}/pieces"); puts > 3+600/16+4 {
			t.Fatalf("%d reports for 600 pieces after 3 refusals", puts)
		}
	})
}

// shortPieceBackoff makes the per-piece backoff short for one test.
func shortPieceBackoff(t *testing.T) {
	oldMin, oldMax := pieceBackoffMin, pieceBackoffMax
	pieceBackoffMin, pieceBackoffMax = 5*time.Millisecond, 40*time.Millisecond
	t.Cleanup(func() { pieceBackoffMin, pieceBackoffMax = oldMin, oldMax })
}

func TestAPieceNoSourceServesFailsTheDownloadNamingIt(t *testing.T) {
	const pieceSize = 1 << 10
	data := peertest.RandomBytes(42, 40*pieceSize)

	for _, status := range []int{503, 404, 403} {
		t.Run(http503or(status), func(t *testing.T) {
			shortPieceBackoff(t)
			f := newFakeCluster(t, pieceSize, data)
			f.onData = func(n int) int {
				if n == 7 {
					return status
				}
				return 0
			}
			p := startFakePeer(t, f, nil)
			_, err := p.Download(testCtx(t, 20*time.Second), Request{URL: fakeURL, Output: filepath.Join(t.TempDir(), "out")})
			asked := f.asked(7)
			t.Logf("%v; piece 7 asked %d times, %d scheduling calls", err, asked, f.count("GET /tasks/{id}/pieces"))
			if err == nil || errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "piece 7") {
				t.Fatalf("err %v, want an error naming piece 7", err)
			}
			if asked < 3 || asked > 12 {
				t.Fatalf("piece 7 asked %d times, want a few rounds with backoff", asked)
			}
		})
	}

	t.Run("busy for a while", func(t *testing.T) {
		shortPieceBackoff(t)
		f := newFakeCluster(t, pieceSize, data)
		var busy atomic.Int64
		f.onData = func(n int) int {
			if n == 7 && busy.Add(1) <= 4 {
				return 503
			}
			return 0
		}
		p := startFakePeer(t, f, nil)
		out := filepath.Join(t.TempDir(), "out")
		if _, err := p.Download(testCtx(t, 20*time.Second), Request{URL: fakeURL, Output: out}); err != nil {
			t.Fatal(err)
		}
		checkOutput(t, out, data)
	})
}

func http503or(status int) string {
	return map[int]string{503: "busy", 404: "missing", 403: "refused"}[status]
}

// recordingWriter is a stdout that notes writes made after the download returned, and can
// be made to block.
type recordingWriter struct {
	mu       sync.Mutex
	buf      bytes.Buffer
	delay    time.Duration
	gate     chan struct{} // when non-nil, every write waits on it
	returned atomic.Bool
	late     atomic.Int64 // writes that started after returned was set
	writes   atomic.Int64
}

func (w *recordingWriter) Write(p []byte) (int, error) {
	if w.returned.Load() {
		w.late.Add(1)
	}
	w.writes.Add(1)
	if w.gate != nil {
		<-w.gate
	}
	time.Sleep(w.delay)
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func TestStreamWritesNothingAfterDownloadReturns(t *testing.T) {
	const pieceSize = 2 << 10
	data := peertest.RandomBytes(43, 200*pieceSize)

	t.Run("slow writer", func(t *testing.T) {
		f := newFakeCluster(t, pieceSize, data)
		p := startFakePeer(t, f, func(c *Config) { c.Workers = 4 })
		w := &recordingWriter{delay: 20 * time.Millisecond}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			tc.Eventually(10*time.Second, func() bool { return w.writes.Load() >= 5 })
			cancel()
		}()
		_, err := p.Download(ctx, Request{URL: fakeURL, Stream: w})
		w.returned.Store(true)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err %v, want the cancellation", err)
		}
		time.Sleep(300 * time.Millisecond)
		if late := w.late.Load(); late != 0 {
			t.Fatalf("%d writes to the stream after Download returned", late)
		}
	})

	t.Run("blocked writer", func(t *testing.T) {
		f := newFakeCluster(t, pieceSize, data)
		const bound = 300 * time.Millisecond
		p := startFakePeer(t, f, func(c *Config) { c.ShutdownTimeout = bound })
		w := &recordingWriter{gate: make(chan struct{})}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			tc.Eventually(10*time.Second, func() bool { return w.writes.Load() >= 1 })
			cancel()
		}()
		start := time.Now()
		_, err := p.Download(ctx, Request{URL: fakeURL, Stream: w})
		w.returned.Store(true)
		took := time.Since(start)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err %v, want the cancellation", err)
		}
		if took > 5*time.Second {
			t.Fatalf("Download took %s with a blocked writer", took)
		}
		close(w.gate) // the blocked write ends: nothing more may follow it
		time.Sleep(300 * time.Millisecond)
		if late := w.late.Load(); late != 0 {
			t.Fatalf("%d writes to the stream after Download returned", late)
		}
	})
}

func TestDoneWhilePiecesAreMissingResetsThePeer(t *testing.T) {
	const pieceSize = 1 << 10
	data := peertest.RandomBytes(44, 100*pieceSize)
	// After the first report, the cluster believes the peer holds every piece (as after a
	// rejoin that reported pieces of an older generation): it answers Done.
	believeAll := func() func(f *fakeCluster) {
		once := false
		return func(f *fakeCluster) {
			if once {
				return
			}
			once = true
			for n := range uint32(100) {
				f.held[n] = true
			}
		}
	}

	t.Run("reset", func(t *testing.T) {
		f := newFakeCluster(t, pieceSize, data)
		f.onReport = believeAll()
		p := startFakePeer(t, f, nil)
		out := filepath.Join(t.TempDir(), "out")
		if _, err := p.Download(testCtx(t, 20*time.Second), Request{URL: fakeURL, Output: out}); err != nil {
			t.Fatal(err)
		}
		checkOutput(t, out, data)
		if n := f.count("DELETE /peers/{id}"); n != 1 {
			t.Fatalf("%d DELETE /peers, want one reset", n)
		}
	})

	t.Run("reset fails", func(t *testing.T) {
		f := newFakeCluster(t, pieceSize, data)
		f.onReport = believeAll()
		f.deleteStatus = 500
		p := startFakePeer(t, f, nil)
		dir := t.TempDir()
		_, err := p.Download(testCtx(t, 20*time.Second), Request{URL: fakeURL, Output: filepath.Join(dir, "out")})
		if err == nil || errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err %v, want the failed reset", err)
		}
		t.Log(err)
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Fatalf("a failed download left %d files", len(entries))
		}
	})
}

func TestAnswerOfAMemberBehindDoesNotRestartTheDownload(t *testing.T) {
	const pieceSize = 1 << 10
	v1, v2 := peertest.RandomBytes(45, 150*pieceSize), peertest.RandomBytes(46, 200*pieceSize+3)
	f := newFakeCluster(t, pieceSize, v1)
	f.newGeneration(v2)
	// The first answer is of generation 2; the second and third come from a member one
	// generation behind, and so does the fifth.
	f.stale = func(n int) bool { return n == 2 || n == 3 || n == 5 }
	const workers = 4
	p := startFakePeer(t, f, func(c *Config) { c.Workers = workers })
	out := filepath.Join(t.TempDir(), "out")
	res, err := p.Download(testCtx(t, 20*time.Second), Request{URL: fakeURL, Output: out})
	if err != nil {
		t.Fatal(err)
	}
	checkOutput(t, out, v2)
	if limit := int64(len(v2) + workers*pieceSize); res.BytesReceived > limit {
		t.Fatalf("received %d bytes, more than %d: the download started over", res.BytesReceived, limit)
	}
	f.mu.Lock()
	calls := f.schedules
	f.mu.Unlock()
	if calls < 6 {
		t.Fatalf("only %d scheduling calls: the stale answers were never given", calls)
	}
}

func TestOutputFileModeFollowsTheUmask(t *testing.T) {
	old := syscall.Umask(0o027)
	defer syscall.Umask(old)
	data := peertest.RandomBytes(47, 10<<10)
	f := newFakeCluster(t, 1<<10, data)
	p := startFakePeer(t, f, nil)
	out := filepath.Join(t.TempDir(), "out")
	if _, err := p.Download(testCtx(t, 20*time.Second), Request{URL: fakeURL, Output: out}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o640 {
		t.Fatalf("output mode %o, want 0666 &^ umask 027 = 640", got)
	}
}

func TestNothingRegistersThePeerAgainAfterClose(t *testing.T) {
	f := newFakeCluster(t, 1<<10, peertest.RandomBytes(48, 4<<10))
	p := startFakePeer(t, f, nil)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.reset(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("reset after Close: %v, want ErrClosed", err)
	}
	if err := p.rejoin(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("rejoin after Close: %v, want ErrClosed", err)
	}
	if n := f.count("POST /peers"); n != 1 {
		t.Fatalf("%d registrations, want only the first", n)
	}
	if n := f.count("DELETE /peers/{id}"); n != 1 {
		t.Fatalf("%d DELETE /peers, want Close's only", n)
	}
}

// A member serves a piece whose peer sources are busy only after memberWait; a dead peer
// source sends the piece to the member at once.
func TestBusyPeersAreWaitedForBeforeAMember(t *testing.T) {
	const pieceSize = 1 << 10
	data := peertest.RandomBytes(43, 4*pieceSize)
	old := memberWait
	t.Cleanup(func() { memberWait = old })

	t.Run("busy", func(t *testing.T) {
		memberWait = 600 * time.Millisecond
		var asked atomic.Int64
		busy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			asked.Add(1)
			w.WriteHeader(http.StatusServiceUnavailable)
		}))
		defer busy.Close()
		f := newFakeCluster(t, pieceSize, data)
		f.peerAddr = strings.TrimPrefix(busy.URL, "http://")
		p := startFakePeer(t, f, nil)
		out := filepath.Join(t.TempDir(), "out")
		start := time.Now()
		res, err := p.Download(testCtx(t, 20*time.Second), Request{URL: fakeURL, Output: out})
		if err != nil {
			t.Fatal(err)
		}
		checkOutput(t, out, data)
		if el := time.Since(start); el < memberWait || res.PiecesFromSupernodes != 4 || asked.Load() < 8 {
			t.Fatalf("done in %v from %d member pieces, busy peer asked %d times; want the peer retried for %v first",
				el, res.PiecesFromSupernodes, asked.Load(), memberWait)
		}
	})
	t.Run("dead", func(t *testing.T) {
		memberWait = 10 * time.Second
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		f := newFakeCluster(t, pieceSize, data)
		f.peerAddr = addr
		p := startFakePeer(t, f, nil)
		out := filepath.Join(t.TempDir(), "out")
		start := time.Now()
		if _, err := p.Download(testCtx(t, 20*time.Second), Request{URL: fakeURL, Output: out}); err != nil {
			t.Fatal(err)
		}
		checkOutput(t, out, data)
		if el := time.Since(start); el > 3*time.Second {
			t.Fatalf("done in %v: a dead peer source must not hold a piece back from the member", el)
		}
	})
}
