package source

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// BenchmarkOpenCopy measures Open + io.Copy of a 64 MiB body from a local origin (reported
// in MB/s): the cost of the source itself, with the origin and the network out of the way.
func BenchmarkOpenCopy(b *testing.B) {
	data := randomBytes(64<<20, 40)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"bench"`)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	src, _ := NewSources(Config{}).For(srv.URL)
	req := Request{URL: srv.URL + "/64m"}
	ctx := b.Context()
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for b.Loop() {
		body, _, err := src.Open(ctx, req, 0)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, body)
		body.Close()
		if err != nil || n != int64(len(data)) {
			b.Fatalf("copied %d bytes, %v", n, err)
		}
	}
}

// BenchmarkRawHTTPCopy is the baseline for BenchmarkOpenCopy: a plain net/http GET.
func BenchmarkRawHTTPCopy(b *testing.B) {
	data := randomBytes(64<<20, 40)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for b.Loop() {
		resp, err := http.Get(srv.URL + "/64m")
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n != int64(len(data)) {
			b.Fatalf("copied %d bytes, %v", n, err)
		}
	}
}
