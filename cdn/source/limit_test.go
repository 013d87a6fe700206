package source

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

func TestRateLimit(t *testing.T) {
	const size = 2 << 20
	data := randomBytes(size, 30)
	o := newOrigin(t, &testOrigin{v: version{data: data, etag: `"l"`}})
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{o.url("/f"), fileURL(path)} {
		t.Run(u[:4], func(t *testing.T) {
			// 4 MiB/s with a 64 KiB burst: 2 MiB take at least (2 MiB - 64 KiB) / 4 MiB/s.
			lim := rate.NewLimiter(4<<20, 64<<10)
			s := NewSources(Config{Limiter: lim})
			req := Request{URL: u}
			src, _ := s.For(u)
			start := time.Now()
			r := NewResumingReader(testCtx(t, 30*time.Second), src, req, 0, Info{ContentLength: -1}, fastResume)
			defer r.Close()
			var got bytes.Buffer
			// Reads of 1 MiB, far above the burst, must work.
			if _, err := io.CopyBuffer(&got, struct{ io.Reader }{r}, make([]byte, 1<<20)); err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d < 400*time.Millisecond {
				t.Fatalf("2 MiB at 4 MiB/s took %v, want at least ~0.4s", d)
			}
			if !bytes.Equal(got.Bytes(), data) {
				t.Fatal("bytes differ")
			}
		})
	}
}

func TestRateLimitShared(t *testing.T) {
	// Two reads through one limiter share its rate: 2 x 1 MiB at 4 MiB/s take ~0.5s.
	data := randomBytes(1<<20, 31)
	o := newOrigin(t, &testOrigin{v: version{data: data}})
	s := NewSources(Config{Limiter: rate.NewLimiter(4<<20, 32<<10)})
	src, _ := s.For(o.url("/"))
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for i := 0; i < 2; i++ {
		wg.Go(func() {
			body, _, err := src.Open(testCtx(t, 30*time.Second), Request{URL: o.url("/")}, 0)
			if err != nil {
				errs <- err
				return
			}
			defer body.Close()
			got, err := io.ReadAll(body)
			if err == nil && !bytes.Equal(got, data) {
				err = errors.New("bytes differ")
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Fatalf("2 x 1 MiB through one 4 MiB/s limiter took %v, want at least ~0.4s", d)
	}
}

func TestRateLimitMisconfigured(t *testing.T) {
	lim := rate.NewLimiter(1<<20, 0) // a zero burst grants nothing
	cfg := Config{Limiter: lim}
	if err := cfg.Validate(); err == nil {
		t.Fatal("Validate accepted a limiter with a zero burst")
	}
	if err := (&Config{Limiter: rate.NewLimiter(rate.Inf, 0)}).Validate(); err != nil {
		t.Fatalf("an infinite limiter needs no burst: %v", err)
	}
	o := newOrigin(t, &testOrigin{v: version{data: randomBytes(1000, 32)}})
	src, _ := NewSources(cfg).For(o.url("/"))
	r := NewResumingReader(testCtx(t, 10*time.Second), src, Request{URL: o.url("/")}, 0, Info{ContentLength: -1}, fastResume)
	defer r.Close()
	if _, err := readAll(t, r); err == nil || retryable(err) {
		t.Fatalf("read through a zero-burst limiter: %v, want a permanent error", err)
	}
}
