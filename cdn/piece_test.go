package cdn

import "testing"

func TestPieceSizeRule(t *testing.T) {
	const MiB, GiB = int64(1 << 20), int64(1 << 30)
	cases := []struct {
		length, override, wantSize, wantCount int64
	}{
		{-1, 0, 4 * MiB, -1},          // chunked: unknown length
		{0, 0, 4 * MiB, 0},            // empty file
		{1, 0, 4 * MiB, 1},            // tiny file: one short piece
		{100 * MiB, 0, 4 * MiB, 25},   // ordinary
		{8 * GiB, 0, 4 * MiB, 2048},   // the last size with 4 MiB pieces
		{8*GiB + 1, 0, 8 * MiB, 1025}, // doubles to stay within 2,048
		{100 * GiB, 0, 64 * MiB, 1600},
		{1024 * GiB, 0, 64 * MiB, 16384},   // capped size: more pieces, still bounded
		{100 * MiB, 1 * MiB, 1 * MiB, 100}, // --piece-size wins
	}
	for _, c := range cases {
		size := PieceSize(c.length, c.override)
		if size != c.wantSize || PieceCount(c.length, size) != c.wantCount {
			t.Errorf("length %d override %d: size %d count %d, want %d and %d",
				c.length, c.override, size, PieceCount(c.length, size), c.wantSize, c.wantCount)
		}
	}
}
