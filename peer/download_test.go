package peer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/dfly-ha/dfha/peer/peertest"
	"github.com/dfly-ha/dfha/sdk/api"
	tc "github.com/dfly-ha/dfha/test/cluster"
)

// startPeer starts a peer on loopback that knows one member of the cluster; Cleanup
// closes it.
func startPeer(t *testing.T, c *tc.Cluster, member int, mod func(*Config)) *Peer {
	t.Helper()
	cfg := Config{Supernodes: []string{c.HTTPAddr(member)}, PeerAddr: "127.0.0.1:0",
		Logger: zaptest.NewLogger(t, zaptest.Level(testLogLevel()))}
	if mod != nil {
		mod(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("close peer: %v", err)
		}
	})
	return p
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// checkOutput fails unless path holds want and nothing else was left in its directory.
func checkOutput(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: %d bytes that differ from the origin's %d", path, len(got), len(want))
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("%s: directory holds %d entries, want the output only", filepath.Dir(path), len(entries))
	}
}

// apiRequests sums, over every member, the API requests peers make while downloading:
// scheduling, reports and heartbeats.
func apiRequests(t *testing.T, c *tc.Cluster) (total float64, byRoute map[string]float64) {
	t.Helper()
	byRoute = map[string]float64{}
	for _, i := range c.Running() {
		resp, err := http.Get("http://" + c.HTTPAddr(i) + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			line := sc.Text()
			if !strings.HasPrefix(line, "dfha_api_requests_total{") {
				continue
			}
			for _, route := range []string{"GET /tasks/{id}/pieces", "PUT /tasks/{id}/pieces", "PUT /peers/{id}/heartbeat"} {
				method, path, _ := strings.Cut(route, " ")
				if strings.Contains(line, `method="`+method+`"`) && strings.Contains(line, `route="`+path+`"}`) {
					v, _ := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
					byRoute[route] += v
					total += v
				}
			}
		}
		resp.Body.Close()
	}
	return total, byRoute
}

func TestDownloadThreePeersGetTheOriginsBytes(t *testing.T) {
	c := peertest.NewCluster(t)
	o := peertest.NewOrigin(t)
	data := peertest.RandomBytes(10, 2<<20+12345) // 33 pieces, the last one short
	url := o.Add("/files/three.bin", data)
	pieces := (len(data) + peertest.PieceSize - 1) / peertest.PieceSize
	// The cluster caches the file first, so that the budget below leaves out the cold
	// start: polling with backoff until the owner has probed the origin, then answers of
	// a few pieces each while the pieces are being cached. Neither depends on the number
	// of pieces.
	warmTask(t, c, url)
	before, _ := apiRequests(t, c)

	results := make([]Result, 3)
	paths := make([]string, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i := range 3 {
		p := startPeer(t, c, i, nil)
		paths[i] = filepath.Join(t.TempDir(), "out.bin")
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = p.Download(testCtx(t, 60*time.Second), Request{URL: url, Output: paths[i]})
		}()
	}
	wg.Wait()
	for i := range 3 {
		if errs[i] != nil {
			t.Fatalf("peer %d: %v", i, errs[i])
		}
		checkOutput(t, paths[i], data)
		r := results[i]
		if r.Bytes != int64(len(data)) || r.Digest != peertest.SHA256(data) || r.BytesReceived < r.Bytes ||
			r.PiecesFromPeers+r.PiecesFromSupernodes != int64(pieces) || r.TaskID == "" {
			t.Fatalf("peer %d: result %+v", i, r)
		}
		t.Logf("peer %d: %+v", i, r)
	}
	if sent := o.BytesSent(); sent > int64(len(data))*3/2 {
		t.Errorf("the origin sent %d bytes for a file of %d: want about one copy", sent, len(data))
	}
	total, byRoute := apiRequests(t, c)
	perPiece := (total - before) / float64(3*pieces)
	t.Logf("API requests per piece downloaded: %.3f (%v, %.0f before the downloads)", perPiece, byRoute, before)
	// The budget of DESIGN.md is 0.25 per piece for long downloads. These are short (33
	// pieces each, under a second) and start together: each peer makes at least 3
	// scheduling calls (16 pieces per answer, re-asked below 4 queued) and 2 or 3 reports,
	// and the scheduler hands a piece that only members hold to one peer at a time, so the
	// others get answers with few or no pieces until it is reported (200ms). Measured 0.19
	// to 0.36 over 25 runs, the same before and after the fixes of the reporter and of the
	// per-piece backoff; 0.5 is stable and still catches a loop or a call per piece (1).
	if perPiece > 0.5 {
		t.Errorf("%.3f API requests per piece downloaded (%v): over the budget", perPiece, byRoute)
	}
}

// warmTask registers url's task and waits until the cluster has cached all of it.
func warmTask(t *testing.T, c *tc.Cluster, url string) {
	t.Helper()
	ctx := testCtx(t, 30*time.Second)
	cl := c.Client()
	defer cl.Close()
	if _, err := cl.RegisterPeer(ctx, api.RegisterPeerRequest{ID: "warm", IP: "127.0.0.1", Port: 1, Hostname: "warm"}); err != nil {
		t.Fatal(err)
	}
	defer cl.DeletePeer(ctx, "warm") //nolint:errcheck
	task, _, err := cl.RegisterTask(ctx, api.RegisterTaskRequest{URL: url, PeerID: "warm"})
	if err != nil {
		t.Fatal(err)
	}
	if !tc.Eventually(20*time.Second, func() bool {
		got, err := cl.GetTask(ctx, task.TaskID)
		return err == nil && got.Status == api.TaskSuccess
	}) {
		t.Fatal("the cluster did not cache the file")
	}
}

func TestDownloadCatchesACorruptSource(t *testing.T) {
	c := peertest.NewCluster(t)
	o := peertest.NewOrigin(t)
	data := peertest.RandomBytes(11, 20*peertest.PieceSize)
	url := o.Add("/files/corrupt.bin", data)
	ctx := testCtx(t, 60*time.Second)

	// A "peer" that claims every piece and serves garbage: its own upload server on a
	// store whose file is random bytes.
	bad := newFakeSource(t, peertest.RandomBytes(12, len(data)), peertest.PieceSize)
	cl := c.Client()
	defer cl.Close()
	if _, err := cl.RegisterPeer(ctx, api.RegisterPeerRequest{ID: "liar", IP: "127.0.0.1", Port: bad.up.Addr().Port, Hostname: "liar"}); err != nil {
		t.Fatal(err)
	}
	task, _, err := cl.RegisterTask(ctx, api.RegisterTaskRequest{URL: url, PeerID: "liar"})
	if err != nil {
		t.Fatal(err)
	}
	bad.setTask(t, task.TaskID, 20)
	if !tc.Eventually(30*time.Second, func() bool {
		got, err := cl.GetTask(ctx, task.TaskID)
		return err == nil && got.Status == api.TaskSuccess
	}) {
		t.Fatal("the cluster did not cache the file")
	}
	if _, err := cl.Heartbeat(ctx, "liar", api.Heartbeat{}); err != nil {
		t.Fatal(err)
	}
	err = cl.ReportPieceBatch(ctx, task.TaskID, api.PieceReportBatch{PeerID: "liar",
		Reports: []api.PieceReportItem{{Pieces: "0-19", Status: api.StatusSuccess}}})
	if err != nil {
		t.Fatal(err)
	}

	p := startPeer(t, c, 1, nil)
	out := filepath.Join(t.TempDir(), "out.bin")
	res, err := p.Download(ctx, Request{URL: url, Output: out})
	if err != nil {
		t.Fatal(err)
	}
	checkOutput(t, out, data)
	if bad.up.Served() == 0 {
		t.Fatal("the corrupt source was never asked: the test proves nothing")
	}
	if res.BytesReceived <= res.Bytes {
		t.Errorf("bytes_received %d: the corrupt bytes were not counted (file %d)", res.BytesReceived, res.Bytes)
	}
	t.Logf("corrupt source served %d pieces; result %+v", bad.up.Served(), res)
}

// fakeSource is an upload server over a file of a peer's choosing (the test's liar).
type fakeSource struct {
	store *Store
	up    *UploadServer
	path  string
	size  int64
	piece int64
}

func newFakeSource(t *testing.T, data []byte, pieceSize int64) *fakeSource {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fake")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	s := NewStore()
	t.Cleanup(s.Close)
	return &fakeSource{store: s, up: startUploads(t, UploadConfig{Pieces: s}), path: path,
		size: int64(len(data)), piece: pieceSize}
}

func (f *fakeSource) setTask(t *testing.T, taskID string, pieces int) {
	t.Helper()
	file, err := os.Open(f.path)
	if err != nil {
		t.Fatal(err)
	}
	f.store.Add(taskID, file, f.piece, f.size)
	for n := range pieces {
		f.store.MarkHeld(taskID, uint32(n))
	}
}

func TestDownloadStreamWritesInOrderAndNoFile(t *testing.T) {
	c := peertest.NewCluster(t)
	o := peertest.NewOrigin(t)
	data := peertest.RandomBytes(13, 3<<20+777)
	url := o.Add("/files/stream.bin", data)
	dir := t.TempDir()
	p := startPeer(t, c, 2, func(cfg *Config) { cfg.Workers = 3 })
	var buf bytes.Buffer
	res, err := p.Download(testCtx(t, 60*time.Second), Request{URL: url, Stream: &buf, Output: filepath.Join(dir, "never")})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), data) {
		t.Fatalf("streamed %d bytes that differ from the origin's %d", buf.Len(), len(data))
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("stream mode wrote %d files", len(entries))
	}
	if res.Digest != peertest.SHA256(data) || res.Bytes != int64(len(data)) {
		t.Fatalf("result %+v", res)
	}
	// The streaming peer advertises nothing: it holds no piece in the cluster's map (it
	// is the task's only peer), once the leader has applied everything it wrote.
	f := c.Member(c.Leader()).Node().FSM()
	if err := f.WaitApplied(testCtx(t, 10*time.Second), p.Client().LastIndex()); err != nil {
		t.Fatal(err)
	}
	if held := f.HeldCount(res.TaskID); held != 0 {
		t.Fatalf("the piece map records %d pieces for the task; a streaming peer advertises none", held)
	}
	for n := range uint32((len(data) + peertest.PieceSize - 1) / peertest.PieceSize) {
		if f.PeerHolds(res.TaskID, p.ID(), n) {
			t.Fatalf("the streaming peer is listed as holding piece %d", n)
		}
	}
	got, err := p.Client().GetPeer(testCtx(t, 10*time.Second), p.ID())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stream result %+v; peer %+v", res, got)
}

func TestDownloadChecksTheExpectedDigest(t *testing.T) {
	c := peertest.NewCluster(t)
	o := peertest.NewOrigin(t)
	data := peertest.RandomBytes(14, 5*peertest.PieceSize+1)
	url := o.Add("/files/digest.bin", data)
	p := startPeer(t, c, 0, nil)
	md := md5.Sum(data)
	good := "md5:" + hex.EncodeToString(md[:])
	bad := "md5:" + strings.Repeat("0", 32)

	dir := t.TempDir()
	out := filepath.Join(dir, "bad.bin")
	_, err := p.Download(testCtx(t, 60*time.Second), Request{URL: url, Output: out, Digest: bad})
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("wrong md5: %v, want ErrDigestMismatch", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("a failed download left %d files behind", len(entries))
	}
	out = filepath.Join(t.TempDir(), "good.bin")
	if _, err := p.Download(testCtx(t, 60*time.Second), Request{URL: url, Output: out, Digest: good}); err != nil {
		t.Fatal(err)
	}
	checkOutput(t, out, data)
	// The same task again on the same peer, which holds it already.
	out = filepath.Join(t.TempDir(), "again.bin")
	if _, err := p.Download(testCtx(t, 60*time.Second), Request{URL: url, Output: out}); err != nil {
		t.Fatal(err)
	}
	checkOutput(t, out, data)
	out = filepath.Join(t.TempDir(), "sha.bin")
	if _, err := p.Download(testCtx(t, 60*time.Second), Request{URL: url, Output: out, Digest: peertest.SHA256(data)}); err != nil {
		t.Fatal(err)
	}
	checkOutput(t, out, data)
}

func TestDownloadSurvivesTheLeadersDeath(t *testing.T) {
	for _, leaderOwns := range []bool{false, true} {
		name := "the leader does not own the task"
		if leaderOwns {
			// The leader holds the only cached copy (no replicas): once it is dead, the
			// next owner fetches the complete task from the origin again.
			name = "the leader owns the task"
		}
		t.Run(name, func(t *testing.T) { testLeadersDeath(t, leaderOwns) })
	}
}

func testLeadersDeath(t *testing.T, leaderOwns bool) {
	c := peertest.NewCluster(t)
	o := peertest.NewOrigin(t)
	data := peertest.RandomBytes(15, 48*peertest.PieceSize)
	leader := c.Leader()
	follower := (leader + 1) % 3
	leaderID := c.Member(leader).ID()
	url := ownedBy(t, c, o, data, func(owner string) bool { return (owner == leaderID) == leaderOwns })
	const workers = 4
	// 1 MiB/s: the 3 MiB download takes about three seconds; the leader dies after one.
	p := startPeer(t, c, follower, func(cfg *Config) { cfg.DownloadLimit = 1 << 20; cfg.Workers = workers })
	out := filepath.Join(t.TempDir(), "out.bin")
	var progressed atomic.Int64
	done := make(chan struct{})
	var res Result
	var err error
	go func() {
		defer close(done)
		res, err = p.Download(testCtx(t, 90*time.Second), Request{URL: url, Output: out,
			Progress: func(n, _ int64) { progressed.Store(n) }})
	}()
	if !tc.Eventually(30*time.Second, func() bool { return progressed.Load() >= int64(len(data))/4 }) {
		t.Fatal("no progress")
	}
	c.Kill(leader)
	<-done
	if err != nil {
		t.Fatal(err)
	}
	checkOutput(t, out, data)
	t.Logf("result after killing the leader: %+v", res)
	// Pieces in flight from the dead leader are lost, at most one per worker; more means
	// the download started over.
	if limit := res.Bytes + workers*peertest.PieceSize; res.BytesReceived > limit {
		t.Fatalf("received %d bytes for %d, more than %d: the download started over", res.BytesReceived, res.Bytes, limit)
	}
	// When the pieces keep coming from a live owner, the peer reports one at least every
	// ReportInterval (200ms), to the leader it knows, long before an election (500ms at
	// least) can tell it of another: that write fails over. When the dead leader was the
	// only source, nothing may be reported until the next owner has the file again, and
	// the peer may learn the new leader from a read first: no count to assert then.
	if !leaderOwns && res.SupernodeFailovers == 0 {
		t.Errorf("the leader died mid-way but no failover was counted: %+v", res)
	}
}

// ownedBy serves data at a URL whose task's owner satisfies want, and returns the URL.
func ownedBy(t *testing.T, c *tc.Cluster, o *peertest.Origin, data []byte, want func(owner string) bool) string {
	t.Helper()
	ctx := testCtx(t, 30*time.Second)
	cl := c.Client()
	defer cl.Close()
	if _, err := cl.RegisterPeer(ctx, api.RegisterPeerRequest{ID: "probe", IP: "127.0.0.1", Port: 1, Hostname: "probe"}); err != nil {
		t.Fatal(err)
	}
	defer cl.DeletePeer(ctx, "probe") //nolint:errcheck
	for i := range 40 {
		url := o.Add(fmt.Sprintf("/files/owned-%d.bin", i), data)
		task, _, err := cl.RegisterTask(ctx, api.RegisterTaskRequest{URL: url, PeerID: "probe"})
		if err != nil {
			t.Fatal(err)
		}
		if len(task.Owners) > 0 && want(task.Owners[0]) {
			return url
		}
	}
	t.Fatal("no URL tried has the owner wanted")
	return ""
}

func testLogLevel() zapcore.Level {
	if os.Getenv("PEER_TEST_DEBUG") != "" {
		return zap.DebugLevel
	}
	return zap.WarnLevel
}
