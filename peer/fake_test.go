package peer

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/dfly-ha/dfha/peer/peertest"
	"github.com/dfly-ha/dfha/sdk/api"
	tc "github.com/dfly-ha/dfha/test/cluster"
)

// fakeCluster is one fake member that schedules every piece from itself, for what a real
// cluster does not do on demand: a new generation of the file in the middle of a download.
type fakeCluster struct {
	srv       *httptest.Server
	pieceSize int64

	mu       sync.Mutex
	versions [][]byte // the file of each generation, from 1
	gen      uint64
	held     map[uint32]bool // pieces the peer reported
	requests map[string]int  // by "METHOD /route"
	// onReport, when set, runs (under mu) after each accepted report.
	onReport func(f *fakeCluster)
	// expired answers the next heartbeat 404, as for a peer the cluster expired.
	expired bool
	// onData, when set, runs when piece n is asked for; a non-zero status is answered
	// instead of the piece.
	onData func(n int) int
	// reportStatus, when set, runs (under mu) for each report: a non-zero status is
	// answered instead of accepting it.
	reportStatus func(f *fakeCluster) int
	// deleteStatus, when non-zero, is the answer to DELETE /peers/{id}; otherwise the
	// peer's pieces leave the piece map, as in the real cluster.
	deleteStatus int
	// stale, when set, runs (under mu) for the n-th scheduling call (from 1): true answers
	// as a member that is one generation behind would.
	stale func(n int) bool
	// schedules counts the scheduling calls; maxLimit is the largest limit asked for.
	schedules, maxLimit int
	// dataAsked counts the requests for each piece's data.
	dataAsked map[int]int
	// peerAddr, when set, is listed as a peer source ahead of the member for every piece.
	peerAddr string
}

func newFakeCluster(t *testing.T, pieceSize int64, data []byte) *fakeCluster {
	f := &fakeCluster{pieceSize: pieceSize, versions: [][]byte{data}, gen: 1, held: map[uint32]bool{},
		requests: map[string]int{}, dataAsked: map[int]int{}}
	mux := http.NewServeMux()
	handle := func(pattern string, h func(w http.ResponseWriter, r *http.Request)) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			f.mu.Lock()
			f.requests[pattern]++
			f.mu.Unlock()
			h(w, r)
		})
	}
	reply := func(w http.ResponseWriter, status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(v)
	}
	handle("GET /cluster/members", func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, []api.Member{{ID: "fake", HTTPAddr: f.addr(), Leader: true, Voter: true, Alive: true}})
	})
	handle("POST /peers", func(w http.ResponseWriter, r *http.Request) {
		var req api.RegisterPeerRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		reply(w, 201, api.RegisterPeerResponse{ID: req.ID})
	})
	handle("PUT /peers/{id}/heartbeat", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		expired := f.expired
		f.expired = false
		f.mu.Unlock()
		if expired {
			reply(w, 404, api.Error{Error: "peer not found"})
			return
		}
		w.Header().Set(api.HeaderUploadSlots, "3")
		w.WriteHeader(204)
	})
	handle("DELETE /peers/{id}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		status := f.deleteStatus
		if status == 0 {
			f.held = map[uint32]bool{}
		}
		f.mu.Unlock()
		if status != 0 {
			reply(w, status, api.Error{Error: "delete refused"})
			return
		}
		w.WriteHeader(204)
	})
	handle("PUT /tasks/{id}", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) })
	handle("POST /tasks", func(w http.ResponseWriter, r *http.Request) {
		var req api.RegisterTaskRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		id, _ := api.TaskID(req.URL, req.Filter, req.Digest)
		s := f.schedule(0, 0)
		reply(w, 201, api.Task{TaskID: id, Generation: s.Generation, Status: s.Status, PieceSize: s.PieceSize,
			ContentLength: s.ContentLength, PieceCount: s.PieceCount, Owners: []string{"fake"}})
	})
	handle("GET /tasks/{id}/pieces", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		limit, _ := strconv.Atoi(q.Get(api.QueryLimit))
		from, _ := strconv.Atoi(q.Get(api.QueryFrom)) // stream mode: a window in order from here
		f.mu.Lock()
		f.schedules++
		f.maxLimit = max(f.maxLimit, limit)
		stale := f.stale != nil && f.gen > 1 && f.stale(f.schedules)
		f.mu.Unlock()
		if stale {
			reply(w, 200, f.scheduleOf(limit, int64(from), true))
			return
		}
		reply(w, 200, f.schedule(limit, int64(from)))
	})
	handle("PUT /tasks/{id}/pieces", func(w http.ResponseWriter, r *http.Request) {
		var b api.PieceReportBatch
		_ = json.NewDecoder(r.Body).Decode(&b)
		f.mu.Lock()
		defer f.mu.Unlock()
		if b.Generation != f.gen {
			reply(w, 409, api.Error{Error: "stale generation"})
			return
		}
		if f.reportStatus != nil {
			if status := f.reportStatus(f); status != 0 {
				reply(w, status, api.Error{Error: "report refused"})
				return
			}
		}
		for _, rep := range b.Reports {
			spans, _ := api.ParseRange(rep.Pieces)
			for _, sp := range spans {
				for n := sp.From; n <= sp.To && rep.Status == api.StatusSuccess; n++ {
					f.held[n] = true
				}
			}
		}
		if f.onReport != nil {
			f.onReport(f)
		}
		w.WriteHeader(204)
	})
	handle("GET /tasks/{id}/pieces/{n}/data", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.PathValue("n"))
		f.mu.Lock()
		f.dataAsked[n]++
		f.mu.Unlock()
		if f.onData != nil {
			if status := f.onData(n); status != 0 {
				reply(w, status, api.Error{Error: "not now"})
				return
			}
		}
		gen, _ := strconv.ParseUint(r.URL.Query().Get("generation"), 10, 64)
		f.mu.Lock()
		data, cur := f.versions[f.gen-1], f.gen
		f.mu.Unlock()
		if gen != cur {
			reply(w, 409, api.Error{Error: "stale generation"})
			return
		}
		_, _ = w.Write(data[int64(n)*f.pieceSize : min(int64(n+1)*f.pieceSize, int64(len(data)))])
	})
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeCluster) addr() string { return strings.TrimPrefix(f.srv.URL, "http://") }

// newGeneration makes data the file's next generation (mu held).
func (f *fakeCluster) newGeneration(data []byte) {
	f.versions = append(f.versions, data)
	f.gen++
	f.held = map[uint32]bool{}
}

func (f *fakeCluster) schedule(limit int, from int64) api.Schedule {
	return f.scheduleOf(limit, from, false)
}

// scheduleOf answers a scheduling call; stale answers as a member one generation behind.
func (f *fakeCluster) scheduleOf(limit int, from int64, stale bool) api.Schedule {
	f.mu.Lock()
	defer f.mu.Unlock()
	gen := f.gen
	if stale {
		gen--
	}
	data := f.versions[gen-1]
	count := (int64(len(data)) + f.pieceSize - 1) / f.pieceSize
	s := api.Schedule{Status: api.TaskSuccess, Generation: gen, PieceSize: f.pieceSize,
		ContentLength: int64(len(data)), PieceCount: count, Pieces: []api.ScheduledPiece{}}
	for n := from; n < count && len(s.Pieces) < limit; n++ {
		if f.held[uint32(n)] {
			continue
		}
		p := data[n*f.pieceSize : min((n+1)*f.pieceSize, int64(len(data)))]
		s.Pieces = append(s.Pieces, api.ScheduledPiece{N: uint32(n), Size: int64(len(p)), Digest: peertest.SHA256(p),
			Sources: []api.PieceSource{{Kind: api.SourceMember, ID: "fake", Addr: f.addr()}}})
		if f.peerAddr != "" {
			last := &s.Pieces[len(s.Pieces)-1]
			last.Sources = append([]api.PieceSource{{Kind: api.SourcePeer, ID: "other-peer", Addr: f.peerAddr}}, last.Sources...)
		}
	}
	s.Done = len(f.held) >= int(count)
	return s
}

func (f *fakeCluster) asked(n int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dataAsked[n]
}

func (f *fakeCluster) count(route string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests[route]
}

func startFakePeer(t *testing.T, f *fakeCluster, mod func(*Config)) *Peer {
	t.Helper()
	cfg := Config{Supernodes: []string{f.addr()}, PeerAddr: "127.0.0.1:0", Logger: zaptest.NewLogger(t, zaptest.Level(testLogLevel()))}
	if mod != nil {
		mod(&cfg)
	}
	p, err := Start(testCtx(t, 10*time.Second), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func TestDownloadStartsOverOnANewGeneration(t *testing.T) {
	const pieceSize = 4 << 10
	v1, v2 := peertest.RandomBytes(31, 40*pieceSize), peertest.RandomBytes(32, 37*pieceSize+5)
	f := newFakeCluster(t, pieceSize, v1)
	f.onReport = func(f *fakeCluster) {
		if f.gen == 1 {
			f.newGeneration(v2) // the origin's file changes after the first report
		}
	}
	p := startFakePeer(t, f, nil)
	out := filepath.Join(t.TempDir(), "out")
	res, err := p.Download(testCtx(t, 30*time.Second), Request{URL: "http://origin.test/file", Output: out})
	if err != nil {
		t.Fatal(err)
	}
	checkOutput(t, out, v2)
	if res.Digest != peertest.SHA256(v2) || res.Bytes != int64(len(v2)) {
		t.Fatalf("result %+v: not the new generation's", res)
	}
}

func TestDownloadGivesUpWhenTheFileKeepsChanging(t *testing.T) {
	const pieceSize = 4 << 10
	f := newFakeCluster(t, pieceSize, peertest.RandomBytes(33, 40*pieceSize))
	seed := uint64(100)
	f.onReport = func(f *fakeCluster) {
		seed++
		f.newGeneration(peertest.RandomBytes(seed, 40*pieceSize))
	}
	p := startFakePeer(t, f, nil)
	dir := t.TempDir()
	_, err := p.Download(testCtx(t, 30*time.Second), Request{URL: "http://origin.test/file", Output: filepath.Join(dir, "out")})
	if !errors.Is(err, ErrGenerationChanged) {
		t.Fatalf("err %v, want ErrGenerationChanged", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("a failed download left %d files", len(entries))
	}
}

func TestDownloadAsksAndReportsInBatches(t *testing.T) {
	const pieceSize = 1 << 10
	data := peertest.RandomBytes(34, 400*pieceSize)
	f := newFakeCluster(t, pieceSize, data)
	p := startFakePeer(t, f, nil)
	out := filepath.Join(t.TempDir(), "out")
	if _, err := p.Download(testCtx(t, 30*time.Second), Request{URL: "http://origin.test/file", Output: out}); err != nil {
		t.Fatal(err)
	}
	checkOutput(t, out, data)
	asks, reports := f.count("GET /tasks/{id}/pieces"), f.count("PUT /tasks/{id}/pieces")
	t.Logf("400 pieces: %d scheduling calls, %d reports", asks, reports)
	// 4 workers ask for 16 pieces at a time and re-ask below 4 queued: at most one call per
	// 12 pieces, plus a few; reports go by 16 at least when pieces come this fast.
	if asks > 400/12+4 || reports > 400/16+4 {
		t.Fatalf("%d scheduling calls and %d reports for 400 pieces: not batched", asks, reports)
	}
}

func TestStreamKeepsItsWindow(t *testing.T) {
	const pieceSize = 2 << 10
	const workers = 3
	data := peertest.RandomBytes(35, 300*pieceSize+17)
	f := newFakeCluster(t, pieceSize, data)
	w := &slowWriter{delay: time.Millisecond}
	var ahead atomic.Int64 // how far past the written pieces a fetch went, at most
	f.onData = func(n int) int {
		if d := int64(n) - w.written.Load()/pieceSize; d > ahead.Load() {
			ahead.Store(d)
		}
		return 0
	}
	p := startFakePeer(t, f, func(c *Config) { c.Workers = workers })
	res, err := p.Download(testCtx(t, 30*time.Second), Request{URL: "http://origin.test/file", Stream: w})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(w.buf.Bytes(), data) || res.Digest != peertest.SHA256(data) {
		t.Fatalf("streamed %d bytes that differ from the file's %d", w.buf.Len(), len(data))
	}
	if reports := f.count("PUT /tasks/{id}/pieces"); reports != 0 {
		t.Fatalf("a streaming peer reported pieces %d times: it cannot serve them", reports)
	}
	if got := ahead.Load(); got >= 2*workers {
		t.Fatalf("a piece %d past the last one written was fetched: the window is %d", got, 2*workers)
	}
}

// slowWriter is a slow stdout.
type slowWriter struct {
	buf     bytes.Buffer
	written atomic.Int64
	delay   time.Duration
}

func (w *slowWriter) Write(p []byte) (int, error) {
	time.Sleep(w.delay)
	n, err := w.buf.Write(p)
	w.written.Add(int64(n))
	return n, err
}

func TestHeartbeatsFollowAdviceAndRegisterAgain(t *testing.T) {
	f := newFakeCluster(t, 1<<10, peertest.RandomBytes(36, 10<<10))
	p := startFakePeer(t, f, func(c *Config) { c.HeartbeatInterval = 20 * time.Millisecond })
	if p.Uploads().Slots() != DefaultUploadSlots {
		t.Fatalf("slots %d before any advice, want %d", p.Uploads().Slots(), DefaultUploadSlots)
	}
	out := filepath.Join(t.TempDir(), "out")
	if _, err := p.Download(testCtx(t, 10*time.Second), Request{URL: "http://origin.test/file", Output: out}); err != nil {
		t.Fatal(err)
	}
	if !tc.Eventually(5*time.Second, func() bool { return p.Uploads().Slots() == 3 }) {
		t.Fatalf("slots %d, want the advised 3", p.Uploads().Slots())
	}
	tasksBefore, reportsBefore := f.count("POST /tasks"), f.count("PUT /tasks/{id}/pieces")
	f.mu.Lock()
	f.expired, f.held = true, map[uint32]bool{}
	f.mu.Unlock()
	// The peer registers again, joins its task again and reports the pieces it holds.
	if !tc.Eventually(5*time.Second, func() bool {
		return f.count("POST /peers") == 2 && f.count("POST /tasks") > tasksBefore && f.count("PUT /tasks/{id}/pieces") > reportsBefore
	}) {
		t.Fatalf("after a 404 heartbeat: %d registrations, want 2 and the task joined again", f.count("POST /peers"))
	}
	f.mu.Lock()
	held := len(f.held)
	f.mu.Unlock()
	if held != 10 {
		t.Fatalf("after registering again the peer reported %d pieces, want its 10", held)
	}
}
