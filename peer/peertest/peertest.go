// Package peertest holds the fixtures that the tests of the peer engine and of dfget share:
// a real HTTP origin that counts what it sends, a 3-member cluster with small pieces, and
// reproducible random files.
package peertest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dfly-ha/dfha/cluster/member"
	tc "github.com/dfly-ha/dfha/test/cluster"
)

// PieceSize is the piece size of the clusters NewCluster starts.
const PieceSize = 64 << 10

// NewCluster starts a 3-member cluster on loopback with PieceSize pieces; the test's
// Cleanup stops it.
func NewCluster(t testing.TB) *tc.Cluster {
	return tc.New(t, 3, tc.Options{Configure: func(_ int, cfg *member.Config) { cfg.PieceSize = PieceSize }})
}

// Origin serves files from memory over HTTP (Range, HEAD, ETag) and counts the body bytes
// it sends.
type Origin struct {
	srv   *httptest.Server
	mu    sync.Mutex
	files map[string][]byte
	sent  atomic.Int64
}

// NewOrigin starts an origin on loopback; the test's Cleanup stops it.
func NewOrigin(t testing.TB) *Origin {
	o := &Origin{files: map[string][]byte{}}
	o.srv = httptest.NewServer(http.HandlerFunc(o.serve))
	t.Cleanup(o.srv.Close)
	return o
}

func (o *Origin) serve(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	data, ok := o.files[r.URL.Path]
	o.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	sum := sha256.Sum256(data)
	w.Header().Set("ETag", `"`+hex.EncodeToString(sum[:8])+`"`)
	http.ServeContent(countingWriter{w, &o.sent}, r, "", time.Unix(1e9, 0), bytes.NewReader(data))
}

// Add serves data at path and returns its URL.
func (o *Origin) Add(path string, data []byte) string {
	o.mu.Lock()
	o.files[path] = data
	o.mu.Unlock()
	return o.srv.URL + path
}

// BytesSent is the number of body bytes the origin has sent.
func (o *Origin) BytesSent() int64 { return o.sent.Load() }

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (w countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n.Add(int64(n))
	return n, err
}

// RandomBytes returns n reproducible random bytes.
func RandomBytes(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
	return p
}

// SHA256 is the digest of p as the API writes it: "sha256:HEX".
func SHA256(p []byte) string {
	sum := sha256.Sum256(p)
	return "sha256:" + hex.EncodeToString(sum[:])
}
