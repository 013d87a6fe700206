package test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dfly-ha/dfha/cdn"
	"github.com/dfly-ha/dfha/cluster/member"
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
	n, err := w.ResponseWriter.Write(p)
	w.o.mu.Lock()
	w.o.sent[w.path] += int64(n)
	w.o.mu.Unlock()
	return n, err
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
	taskIDs := make([]string, files)
	for m := 0; m < 3; m++ {
		mc := clientAt(t, c.HTTPAddr(m))
		peer := fmt.Sprintf("peer-%d", m)
		mustRegisterPeer(t, ctx, mc, peer, m)
		for i := 0; i < files; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				task, _, err := mc.RegisterTask(ctx, api.RegisterTaskRequest{URL: urls[i], PeerID: peer})
				if err != nil {
					errs <- err
					return
				}
				if task.Status == "" || len(task.TaskID) != 64 {
					errs <- fmt.Errorf("registration answer %+v", task)
				}
				taskIDs[i] = task.TaskID
			}(i)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
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
	checkAllPieces()

	// A restarted member serves its cache: the origin sends nothing more.
	var before int64
	for i := range data {
		before += o.bytesSent(fmt.Sprintf("/files/f%02d.bin", i))
	}
	c.Kill(1)
	c.Restart(1)
	c.WaitForLeader(15 * time.Second)
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
