package storage

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/dfly-ha/dfha/sdk/api"
)

// Errors returned by the Driver methods. They are usually wrapped with the task and piece
// concerned: check them with errors.Is.
var (
	// ErrNotFound: the task, generation, piece or meta is not stored.
	ErrNotFound = errors.New("storage: not found")
	// ErrBadTaskID: the task ID does not match ^[0-9a-f]{64}$. Nothing was read or written.
	// It is api.ErrBadTaskID itself, so the API maps it to 400 like every other ID check.
	ErrBadTaskID = api.ErrBadTaskID
	// ErrDigestMismatch: the bytes given to WritePiece do not hash to the digest given.
	// Nothing was stored (and a piece already stored is left as it was).
	ErrDigestMismatch = errors.New("storage: piece digest mismatch")
	// ErrSizeMismatch: WritePiece read fewer or more bytes than the size given, or the size
	// disagrees with the task's meta for that generation. Nothing was stored.
	ErrSizeMismatch = errors.New("storage: piece size mismatch")
	// ErrInvalid: an argument other than the task ID is out of range: generation 0, a
	// negative or too large size, a piece past the end of the content, a Meta that fails
	// Validate. Nothing was read or written.
	ErrInvalid = errors.New("storage: invalid argument")
	// ErrDeleted: the task or generation was deleted while WritePiece was streaming the
	// piece, so it was not stored.
	ErrDeleted = errors.New("storage: deleted while the piece was written")
)

// MaxPieceSize bounds the size of one piece (1 GiB): far above any sane piece size, it keeps
// size arithmetic clear of overflow.
const MaxPieceSize = 1 << 30

// Driver stores the pieces and metadata of tasks. Implementations are safe for concurrent
// use. Every method taking a task ID returns ErrBadTaskID, before touching any storage, when
// the ID does not match ^[0-9a-f]{64}$.
//
// A task's pieces are kept per generation: pieces of generation g and g+1 can coexist until
// the caller deletes the old one with DeleteGeneration. The driver applies no policy of its
// own (no eviction, no generation ordering): the caller decides.
type Driver interface {
	// WritePiece stores piece n of generation gen (>= 1) of a task. It reads r up to size+1
	// bytes (r must give exactly size bytes and then EOF; wrap a shared stream in
	// io.LimitReader), hashes what it reads, and stores the piece only if exactly size bytes
	// were read and their SHA-256 equals digest; otherwise it returns ErrSizeMismatch or
	// ErrDigestMismatch and stores nothing. When the task's meta is for generation gen and
	// fixes the piece's size, a different size is ErrSizeMismatch and a piece past the end
	// is ErrInvalid, before r is read.
	//
	// The piece becomes visible to the other methods atomically, and only once it is durable:
	// after a crash it is either entirely there or absent. If the identical piece (same size
	// and digest) is already stored, r is still read and verified but nothing is written. If
	// a different piece n is stored for gen, it is replaced. Concurrent writers of the same
	// piece each return nil when their bytes were right; one copy is kept.
	WritePiece(taskID string, gen uint64, n uint32, r io.Reader, size int64, digest [32]byte) error

	// StorePiece is WritePiece for a piece whose digest the caller does not know: it stores
	// the size bytes r gives (ErrSizeMismatch for fewer or more) and returns their SHA-256,
	// which the piece is then stored under. It reads and hashes the bytes once, where
	// computing the digest first and calling WritePiece hashes them twice.
	StorePiece(taskID string, gen uint64, n uint32, r io.Reader, size int64) ([32]byte, error)

	// OpenPiece opens piece n of generation gen for reading and returns its size. Local returns
	// an *os.File positioned at 0 (so copying it to a TCP connection can use sendfile); the
	// caller closes it. A piece deleted or replaced after OpenPiece returns stays readable
	// through the open handle. It counts as an access of the task (see Touch). ErrNotFound
	// when the piece is not stored.
	OpenPiece(taskID string, gen uint64, n uint32) (io.ReadCloser, int64, error)

	// HasPiece reports whether piece n of generation gen is stored.
	HasPiece(taskID string, gen uint64, n uint32) (bool, error)

	// Pieces lists, in increasing order, the pieces of generation gen that are stored; none
	// (and no error) when the task or generation is unknown.
	Pieces(taskID string, gen uint64) ([]uint32, error)

	// PieceInfos is Pieces with each piece's size and digest, as verified when it was
	// written: what a restarted member re-announces without reading the pieces.
	PieceInfos(taskID string, gen uint64) ([]PieceInfo, error)

	// PutMeta stores the task's metadata, atomically (the old or the new meta survives a
	// crash, never a mix). A zero meta.LastAccess keeps the task's current last access; a later
	// one advances it (it never moves back). It
	// does not touch the pieces: pieces of older generations stay until DeleteGeneration.
	PutMeta(taskID string, meta Meta) error

	// GetMeta returns the task's metadata, with LastAccess the latest access known in memory.
	// ErrNotFound when no meta is stored for the task.
	GetMeta(taskID string) (Meta, error)

	// DeleteTask removes the task: meta and every generation's pieces. Deleting an unknown
	// task is not an error (a replayed delete is harmless). A WritePiece streaming a piece of
	// that task at the time returns ErrDeleted.
	DeleteTask(taskID string) error

	// DeleteGeneration removes the pieces of one generation of the task and keeps its meta.
	// Deleting an unknown generation is not an error.
	DeleteGeneration(taskID string, gen uint64) error

	// Tasks lists every task that has a meta or at least one piece, with its usage, least
	// recently accessed first (the order an LRU eviction walks).
	Tasks() ([]Usage, error)

	// UsedBytes is the size of every stored piece and meta file. It is kept up to date by the
	// writes and deletes (constant time; no directory walk).
	UsedBytes() int64

	// Touch records an access of the task now, in memory; it reaches the disk (meta.json) at
	// the next Flush, PutMeta or Close. ErrNotFound when the task is not stored.
	Touch(taskID string) error

	// Flush persists the last-access times changed since they were last written (for the
	// tasks that have a meta). The CDN calls it now and then; losing it in a crash only makes
	// those tasks look older.
	Flush() error

	// Close flushes and releases the storage (Local: the root's lock); the driver must not
	// be used afterwards.
	Close() error
}

// Meta is what the driver keeps about a task besides its pieces. The digests of the pieces
// are not here: each piece's file carries its own (see PieceInfos), so that writing a piece
// never rewrites the meta. Never put origin credentials (headers) in it: it is stored in the
// clear.
type Meta struct {
	// Generation is the task's current generation (>= 1); it grows when the origin's file
	// changes.
	Generation uint64 `json:"generation"`
	// URL is the origin URL the task was fetched from.
	URL string `json:"url"`
	// PieceSize is the size of every piece but the last, -1 while unknown.
	PieceSize int64 `json:"piece_size"`
	// ContentLength is the size of the whole file, -1 while unknown.
	ContentLength int64 `json:"content_length"`
	// ETag and LastModified are the origin's validators for this generation, compared on
	// the next probe to tell whether the file changed.
	ETag         string `json:"etag,omitempty"`
	LastModified string `json:"last_modified,omitempty"`
	// Complete is set by the CDN once every piece of the generation is stored.
	Complete bool `json:"complete"`
	// LastAccess is the last time the task was read or touched (UTC).
	LastAccess time.Time `json:"last_access"`
}

// Validate checks the meta's bounds: generation >= 1, sizes -1 (unknown) or valid.
func (m Meta) Validate() error {
	switch {
	case m.Generation == 0:
		return fmt.Errorf("%w: meta generation must be >= 1", ErrInvalid)
	case m.PieceSize == 0 || m.PieceSize < -1 || m.PieceSize > MaxPieceSize:
		return fmt.Errorf("%w: meta piece size %d (want -1 or 1..%d)", ErrInvalid, m.PieceSize, MaxPieceSize)
	case m.ContentLength < -1:
		return fmt.Errorf("%w: meta content length %d", ErrInvalid, m.ContentLength)
	}
	return nil
}

// PieceCount is the number of pieces of the content, -1 while the piece size or the content
// length is unknown.
func (m Meta) PieceCount() int64 {
	if m.PieceSize <= 0 || m.ContentLength < 0 {
		return -1
	}
	return (m.ContentLength + m.PieceSize - 1) / m.PieceSize
}

// checkPiece reports whether a piece of generation gen, number n and the given size agrees
// with the meta: ErrInvalid past the end, ErrSizeMismatch for the wrong size. A meta of
// another generation, or with unknown sizes, constrains nothing (but a piece larger than a
// known piece size is always wrong).
func (m *Meta) checkPiece(gen uint64, n uint32, size int64) error {
	if m == nil || m.Generation != gen || m.PieceSize <= 0 {
		return nil
	}
	if count := m.PieceCount(); count >= 0 {
		if int64(n) >= count {
			return fmt.Errorf("%w: piece %d past the end (%d pieces)", ErrInvalid, n, count)
		}
		want := min(m.PieceSize, m.ContentLength-int64(n)*m.PieceSize)
		if size != want {
			return fmt.Errorf("%w: piece %d is %d bytes, the meta says %d", ErrSizeMismatch, n, size, want)
		}
		return nil
	}
	if size > m.PieceSize {
		return fmt.Errorf("%w: piece %d is %d bytes, the piece size is %d", ErrSizeMismatch, n, size, m.PieceSize)
	}
	return nil
}

// PieceInfo describes one stored piece.
type PieceInfo struct {
	N      uint32
	Size   int64
	Digest [32]byte // SHA-256 of the piece, checked when it was written
}

// Usage is what one task occupies.
type Usage struct {
	TaskID string
	// Bytes is the size of its piece files and meta.json.
	Bytes int64
	// Pieces counts its pieces over every generation.
	Pieces int
	// Generations lists the generations that have pieces, in increasing order.
	Generations []uint64
	// HasMeta tells whether a meta is stored.
	HasMeta bool
	// LastAccess is its last read or Touch (in memory), else the persisted one.
	LastAccess time.Time
}
