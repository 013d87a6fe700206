package storage

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

func TestWriteReadRoundTrip(t *testing.T) {
	root := t.TempDir()
	l := openAt(t, root, nil)
	id := tid("round-trip")
	sizes := []int{0, 1, 4096, 1<<20 + 3}
	var total int64
	for i, size := range sizes {
		b, _ := data(uint64(i), size)
		// A reader that returns one byte at a time must work as well as a bulk one.
		r := io.Reader(bytes.NewReader(b))
		if i == 2 {
			r = iotest.OneByteReader(r)
		}
		if err := l.WritePiece(id, 1, uint32(i), r, int64(size), sha256.Sum256(b)); err != nil {
			t.Fatalf("WritePiece(%d bytes): %v", size, err)
		}
		total += int64(size)
		if got := readPiece(t, l, id, 1, uint32(i)); !bytes.Equal(got, b) {
			t.Fatalf("piece %d: read back %d bytes that differ from the %d written", i, len(got), size)
		}
	}
	if ok, err := l.HasPiece(id, 1, 3); !ok || err != nil {
		t.Errorf("HasPiece(3) = %v, %v; want true", ok, err)
	}
	if ok, _ := l.HasPiece(id, 1, 4); ok {
		t.Errorf("HasPiece(4) = true for a piece never written")
	}
	if ok, _ := l.HasPiece(id, 2, 0); ok {
		t.Errorf("HasPiece(gen 2) = true; pieces belong to generation 1")
	}
	if got, _ := l.Pieces(id, 1); !slices.Equal(got, u32s(0, 1, 2, 3)) {
		t.Errorf("Pieces = %v, want [0 1 2 3]", got)
	}
	infos, _ := l.PieceInfos(id, 1)
	for i, p := range infos {
		b, sum := data(uint64(i), sizes[i])
		if p.N != uint32(i) || p.Size != int64(len(b)) || p.Digest != sum {
			t.Errorf("PieceInfos[%d] = {%d %d %x}, want {%d %d %x}", i, p.N, p.Size, p.Digest[:4], i, len(b), sum[:4])
		}
	}
	if _, _, err := l.OpenPiece(id, 1, 9); !errors.Is(err, ErrNotFound) {
		t.Errorf("OpenPiece(absent) = %v, want ErrNotFound", err)
	}
	if got := l.UsedBytes(); got != total || got != diskBytes(t, root) {
		t.Errorf("UsedBytes = %d, want %d (on disk: %d)", got, total, diskBytes(t, root))
	}
	if tmp := tempFiles(t, root); len(tmp) > 0 {
		t.Errorf("temporary files left: %v", tmp)
	}
}

func TestWritePieceDigestMismatchStoresNothing(t *testing.T) {
	root := t.TempDir()
	l := openAt(t, root, nil)
	id := tid("bad-digest")
	b, sum := data(1, 64<<10)
	sum[0] ^= 1
	err := l.WritePiece(id, 1, 0, bytes.NewReader(b), int64(len(b)), sum)
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("WritePiece with a wrong digest = %v, want ErrDigestMismatch", err)
	}
	if got := walk(t, root); len(got) != 0 {
		t.Errorf("a refused piece left %d entries on disk: %v", len(got), keys(got))
	}
	if l.UsedBytes() != 0 {
		t.Errorf("UsedBytes = %d after a refused piece, want 0", l.UsedBytes())
	}
	if ok, _ := l.HasPiece(id, 1, 0); ok {
		t.Errorf("HasPiece = true after a refused piece")
	}
	if tasks, _ := l.Tasks(); len(tasks) != 0 {
		t.Errorf("Tasks = %v after a refused piece, want none", tasks)
	}

	// With the right piece stored, wrong bytes for it are refused and leave it intact.
	mustWrite(t, l, id, 1, 0, b)
	bad := bytes.Clone(b)
	bad[100] ^= 0xff
	if err := l.WritePiece(id, 1, 0, bytes.NewReader(bad), int64(len(b)), sha256.Sum256(b)); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("wrong bytes for a stored piece = %v, want ErrDigestMismatch", err)
	}
	if got := readPiece(t, l, id, 1, 0); !bytes.Equal(got, b) {
		t.Errorf("the stored piece changed after a refused write")
	}
}

func TestWritePieceSizeMismatch(t *testing.T) {
	b, _ := data(2, 4096)
	id := tid("size")
	for _, tc := range []struct {
		name    string
		payload []byte // what the reader gives
		size    int64  // what the caller claims (and hashes, over the payload's first size bytes)
		meta    *Meta
		want    error
		noRead  bool // refused before reading
	}{
		{name: "short", payload: b[:1000], size: 2000, want: ErrSizeMismatch},
		{name: "long", payload: b, size: 1000, want: ErrSizeMismatch},
		{name: "empty reader", payload: nil, size: 10, want: ErrSizeMismatch},
		{name: "meta says 4096", payload: b[:100], size: 100, want: ErrSizeMismatch, noRead: true,
			meta: &Meta{Generation: 1, PieceSize: 4096, ContentLength: 3 * 4096}},
		{name: "past the end", payload: b[:100], size: 100, want: ErrInvalid, noRead: true,
			meta: &Meta{Generation: 1, PieceSize: 50, ContentLength: 100}},
		{name: "larger than the piece size", payload: b[:100], size: 100, want: ErrSizeMismatch, noRead: true,
			meta: &Meta{Generation: 1, PieceSize: 64, ContentLength: -1}},
		{name: "negative size", payload: nil, size: -1, want: ErrInvalid, noRead: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			l := openAt(t, root, nil)
			var metaBytes int64
			if tc.meta != nil {
				if err := l.PutMeta(id, *tc.meta); err != nil {
					t.Fatal(err)
				}
				metaBytes = l.UsedBytes()
			}
			before := walk(t, root)
			digest := sha256.Sum256(tc.payload[:min(int(max(tc.size, 0)), len(tc.payload))])
			var r io.Reader = bytes.NewReader(tc.payload)
			if tc.noRead {
				r = failReader{t}
			}
			n := uint32(2)
			err := l.WritePiece(id, 1, n, r, tc.size, digest)
			if !errors.Is(err, tc.want) {
				t.Fatalf("WritePiece = %v, want %v", err, tc.want)
			}
			if after := walk(t, root); len(after) != len(before) {
				t.Errorf("a refused piece changed the disk: %v -> %v", keys(before), keys(after))
			}
			if l.UsedBytes() != metaBytes {
				t.Errorf("UsedBytes = %d, want %d", l.UsedBytes(), metaBytes)
			}
		})
	}
}

func TestWriteIdenticalPieceIsNoOp(t *testing.T) {
	root := t.TempDir()
	l := openAt(t, root, nil)
	id := tid("identical")
	b, _ := data(3, 100_000)
	mustWrite(t, l, id, 1, 0, b)
	files := pieceFiles(t, l, id, 1)
	if len(files) != 1 {
		t.Fatalf("generation directory holds %v, want one piece file", files)
	}
	path := filepath.Join(l.genDir(id, 1), files[0])
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		mustWrite(t, l, id, 1, 0, b)
	}
	after, err := os.Stat(path)
	if err != nil {
		t.Fatalf("the piece file is gone after rewriting the same piece: %v", err)
	}
	if !os.SameFile(before, after) || !before.ModTime().Equal(after.ModTime()) {
		t.Errorf("rewriting an identical piece replaced its file")
	}
	if got := pieceFiles(t, l, id, 1); !slices.Equal(got, files) {
		t.Errorf("files after identical rewrites: %v, want %v", got, files)
	}
	if l.UsedBytes() != int64(len(b)) {
		t.Errorf("UsedBytes = %d, want %d", l.UsedBytes(), len(b))
	}

	// Different bytes with their own digest replace the piece: one file, new content.
	c, _ := data(4, 50_000)
	mustWrite(t, l, id, 1, 0, c)
	if got := readPiece(t, l, id, 1, 0); !bytes.Equal(got, c) {
		t.Errorf("after a replacement the old content is served")
	}
	if got := pieceFiles(t, l, id, 1); len(got) != 1 {
		t.Errorf("after a replacement the directory holds %v, want one file", got)
	}
	if l.UsedBytes() != int64(len(c)) || diskBytes(t, root) != int64(len(c)) {
		t.Errorf("UsedBytes = %d (disk %d), want %d", l.UsedBytes(), diskBytes(t, root), len(c))
	}
}

func TestBadArgumentsTouchNothing(t *testing.T) {
	root := t.TempDir()
	l := openAt(t, root, nil)
	good := tid("good")
	bad := []string{
		"",
		"../../etc",
		"../../etc/passwd",
		strings.Repeat("a", 63),
		strings.Repeat("a", 65),
		strings.ToUpper(good),
		"../" + good[3:],          // 64 characters, path-like
		good[:2] + "/" + good[3:], // 64 characters with a separator
		good[:63] + "\x00",
		good[:63] + "g",
		" " + good[1:],
	}
	b, sum := data(5, 10)
	for _, id := range bad {
		calls := map[string]error{}
		calls["WritePiece"] = l.WritePiece(id, 1, 0, failReader{t}, int64(len(b)), sum)
		_, _, calls["OpenPiece"] = l.OpenPiece(id, 1, 0)
		_, calls["HasPiece"] = l.HasPiece(id, 1, 0)
		_, calls["Pieces"] = l.Pieces(id, 1)
		_, calls["PieceInfos"] = l.PieceInfos(id, 1)
		calls["PutMeta"] = l.PutMeta(id, Meta{Generation: 1, PieceSize: -1, ContentLength: -1})
		_, calls["GetMeta"] = l.GetMeta(id)
		calls["DeleteTask"] = l.DeleteTask(id)
		calls["DeleteGeneration"] = l.DeleteGeneration(id, 1)
		calls["Touch"] = l.Touch(id)
		for name, err := range calls {
			if !errors.Is(err, ErrBadTaskID) {
				t.Errorf("%s(%q) = %v, want ErrBadTaskID", name, id, err)
			}
		}
	}
	// Other bad arguments with a good ID.
	if err := l.WritePiece(good, 0, 0, failReader{t}, 10, sum); !errors.Is(err, ErrInvalid) {
		t.Errorf("WritePiece(generation 0) = %v, want ErrInvalid", err)
	}
	if err := l.WritePiece(good, 1, 0, failReader{t}, MaxPieceSize+1, sum); !errors.Is(err, ErrInvalid) {
		t.Errorf("WritePiece(huge) = %v, want ErrInvalid", err)
	}
	for _, m := range []Meta{
		{Generation: 0, PieceSize: -1, ContentLength: -1},
		{Generation: 1, PieceSize: 0, ContentLength: -1},
		{Generation: 1, PieceSize: -1, ContentLength: -2},
	} {
		if err := l.PutMeta(good, m); !errors.Is(err, ErrInvalid) {
			t.Errorf("PutMeta(%+v) = %v, want ErrInvalid", m, err)
		}
	}
	if got := walk(t, root); len(got) != 0 {
		t.Errorf("refused calls created %v under the root", keys(got))
	}
	// Nothing escaped the root either: its parent holds only the root.
	if entries, _ := os.ReadDir(filepath.Dir(root)); len(entries) != 1 {
		t.Errorf("the root's parent holds %d entries, want only the root", len(entries))
	}
}

func TestDeleteTaskAndGeneration(t *testing.T) {
	root := t.TempDir()
	l := openAt(t, root, nil)
	a, b := tid("a"), tid("b")
	for n := range 3 {
		p, _ := data(uint64(n), 10_000)
		mustWrite(t, l, a, 1, uint32(n), p)
		mustWrite(t, l, a, 2, uint32(n), p)
		mustWrite(t, l, b, 1, uint32(n), p)
	}
	if err := l.PutMeta(a, Meta{Generation: 2, PieceSize: 10_000, ContentLength: 30_000}); err != nil {
		t.Fatal(err)
	}
	if err := l.PutMeta(b, Meta{Generation: 1, PieceSize: 10_000, ContentLength: 30_000}); err != nil {
		t.Fatal(err)
	}
	full := l.UsedBytes()

	// The old generation goes; the new one and the meta stay.
	if err := l.DeleteGeneration(a, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.genDir(a, 1)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("generation 1 directory still there: %v", err)
	}
	if got, _ := l.Pieces(a, 2); !slices.Equal(got, u32s(0, 1, 2)) {
		t.Errorf("Pieces(gen 2) = %v after deleting gen 1", got)
	}
	if _, err := l.GetMeta(a); err != nil {
		t.Errorf("GetMeta after DeleteGeneration: %v", err)
	}
	if got := l.UsedBytes(); got != full-30_000 || got != diskBytes(t, root) {
		t.Errorf("UsedBytes = %d, want %d (disk %d)", got, full-30_000, diskBytes(t, root))
	}

	if err := l.DeleteTask(a); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.taskDir(a)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("task directory still there after DeleteTask: %v", err)
	}
	if _, _, err := l.OpenPiece(a, 2, 0); !errors.Is(err, ErrNotFound) {
		t.Errorf("OpenPiece of a deleted task = %v, want ErrNotFound", err)
	}
	if _, err := l.GetMeta(a); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetMeta of a deleted task = %v, want ErrNotFound", err)
	}
	if err := l.Touch(a); !errors.Is(err, ErrNotFound) {
		t.Errorf("Touch of a deleted task = %v, want ErrNotFound", err)
	}
	tasks, _ := l.Tasks()
	if len(tasks) != 1 || tasks[0].TaskID != b {
		t.Errorf("Tasks = %v, want only b", tasks)
	}
	if got := l.UsedBytes(); got != tasks[0].Bytes || got != diskBytes(t, root) {
		t.Errorf("UsedBytes = %d, want b's %d (disk %d)", got, tasks[0].Bytes, diskBytes(t, root))
	}
	if err := l.DeleteTask(a); err != nil {
		t.Errorf("deleting a deleted task = %v, want nil", err)
	}
	if err := l.DeleteGeneration(b, 7); err != nil {
		t.Errorf("deleting an unknown generation = %v, want nil", err)
	}

	// The deletion survives a restart.
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l2 := openAt(t, root, nil)
	if tasks, _ := l2.Tasks(); len(tasks) != 1 || tasks[0].TaskID != b {
		t.Errorf("after reopening, Tasks = %v, want only b", tasks)
	}
	if l2.UsedBytes() != l.UsedBytes() {
		t.Errorf("after reopening, UsedBytes = %d, want %d", l2.UsedBytes(), l.UsedBytes())
	}
}

func TestTasksUsageAndLastAccess(t *testing.T) {
	root := t.TempDir()
	c := newClock()
	l := openAt(t, root, c)
	a, b, cc := tid("a"), tid("b"), tid("c")
	t0 := c.Now()
	pa, _ := data(1, 1000)
	mustWrite(t, l, a, 1, 0, pa)
	mustWrite(t, l, a, 1, 1, pa[:500])
	mustWrite(t, l, a, 3, 0, pa[:10])
	if err := l.PutMeta(a, Meta{Generation: 3, URL: "http://o/a", PieceSize: -1, ContentLength: -1}); err != nil {
		t.Fatal(err)
	}
	metaA := l.UsedBytes() - 1510
	t1 := c.Advance(time.Minute)
	mustWrite(t, l, b, 1, 0, pa)
	if err := l.PutMeta(b, Meta{Generation: 1, URL: "http://o/b", PieceSize: 1000, ContentLength: 1000}); err != nil {
		t.Fatal(err)
	}
	t2 := c.Advance(time.Minute)
	mustWrite(t, l, cc, 1, 0, pa) // no meta

	t3 := c.Advance(time.Minute)
	if err := l.Touch(a); err != nil {
		t.Fatal(err)
	}
	tasks, err := l.Tasks()
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		id     string
		bytes  int64
		pieces int
		gens   []uint64
		meta   bool
		access time.Time
	}
	var got []row
	for _, u := range tasks {
		got = append(got, row{u.TaskID, u.Bytes, u.Pieces, u.Generations, u.HasMeta, u.LastAccess})
	}
	want := []row{
		{b, 1000 + l.tasks[b].metaBytes, 1, []uint64{1}, true, t1},
		{cc, 1000, 1, []uint64{1}, false, t2},
		{a, 1510 + metaA, 3, []uint64{1, 3}, true, t3},
	}
	if len(got) != len(want) {
		t.Fatalf("Tasks = %+v, want %+v", got, want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.id != w.id || g.bytes != w.bytes || g.pieces != w.pieces || !slices.Equal(g.gens, w.gens) ||
			g.meta != w.meta || !g.access.Equal(w.access) {
			t.Errorf("Tasks[%d] = %+v, want %+v", i, g, w)
		}
	}
	if t0.Equal(t3) {
		t.Fatal("clock did not move")
	}

	// Reading a piece is an access too.
	t4 := c.Advance(time.Minute)
	readPiece(t, l, b, 1, 0)
	if m, _ := l.GetMeta(b); !m.LastAccess.Equal(t4) {
		t.Errorf("GetMeta(b).LastAccess = %v after a read at %v", m.LastAccess, t4)
	}

	// Flush persists the accesses: a restart sees them.
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l2 := openAt(t, root, c)
	for id, want := range map[string]time.Time{a: t3, b: t4} {
		m, err := l2.GetMeta(id)
		if err != nil || !m.LastAccess.Equal(want) {
			t.Errorf("after restart GetMeta(%.8s) = %v, %v; want LastAccess %v", id, m.LastAccess, err, want)
		}
	}
	if l2.UsedBytes() != diskBytes(t, root) {
		t.Errorf("after restart UsedBytes = %d, disk %d", l2.UsedBytes(), diskBytes(t, root))
	}
}

func TestPutMetaRoundTrip(t *testing.T) {
	root := t.TempDir()
	c := newClock()
	l := openAt(t, root, c)
	id := tid("meta")
	if _, err := l.GetMeta(id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetMeta before PutMeta = %v, want ErrNotFound", err)
	}
	m := Meta{Generation: 4, URL: "https://origin/file?a=1", PieceSize: 4 << 20, ContentLength: 10 << 20,
		ETag: `"abc"`, LastModified: "Mon, 02 Jan 2006 15:04:05 GMT", Complete: true}
	if err := l.PutMeta(id, m); err != nil {
		t.Fatal(err)
	}
	got, err := l.GetMeta(id)
	if err != nil {
		t.Fatal(err)
	}
	m.LastAccess = c.Now() // a zero LastAccess means "now" for a new task
	if got != m {
		t.Errorf("GetMeta = %+v, want %+v", got, m)
	}
	if m.PieceCount() != 3 {
		t.Errorf("PieceCount = %d, want 3", m.PieceCount())
	}
	if tasks, _ := l.Tasks(); len(tasks) != 1 || tasks[0].Pieces != 0 || !tasks[0].HasMeta {
		t.Errorf("a task with only a meta: Tasks = %+v", tasks)
	}
	// Replacing the meta leaves one meta.json and accounts its new size.
	m.URL = "https://origin/a/much/longer/url/than/before"
	if err := l.PutMeta(id, m); err != nil {
		t.Fatal(err)
	}
	if got := l.UsedBytes(); got != diskBytes(t, root) {
		t.Errorf("UsedBytes = %d, disk %d", got, diskBytes(t, root))
	}
	if tmp := tempFiles(t, root); len(tmp) > 0 {
		t.Errorf("temporary files left: %v", tmp)
	}
}

func TestOpenPieceDropsADamagedFile(t *testing.T) {
	root := t.TempDir()
	l := openAt(t, root, nil)
	id := tid("damaged")
	b, _ := data(9, 8192)
	mustWrite(t, l, id, 1, 0, b)
	mustWrite(t, l, id, 1, 1, b)
	files := pieceFiles(t, l, id, 1)
	// Something outside the driver truncates piece 0.
	if err := os.Truncate(filepath.Join(l.genDir(id, 1), files[0]), 10); err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.OpenPiece(id, 1, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("OpenPiece(truncated) = %v, want ErrNotFound", err)
	}
	if ok, _ := l.HasPiece(id, 1, 0); ok {
		t.Errorf("a truncated piece is still listed")
	}
	if l.UsedBytes() != 8192 || diskBytes(t, root) != 8192 {
		t.Errorf("UsedBytes = %d (disk %d), want 8192", l.UsedBytes(), diskBytes(t, root))
	}
	// It can be written again.
	mustWrite(t, l, id, 1, 0, b)
	if got := readPiece(t, l, id, 1, 0); !bytes.Equal(got, b) {
		t.Errorf("rewritten piece differs")
	}
}

func keys(m map[string]entry) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
