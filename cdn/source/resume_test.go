package source

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestResumeAfterDrops(t *testing.T) {
	const size = 4 << 20
	const cutAfter = 1<<20 + 12_345 // body bytes each of the first 3 GETs sends before the origin hangs up
	data := randomBytes(size, 10)
	const secret = "Bearer resume-s3cr3t"
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			o := newOrigin(t, &testOrigin{
				v:       version{data: data, etag: `"big"`, mod: testMod},
				auth:    secret,
				chunked: chunked,
				cut: func(get int64) int64 {
					if get <= 3 {
						return cutAfter
					}
					return -1
				},
			})
			core, logs := observer.New(zap.DebugLevel)
			s := NewSources(Config{Logger: zap.New(core)})
			req := Request{URL: o.url("/big.iso"), Headers: map[string]string{"Authorization": secret}}
			src, _ := s.For(req.URL)
			ctx := testCtx(t, 30*time.Second)
			want, err := src.Probe(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			opts := fastResume
			opts.Logger = zap.New(core)
			r := NewResumingReader(ctx, src, req, 0, want, opts)
			defer r.Close()
			got, err := readAll(t, r)
			if err != nil {
				t.Fatalf("read %d bytes: %v", len(got), err)
			}
			if sum(got) != sum(data) {
				t.Fatalf("sha256 differs: read %d bytes", len(got))
			}
			t.Logf("origin sent %d bytes for %d (%.4fx)", o.sent.Load(), size, float64(o.sent.Load())/size)
			if sent := o.sent.Load(); float64(sent) > 1.05*size {
				t.Fatalf("origin sent %d bytes for a %d byte file (%.3fx)", sent, size, float64(sent)/size)
			}
			if n := o.gets.Load(); n != 4 {
				t.Fatalf("%d GETs, want 4 (3 cut, then the rest)", n)
			}
			if logs.FilterMessage("origin read broken; resuming").Len() != 3 {
				t.Fatalf("want 3 resume log lines, got %v", logs.All())
			}
			for _, e := range logs.All() {
				line := fmt.Sprint(e.Message, e.ContextMap())
				if strings.Contains(line, "s3cr3t") {
					t.Fatalf("a log line shows the credentials: %s", line)
				}
			}
		})
	}
}

func TestResumeShortRanges(t *testing.T) {
	data := randomBytes(1_000_000, 11)
	o := newOrigin(t, &testOrigin{v: version{data: data, etag: `"s"`}, rangeMax: 300_000})
	req := Request{URL: o.url("/f")}
	src, _ := NewSources(Config{}).For(req.URL)
	r := NewResumingReader(testCtx(t, 10*time.Second), src, req, 0, Info{ContentLength: -1}, fastResume)
	defer r.Close()
	got, err := readAll(t, r)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
	if n := o.gets.Load(); n != 4 {
		t.Fatalf("%d GETs for 1,000,000 bytes served 300,000 at a time, want 4", n)
	}
}

func TestResumeFromOffset(t *testing.T) {
	data := randomBytes(500_000, 12)
	o := newOrigin(t, &testOrigin{
		v:   version{data: data, etag: `"o"`},
		cut: func(get int64) int64 { return map[bool]int64{true: 50_000, false: -1}[get == 1] },
	})
	req := Request{URL: o.url("/f")}
	src, _ := NewSources(Config{}).For(req.URL)
	want := Info{ContentLength: int64(len(data)), ETag: `"o"`}
	r := NewResumingReader(testCtx(t, 10*time.Second), src, req, 123_456, want, fastResume)
	defer r.Close()
	got, err := readAll(t, r)
	if err != nil || !bytes.Equal(got, data[123_456:]) {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
}

func TestResumeDetectsChange(t *testing.T) {
	v1 := version{data: randomBytes(1<<20, 13), etag: `"one"`, mod: testMod}
	cases := []struct {
		name string
		v1   version
		v2   version
	}{
		{"etag", v1, version{data: randomBytes(1<<20, 14), etag: `"two"`, mod: testMod}},
		{"length only", version{data: v1.data}, version{data: randomBytes(1<<20+1, 15)}},
		{"last-modified only", version{data: v1.data, mod: testMod}, version{data: randomBytes(1<<20, 16), mod: testMod.Add(time.Hour)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := newOrigin(t, &testOrigin{
				versionFor: func(get int64) version {
					if get <= 1 {
						return c.v1
					}
					return c.v2
				},
				cut: func(get int64) int64 { return map[bool]int64{true: 400_000, false: -1}[get == 1] },
			})
			req := Request{URL: o.url("/f")}
			src, _ := NewSources(Config{}).For(req.URL)
			ctx := testCtx(t, 10*time.Second)
			want, err := src.Probe(ctx, req) // sees v1
			if err != nil {
				t.Fatal(err)
			}
			r := NewResumingReader(ctx, src, req, 0, want, fastResume)
			defer r.Close()
			got, err := readAll(t, r)
			if !errors.Is(err, ErrChanged) {
				t.Fatalf("read %d bytes, %v; want ErrChanged", len(got), err)
			}
			if !bytes.Equal(got, c.v1.data[:len(got)]) {
				t.Fatalf("the %d bytes delivered are not a prefix of the first version", len(got))
			}
			if _, err := r.Read(make([]byte, 10)); !errors.Is(err, ErrChanged) {
				t.Fatalf("Read after the failure: %v", err)
			}
		})
	}

	t.Run("changed between probe and open", func(t *testing.T) {
		o := newOrigin(t, &testOrigin{versionFor: func(get int64) version {
			if get == 0 { // the probe, before any GET
				return v1
			}
			return version{data: v1.data, etag: `"new"`}
		}})
		req := Request{URL: o.url("/f")}
		src, _ := NewSources(Config{}).For(req.URL)
		ctx := testCtx(t, 10*time.Second)
		want, _ := src.Probe(ctx, req)
		r := NewResumingReader(ctx, src, req, 0, want, fastResume)
		defer r.Close()
		if got, err := readAll(t, r); !errors.Is(err, ErrChanged) || len(got) != 0 {
			t.Fatalf("read %d bytes, %v; want no byte and ErrChanged", len(got), err)
		}
	})
}

func TestResumeNoRange(t *testing.T) {
	data := randomBytes(1<<20, 17)
	o := newOrigin(t, &testOrigin{
		v:           version{data: data, etag: `"n"`},
		ignoreRange: true,
		cut:         func(get int64) int64 { return map[bool]int64{true: 300_000, false: -1}[get == 1] },
	})
	req := Request{URL: o.url("/f")}
	src, _ := NewSources(Config{}).For(req.URL)
	ctx := testCtx(t, 10*time.Second)
	want, _ := src.Probe(ctx, req)
	r := NewResumingReader(ctx, src, req, 0, want, fastResume)
	defer r.Close()
	got, err := readAll(t, r)
	if !errors.Is(err, ErrNoRange) {
		t.Fatalf("read %d bytes, %v; want ErrNoRange", len(got), err)
	}
	if !bytes.Equal(got, data[:len(got)]) || len(got) > 300_000 {
		t.Fatalf("%d bytes delivered, not the file's first bytes", len(got))
	}
	if n := o.gets.Load(); n != 2 {
		t.Fatalf("%d GETs, want 2 (no retry of a refused resume)", n)
	}
}

func TestResumeGivesUp(t *testing.T) {
	var gets atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gets.Add(1)
		switch r.URL.Path {
		case "/busy":
			http.Error(w, "busy", http.StatusServiceUnavailable)
		case "/missing":
			http.NotFound(w, r)
		case "/empty": // promises bytes, closes at once
			w.Header().Set("Content-Length", "1000")
			w.WriteHeader(http.StatusOK)
			if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
				c.Close()
			}
		}
	}))
	t.Cleanup(srv.Close)
	src, _ := NewSources(Config{}).For(srv.URL)
	opts := ResumeOptions{MaxRetries: 2, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond}
	cases := []struct {
		path  string
		want  error
		tries int64
	}{
		{"/busy", ErrOrigin, 3},
		{"/missing", ErrNotFound, 1},
		{"/empty", nil, 3},
	}
	for _, c := range cases {
		gets.Store(0)
		r := NewResumingReader(testCtx(t, 10*time.Second), src, Request{URL: srv.URL + c.path}, 0, Info{ContentLength: -1}, opts)
		_, err := readAll(t, r)
		r.Close()
		if err == nil || (c.want != nil && !errors.Is(err, c.want)) {
			t.Errorf("%s: %v, want %v", c.path, err, c.want)
		}
		if n := gets.Load(); n != c.tries {
			t.Errorf("%s: %d attempts, want %d", c.path, n, c.tries)
		}
	}
}

func TestContextCancelStopsRead(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	answered := make(chan struct{}, 1) // the origin has answered: the reader is reading or backing off
	signal := func() {
		select {
		case answered <- struct{}{}:
		default:
		}
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/busy" {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			signal()
			return
		}
		w.Header().Set("Content-Length", "1000000")
		w.Write(make([]byte, 1000))
		http.NewResponseController(w).Flush()
		signal()
		select { // then stall
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	src, _ := NewSources(Config{}).For(srv.URL)
	slow := ResumeOptions{MinBackoff: 30 * time.Second, MaxBackoff: time.Minute}

	cases := []struct {
		name string
		path string
		stop func(cancel context.CancelFunc, r io.Closer)
		want error
	}{
		{"cancel while reading", "/stall", func(cancel context.CancelFunc, _ io.Closer) { cancel() }, context.Canceled},
		{"close while reading", "/stall", func(_ context.CancelFunc, r io.Closer) { r.Close() }, errReaderClosed},
		{"cancel during backoff", "/busy", func(cancel context.CancelFunc, _ io.Closer) { cancel() }, context.Canceled},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			select { // forget an earlier case's signal
			case <-answered:
			default:
			}
			ctx, cancel := context.WithCancel(testCtx(t, 20*time.Second))
			defer cancel()
			r := NewResumingReader(ctx, src, Request{URL: srv.URL + c.path}, 0, Info{ContentLength: -1}, slow)
			defer r.Close()
			done := make(chan error, 1)
			go func() {
				_, err := io.Copy(io.Discard, r)
				done <- err
			}()
			select {
			case <-answered:
			case <-time.After(5 * time.Second):
				t.Fatal("the origin was never asked")
			}
			start := time.Now()
			c.stop(cancel, r)
			select {
			case err := <-done:
				if !errors.Is(err, c.want) {
					t.Fatalf("read ended with %v, want %v", err, c.want)
				}
				if d := time.Since(start); d > 2*time.Second {
					t.Fatalf("read took %v to stop", d)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("read did not stop")
			}
		})
	}
}
