package storage

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"slices"
	"sync"
	"testing"
)

// TestConcurrentWriters: many writers of the same piece and of different pieces, with
// readers polling, all at once. Every correct write succeeds, each piece is stored once, and
// what is served and counted matches what is on disk.
func TestConcurrentWriters(t *testing.T) {
	root := t.TempDir()
	l := openAt(t, root, nil)
	id := tid("concurrent")
	const writers, pieces, size = 8, 8, 256 << 10
	contents := make([][]byte, pieces)
	for n := range contents {
		contents[n], _ = data(uint64(n), size)
	}
	var wg sync.WaitGroup
	errs := make(chan error, writers*pieces)
	for w := range writers {
		for n := range pieces {
			wg.Go(func() {
				// Every writer writes every piece; half of them start from the last piece.
				if w%2 == 1 {
					n = pieces - 1 - n
				}
				b := contents[n]
				errs <- l.WritePiece(id, 1, uint32(n), bytes.NewReader(b), size, sha256.Sum256(b))
			})
		}
	}
	for range 4 {
		wg.Go(func() {
			for i := range 200 {
				n := uint32(i % pieces)
				rc, sz, err := l.OpenPiece(id, 1, n)
				if errors.Is(err, ErrNotFound) {
					continue
				}
				if err != nil {
					errs <- err
					return
				}
				got, err := io.ReadAll(rc)
				rc.Close()
				if err != nil || int64(len(got)) != sz || !bytes.Equal(got, contents[n]) {
					t.Errorf("a reader saw %d bytes of piece %d that differ from the written ones (%v)", len(got), n, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent write or read: %v", err)
		}
	}
	if got, _ := l.Pieces(id, 1); !slices.Equal(got, u32s(0, 1, 2, 3, 4, 5, 6, 7)) {
		t.Errorf("Pieces = %v", got)
	}
	if files := pieceFiles(t, l, id, 1); len(files) != pieces {
		t.Errorf("generation directory holds %d files, want %d: %v", len(files), pieces, files)
	}
	for n := range pieces {
		if got := readPiece(t, l, id, 1, uint32(n)); !bytes.Equal(got, contents[n]) {
			t.Errorf("piece %d differs", n)
		}
	}
	if got := l.UsedBytes(); got != pieces*size || got != diskBytes(t, root) {
		t.Errorf("UsedBytes = %d, want %d (disk %d)", got, pieces*size, diskBytes(t, root))
	}
	if tmp := tempFiles(t, root); len(tmp) > 0 {
		t.Errorf("temporary files left: %v", tmp)
	}
}

// TestConcurrentDifferentVersionsOfAPiece: writers racing with two different contents for
// one piece (each with its own digest) all succeed, and exactly one version is kept whole.
func TestConcurrentDifferentVersionsOfAPiece(t *testing.T) {
	root := t.TempDir()
	l := openAt(t, root, nil)
	id := tid("versions")
	x, dx := data(1, 100_000)
	y, dy := data(2, 120_000)
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			b, d := x, dx
			if i%2 == 1 {
				b, d = y, dy
			}
			if err := l.WritePiece(id, 1, 0, bytes.NewReader(b), int64(len(b)), d); err != nil {
				t.Errorf("writer %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	got := readPiece(t, l, id, 1, 0)
	if !bytes.Equal(got, x) && !bytes.Equal(got, y) {
		t.Fatalf("the kept piece (%d bytes) is neither version", len(got))
	}
	if files := pieceFiles(t, l, id, 1); len(files) != 1 {
		t.Errorf("generation directory holds %v, want one file", files)
	}
	if l.UsedBytes() != int64(len(got)) || diskBytes(t, root) != int64(len(got)) {
		t.Errorf("UsedBytes = %d (disk %d), want %d", l.UsedBytes(), diskBytes(t, root), len(got))
	}
}

// TestConcurrentDeleteAndWrite: deletes racing with writes of the same task. A write
// either succeeds or reports ErrDeleted, and in the end the index, UsedBytes and the disk
// agree, also after a restart.
func TestConcurrentDeleteAndWrite(t *testing.T) {
	root := t.TempDir()
	l := openAt(t, root, nil)
	ids := []string{tid("del-1"), tid("del-2")}
	b, d := data(5, 32<<10)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 40 {
				id := ids[(w+i)%2]
				err := l.WritePiece(id, uint64(1+i%2), uint32(i%5), bytes.NewReader(b), int64(len(b)), d)
				if err != nil && !errors.Is(err, ErrDeleted) {
					t.Errorf("WritePiece: %v", err)
				}
				if i%7 == 0 {
					if err := l.PutMeta(id, Meta{Generation: 1, PieceSize: -1, ContentLength: -1}); err != nil {
						t.Errorf("PutMeta: %v", err)
					}
				}
			}
		})
	}
	wg.Go(func() {
		for i := range 30 {
			id := ids[i%2]
			var err error
			if i%3 == 0 {
				err = l.DeleteGeneration(id, 2)
			} else {
				err = l.DeleteTask(id)
			}
			if err != nil {
				t.Errorf("delete: %v", err)
			}
			_ = l.Touch(id)
			_, _ = l.Tasks()
		}
	})
	wg.Wait()

	if tmp := tempFiles(t, root); len(tmp) > 0 {
		t.Errorf("temporary files left: %v", tmp)
	}
	if got, disk := l.UsedBytes(), diskBytes(t, root); got != disk {
		t.Errorf("UsedBytes = %d, disk holds %d", got, disk)
	}
	var sum int64
	tasks, _ := l.Tasks()
	for _, u := range tasks {
		sum += u.Bytes
		for _, gen := range u.Generations {
			ns, _ := l.Pieces(u.TaskID, gen)
			for _, n := range ns {
				if got := readPiece(t, l, u.TaskID, gen, n); !bytes.Equal(got, b) {
					t.Errorf("piece %d of generation %d differs", n, gen)
				}
			}
		}
	}
	if sum != l.UsedBytes() {
		t.Errorf("Tasks' bytes sum to %d, UsedBytes = %d", sum, l.UsedBytes())
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l2 := openAt(t, root, nil)
	if l2.UsedBytes() != l.UsedBytes() {
		t.Errorf("after restart UsedBytes = %d, want %d", l2.UsedBytes(), l.UsedBytes())
	}
	tasks2, _ := l2.Tasks()
	if len(tasks2) != len(tasks) {
		t.Errorf("after restart %d tasks, want %d", len(tasks2), len(tasks))
	}
}
