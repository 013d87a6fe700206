package storage

import (
	"bytes"
	"errors"
	"slices"
	"testing"
)

func TestStorePieceComputesTheDigestItStoresUnder(t *testing.T) {
	root := t.TempDir()
	l := openAt(t, root, nil)
	id := tid("store-piece")
	b, sum := data(21, 300_000)
	got, err := l.StorePiece(id, 1, 0, bytes.NewReader(b), int64(len(b)))
	if err != nil || got != sum {
		t.Fatalf("StorePiece = %x, %v; want %x", got[:4], err, sum[:4])
	}
	if infos, _ := l.PieceInfos(id, 1); len(infos) != 1 || infos[0].Digest != sum || infos[0].Size != int64(len(b)) {
		t.Fatalf("PieceInfos = %+v", infos)
	}
	if back := readPiece(t, l, id, 1, 0); !bytes.Equal(back, b) {
		t.Fatal("read back differs")
	}
	// The same bytes again: one file, the same digest; WritePiece agrees with it.
	files := pieceFiles(t, l, id, 1)
	if got, err := l.StorePiece(id, 1, 0, bytes.NewReader(b), int64(len(b))); err != nil || got != sum {
		t.Fatalf("StorePiece again = %x, %v", got[:4], err)
	}
	if err := l.WritePiece(id, 1, 0, bytes.NewReader(b), int64(len(b)), sum); err != nil {
		t.Fatal(err)
	}
	if now := pieceFiles(t, l, id, 1); !slices.Equal(now, files) || l.UsedBytes() != int64(len(b)) {
		t.Fatalf("files %v (used %d) after storing the same piece again, want %v", now, l.UsedBytes(), files)
	}
	// Other bytes replace it; a short reader stores nothing.
	c, csum := data(22, 1000)
	if got, err := l.StorePiece(id, 1, 0, bytes.NewReader(c), int64(len(c))); err != nil || got != csum {
		t.Fatalf("StorePiece(replacement) = %x, %v", got[:4], err)
	}
	if back := readPiece(t, l, id, 1, 0); !bytes.Equal(back, c) {
		t.Fatal("the replacement is not what is served")
	}
	if _, err := l.StorePiece(id, 1, 1, bytes.NewReader(c[:10]), int64(len(c))); !errors.Is(err, ErrSizeMismatch) {
		t.Fatalf("StorePiece of a short reader: %v, want ErrSizeMismatch", err)
	}
	if ok, _ := l.HasPiece(id, 1, 1); ok || len(tempFiles(t, root)) > 0 {
		t.Fatal("a failed StorePiece left a piece or a temp file")
	}
}
