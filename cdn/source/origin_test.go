package source

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// version is one state of an origin's file.
type version struct {
	data []byte
	etag string    // "" sends none
	mod  time.Time // zero sends no Last-Modified
}

// testOrigin is a real HTTP origin on 127.0.0.1 that counts the body bytes it sends and can
// cut responses, change its file, ignore Range or answer chunked.
type testOrigin struct {
	srv  *httptest.Server
	sent atomic.Int64 // body bytes written to clients
	gets atomic.Int64 // GET requests seen
	reqs atomic.Int64 // requests of any method

	v           version
	versionFor  func(get int64) version // the file the get-th GET (from 1) sees, 0 for HEAD; nil: v
	cut         func(get int64) int64   // body bytes after which the get-th GET's connection is closed; <0 or nil: never
	ignoreRange bool                    // answer every GET with the whole file (200)
	chunked     bool                    // answer whole-file GETs without Content-Length
	auth        string                  // required Authorization value ("": none)
	headRefused bool                    // answer HEAD with 405
	rangeMax    int64                   // >0: serve at most this many bytes per response (as 206)
}

func newOrigin(t testing.TB, o *testOrigin) *testOrigin {
	o.srv = httptest.NewServer(o)
	t.Cleanup(o.srv.Close)
	return o
}

func (o *testOrigin) url(path string) string { return o.srv.URL + path }

func (o *testOrigin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	o.reqs.Add(1)
	if o.auth != "" {
		switch got := r.Header.Get("Authorization"); {
		case got == "":
			http.Error(w, "credentials needed", http.StatusUnauthorized)
			return
		case got != o.auth:
			http.Error(w, "bad credentials", http.StatusForbidden)
			return
		}
	}
	if r.Method == http.MethodHead && o.headRefused {
		http.Error(w, "no HEAD here", http.StatusMethodNotAllowed)
		return
	}
	n := int64(0) // HEAD and others see version 0
	if r.Method == http.MethodGet {
		n = o.gets.Add(1)
	}
	v := o.v
	if o.versionFor != nil {
		v = o.versionFor(n)
	}
	cut := int64(-1)
	if o.cut != nil && r.Method == http.MethodGet {
		cut = o.cut(n)
	}
	cw := &countingWriter{ResponseWriter: w, sent: &o.sent, left: cut}
	if v.etag != "" {
		w.Header().Set("ETag", v.etag)
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if o.ignoreRange {
		r.Header.Del("Range")
	}
	if o.rangeMax > 0 {
		start := int64(0)
		if rg := r.Header.Get("Range"); rg != "" {
			s, _, _ := bytes.Cut([]byte(rg[len("bytes="):]), []byte("-"))
			start, _ = strconv.ParseInt(string(s), 10, 64)
		}
		r.Header.Set("Range", "bytes="+strconv.FormatInt(start, 10)+"-"+strconv.FormatInt(start+o.rangeMax-1, 10))
	}
	if o.chunked && r.Header.Get("Range") == "" {
		if !v.mod.IsZero() {
			w.Header().Set("Last-Modified", v.mod.UTC().Format(http.TimeFormat))
		}
		w.Header().Set("Accept-Ranges", "bytes")
		if r.Method == http.MethodHead {
			return
		}
		rc := http.NewResponseController(cw)
		for off := 0; off < len(v.data); off += 32 << 10 {
			if _, err := cw.Write(v.data[off:min(off+32<<10, len(v.data))]); err != nil {
				return
			}
			rc.Flush()
		}
		return
	}
	http.ServeContent(cw, r, "", v.mod, bytes.NewReader(v.data))
}

var errCut = errors.New("test origin cut the connection")

// countingWriter counts body bytes and, once left reaches 0, flushes what was written and
// closes the connection in the middle of the body.
type countingWriter struct {
	http.ResponseWriter
	sent *atomic.Int64
	left int64 // <0: never cut
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.left < 0 || int64(len(p)) <= c.left {
		n, err := c.ResponseWriter.Write(p)
		c.sent.Add(int64(n))
		if c.left >= 0 {
			c.left -= int64(n)
		}
		return n, err
	}
	n, _ := c.ResponseWriter.Write(p[:c.left])
	c.sent.Add(int64(n))
	rc := http.NewResponseController(c.ResponseWriter)
	rc.Flush()
	if conn, _, err := rc.Hijack(); err == nil {
		conn.Close()
	}
	c.left = 0
	return n, errCut
}

func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// randomBytes returns n reproducible pseudo-random bytes.
func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	var s [32]byte
	s[0] = byte(seed)
	s[1] = byte(seed >> 8)
	rand.NewChaCha8(s).Read(b)
	return b
}

func sum(b []byte) [32]byte { return sha256.Sum256(b) }

// testCtx is a context that ends with the test and after at most d.
func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// fastResume retries quickly so that tests take little time.
var fastResume = ResumeOptions{MaxRetries: 3, MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond}

// readAll reads r to its end with a bounded number of Reads.
func readAll(t testing.TB, r io.Reader) ([]byte, error) {
	t.Helper()
	var out bytes.Buffer
	buf := make([]byte, 64<<10)
	for i := 0; i < 1_000_000; i++ {
		n, err := r.Read(buf)
		out.Write(buf[:n])
		if err == io.EOF {
			return out.Bytes(), nil
		}
		if err != nil {
			return out.Bytes(), err
		}
	}
	t.Fatal("read did not end")
	return nil, nil
}
