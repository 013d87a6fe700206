package peer

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dfly-ha/dfha/peer/peertest"
	"github.com/dfly-ha/dfha/sdk/api"
)

const testTask = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// heldFile writes data to a file, puts it in a new store as task testTask with the given
// piece size, and marks the pieces held.
func heldFile(t *testing.T, data []byte, pieceSize int64, held ...uint32) *Store {
	t.Helper()
	path := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	s := NewStore()
	t.Cleanup(s.Close)
	s.Add(testTask, f, pieceSize, int64(len(data)))
	for _, n := range held {
		s.MarkHeld(testTask, n)
	}
	return s
}

func startUploads(t *testing.T, cfg UploadConfig) *UploadServer {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	s, err := NewUploadServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return s
}

func get(t *testing.T, url string) (int, []byte, http.Header) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body, resp.Header
}

func TestUploadServerServesHeldPiecesOnly(t *testing.T) {
	data := peertest.RandomBytes(1, 2500)
	s := startUploads(t, UploadConfig{Pieces: heldFile(t, data, 1000, 0, 2)})
	base := "http://" + s.Addr().String()
	cases := []struct {
		name, path string
		status     int
		body       []byte
	}{
		{"first piece", "/pieces/" + testTask + "/0", 200, data[:1000]},
		{"short last piece", "/pieces/" + testTask + "/2", 200, data[2000:]},
		{"piece not held", "/pieces/" + testTask + "/1", 404, nil},
		{"past the end", "/pieces/" + testTask + "/3", 404, nil},
		{"unknown task", "/pieces/" + strings.Repeat("f", 64) + "/0", 404, nil},
		{"upper-case task id", "/pieces/" + strings.ToUpper(testTask) + "/0", 400, nil},
		{"short task id", "/pieces/abc/0", 400, nil},
		{"negative piece", "/pieces/" + testTask + "/-1", 400, nil},
		{"piece too large", "/pieces/" + testTask + "/99999999", 400, nil},
		{"no piece", "/pieces/" + testTask, 400, nil},
		{"other route", "/tasks", 404, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, body, hdr := get(t, base+c.path)
			if status != c.status {
				t.Fatalf("status %d, want %d (%s)", status, c.status, body)
			}
			if c.status == 200 {
				if !bytes.Equal(body, c.body) {
					t.Fatalf("got %d bytes that differ from the piece", len(body))
				}
				return
			}
			var e api.Error
			if err := json.Unmarshal(body, &e); err != nil || e.Error == "" || hdr.Get("Content-Type") != "application/json" {
				t.Fatalf("error answer is not JSON {error}: %q (%v)", body, err)
			}
		})
	}
	if s.Served() != 2 || s.Running() != 0 {
		t.Fatalf("served %d, running %d; want 2 and 0", s.Served(), s.Running())
	}
}

func TestUploadServerRefusesBeyondItsSlots(t *testing.T) {
	data := peertest.RandomBytes(2, 256<<10)
	// 32 KiB/s: the first upload takes seconds, holding the only slot.
	s := startUploads(t, UploadConfig{Pieces: heldFile(t, data, int64(len(data)), 0), Slots: 1, Limit: 32 << 10})
	url := fmt.Sprintf("http://%s/pieces/%s/0", s.Addr(), testTask)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	slow, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Body.Close()
	status, body, hdr := get(t, url)
	if status != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" {
		t.Fatalf("second upload: status %d, Retry-After %q (%s); want 503 with Retry-After", status, hdr.Get("Retry-After"), body)
	}
	if s.Refused() != 1 || s.Running() != 1 {
		t.Fatalf("refused %d, running %d; want 1 and 1", s.Refused(), s.Running())
	}
	// More slots (what a heartbeat's advice does): the next request is served.
	s.SetSlots(2)
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	req2, _ := http.NewRequestWithContext(ctx2, http.MethodGet, url, nil)
	second, err := http.DefaultClient.Do(req2)
	if err != nil {
		t.Fatal(err)
	}
	second.Body.Close()
	if second.StatusCode != http.StatusOK {
		t.Fatalf("with two slots: status %d, want 200", second.StatusCode)
	}
	// A download that goes away frees its slot.
	cancel()
	cancel2()
	deadline := time.Now().Add(5 * time.Second)
	for s.Running() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("slots still taken after the downloads went away: %d", s.Running())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestUploadServerRateLimit(t *testing.T) {
	data := peertest.RandomBytes(3, 384<<10)
	const limit = 256 << 10 // bytes/s; the burst (256 KiB) goes at once, the rest at the limit
	s := startUploads(t, UploadConfig{Pieces: heldFile(t, data, int64(len(data)), 0), Limit: limit})
	start := time.Now()
	status, body, _ := get(t, fmt.Sprintf("http://%s/pieces/%s/0", s.Addr(), testTask))
	took := time.Since(start)
	if status != 200 || !bytes.Equal(body, data) {
		t.Fatalf("status %d, %d bytes", status, len(body))
	}
	if want := 400 * time.Millisecond; took < want { // (384-256) KiB at 256 KiB/s = 0.5s
		t.Fatalf("384 KiB at 256 KiB/s took %s, want at least %s", took, want)
	}
}

func TestUploadServerRefusesATakenAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = NewUploadServer(UploadConfig{Addr: ln.Addr().String(), Pieces: NewStore()})
	if err == nil || !strings.Contains(err.Error(), "already in use") {
		t.Fatalf("binding a taken address: %v; want an 'already in use' error", err)
	}
}
