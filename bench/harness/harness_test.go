package harness

import (
	"context"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// originWith starts an origin serving one file; the test's cleanup stops it.
func originWith(t *testing.T, name string, size int64) (*Origin, *File) {
	t.Helper()
	o, err := StartOrigin()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	f, err := o.AddFile(name, size)
	if err != nil {
		t.Fatal(err)
	}
	return o, f
}

func TestOriginServesRangesAndCounts(t *testing.T) {
	o, f := originWith(t, "a.bin", 1<<20)
	if _, err := o.AddFile("a.bin", 1); err == nil {
		t.Fatal("a second file of the same name was accepted")
	}
	req, _ := http.NewRequest(http.MethodGet, f.URL, nil)
	req.Header.Set("Range", "bytes=100-199")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || len(body) != 100 {
		t.Fatalf("range answer %d with %d bytes, want 206 with 100", resp.StatusCode, len(body))
	}
	if resp.Header.Get("ETag") == "" || resp.Header.Get("Last-Modified") == "" {
		t.Fatalf("no ETag or Last-Modified: %v", resp.Header)
	}
	// A conditional GET with the ETag sends no body.
	req.Header.Del("Range")
	req.Header.Set("If-None-Match", resp.Header.Get("ETag"))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotModified {
		t.Fatalf("conditional GET: %d, want 304", resp.StatusCode)
	}
	run := Native(context.Background(), f.URL, 3, 0)
	for _, x := range run.Items {
		if x.Err != nil || x.SHA256 != f.SHA256 || x.Bytes != f.Size {
			t.Fatalf("native fetch: %+v", x)
		}
	}
	if got, want := f.Sent(), 3*f.Size+100; got != want {
		t.Fatalf("sent %d bytes, want %d", got, want)
	}
	if c := f.Copies(); c < 3 || c > 3.001 {
		t.Fatalf("copies %.3f, want 3", c)
	}
	resp, err = http.Get(o.URL + "/missing")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("missing file: %d", resp.StatusCode)
	}
}

func TestOriginCaps(t *testing.T) {
	o, f := originWith(t, "b.bin", 512<<10)
	// 2 clients against a global cap of 2 MiB/s: 1 MiB takes about 0.5 s.
	o.SetRate(2<<20, 0)
	run := Native(context.Background(), f.URL, 2, 0)
	if w := run.Wall(); w < 400*time.Millisecond || w > 3*time.Second {
		t.Fatalf("global cap: 1 MiB at 2 MiB/s took %s", w)
	}
	// Per-connection cap of 2 MiB/s: 2 clients take about 0.25 s together.
	o.SetRate(0, 2<<20)
	run = Native(context.Background(), f.URL, 2, 0)
	if w := run.Wall(); w < 200*time.Millisecond || w > 2*time.Second {
		t.Fatalf("per-connection cap: took %s", w)
	}
	// A client-side cap alone.
	o.SetRate(0, 0)
	run = Native(context.Background(), f.URL, 1, 1<<20)
	if w := run.Wall(); w < 400*time.Millisecond || w > 3*time.Second {
		t.Fatalf("client cap: 512 KiB at 1 MiB/s took %s", w)
	}
}

func TestParseMetrics(t *testing.T) {
	text := `# HELP dfha_api_requests_total API requests by route and status code.
# TYPE dfha_api_requests_total counter
dfha_api_requests_total{code="204",method="PUT",route="/tasks/{id}/pieces"} 10
dfha_api_requests_total{code="200",method="GET",route="/tasks/{id}/pieces"} 30
dfha_api_requests_total{code="200",method="GET",route="/tasks/{id}/pieces/{n}/data"} 4
dfha_api_requests_total{code="204",method="POST",route="/internal/v1/apply"} 5
dfha_api_requests_total{code="200",method="GET",route="/metrics"} 2
# TYPE dfha_raft_elections_total counter
dfha_raft_elections_total 1
# TYPE dfha_cdn_piece_bytes_served_total counter
dfha_cdn_piece_bytes_served_total 4096
`
	m := Metrics{Requests: map[Route]float64{}, Values: map[string]float64{}}
	if err := parseMetrics(strings.NewReader(text), &m); err != nil {
		t.Fatal(err)
	}
	if err := parseMetrics(strings.NewReader(text), &m); err != nil { // a second member
		t.Fatal(err)
	}
	if got := m.APIRequests(); got != 80 {
		t.Errorf("API requests %v, want 80", got)
	}
	if got := m.ReportRequests(); got != 20 {
		t.Errorf("report requests %v, want 20", got)
	}
	if got := m.PiecesServed(); got != 8 {
		t.Errorf("pieces served %v, want 8", got)
	}
	if got := m.Values["dfha_raft_elections_total"]; got != 2 {
		t.Errorf("elections %v, want 2", got)
	}
	if v, _, ok := m.PieceBytesServed(); !ok || v != 8192 {
		t.Errorf("piece bytes %v %v", v, ok)
	}
	d := m.Sub(m)
	if d.APIRequests() != 0 {
		t.Errorf("m - m = %v requests", d.APIRequests())
	}
}

func TestStats(t *testing.T) {
	s := Of(3, 1, 2)
	if s.Median != 2 || s.Min != 1 || s.Max != 3 || s.N != 3 {
		t.Fatalf("%+v", s)
	}
	if got := s.Format("%.1f"); got != "2.0 (1.0–3.0, 3 runs)" {
		t.Fatalf("%q", got)
	}
	if got := Of(1, 2).Median; got != 1.5 {
		t.Fatalf("median of 1, 2: %v", got)
	}
	if got := Quantile([]float64{5, 1, 3, 2, 4}, 0.5); got != 3 {
		t.Fatalf("quantile: %v", got)
	}
}

func TestCPUAndRSS(t *testing.T) {
	s := StartCPU()
	time.Sleep(300 * time.Millisecond)
	c := s.Stop()
	if c.Busy < 0 || c.Busy > 1 || c.Peak < c.Busy-1e-9 {
		t.Fatalf("cpu %+v", c)
	}
	if rss, err := PeakRSS(os.Getpid()); err != nil || rss <= 0 {
		t.Fatalf("peak RSS %d: %v", rss, err)
	}
	if m := Machine(); !strings.Contains(m, "cores") {
		t.Fatalf("machine %q", m)
	}
}

func TestInternalRoutes(t *testing.T) {
	for path, want := range map[string]bool{"/internal/v1/apply": true, "/internal/v1/loads": true, "/tasks/{id}/pieces": false} {
		if internal(path) != want {
			t.Errorf("internal(%q) = %v", path, !want)
		}
	}
}
