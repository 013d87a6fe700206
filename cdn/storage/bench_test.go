package storage

import (
	"bytes"
	"errors"
	"io"
	"sync/atomic"
	"testing"
)

const benchPieceSize = 4 << 20

// BenchmarkWritePiece: one writer storing 4 MiB pieces (hash, write, fsync, rename, fsync
// dir). MB/s is the piece bytes stored per second. The disk use stays bounded: every 16
// pieces the previous generation is deleted, off the clock.
func BenchmarkWritePiece(b *testing.B) {
	l := openAt(b, b.TempDir(), nil)
	id := tid("bench-write")
	p, d := data(1, benchPieceSize)
	b.SetBytes(benchPieceSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		gen, n := uint64(1+i/16), uint32(i%16)
		if n == 0 && gen > 1 {
			b.StopTimer()
			if err := l.DeleteGeneration(id, gen-1); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		if err := l.WritePiece(id, gen, n, bytes.NewReader(p), benchPieceSize, d); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWritePieceParallel: GOMAXPROCS writers storing different 4 MiB pieces of one
// task at once (they share the task's directory lock for the commit step).
func BenchmarkWritePieceParallel(b *testing.B) {
	l := openAt(b, b.TempDir(), nil)
	id := tid("bench-write-parallel")
	p, d := data(2, benchPieceSize)
	var next atomic.Uint32
	b.SetBytes(benchPieceSize)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n := next.Add(1)
			// Bounded disk use: pieces go to generation n/64+1 and the one two back is dropped.
			gen := uint64(n/64 + 1)
			if n%64 == 0 && gen > 2 {
				if err := l.DeleteGeneration(id, gen-2); err != nil {
					b.Error(err)
					return
				}
			}
			err := l.WritePiece(id, gen, n, bytes.NewReader(p), benchPieceSize, d)
			if err != nil && !errors.Is(err, ErrDeleted) { // a laggard two generations back
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkOpenPieceRead: OpenPiece and a full read of a 4 MiB piece (from the page cache,
// the common case for a hot piece), round-robin over 16 pieces.
func BenchmarkOpenPieceRead(b *testing.B) {
	l := openAt(b, b.TempDir(), nil)
	id := tid("bench-read")
	p, _ := data(3, benchPieceSize)
	for n := range 16 {
		mustWrite(b, l, id, 1, uint32(n), p)
	}
	buf := make([]byte, 256<<10)
	b.SetBytes(benchPieceSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rc, size, err := l.OpenPiece(id, 1, uint32(i%16))
		if err != nil {
			b.Fatal(err)
		}
		k, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{rc}, buf)
		rc.Close()
		if err != nil || k != size {
			b.Fatalf("read %d of %d bytes: %v", k, size, err)
		}
	}
}
