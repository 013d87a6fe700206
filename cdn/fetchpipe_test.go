package cdn

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
	"testing/iotest"

	"github.com/dfly-ha/dfha/cdn/storage"
)

const pipeTask = "7d1a54127b222502f5b79b5fb0803061152a44f92b37e23c6527baf665d4da9a"

func pipeData(n int) []byte {
	p := make([]byte, n)
	r := rand.New(rand.NewPCG(5, 6))
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}

func newPipeCDN(t *testing.T) (*CDN, *storage.Local) {
	t.Helper()
	st, err := storage.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &CDN{cfg: Config{Store: st}}, st
}

func TestFetchPipelineStoresPiecesInOrder(t *testing.T) {
	c, st := newPipeCDN(t)
	const pieceSize = 1000
	data := pipeData(10*pieceSize + 123)
	whole := sha256.New()
	// Small reads: pieces are cut at piece boundaries whatever the origin's read sizes.
	p := c.storePieces(context.Background(), iotest.HalfReader(bytes.NewReader(data)), pipeTask, 1, 3, pieceSize, whole)
	n := uint32(3)
	for sp := range p.next() {
		if sp.err != nil || sp.n != n {
			t.Fatalf("piece %d: %+v", n, sp)
		}
		off := int(n-3) * pieceSize
		want := data[off:min(off+pieceSize, len(data))]
		if sp.size != int64(len(want)) || sp.digest != sha256.Sum256(want) {
			t.Fatalf("piece %d: size %d digest %x; want %d bytes", n, sp.size, sp.digest[:4], len(want))
		}
		body, size, err := st.OpenPiece(pipeTask, 1, n)
		if err != nil {
			t.Fatalf("piece %d not stored: %v", n, err)
		}
		got, _ := io.ReadAll(body)
		body.Close()
		if size != int64(len(want)) || !bytes.Equal(got, want) {
			t.Fatalf("piece %d stored wrong", n)
		}
		n++
	}
	if p.err != nil || n != 3+11 {
		t.Fatalf("read ended at piece %d with %v; want 11 pieces from 3 and no error", n, p.err)
	}
	if sum := sha256.Sum256(data); !bytes.Equal(whole.Sum(nil), sum[:]) {
		t.Fatal("whole-file digest differs")
	}
}

func TestFetchPipelineDropsThePieceABrokenReadCut(t *testing.T) {
	c, st := newPipeCDN(t)
	const pieceSize = 1000
	data := pipeData(4*pieceSize + 500) // the read breaks half way through piece 4
	broken := errors.New("connection reset")
	p := c.storePieces(context.Background(), io.MultiReader(bytes.NewReader(data), iotest.ErrReader(broken)), pipeTask, 1, 0, pieceSize, nil)
	var got []uint32
	for sp := range p.next() {
		if sp.err != nil {
			t.Fatal(sp.err)
		}
		got = append(got, sp.n)
	}
	if !errors.Is(p.err, broken) || len(got) != 4 {
		t.Fatalf("pieces %v, error %v; want 0..3 and the read error", got, p.err)
	}
	if ok, _ := st.HasPiece(pipeTask, 1, 4); ok {
		t.Fatal("the partial piece before the error was stored")
	}
}

func TestFetchPipelineStopsOnCancel(t *testing.T) {
	c, _ := newPipeCDN(t)
	ctx, cancel := context.WithCancel(context.Background())
	r, w := io.Pipe() // an origin that sends one piece and then nothing
	go w.Write(pipeData(100))
	p := c.storePieces(ctx, r, pipeTask, 1, 0, 100, nil)
	next := p.next()
	for sp := range next {
		if sp.n != 0 || sp.err != nil {
			t.Fatalf("first piece: %+v", sp)
		}
		break
	}
	cancel()
	w.CloseWithError(context.Canceled) // the read fails as the resuming reader does when its ctx ends
	p.stop(cancel)                     // returns once nothing is being stored
	if !errors.Is(p.err, context.Canceled) {
		t.Fatalf("read ended with %v, want the cancellation", p.err)
	}
}
