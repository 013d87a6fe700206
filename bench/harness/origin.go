package harness

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Origin is an HTTP origin on 127.0.0.1 serving generated files from memory, with Range,
// ETag and Last-Modified (http.ServeContent), optional rate caps, and a count of the bytes
// sent per file.
type Origin struct {
	URL string // http://127.0.0.1:PORT

	srv   *http.Server
	ln    net.Listener
	mu    sync.Mutex
	files map[string]*File
	caps  atomic.Pointer[caps]
}

// caps are the rate limits in force; a zero rate is no limit.
type caps struct {
	global  *rate.Limiter // shared by every response; nil: none
	perConn rate.Limit    // each connection's own limit; 0: none
}

// File is one file the origin serves at URL.
type File struct {
	Name    string
	URL     string
	Size    int64
	SHA256  string // lowercase hex
	data    []byte
	modTime time.Time
	sent    atomic.Int64
	gets    atomic.Int64
}

// Sent returns the body bytes sent for this file so far.
func (f *File) Sent() int64 { return f.sent.Load() }

// Requests returns the GET requests for this file so far (HEAD not counted).
func (f *File) Requests() int64 { return f.gets.Load() }

// Copies is Sent / Size: how many times the whole file left the origin.
func (f *File) Copies() float64 { return float64(f.Sent()) / float64(f.Size) }

type connKey struct{}

// chunk is the largest write of a response, so that caps are smooth.
const chunk = 32 << 10

// StartOrigin listens on 127.0.0.1 (a free port) and serves until Close.
func StartOrigin() (*Origin, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	o := &Origin{URL: "http://" + ln.Addr().String(), ln: ln, files: map[string]*File{}}
	o.caps.Store(&caps{})
	o.srv = &http.Server{
		Handler:           http.HandlerFunc(o.serve),
		ReadHeaderTimeout: 10 * time.Second,
		// Each connection gets its own limiter when a per-connection cap is set.
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context {
			if c := o.caps.Load(); c.perConn > 0 {
				return context.WithValue(ctx, connKey{}, newLimiter(float64(c.perConn)))
			}
			return ctx
		},
	}
	go func() { _ = o.srv.Serve(ln) }()
	return o, nil
}

// SetRate sets the caps in bytes per second (0: none): global bounds all responses
// together, perConn each connection. It applies to connections opened afterwards.
func (o *Origin) SetRate(global, perConn float64) {
	c := &caps{perConn: rate.Limit(perConn)}
	if global > 0 {
		c.global = newLimiter(global)
	}
	o.caps.Store(c)
}

func newLimiter(bps float64) *rate.Limiter {
	return rate.NewLimiter(rate.Limit(bps), chunk)
}

// AddFile generates a file of size pseudo-random bytes (seeded by name) served at
// URL/name. Names are unique.
func (o *Origin) AddFile(name string, size int64) (*File, error) {
	if size < 0 || strings.ContainsAny(name, "/?#") {
		return nil, fmt.Errorf("origin: bad file %q of %d bytes", name, size)
	}
	seed := sha256.Sum256([]byte(name))
	rnd := rand.NewChaCha8(seed)
	data := make([]byte, size)
	_, _ = rnd.Read(data)
	sum := sha256.Sum256(data)
	f := &File{Name: name, URL: o.URL + "/" + name, Size: size, SHA256: hex.EncodeToString(sum[:]),
		data: data, modTime: time.Now().Add(-time.Hour).Truncate(time.Second)}
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, dup := o.files[name]; dup {
		return nil, fmt.Errorf("origin: file %q exists", name)
	}
	o.files[name] = f
	return f, nil
}

// Remove drops a file (its memory) from the origin; its URL answers 404 afterwards.
func (o *Origin) Remove(name string) {
	o.mu.Lock()
	delete(o.files, name)
	o.mu.Unlock()
}

// Close stops the origin and closes its connections.
func (o *Origin) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := o.srv.Shutdown(ctx); err != nil {
		return o.srv.Close()
	}
	return nil
}

func (o *Origin) serve(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	f := o.files[strings.TrimPrefix(r.URL.Path, "/")]
	o.mu.Unlock()
	if f == nil {
		http.NotFound(w, r)
		return
	}
	if r.Method == http.MethodGet {
		f.gets.Add(1)
	}
	c := o.caps.Load()
	connLim, _ := r.Context().Value(connKey{}).(*rate.Limiter)
	w.Header().Set("ETag", `"`+f.SHA256[:16]+`"`)
	w.Header().Set("Content-Type", "application/octet-stream")
	cw := &capWriter{ResponseWriter: w, ctx: r.Context(), file: f, limits: []*rate.Limiter{c.global, connLim}}
	http.ServeContent(cw, r, f.Name, f.modTime, bytes.NewReader(f.data))
}

// capWriter paces and counts a response body.
type capWriter struct {
	http.ResponseWriter
	ctx    context.Context
	file   *File
	limits []*rate.Limiter
}

func (w *capWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := min(len(p), chunk)
		for _, l := range w.limits {
			if l != nil {
				if err := l.WaitN(w.ctx, n); err != nil {
					return written, err
				}
			}
		}
		m, err := w.ResponseWriter.Write(p[:n])
		written += m
		w.file.sent.Add(int64(m))
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

// Unwrap lets http.ResponseController reach the real writer.
func (w *capWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
