package cdn

import (
	"bytes"
	"context"
	"hash"
	"io"
	"iter"
)

// The origin fetch is a pipeline: one goroutine reads the origin a piece at a time, and
// each piece read is stored (hashed once while written, fsync, rename: StorePiece) by a
// goroutine of its own while the next one is read, several at once. Stored pieces come out in piece order, so
// the fetch loop commits their digests in contiguous runs as before. The pipeline owns
// fetchBuffers piece buffers: that bounds both the pieces being stored at once and the
// memory of a fetch.

// storedPiece is a piece of the origin fetch once stored (or not: err).
type storedPiece struct {
	n      uint32
	size   int64
	digest [32]byte
	err    error
}

// piecePipeline is a running origin fetch pipeline.
type piecePipeline struct {
	order chan chan storedPiece // one result per piece read, in piece order
	err   error                 // why the read ended: nil at the file's end; set before order is closed
}

// fetchBuffers is how many piece buffers a fetch uses: one being read and the others being
// stored; large pieces get fewer.
func fetchBuffers(pieceSize int64) int {
	if pieceSize > 16<<20 {
		return 2
	}
	return 3
}

// storePieces starts reading pieces first, first+1... of generation gen from r, until its
// end or an error, and storing them. A short piece is stored only at the file's end: what
// came before a read error is dropped. whole, when set, hashes the whole read in order.
func (c *CDN) storePieces(ctx context.Context, r io.Reader, taskID string, gen uint64, first uint32, pieceSize int64, whole hash.Hash) *piecePipeline {
	nbuf := fetchBuffers(pieceSize)
	p := &piecePipeline{order: make(chan chan storedPiece, nbuf)}
	free := make(chan []byte, nbuf)
	for range nbuf {
		free <- make([]byte, pieceSize)
	}
	go func() {
		defer close(p.order)
		for n := first; ; n++ {
			var buf []byte
			select {
			case buf = <-free:
			case <-ctx.Done():
				p.err = context.Cause(ctx)
				return
			}
			k, err := io.ReadFull(r, buf)
			end := err == io.EOF || err == io.ErrUnexpectedEOF
			if err != nil && !end {
				p.err = err
				return
			}
			if k > 0 {
				if whole != nil {
					whole.Write(buf[:k])
				}
				res := make(chan storedPiece, 1)
				p.order <- res // waits while the fetch loop is nbuf pieces behind
				go func(n uint32, data []byte) {
					digest, err := c.cfg.Store.StorePiece(taskID, gen, n, bytes.NewReader(data), int64(len(data)))
					free <- data[:cap(data)]
					res <- storedPiece{n: n, size: int64(len(data)), digest: digest, err: err}
				}(n, buf[:k])
			}
			if end {
				return
			}
		}
	}()
	return p
}

// next yields the stored pieces in piece order, until the read has ended (see err).
func (p *piecePipeline) next() iter.Seq[storedPiece] {
	return func(yield func(storedPiece) bool) {
		for res := range p.order {
			if !yield(<-res) {
				return
			}
		}
	}
}

// stop ends the read (cancel is its context's) and waits until no piece is being stored.
func (p *piecePipeline) stop(cancel context.CancelFunc) {
	cancel()
	for res := range p.order {
		<-res
	}
}
