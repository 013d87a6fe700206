package storage

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// tid returns a valid task ID derived from s.
func tid(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// data returns size pseudo-random bytes (seeded: the same seed gives the same bytes) and
// their SHA-256.
func data(seed uint64, size int) ([]byte, [32]byte) {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, size)
	for i := 0; i+8 <= size; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := size &^ 7; i < size; i++ {
		b[i] = byte(r.Uint32())
	}
	return b, sha256.Sum256(b)
}

// clock is a manual clock for last-access times.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward and returns the new time.
func (c *clock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}

func openAt(tb testing.TB, root string, c *clock) *Local {
	tb.Helper()
	cfg := Config{Root: root}
	if c != nil {
		cfg.Now = c.Now
	}
	l, err := OpenConfig(cfg)
	if err != nil {
		tb.Fatalf("Open(%s): %v", root, err)
	}
	tb.Cleanup(func() { l.Close() })
	return l
}

func mustWrite(tb testing.TB, l *Local, id string, gen uint64, n uint32, b []byte) {
	tb.Helper()
	if err := l.WritePiece(id, gen, n, bytes.NewReader(b), int64(len(b)), sha256.Sum256(b)); err != nil {
		tb.Fatalf("WritePiece(%.8s, g%d, %d): %v", id, gen, n, err)
	}
}

// readPiece reads a whole piece through OpenPiece and checks the size it announced.
func readPiece(tb testing.TB, l *Local, id string, gen uint64, n uint32) []byte {
	tb.Helper()
	rc, size, err := l.OpenPiece(id, gen, n)
	if err != nil {
		tb.Fatalf("OpenPiece(%.8s, g%d, %d): %v", id, gen, n, err)
	}
	defer rc.Close()
	if _, ok := rc.(*os.File); !ok {
		tb.Errorf("OpenPiece returned %T, want *os.File (sendfile)", rc)
	}
	b, err := io.ReadAll(rc)
	if err != nil {
		tb.Fatalf("reading piece: %v", err)
	}
	if int64(len(b)) != size {
		tb.Fatalf("piece %d: read %d bytes, OpenPiece said %d", n, len(b), size)
	}
	return b
}

// entry is what a user sees of one file or directory under the root.
type entry struct {
	info fs.FileInfo
}

// walk lists everything under root (not root itself, nor the lock file), by
// slash-separated relative path.
func walk(tb testing.TB, root string) map[string]entry {
	tb.Helper()
	out := make(map[string]entry)
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path == root || path == filepath.Join(root, lockName) {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		out[filepath.ToSlash(rel)] = entry{info}
		return nil
	})
	if err != nil {
		tb.Fatalf("walking %s: %v", root, err)
	}
	return out
}

// diskBytes sums the sizes of the piece and meta files under root: what UsedBytes must say.
func diskBytes(tb testing.TB, root string) int64 {
	tb.Helper()
	var total int64
	for path, e := range walk(tb, root) {
		name := filepath.Base(path)
		if e.info.Mode().IsRegular() && (strings.HasSuffix(name, pieceSuffix) || name == metaName) {
			total += e.info.Size()
		}
	}
	return total
}

// tempFiles lists the temporary files under root.
func tempFiles(tb testing.TB, root string) []string {
	tb.Helper()
	var out []string
	for path := range walk(tb, root) {
		if strings.HasPrefix(filepath.Base(path), tmpPrefix) {
			out = append(out, path)
		}
	}
	return out
}

// pieceFiles lists the piece files of one generation directory (names only).
func pieceFiles(tb testing.TB, l *Local, id string, gen uint64) []string {
	tb.Helper()
	entries, err := os.ReadDir(l.genDir(id, gen))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		tb.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func u32s(ns ...int) []uint32 {
	out := make([]uint32, len(ns))
	for i, n := range ns {
		out[i] = uint32(n)
	}
	return out
}

func itoa(i int) string { return strconv.Itoa(i) }

// failReader fails the test if WritePiece reads it: for calls that must be refused first.
type failReader struct{ tb testing.TB }

func (f failReader) Read([]byte) (int, error) {
	f.tb.Errorf("the reader was read by a call that should have been refused")
	return 0, io.EOF
}
