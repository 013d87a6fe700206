// Package cdn owns a member's CDN role: which tasks it owns (the ring over live members),
// fetching them once from the origin, storing and serving their pieces. Its parts live in
// subpackages: ring (ownership), source (origins), storage (pieces on disk).
package cdn

// The piece-size rule. Pieces are a few MiB for ordinary files, so that peers start
// exchanging early and a failed piece costs little; for huge files the size doubles so that
// a task stays within TargetPieces pieces (bounding the piece map and every scheduling
// answer), up to MaxPieceSize.
const (
	DefaultPieceSize = 4 << 20  // files up to 8 GiB: 4 MiB pieces, at most 2,048
	MaxPieceSize     = 64 << 20 // the largest automatic size (files over 128 GiB exceed TargetPieces)
	TargetPieces     = 2048
)

// PieceSize returns the piece size for a file of contentLength bytes (-1: unknown, as with
// a chunked origin answer). A positive override (--piece-size) wins.
func PieceSize(contentLength, override int64) int64 {
	if override > 0 {
		return override
	}
	size := int64(DefaultPieceSize)
	for contentLength > 0 && size < MaxPieceSize && (contentLength+size-1)/size > TargetPieces {
		size *= 2
	}
	return size
}

// PieceCount returns the number of pieces of a file (-1 when its length is unknown).
func PieceCount(contentLength, pieceSize int64) int64 {
	if contentLength < 0 {
		return -1
	}
	return (contentLength + pieceSize - 1) / pieceSize
}
