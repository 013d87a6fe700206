package test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dfly-ha/dfha/cdn"
	"github.com/dfly-ha/dfha/cluster/member"
	"github.com/dfly-ha/dfha/peer/peertest"
	"github.com/dfly-ha/dfha/sdk"
	"github.com/dfly-ha/dfha/sdk/api"
	tc "github.com/dfly-ha/dfha/test/cluster"
)

// origin is a real HTTP origin that serves files from memory (Range, HEAD, ETag) and counts
// the body bytes it sends per path.
type origin struct {
	srv   *httptest.Server
	mu    sync.Mutex
	files map[string][]byte
	sent  map[string]int64
	// chunkDelay slows the body down: a pause after every 16 KiB (0: full speed);
	// pathDelay does so for one path only (guarded by mu).
	chunkDelay atomic.Int64 // a time.Duration
	pathDelay  map[string]time.Duration
	// afterBytes, when set, is called with the bytes sent so far for a path; when it
	// returns true the connection is dropped (tests change the file mid-fetch with it).
	afterBytes func(path string, sent int64) bool
}

func newOrigin(t *testing.T) *origin {
	o := &origin{files: map[string][]byte{}, sent: map[string]int64{}}
	o.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.mu.Lock()
		data, ok := o.files[r.URL.Path]
		o.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		sum := sha256.Sum256(data)
		w.Header().Set("ETag", `"`+hex.EncodeToString(sum[:8])+`"`)
		http.ServeContent(&countingWriter{ResponseWriter: w, o: o, path: r.URL.Path}, r, "", time.Unix(1e9, 0), bytes.NewReader(data))
	}))
	t.Cleanup(o.srv.Close)
	return o
}

func (o *origin) add(path string, data []byte) string {
	o.mu.Lock()
	o.files[path] = data
	o.mu.Unlock()
	return o.srv.URL + path
}

func (o *origin) bytesSent(path string) int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.sent[path]
}

type countingWriter struct {
	http.ResponseWriter
	o    *origin
	path string
}

func (w *countingWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		chunk := p
		delay := time.Duration(w.o.chunkDelay.Load())
		w.o.mu.Lock()
		if d, ok := w.o.pathDelay[w.path]; ok {
			delay = d
		}
		w.o.mu.Unlock()
		if delay > 0 && len(chunk) > 16<<10 {
			chunk = chunk[:16<<10]
		}
		n, err := w.ResponseWriter.Write(chunk)
		written += n
		w.o.mu.Lock()
		w.o.sent[w.path] += int64(n)
		total, hook := w.o.sent[w.path], w.o.afterBytes
		w.o.mu.Unlock()
		if hook != nil && hook(w.path, total) {
			panic(http.ErrAbortHandler) // drop the connection in the middle of the body
		}
		if err != nil {
			return written, err
		}
		p = p[len(chunk):]
		if delay > 0 {
			if f, ok := w.ResponseWriter.(http.Flusher); ok {
				f.Flush()
			}
			time.Sleep(delay)
		}
	}
	return written, nil
}

func randomBytes(seed uint64, n int) []byte { return peertest.RandomBytes(seed, n) }

// waitTask polls a task until cond holds (bounded).
func waitTask(t *testing.T, c *tc.Cluster, id string, timeout time.Duration, cond func(api.Task) bool) api.Task {
	t.Helper()
	cl := c.Client()
	var last api.Task
	if !tc.Eventually(timeout, func() bool {
		ctx := ctxT(t, 5*time.Second)
		task, err := cl.GetTask(ctx, id)
		if err != nil {
			return false
		}
		last = *task
		return cond(last)
	}) {
		t.Fatalf("task %s: condition not reached within %s; last seen %+v (cached %v)", id, timeout, last, last.PiecesCached)
	}
	return last
}

// registerURL registers peer "p" and a task for url as that peer.
func registerURL(t *testing.T, ctx context.Context, cl *sdk.Client, url string) *api.Task {
	t.Helper()
	mustRegisterPeer(t, ctx, cl, "p", 1)
	task, _, err := cl.RegisterTask(ctx, api.RegisterTaskRequest{URL: url, PeerID: "p"})
	if err != nil {
		t.Fatal(err)
	}
	return task
}

// checkFile reads every piece of a task through addr and compares it with want.
func checkFile(t *testing.T, addr, id string, want []byte, pieceSize int) {
	t.Helper()
	for n := 0; n*pieceSize < len(want); n++ {
		status, got, _ := readPiece(t, addr, id, n)
		if status != 200 || !bytes.Equal(got, want[n*pieceSize:min((n+1)*pieceSize, len(want))]) {
			t.Fatalf("piece %d through %s: status %d, %d bytes differ from the origin's", n, addr, status, len(got))
		}
	}
}

// readPiece reads piece n of a task from one member.
func readPiece(t *testing.T, addr, taskID string, n int) (int, []byte, http.Header) {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://%s/tasks/%s/pieces/%d/data", addr, taskID, n))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, p, resp.Header
}

func TestCDNFetchesEachURLOnceAndServesPiecesFromEveryMember(t *testing.T) {
	const pieceSize = 64 << 10
	c := tc.New(t, 3, tc.Options{Configure: func(_ int, cfg *member.Config) { cfg.PieceSize = pieceSize }})
	ctx := ctxT(t, 120*time.Second)
	o := newOrigin(t)
	rng := rand.New(rand.NewPCG(1, 2))
	const files = 30
	data := make([][]byte, files)
	urls := make([]string, files)
	for i := range data {
		data[i] = make([]byte, 100<<10+rng.IntN(600<<10)) // 100 KiB .. 700 KiB: 2..11 pieces
		for j := range data[i] {
			data[i][j] = byte(rng.Uint32())
		}
		urls[i] = o.add(fmt.Sprintf("/files/f%02d.bin", i), data[i])
	}
	// One peer per member, and every URL registered on all three members at once.
	var wg sync.WaitGroup
	errs := make(chan error, 3*files)
	perMember := [3][files]string{} // each member's answer, written by its own goroutines
	for m := 0; m < 3; m++ {
		mc := clientAt(t, c.HTTPAddr(m))
		peer := fmt.Sprintf("peer-%d", m)
		mustRegisterPeer(t, ctx, mc, peer, m)
		for i := 0; i < files; i++ {
			wg.Add(1)
			go func(m, i int) {
				defer wg.Done()
				task, _, err := mc.RegisterTask(ctx, api.RegisterTaskRequest{URL: urls[i], PeerID: peer})
				if err != nil {
					errs <- err
					return
				}
				if task.Status == "" || len(task.TaskID) != 64 {
					errs <- fmt.Errorf("registration answer %+v", task)
				}
				perMember[m][i] = task.TaskID
			}(m, i)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	taskIDs := perMember[0][:]
	for m := 1; m < 3; m++ {
		if perMember[m] != perMember[0] {
			t.Fatalf("member %d answered other task IDs than member 0 for the same URLs", m)
		}
	}

	cl := c.Client()
	if !tc.Eventually(60*time.Second, func() bool {
		for _, id := range taskIDs {
			task, err := cl.GetTask(ctx, id)
			if err != nil || task.Status != "success" {
				return false
			}
		}
		return true
	}) {
		for _, id := range taskIDs {
			task, _ := cl.GetTask(ctx, id)
			t.Logf("task %s: %+v", id, task)
		}
		t.Fatal("not every task was cached within 60s")
	}

	owners := map[string]int{}
	f := c.Member(0).Node().FSM()
	for i, id := range taskIDs {
		path := fmt.Sprintf("/files/f%02d.bin", i)
		if got, want := o.bytesSent(path), int64(len(data[i])); got != want {
			t.Errorf("%s: the origin sent %d bytes for a %d-byte file (want exactly one copy)", path, got, want)
		}
		ti, _ := f.Task(id)
		owners[ti.Owner]++
		if task, err := cl.GetTask(ctx, id); err != nil || len(task.Owners) != 1 || task.Owners[0] != ti.Owner {
			t.Errorf("GET /tasks/%s shows owners %v, but %s fetched it", id, task.Owners, ti.Owner)
		}
		wantPieces := int64((len(data[i]) + pieceSize - 1) / pieceSize)
		if ti.ContentLength != int64(len(data[i])) || ti.PieceCount != wantPieces || ti.PiecesCached != wantPieces {
			t.Errorf("task %s: length %d pieces %d cached %d, want %d, %d, %d", id, ti.ContentLength, ti.PieceCount, ti.PiecesCached, len(data[i]), wantPieces, wantPieces)
		}
	}
	if len(owners) != 3 {
		t.Errorf("fetches were not spread over the 3 members: %v", owners)
	}
	t.Logf("fetches per owner: %v", owners)

	// Every piece, read back from every member, is the origin's bytes.
	checkAllPieces := func() {
		t.Helper()
		for m := 0; m < 3; m++ {
			for i, id := range taskIDs {
				for n := 0; n*pieceSize < len(data[i]); n++ {
					want := data[i][n*pieceSize : min((n+1)*pieceSize, len(data[i]))]
					status, got, h := readPiece(t, c.HTTPAddr(m), id, n)
					sum := sha256.Sum256(want)
					if status != 200 || !bytes.Equal(got, want) || h.Get(cdn.HeaderPieceDigest) != "sha256:"+hex.EncodeToString(sum[:]) {
						t.Fatalf("member %d, task %d, piece %d: status %d, %d bytes, digest %s; want the origin's %d bytes",
							m, i, n, status, len(got), h.Get(cdn.HeaderPieceDigest), len(want))
					}
				}
			}
		}
	}
	c.WaitConverged(15 * time.Second) // every member has applied the owners' last commits
	checkAllPieces()

	// A restarted member serves its cache: the origin sends nothing more.
	var before int64
	for i := range data {
		before += o.bytesSent(fmt.Sprintf("/files/f%02d.bin", i))
	}
	c.Kill(1)
	c.Restart(1)
	c.WaitForLeader(15 * time.Second)
	c.WaitConverged(15 * time.Second)
	checkAllPieces()
	var after int64
	for i := range data {
		after += o.bytesSent(fmt.Sprintf("/files/f%02d.bin", i))
	}
	if after != before {
		t.Fatalf("a restart made the origin send %d more bytes", after-before)
	}

	// Bad piece requests are refused and touch nothing.
	id := taskIDs[0]
	for _, bad := range []struct {
		path string
		want int
	}{
		{"/tasks/" + id + "/pieces/abc/data", 400},
		{"/tasks/" + id + "/pieces/-1/data", 400},
		{"/tasks/" + id + "/pieces/99999999/data", 400},
		{"/tasks/" + id + "/pieces/1000/data", 404},
		{"/tasks/" + id + "/pieces/0/data?generation=7", 409},
		{"/tasks/" + id + "/pieces/0/data?generation=x", 400},
		{"/tasks/" + strings.Repeat("0", 64) + "/pieces/0/data", 404},
		{"/tasks/..%2F..%2Fetc%2Fpasswd/pieces/0/data", 400},
	} {
		if got, msg := rawCall(t, "GET", "http://"+c.HTTPAddr(2)+bad.path, "", nil); got != bad.want {
			t.Errorf("GET %s: %d (%s), want %d", bad.path, got, msg, bad.want)
		}
	}
}

func TestOwnerKilledMidFetchAnotherMemberCompletesIt(t *testing.T) {
	const pieceSize = 64 << 10
	c := tc.New(t, 3, tc.Options{Configure: func(_ int, cfg *member.Config) { cfg.PieceSize = pieceSize }})
	ctx := ctxT(t, 90*time.Second)
	o := newOrigin(t)
	o.chunkDelay.Store(int64(8 * time.Millisecond)) // about 2 MiB/s: the 3 MiB file takes 1.5 s
	data := randomBytes(7, 3<<20)
	url := o.add("/big.bin", data)
	cl := c.Client()
	task := registerURL(t, ctx, cl, url)
	// Kill the owner once a few pieces are committed, well before the end.
	waitTask(t, c, task.TaskID, 20*time.Second, func(x api.Task) bool { return x.PiecesCached != nil && *x.PiecesCached >= 4 })
	first, _ := c.Member(c.Running()[0]).Node().FSM().Task(task.TaskID)
	owner := -1
	for _, i := range c.Running() {
		if c.Member(i).ID() == first.Owner {
			owner = i
		}
	}
	if owner < 0 {
		t.Fatalf("no running member is the owner %q", first.Owner)
	}
	c.Kill(owner)
	done := waitTask(t, c, task.TaskID, 60*time.Second, func(x api.Task) bool { return x.Status == "success" })
	c.WaitConverged(15 * time.Second)
	var survivor int
	for _, i := range c.Running() {
		survivor = i
	}
	now, _ := c.Member(survivor).Node().FSM().Task(task.TaskID)
	if now.Owner == first.Owner {
		t.Fatalf("the dead member %s still owns the task", now.Owner)
	}
	if *done.PiecesCached != done.PieceCount || done.ContentLength != int64(len(data)) {
		t.Fatalf("completed task: %+v", done)
	}
	checkFile(t, c.HTTPAddr(survivor), task.TaskID, data, pieceSize)
	// At most one copy plus what the dead owner had read but not committed (its digests
	// are committed every 8 pieces or 100 ms) and the resume's overlap.
	sent, limit := o.bytesSent("/big.bin"), int64(len(data))+16*pieceSize
	t.Logf("owner %s killed; %s completed; origin sent %d bytes for %d (%.2f copies)", first.Owner, now.Owner, sent, len(data), float64(sent)/float64(len(data)))
	if sent > limit {
		t.Fatalf("origin sent %d bytes, more than one copy plus the pieces in flight (%d)", sent, limit)
	}
}

func TestOriginFileChangingMidFetchStartsANewGeneration(t *testing.T) {
	const pieceSize = 64 << 10
	c := tc.New(t, 3, tc.Options{Configure: func(_ int, cfg *member.Config) { cfg.PieceSize = pieceSize }})
	ctx := ctxT(t, 90*time.Second)
	o := newOrigin(t)
	o.chunkDelay.Store(int64(2 * time.Millisecond))
	v1, v2 := randomBytes(1, 1<<20), randomBytes(2, 1<<20+12345)
	url := o.add("/moving.bin", v1)
	var changed atomic.Bool
	o.afterBytes = func(path string, sent int64) bool {
		// A third of the way through version 1, version 2 replaces it and the connection
		// breaks: the resumed read must notice the change.
		if sent > 300<<10 && changed.CompareAndSwap(false, true) {
			o.mu.Lock() // not held while the hook runs
			o.files["/moving.bin"] = v2
			o.mu.Unlock()
			return true
		}
		return false
	}
	cl := c.Client()
	task := registerURL(t, ctx, cl, url)
	done := waitTask(t, c, task.TaskID, 60*time.Second, func(x api.Task) bool { return x.Status == "success" })
	c.WaitConverged(15 * time.Second)
	if done.Generation < 2 || done.ContentLength != int64(len(v2)) {
		t.Fatalf("after the change: generation %d, length %d; want a new generation of %d bytes", done.Generation, done.ContentLength, len(v2))
	}
	for i := 0; i < 3; i++ {
		checkFile(t, c.HTTPAddr(i), task.TaskID, v2, pieceSize) // never a mix of the two versions
	}
	// A piece of the old generation is refused.
	if got, _ := rawCall(t, "GET", fmt.Sprintf("http://%s/tasks/%s/pieces/0/data?generation=1", c.HTTPAddr(0), task.TaskID), "", nil); got != 409 {
		t.Fatalf("piece of generation 1 after the change: %d, want 409", got)
	}
}

func TestDeletedTaskLeavesEveryMembersCache(t *testing.T) {
	const pieceSize = 64 << 10
	dirs := make([]string, 3)
	c := tc.New(t, 3, tc.Options{Configure: func(i int, cfg *member.Config) { cfg.PieceSize = pieceSize; dirs[i] = cfg.DataDir }})
	ctx := ctxT(t, 60*time.Second)
	o := newOrigin(t)
	data := randomBytes(9, 500<<10)
	url := o.add("/del.bin", data)
	cl := c.Client()
	task := registerURL(t, ctx, cl, url)
	waitTask(t, c, task.TaskID, 30*time.Second, func(x api.Task) bool { return x.Status == "success" })
	c.WaitConverged(15 * time.Second)
	for m := 0; m < 3; m++ { // reading through every member puts a copy nowhere but the owner
		checkFile(t, c.HTTPAddr(m), task.TaskID, data, pieceSize)
	}
	taskDir := func(m int) string { return filepath.Join(dirs[m], "cdn", task.TaskID[:2], task.TaskID) }
	cached := 0
	for m := range dirs {
		if _, err := os.Stat(taskDir(m)); err == nil {
			cached++
		}
	}
	if cached == 0 {
		t.Fatal("no member holds the task's pieces on disk")
	}
	if err := cl.DeleteTask(ctx, task.TaskID); err != nil {
		t.Fatal(err)
	}
	if !tc.Eventually(20*time.Second, func() bool {
		for m := range dirs {
			if _, err := os.Stat(taskDir(m)); err == nil {
				return false
			}
		}
		return true
	}) {
		t.Fatal("a deleted task's pieces are still on a member's disk")
	}
	if got, _ := rawCall(t, "GET", fmt.Sprintf("http://%s/tasks/%s/pieces/0/data", c.HTTPAddr(0), task.TaskID), "", nil); got != 404 {
		t.Fatalf("piece of a deleted task: %d, want 404", got)
	}
}

func TestPrivateTaskNeedsEachPeersOwnCredentials(t *testing.T) {
	const pieceSize = 64 << 10
	c := tc.New(t, 3, tc.Options{Configure: func(_ int, cfg *member.Config) { cfg.PieceSize = pieceSize }})
	ctx := ctxT(t, 60*time.Second)
	data := randomBytes(11, 300<<10)
	const secret = "Bearer good-secret"
	var originHits atomic.Int64
	private := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		originHits.Add(1)
		if r.Header.Get("Authorization") != secret {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		http.ServeContent(w, r, "", time.Unix(1e9, 0), bytes.NewReader(data))
	}))
	defer private.Close()
	url := private.URL + "/private.bin"
	cl := c.Client()
	mustRegisterPeer(t, ctx, cl, "alice", 1)
	mustRegisterPeer(t, ctx, cl, "mallory", 2)
	task, _, err := cl.RegisterTask(ctx, api.RegisterTaskRequest{URL: url, PeerID: "alice", Headers: map[string]string{"Authorization": secret}})
	if err != nil {
		t.Fatal(err)
	}
	waitTask(t, c, task.TaskID, 30*time.Second, func(x api.Task) bool { return x.Status == "success" })
	c.WaitConverged(15 * time.Second)

	// Knowing the URL is not enough: wrong or missing credentials are refused by the origin.
	for _, h := range []map[string]string{nil, {"Authorization": "Bearer guess"}} {
		_, _, err := cl.RegisterTask(ctx, api.RegisterTaskRequest{URL: url, PeerID: "mallory", Headers: h})
		if !errors.Is(err, sdk.ErrUnauthorized) {
			t.Fatalf("registration with headers %v: %v, want unauthorized", h, err)
		}
	}
	for m := 0; m < 3; m++ {
		for _, q := range []string{"", "?peer_id=mallory", "?peer_id=nobody"} {
			if got, _ := rawCall(t, "GET", fmt.Sprintf("http://%s/tasks/%s/pieces/0/data%s", c.HTTPAddr(m), task.TaskID, q), "", nil); got != 403 {
				t.Fatalf("member %d: private piece with %q: %d, want 403", m, q, got)
			}
		}
		resp, err := http.Get(fmt.Sprintf("http://%s/tasks/%s/pieces/0/data?peer_id=alice", c.HTTPAddr(m), task.TaskID))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.Equal(got, data[:pieceSize]) {
			t.Fatalf("member %d: alice's piece: %d, %d bytes", m, resp.StatusCode, len(got))
		}
		// The credentials never come back through the API.
		resp, err = http.Get(fmt.Sprintf("http://%s/tasks/%s", c.HTTPAddr(m), task.TaskID))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if bytes.Contains(body, []byte("good-secret")) {
			t.Fatalf("GET /tasks shows the origin credentials: %s", body)
		}
	}
	// A second peer with the right credentials joins and reads.
	if _, _, err := cl.RegisterTask(ctx, api.RegisterTaskRequest{URL: url, PeerID: "mallory", Headers: map[string]string{"Authorization": secret}}); err != nil {
		t.Fatalf("registration with the right credentials: %v", err)
	}
	if got, _ := rawCall(t, "GET", fmt.Sprintf("http://%s/tasks/%s/pieces/1/data?peer_id=mallory&min_index=%d", c.HTTPAddr(2), task.TaskID, cl.LastIndex()), "", nil); got != 200 {
		t.Fatalf("piece for a peer whose credentials were accepted: %d", got)
	}
}

func TestUploadLimitPacesPieceServing(t *testing.T) {
	const pieceSize = 512 << 10
	const limit = 2 << 20 // 2 MiB/s on every member
	c := tc.New(t, 3, tc.Options{Configure: func(_ int, cfg *member.Config) { cfg.PieceSize = pieceSize; cfg.UploadLimit = limit }})
	ctx := ctxT(t, 60*time.Second)
	o := newOrigin(t)
	data := randomBytes(13, 2*pieceSize)
	url := o.add("/paced.bin", data)
	cl := c.Client()
	task := registerURL(t, ctx, cl, url)
	waitTask(t, c, task.TaskID, 30*time.Second, func(x api.Task) bool { return x.Status == "success" })
	// Two pieces (1 MiB) through one member at 2 MiB/s take at least about half a second;
	// only a lower bound is checked (the machine may be slower, never faster).
	start := time.Now()
	checkFile(t, c.HTTPAddr(0), task.TaskID, data, pieceSize)
	if elapsed := time.Since(start); elapsed < 300*time.Millisecond {
		t.Fatalf("1 MiB served in %v with a 2 MiB/s upload limit", elapsed)
	}
}

// dirBytes is the size of the piece files under dir.
func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var total int64
	_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".piece") {
			if info, err := d.Info(); err == nil {
				total += info.Size()
			}
		}
		return nil
	})
	return total
}

func TestEvictionKeepsTheCacheBoundedAndNeverDropsABusyTask(t *testing.T) {
	const pieceSize = 64 << 10
	const maxBytes = 1 << 20
	var dataDir string
	c := tc.New(t, 1, tc.Options{Configure: func(_ int, cfg *member.Config) {
		cfg.PieceSize, cfg.CacheMaxBytes, cfg.CacheBusyWindow = pieceSize, maxBytes, 2*time.Second
		dataDir = cfg.DataDir
	}})
	cacheDir := filepath.Join(dataDir, "cdn")
	ctx := ctxT(t, 90*time.Second)
	o := newOrigin(t)
	cl := c.Client()
	mustRegisterPeer(t, ctx, cl, "p", 1)
	// A slow task, still being fetched while the cache overflows (about 15 s at 40 KiB/s,
	// so that it is still running on a busy machine when the eviction has happened).
	slowData := randomBytes(20, 600<<10)
	slowURL := o.add("/slow.bin", slowData)
	o.mu.Lock()
	o.pathDelay = map[string]time.Duration{"/slow.bin": 400 * time.Millisecond}
	o.mu.Unlock()
	slow, _, err := cl.RegisterTask(ctx, api.RegisterTaskRequest{URL: slowURL, PeerID: "p"})
	if err != nil {
		t.Fatal(err)
	}
	waitTask(t, c, slow.TaskID, 20*time.Second, func(x api.Task) bool { return x.Status == "running" })
	// 6 x 300 KiB through a 1 MiB cache, at full speed.
	var ids []string
	for i := 0; i < 6; i++ {
		url := o.add(fmt.Sprintf("/e%d.bin", i), randomBytes(uint64(30+i), 300<<10))
		task, _, err := cl.RegisterTask(ctx, api.RegisterTaskRequest{URL: url, PeerID: "p"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, task.TaskID)
	}
	evicted := func() int {
		n := 0
		for _, id := range ids {
			if _, err := cl.GetTask(ctx, id); errors.Is(err, sdk.ErrNotFound) {
				n++
			}
		}
		return n
	}
	if !tc.Eventually(30*time.Second, func() bool { return evicted() > 0 }) {
		t.Fatalf("nothing evicted with %d bytes cached for a %d-byte bound", dirBytes(t, cacheDir), maxBytes)
	}
	if task, err := cl.GetTask(ctx, slow.TaskID); err != nil || task.Status != "running" {
		t.Fatalf("the task being fetched during the eviction: %+v, %v; want it kept, still running", task, err)
	}
	// It completes, whole, and the cache ends under its high water mark.
	if !tc.Eventually(40*time.Second, func() bool {
		task, err := cl.GetTask(ctx, slow.TaskID)
		return err == nil && task.Status == "success" && dirBytes(t, cacheDir) <= maxBytes*95/100
	}) {
		t.Fatalf("cache holds %d bytes, over the %d high water mark (or the busy task did not finish)", dirBytes(t, cacheDir), maxBytes*95/100)
	}
	checkFile(t, c.HTTPAddr(0), slow.TaskID, slowData, pieceSize)
	t.Logf("%d of %d tasks evicted; cache %d bytes (bound %d)", evicted(), len(ids), dirBytes(t, cacheDir), maxBytes)
}

// memberIndex returns the test cluster index of the member with the given ID (-1: none).
func memberIndex(c *tc.Cluster, id string) int {
	for i := 0; i < c.N(); i++ {
		if m := c.Member(i); m != nil && m.ID() == id {
			return i
		}
	}
	return -1
}

// cachedByAll reports whether every one of pieces pieces is cached by exactly the members
// in want, as member i's state says; it describes the first piece that is not.
func cachedByAll(c *tc.Cluster, i int, id string, pieces int, want []string) (bool, string) {
	f := c.Member(i).Node().FSM()
	for n := 0; n < pieces; n++ {
		got := f.PieceCachedBy(id, uint32(n))
		if strings.Join(got, ",") != strings.Join(want, ",") {
			return false, fmt.Sprintf("piece %d cached by %v, want %v", n, got, want)
		}
	}
	return true, ""
}

func TestCacheReplicasCopyEveryPieceAndSurviveThePrimary(t *testing.T) {
	const pieceSize = 64 << 10
	c := tc.New(t, 3, tc.Options{Configure: func(_ int, cfg *member.Config) { cfg.PieceSize, cfg.CacheReplicas = pieceSize, 2 }})
	ctx := ctxT(t, 90*time.Second)
	o := newOrigin(t)
	data := randomBytes(17, 2<<20+4321)
	pieces := (len(data) + pieceSize - 1) / pieceSize
	url := o.add("/replicated.bin", data)
	cl := c.Client()
	task := registerURL(t, ctx, cl, url)
	if len(task.Owners) != 2 {
		t.Fatalf("registration answer lists owners %v, want 2", task.Owners)
	}
	waitTask(t, c, task.TaskID, 30*time.Second, func(x api.Task) bool { return x.Status == "success" })
	owners := c.Member(0).Node().FSM().RingOwners(task.TaskID, 2)
	sorted := append([]string(nil), owners...)
	sort.Strings(sorted)
	// The replica copies the pieces as the primary commits them: both soon hold every one,
	// and the third member none.
	var why string
	if !tc.Eventually(20*time.Second, func() (ok bool) {
		for _, i := range c.Running() {
			if ok, why = cachedByAll(c, i, task.TaskID, pieces, sorted); !ok {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("the two owners %v do not both cache every piece: %s", owners, why)
	}
	if ti, _ := c.Member(0).Node().FSM().Task(task.TaskID); ti.Owner != owners[0] {
		t.Fatalf("fetched by %q, want the primary %s", ti.Owner, owners[0])
	}
	if got, err := cl.GetTask(ctx, task.TaskID); err != nil || strings.Join(got.Owners, ",") != strings.Join(owners, ",") {
		t.Fatalf("GET /tasks/%s owners %v (%v), want %v", task.TaskID, got.Owners, err, owners)
	}
	sent := o.bytesSent("/replicated.bin")
	t.Logf("owners %v; origin sent %.2f copies", owners, float64(sent)/float64(len(data)))
	if sent != int64(len(data)) {
		t.Fatalf("origin sent %d bytes for a %d-byte file with 2 replicas: want exactly one copy", sent, len(data))
	}

	// The primary dies: every remaining member serves every piece, from the replica, and
	// the origin sends nothing more.
	primary := memberIndex(c, owners[0])
	c.Kill(primary)
	for _, i := range c.Running() {
		checkFile(t, c.HTTPAddr(i), task.TaskID, data, pieceSize)
	}
	c.WaitForLeader(15 * time.Second)
	// The third member is the second owner now, and copies everything from the replica.
	survivors := c.Running()
	var live []string
	for _, i := range survivors {
		live = append(live, c.Member(i).ID())
	}
	sort.Strings(live)
	if !tc.Eventually(30*time.Second, func() bool {
		for _, i := range survivors {
			f := c.Member(i).Node().FSM()
			for n := 0; n < pieces; n++ {
				got := f.PieceCachedBy(task.TaskID, uint32(n))
				got = slices.DeleteFunc(got, func(m string) bool { return m == owners[0] })
				if strings.Join(got, ",") != strings.Join(live, ",") {
					why = fmt.Sprintf("member %d: piece %d cached by live %v, want %v", i, n, got, live)
					return false
				}
			}
		}
		return true
	}) {
		t.Fatalf("the new second owner did not copy every piece: %s", why)
	}
	for _, i := range survivors {
		checkFile(t, c.HTTPAddr(i), task.TaskID, data, pieceSize)
	}
	if got, err := clientAt(t, c.HTTPAddr(survivors[0])).GetTask(ctx, task.TaskID); err != nil || len(got.Owners) != 2 || slices.Contains(got.Owners, owners[0]) {
		t.Fatalf("owners after the primary died: %v (%v), want the 2 survivors", got.Owners, err)
	}
	if after := o.bytesSent("/replicated.bin"); after != sent {
		t.Fatalf("the origin sent %d more bytes after the primary died", after-sent)
	}
}

func TestCacheReplicaTakesOverAPrimaryKilledMidFetch(t *testing.T) {
	const pieceSize = 64 << 10
	c := tc.New(t, 3, tc.Options{Configure: func(_ int, cfg *member.Config) { cfg.PieceSize, cfg.CacheReplicas = pieceSize, 2 }})
	ctx := ctxT(t, 90*time.Second)
	o := newOrigin(t)
	o.chunkDelay.Store(int64(8 * time.Millisecond)) // about 2 MiB/s: the 3 MiB file takes 1.5 s
	data := randomBytes(23, 3<<20)
	pieces := int64(len(data) / pieceSize)
	url := o.add("/replicated-big.bin", data)
	cl := c.Client()
	task := registerURL(t, ctx, cl, url)
	owners := c.Member(0).Node().FSM().RingOwners(task.TaskID, 2)
	// Kill the primary half way, once the replica holds a good part of what it fetched.
	var replicaHas int
	if !tc.Eventually(30*time.Second, func() bool {
		f := c.Member(memberIndex(c, owners[1])).Node().FSM()
		replicaHas = 0
		for n := 0; n < int(pieces); n++ {
			if slices.Contains(f.PieceCachedBy(task.TaskID, uint32(n)), owners[1]) {
				replicaHas++
			}
		}
		return replicaHas >= int(pieces)/2
	}) {
		t.Fatalf("the replica %s copied only %d pieces", owners[1], replicaHas)
	}
	c.Kill(memberIndex(c, owners[0]))
	done := waitTask(t, c, task.TaskID, 60*time.Second, func(x api.Task) bool { return x.Status == "success" })
	c.WaitConverged(15 * time.Second)
	survivor := c.Running()[0]
	if now, _ := c.Member(survivor).Node().FSM().Task(task.TaskID); now.Owner != owners[1] {
		t.Fatalf("completed by %q, want the replica %s", now.Owner, owners[1])
	}
	if *done.PiecesCached != pieces || done.ContentLength != int64(len(data)) {
		t.Fatalf("completed task: %+v", done)
	}
	for _, i := range c.Running() {
		checkFile(t, c.HTTPAddr(i), task.TaskID, data, pieceSize)
	}
	// The new primary resumed after the replica's copies: one copy, plus what the dead
	// primary had read but the replica had not copied yet (a commit batch or two).
	sent := o.bytesSent("/replicated-big.bin")
	t.Logf("primary %s killed when the replica had %d of %d pieces; origin sent %.2f copies", owners[0], replicaHas, pieces, float64(sent)/float64(len(data)))
	if limit := int64(len(data)) + 16*pieceSize; sent > limit {
		t.Fatalf("origin sent %d bytes, more than one copy plus the pieces in flight (%d)", sent, limit)
	}
}

func TestOriginDroppingTheConnectionMidBodyIsResumed(t *testing.T) {
	const pieceSize = 64 << 10
	c := tc.New(t, 3, tc.Options{Configure: func(_ int, cfg *member.Config) { cfg.PieceSize = pieceSize }})
	ctx := ctxT(t, 90*time.Second)
	o := newOrigin(t)
	data := randomBytes(19, 4<<20+777)
	url := o.add("/flaky.bin", data)
	// The connection breaks twice in the middle of the body, once in the first answer and
	// once in the resumed one (a Range request, which the origin honours).
	var drops atomic.Int32
	breaks := []int64{1<<20 + 12345, 2<<20 + 54321}
	o.afterBytes = func(path string, sent int64) bool {
		k := drops.Load()
		if path == "/flaky.bin" && int(k) < len(breaks) && sent >= breaks[k] {
			return drops.CompareAndSwap(k, k+1)
		}
		return false
	}
	cl := c.Client()
	task := registerURL(t, ctx, cl, url)
	done := waitTask(t, c, task.TaskID, 60*time.Second, func(x api.Task) bool { return x.Status == "success" || x.Status == "failed" })
	if done.Status != "success" || done.ContentLength != int64(len(data)) || *done.PiecesCached != done.PieceCount {
		t.Fatalf("task after the origin dropped the connection: %+v", done)
	}
	if drops.Load() != int32(len(breaks)) {
		t.Fatalf("the origin dropped the connection %d times, want %d", drops.Load(), len(breaks))
	}
	c.WaitConverged(15 * time.Second)
	for i := 0; i < 3; i++ {
		checkFile(t, c.HTTPAddr(i), task.TaskID, data, pieceSize)
	}
	sent := o.bytesSent("/flaky.bin")
	copies := float64(sent) / float64(len(data))
	t.Logf("origin dropped the connection %d times; it sent %d bytes for %d (%.3f copies)", drops.Load(), sent, len(data), copies)
	if copies > 1.05 {
		t.Fatalf("origin sent %.3f copies, want at most 1.05", copies)
	}
}

// A complete task whose only cache was on a member that died is fetched again by the next
// owner on the ring, so that peers can still get every piece.
func TestCompleteTaskCachedOnlyByADeadMemberIsFetchedAgain(t *testing.T) {
	const pieceSize = 64 << 10
	c := tc.New(t, 3, tc.Options{Configure: func(_ int, cfg *member.Config) { cfg.PieceSize = pieceSize }})
	ctx := ctxT(t, 60*time.Second)
	o := newOrigin(t)
	data := randomBytes(11, 1<<20+333)
	cl := c.Client()
	task := registerURL(t, ctx, cl, o.add("/f.bin", data))
	waitTask(t, c, task.TaskID, 20*time.Second, func(x api.Task) bool { return x.Status == api.TaskSuccess })
	info, _ := c.Member(c.Running()[0]).Node().FSM().Task(task.TaskID)
	owner := memberIndex(c, info.Owner)
	if owner < 0 {
		t.Fatalf("no running member is the owner %q", info.Owner)
	}
	c.Kill(owner)
	survivor := (owner + 1) % 3
	f := c.Member(survivor).Node().FSM()
	if !tc.Eventually(30*time.Second, func() bool {
		for n := 0; n*pieceSize < len(data); n++ {
			if len(f.PieceCachedBy(task.TaskID, uint32(n))) < 2 { // the dead owner and a live one
				return false
			}
		}
		return true
	}) {
		t.Fatal("the pieces of the dead owner were not cached again by a live member")
	}
	checkFile(t, c.HTTPAddr(survivor), task.TaskID, data, pieceSize)
	if sent := o.bytesSent("/f.bin"); sent != 2*int64(len(data)) {
		t.Fatalf("origin sent %.2f copies, want exactly 2 (the dead owner's and the new one's)", float64(sent)/float64(len(data)))
	}
}
