package storage

import (
	"bytes"
	"crypto/sha256"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestOpenRepairsWhatACrashLeaves builds by hand what a crash (or a damaged disk) can leave
// in the layout, then checks what a restarted member serves.
func TestOpenRepairsWhatACrashLeaves(t *testing.T) {
	root := t.TempDir()
	const ps = 4096
	l := openAt(t, root, nil)
	a := tid("crash-a")
	p0, _ := data(10, ps)
	p1, _ := data(11, ps)
	mustWrite(t, l, a, 1, 0, p0)
	mustWrite(t, l, a, 1, 1, p1)
	if err := l.PutMeta(a, Meta{Generation: 1, PieceSize: ps, ContentLength: 4 * ps}); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	want := diskBytes(t, root)

	write := func(path string, b []byte) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	g1 := l.genDir(a, 1)
	// A piece write cut before its rename: a temporary file.
	write(filepath.Join(g1, tmpPrefix+"2-123456"), p0[:1000])
	// A meta write cut before its rename.
	write(filepath.Join(l.taskDir(a), tmpPrefix+metaName+"-99"), []byte(`{"v":1,"gen`))
	// A truncated piece: its name says 4096 bytes, the file has 100.
	p3, d3 := data(13, ps)
	write(filepath.Join(g1, pieceName(3, ps, d3)), p3[:100])
	// A piece consistent with its own name but shorter than the meta says piece 2 is.
	write(filepath.Join(g1, pieceName(2, 100, sha256.Sum256(p3[:100]))), p3[:100])
	// An empty generation directory and an empty task directory.
	if err := os.MkdirAll(l.genDir(a, 5), 0o700); err != nil {
		t.Fatal(err)
	}
	empty := tid("crash-empty")
	if err := os.MkdirAll(l.taskDir(empty), 0o700); err != nil {
		t.Fatal(err)
	}
	// Two files for one piece of another task (no meta): neither can be trusted.
	b := tid("crash-b")
	q, dq := data(20, 500)
	r, dr := data(21, 600)
	write(filepath.Join(l.genDir(b, 1), pieceName(0, 500, dq)), q)
	write(filepath.Join(l.genDir(b, 1), pieceName(0, 600, dr)), r)
	write(filepath.Join(l.genDir(b, 1), pieceName(1, 600, dr)), r) // a good one
	want += 600
	// A delete cut after its rename: only trash is left.
	write(filepath.Join(l.fanoutDir(a), trashPrefix+tid("gone")+"-1", "g1", pieceName(0, 500, dq)), q)
	// Something that is not ours at the root: left alone.
	write(filepath.Join(root, "README"), []byte("not a cache file"))

	l2 := openAt(t, root, nil)
	if tmp := tempFiles(t, root); len(tmp) > 0 {
		t.Errorf("temporary files survived Open: %v", tmp)
	}
	for path := range walk(t, root) {
		if strings.Contains(path, trashPrefix) {
			t.Errorf("deleted files survived Open: %s", path)
		}
	}
	if got, _ := l2.Pieces(a, 1); !slices.Equal(got, u32s(0, 1)) {
		t.Errorf("Pieces(a) = %v, want [0 1] (truncated 3 and short 2 dropped)", got)
	}
	if got := pieceFiles(t, l2, a, 1); len(got) != 2 {
		t.Errorf("task a's generation directory holds %v, want the two complete pieces", got)
	}
	if got := readPiece(t, l2, a, 1, 0); !bytes.Equal(got, p0) {
		t.Errorf("piece 0 differs after recovery")
	}
	if got := readPiece(t, l2, a, 1, 1); !bytes.Equal(got, p1) {
		t.Errorf("piece 1 differs after recovery")
	}
	if m, err := l2.GetMeta(a); err != nil || m.ContentLength != 4*ps {
		t.Errorf("GetMeta(a) = %+v, %v after recovery", m, err)
	}
	if got, _ := l2.Pieces(b, 1); !slices.Equal(got, u32s(1)) {
		t.Errorf("Pieces(b) = %v, want [1] (the doubled piece 0 dropped)", got)
	}
	for _, dir := range []string{l.genDir(a, 5), l.taskDir(empty)} {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("empty directory %s survived Open: %v", dir, err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "README")); err != nil {
		t.Errorf("a file that is not ours was touched: %v", err)
	}
	if got := l2.UsedBytes(); got != want || got != diskBytes(t, root) {
		t.Errorf("UsedBytes = %d, want %d (disk %d)", got, want, diskBytes(t, root))
	}
	tasks, _ := l2.Tasks()
	if len(tasks) != 2 {
		t.Errorf("Tasks = %+v, want a and b", tasks)
	}
}

// TestRestartServesTheSameWithoutWriting: a clean restart rebuilds the same pieces, metas
// and usage, and writes nothing (no file created, removed or modified).
func TestRestartServesTheSameWithoutWriting(t *testing.T) {
	root := t.TempDir()
	c := newClock()
	l := openAt(t, root, c)
	ids := []string{tid("r1"), tid("r2"), tid("r3")}
	contents := map[string][][]byte{}
	for i, id := range ids {
		for n := range 4 {
			b, _ := data(uint64(100*i+n), 3000+n)
			mustWrite(t, l, id, uint64(i+1), uint32(n), b)
			contents[id] = append(contents[id], b)
		}
		if i < 2 { // the third task has no meta
			m := Meta{Generation: uint64(i + 1), URL: "http://o/" + itoa(i), PieceSize: -1, ContentLength: -1, ETag: `"e"`}
			if err := l.PutMeta(id, m); err != nil {
				t.Fatal(err)
			}
		}
		c.Advance(time.Second)
	}
	if err := l.Touch(ids[0]); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	wantUsed := l.UsedBytes()
	before := walk(t, root)

	l2 := openAt(t, root, c)
	if got := l2.UsedBytes(); got != wantUsed {
		t.Errorf("UsedBytes after restart = %d, want %d", got, wantUsed)
	}
	for i, id := range ids {
		gen := uint64(i + 1)
		got, _ := l2.Pieces(id, gen)
		if !slices.Equal(got, u32s(0, 1, 2, 3)) {
			t.Errorf("task %d: Pieces = %v after restart", i, got)
		}
		infosBefore, _ := l.PieceInfos(id, gen)
		infosAfter, _ := l2.PieceInfos(id, gen)
		if !slices.Equal(infosBefore, infosAfter) {
			t.Errorf("task %d: PieceInfos differ after restart", i)
		}
		m1, err1 := l.GetMeta(id)
		m2, err2 := l2.GetMeta(id)
		if (err1 == nil) != (err2 == nil) || !m1.LastAccess.Equal(m2.LastAccess) {
			t.Errorf("task %d: meta %+v/%v before, %+v/%v after", i, m1, err1, m2, err2)
		}
		m1.LastAccess, m2.LastAccess = time.Time{}, time.Time{}
		if m1 != m2 {
			t.Errorf("task %d: meta %+v before, %+v after", i, m1, m2)
		}
		// Reading is an access (in memory): compare the metas first.
		for n, want := range contents[id] {
			if got := readPiece(t, l2, id, gen, uint32(n)); !bytes.Equal(got, want) {
				t.Errorf("task %d piece %d differs after restart", i, n)
			}
		}
	}
	after := walk(t, root)
	if len(after) != len(before) {
		t.Errorf("restart changed the tree: %v -> %v", keys(before), keys(after))
	}
	for path, b := range before {
		a, ok := after[path]
		if !ok {
			t.Errorf("%s disappeared on restart", path)
			continue
		}
		if !os.SameFile(a.info, b.info) || a.info.Size() != b.info.Size() || !a.info.ModTime().Equal(b.info.ModTime()) {
			t.Errorf("%s was rewritten on restart", path)
		}
	}
}

func TestOpenVerifyDigestsDropsRottenPieces(t *testing.T) {
	root := t.TempDir()
	l := openAt(t, root, nil)
	id := tid("rot")
	b, _ := data(30, 5000)
	mustWrite(t, l, id, 1, 0, b)
	mustWrite(t, l, id, 1, 1, b)
	path := filepath.Join(l.genDir(id, 1), pieceFiles(t, l, id, 1)[0])
	rotten := bytes.Clone(b)
	rotten[42] ^= 0x80
	if err := os.WriteFile(path, rotten, 0o600); err != nil { // same size, other bytes
		t.Fatal(err)
	}
	l.Close()
	// A plain Open checks sizes only, and keeps it (peers verify digests on receipt).
	plain := openAt(t, root, nil)
	if got, _ := plain.Pieces(id, 1); len(got) != 2 {
		t.Fatalf("plain Open: Pieces = %v, want both", got)
	}
	plain.Close()
	l2, err := OpenConfig(Config{Root: root, VerifyDigests: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	got, _ := l2.Pieces(id, 1)
	if len(got) != 1 {
		t.Fatalf("Open with VerifyDigests: Pieces = %v, want the good one only", got)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("the rotten piece file is still there: %v", err)
	}
	if l2.UsedBytes() != 5000 {
		t.Errorf("UsedBytes = %d, want 5000", l2.UsedBytes())
	}
}

func TestOpenRejectsAFileAsRoot(t *testing.T) {
	path := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, nil); err == nil {
		t.Errorf("Open on a regular file succeeded")
	}
	if _, err := Open("", nil); err == nil || !strings.Contains(err.Error(), "root") {
		t.Errorf("Open(\"\") = %v, want an error about the root", err)
	}
}

// TestOpenLocksTheRoot: a second driver on a root in use is refused (it would remove the
// first one's writes in progress); after Close it opens.
func TestOpenLocksTheRoot(t *testing.T) {
	root := t.TempDir()
	l := openAt(t, root, nil)
	id := tid("locked")
	mustWrite(t, l, id, 1, 0, []byte("piece"))
	if l2, err := Open(root, nil); err == nil {
		l2.Close()
		t.Fatal("a second Open of a root in use succeeded")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("a second Close = %v, want nil", err)
	}
	l2 := openAt(t, root, nil)
	if ok, _ := l2.HasPiece(id, 1, 0); !ok {
		t.Errorf("the piece is missing after Close and Open")
	}
}
