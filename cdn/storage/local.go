package storage

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dfly-ha/dfha/sdk/api"
	"go.uber.org/zap"
)

// Config configures a Local driver.
type Config struct {
	// Root is the directory that holds the cache (created if missing). The driver only ever
	// removes what matches its own layout below it; anything else is left alone.
	Root string
	// VerifyDigests makes Open re-hash every piece and discard those whose SHA-256 differs
	// from their name (bit rot). It reads the whole cache, so it is off by default: Open
	// always checks sizes, and peers verify every piece they receive anyway.
	VerifyDigests bool
	// Logger receives the recovery report and errors; nil: no logging.
	Logger *zap.Logger
	// Now is the clock used for last-access times; nil: time.Now.
	Now func() time.Time
}

func (c *Config) applyDefaults() {
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if c.Root == "" {
		return fmt.Errorf("%w: storage root is empty", ErrInvalid)
	}
	return nil
}

// Local is the local-filesystem Driver. See DESIGN.md for the layout and the crash-safety
// argument.
//
// Locking: dirLocks[i] is held for every change of a name under ROOT/<i as hex> (mkdir,
// rename into place, remove), so such changes to one task are serialized while the bytes of
// pieces are streamed and fsynced without any lock. mu guards the in-memory index (tasks);
// an entry changes only with both the task's dirLock and mu held, so a dirLock holder sees a
// stable view of its task. Order: dirLock, then mu.
type Local struct {
	root string
	log  *zap.Logger
	now  func() time.Time
	used atomic.Int64

	lock     *os.File // ROOT/.lock, flocked until Close
	trashSeq atomic.Uint64
	closed   atomic.Bool
	dirLocks [256]sync.Mutex

	mu    sync.Mutex
	tasks map[string]*task
}

var _ Driver = (*Local)(nil)

// task is the index entry of one task. Fields are guarded by Local.mu.
type task struct {
	meta        *Meta // as stored, nil without meta.json
	metaBytes   int64
	savedAccess time.Time // LastAccess as last written to meta.json
	lastAccess  time.Time
	gens        map[uint64]*generation
	bytes       int64 // pieces and meta.json
	pieces      int
}

// generation is the index entry of one g<gen> directory: it exists while the directory does.
type generation struct {
	pieces  map[uint32]pieceInfo
	writers int // WritePiece calls with a temporary file in the directory
}

type pieceInfo struct {
	size   int64
	digest [32]byte
}

// Open opens (or creates) the cache at root and repairs what a crash left: see OpenConfig.
func Open(root string, log *zap.Logger) (*Local, error) {
	return OpenConfig(Config{Root: root, Logger: log})
}

// OpenConfig opens (or creates) the cache at cfg.Root and locks it (ROOT/.lock, flock): a
// second driver on the same root fails until Close or the process's end. It scans the layout once: it removes
// temporary files (writes a crash cut short), pieces whose file size differs from the size in
// their name or from the task's meta (truncated or foreign), unreadable meta files and empty
// directories; it keeps every complete piece and rebuilds the index and UsedBytes. When
// nothing needs repair it writes nothing.
func OpenConfig(cfg Config) (*Local, error) {
	cfg.applyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if _, err := os.Stat(cfg.Root); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(cfg.Root, dirMode); err != nil {
			return nil, fmt.Errorf("storage: creating root: %w", err)
		}
		if err := syncDir(filepath.Dir(cfg.Root)); err != nil {
			return nil, fmt.Errorf("storage: creating root: %w", err)
		}
	}
	lock, err := lockRoot(cfg.Root)
	if err != nil {
		return nil, err
	}
	l := &Local{
		root:  cfg.Root,
		log:   cfg.Logger.Named("storage"),
		now:   cfg.Now,
		lock:  lock,
		tasks: make(map[string]*task),
	}
	if err := l.scan(cfg.VerifyDigests); err != nil {
		lock.Close()
		return nil, err
	}
	return l, nil
}

// Root is the directory the driver stores into.
func (l *Local) Root() string { return l.root }

func (l *Local) fanoutDir(id string) string { return filepath.Join(l.root, id[:2]) }
func (l *Local) taskDir(id string) string   { return filepath.Join(l.root, id[:2], id) }
func (l *Local) genDir(id string, gen uint64) string {
	return filepath.Join(l.root, id[:2], id, genName(gen))
}
func (l *Local) piecePath(id string, gen uint64, n uint32, p pieceInfo) string {
	return filepath.Join(l.genDir(id, gen), pieceName(n, p.size, p.digest))
}

func (l *Local) lockFor(id string) *sync.Mutex { return &l.dirLocks[fanout(id)] }

func (l *Local) clock() time.Time { return l.now().UTC() }

func checkPieceArgs(id string, gen uint64, size int64) error {
	if !api.ValidTaskID(id) {
		return ErrBadTaskID
	}
	if gen == 0 {
		return fmt.Errorf("%w: generation 0", ErrInvalid)
	}
	if size < 0 || size > MaxPieceSize {
		return fmt.Errorf("%w: piece size %d", ErrInvalid, size)
	}
	return nil
}

// lookup returns the index entry of a piece. mu must be held.
func (l *Local) lookup(id string, gen uint64, n uint32) (pieceInfo, bool) {
	t := l.tasks[id]
	if t == nil {
		return pieceInfo{}, false
	}
	g := t.gens[gen]
	if g == nil {
		return pieceInfo{}, false
	}
	p, ok := g.pieces[n]
	return p, ok
}

// WritePiece implements Driver.
func (l *Local) WritePiece(id string, gen uint64, n uint32, r io.Reader, size int64, digest [32]byte) error {
	_, err := l.writePiece(id, gen, n, r, size, &digest)
	return err
}

// StorePiece implements Driver.
func (l *Local) StorePiece(id string, gen uint64, n uint32, r io.Reader, size int64) ([32]byte, error) {
	return l.writePiece(id, gen, n, r, size, nil)
}

// writePiece stores a piece and returns its digest; digest, when set, is what the bytes
// must hash to.
func (l *Local) writePiece(id string, gen uint64, n uint32, r io.Reader, size int64, digest *[32]byte) ([32]byte, error) {
	if err := checkPieceArgs(id, gen, size); err != nil {
		return [32]byte{}, err
	}
	l.mu.Lock()
	var meta *Meta
	if t := l.tasks[id]; t != nil {
		meta = t.meta
	}
	merr := meta.checkPiece(gen, n, size)
	p, ok := l.lookup(id, gen, n)
	l.mu.Unlock()
	if merr != nil {
		return [32]byte{}, merr
	}
	if ok && digest != nil && p == (pieceInfo{size, *digest}) {
		// Already stored: verify the caller's bytes, write nothing.
		return copyHashed(nil, r, size, digest, n)
	}

	lk := l.lockFor(id)
	lk.Lock()
	t, g, err := l.startWriteLocked(id, gen)
	if err != nil {
		lk.Unlock()
		return [32]byte{}, err
	}
	dir := l.genDir(id, gen)
	f, err := os.CreateTemp(dir, tmpPrefix+strconv.FormatUint(uint64(n), 10)+"-*")
	if err != nil {
		l.endWriteLocked(id, gen, t, g)
		lk.Unlock()
		return [32]byte{}, fmt.Errorf("storage: creating piece file: %w", err)
	}
	lk.Unlock()

	// Stream, hash and fsync without a lock.
	tmp := f.Name()
	sum, err := copyHashed(f, r, size, digest, n) // CreateTemp made it 0600
	want := pieceInfo{size, sum}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}

	lk.Lock()
	defer lk.Unlock()
	defer l.endWriteLocked(id, gen, t, g)
	if err != nil {
		_ = removeQuiet(tmp)
		return [32]byte{}, err
	}
	l.mu.Lock()
	current := l.tasks[id] == t && t.gens[gen] == g
	old, had := g.pieces[n]
	l.mu.Unlock()
	if !current {
		_ = removeQuiet(tmp) // normally gone with its directory already
		return [32]byte{}, fmt.Errorf("%w: task %s generation %d piece %d", ErrDeleted, id, gen, n)
	}
	if had && old == want {
		// The same piece was stored already, or a concurrent writer stored it first
		// (durably: it held the lock).
		return sum, removeQuiet(tmp)
	}
	if had {
		// Replace: drop the old piece first, durably, so a crash leaves the old piece, no
		// piece or the new one, never two versions of one piece.
		if err := removeQuiet(l.piecePath(id, gen, n, old)); err != nil {
			_ = removeQuiet(tmp)
			return [32]byte{}, fmt.Errorf("storage: replacing piece: %w", err)
		}
		l.dropPieceLocked(t, g, n, old)
		if err := syncDir(dir); err != nil {
			_ = removeQuiet(tmp)
			return [32]byte{}, fmt.Errorf("storage: replacing piece: %w", err)
		}
	}
	final := filepath.Join(dir, pieceName(n, size, sum))
	if err := os.Rename(tmp, final); err != nil {
		_ = removeQuiet(tmp)
		return [32]byte{}, fmt.Errorf("storage: storing piece: %w", err)
	}
	if err := syncDir(dir); err != nil {
		// Its name may not survive a crash: do not claim it.
		_ = removeQuiet(final)
		return [32]byte{}, fmt.Errorf("storage: storing piece: %w", err)
	}
	l.mu.Lock()
	g.pieces[n] = want
	t.pieces++
	t.bytes += size
	l.used.Add(size)
	l.mu.Unlock()
	return sum, nil
}

// startWriteLocked makes sure the generation's directory exists (durably) and registers a
// writer in it. The task's dirLock must be held.
func (l *Local) startWriteLocked(id string, gen uint64) (*task, *generation, error) {
	l.mu.Lock()
	t := l.tasks[id]
	var g *generation
	if t != nil {
		g = t.gens[gen]
	}
	l.mu.Unlock()
	if g == nil {
		for _, dir := range []string{l.fanoutDir(id), l.taskDir(id), l.genDir(id, gen)} {
			if err := mkdirDurable(dir); err != nil {
				l.pruneLocked(id)
				return nil, nil, fmt.Errorf("storage: creating directory: %w", err)
			}
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if t = l.tasks[id]; t == nil {
		t = &task{gens: make(map[uint64]*generation), lastAccess: l.clock()}
		l.tasks[id] = t
	}
	if g = t.gens[gen]; g == nil {
		g = &generation{pieces: make(map[uint32]pieceInfo)}
		t.gens[gen] = g
	}
	g.writers++
	return t, g, nil
}

// endWriteLocked unregisters a writer and removes the directories it leaves empty. The
// task's dirLock must be held.
func (l *Local) endWriteLocked(id string, gen uint64, t *task, g *generation) {
	l.mu.Lock()
	g.writers--
	current := l.tasks[id] == t && t.gens[gen] == g
	l.mu.Unlock()
	if current {
		l.pruneLocked(id)
	}
}

// dropPieceLocked removes a piece from the index. The task's dirLock must be held (not mu).
func (l *Local) dropPieceLocked(t *task, g *generation, n uint32, p pieceInfo) {
	l.mu.Lock()
	delete(g.pieces, n)
	t.pieces--
	t.bytes -= p.size
	l.used.Add(-p.size)
	l.mu.Unlock()
}

// pruneLocked removes the task's generation directories that hold no piece and no writer,
// then the task directory if nothing is left in it. Removals need no fsync: an empty
// directory that comes back after a crash is removed by Open. The task's dirLock must be held.
func (l *Local) pruneLocked(id string) {
	l.mu.Lock()
	t := l.tasks[id]
	var empty []uint64
	if t != nil {
		for gen, g := range t.gens {
			if g.writers == 0 && len(g.pieces) == 0 {
				empty = append(empty, gen)
			}
		}
	}
	l.mu.Unlock()
	for _, gen := range empty {
		if err := os.Remove(l.genDir(id, gen)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			l.log.Warn("removing an empty generation directory", zap.String("task", id), zap.Error(err))
			continue
		}
		l.mu.Lock()
		delete(t.gens, gen)
		l.mu.Unlock()
	}
	l.mu.Lock()
	drop := t == nil || (len(t.gens) == 0 && t.meta == nil)
	l.mu.Unlock()
	if !drop {
		return
	}
	if err := os.Remove(l.taskDir(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		l.log.Warn("removing an empty task directory", zap.String("task", id), zap.Error(err))
		return
	}
	if t != nil {
		l.mu.Lock()
		delete(l.tasks, id)
		l.mu.Unlock()
	}
	_ = os.Remove(l.fanoutDir(id)) // only if no other task is left in it
}

// OpenPiece implements Driver. The ReadCloser is an *os.File.
func (l *Local) OpenPiece(id string, gen uint64, n uint32) (io.ReadCloser, int64, error) {
	if !api.ValidTaskID(id) {
		return nil, 0, ErrBadTaskID
	}
	// Two rounds: the piece may be replaced or deleted between the lookup and the open.
	for range 2 {
		l.mu.Lock()
		p, ok := l.lookup(id, gen, n)
		if ok {
			l.tasks[id].lastAccess = l.clock()
		}
		l.mu.Unlock()
		if !ok {
			break
		}
		f, err := os.Open(l.piecePath(id, gen, n, p))
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				return nil, 0, fmt.Errorf("storage: opening piece: %w", err)
			}
			l.dropIfBroken(id, gen, n, p)
			continue
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, 0, fmt.Errorf("storage: opening piece: %w", err)
		}
		if st.Size() != p.size {
			f.Close()
			l.dropIfBroken(id, gen, n, p)
			continue
		}
		readAheadFile(f)
		l.readAheadNext(id, gen, n+1)
		return f, p.size, nil
	}
	return nil, 0, fmt.Errorf("%w: task %s generation %d piece %d", ErrNotFound, id, gen, n)
}

// readAheadNext starts reading piece n into the page cache in the background, if stored:
// peers and members mostly read pieces in runs, and a piece file is too small for the
// kernel's own readahead to carry over to the next one.
func (l *Local) readAheadNext(id string, gen uint64, n uint32) {
	l.mu.Lock()
	p, ok := l.lookup(id, gen, n)
	l.mu.Unlock()
	if ok {
		go readAhead(l.piecePath(id, gen, n, p))
	}
}

// dropIfBroken removes piece n from the index (and the disk) if its file is still the one
// indexed as p and is missing or of the wrong size: something outside the driver damaged it.
func (l *Local) dropIfBroken(id string, gen uint64, n uint32, p pieceInfo) {
	lk := l.lockFor(id)
	lk.Lock()
	defer lk.Unlock()
	l.mu.Lock()
	cur, ok := l.lookup(id, gen, n)
	l.mu.Unlock()
	if !ok || cur != p {
		return // replaced or deleted by a writer: not broken
	}
	path := l.piecePath(id, gen, n, p)
	if st, err := os.Stat(path); err == nil && st.Mode().IsRegular() && st.Size() == p.size {
		return
	}
	l.log.Error("piece file damaged outside the driver: dropped",
		zap.String("task", id), zap.Uint64("generation", gen), zap.Uint32("piece", n))
	_ = removeQuiet(path)
	l.mu.Lock()
	t := l.tasks[id]
	g := t.gens[gen]
	l.mu.Unlock()
	l.dropPieceLocked(t, g, n, p)
	l.pruneLocked(id)
}

// HasPiece implements Driver.
func (l *Local) HasPiece(id string, gen uint64, n uint32) (bool, error) {
	if !api.ValidTaskID(id) {
		return false, ErrBadTaskID
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.lookup(id, gen, n)
	return ok, nil
}

// Pieces implements Driver.
func (l *Local) Pieces(id string, gen uint64) ([]uint32, error) {
	infos, err := l.PieceInfos(id, gen)
	if err != nil {
		return nil, err
	}
	ns := make([]uint32, len(infos))
	for i, p := range infos {
		ns[i] = p.N
	}
	return ns, nil
}

// PieceInfos implements Driver.
func (l *Local) PieceInfos(id string, gen uint64) ([]PieceInfo, error) {
	if !api.ValidTaskID(id) {
		return nil, ErrBadTaskID
	}
	l.mu.Lock()
	var out []PieceInfo
	if t := l.tasks[id]; t != nil {
		if g := t.gens[gen]; g != nil {
			out = make([]PieceInfo, 0, len(g.pieces))
			for n, p := range g.pieces {
				out = append(out, PieceInfo{N: n, Size: p.size, Digest: p.digest})
			}
		}
	}
	l.mu.Unlock()
	slices.SortFunc(out, func(a, b PieceInfo) int { return cmp.Compare(a.N, b.N) })
	return out, nil
}

// metaFile is meta.json: a version and the Meta fields.
type metaFile struct {
	V int `json:"v"`
	Meta
}

const metaVersion = 1

// PutMeta implements Driver.
func (l *Local) PutMeta(id string, m Meta) error {
	if !api.ValidTaskID(id) {
		return ErrBadTaskID
	}
	if err := m.Validate(); err != nil {
		return err
	}
	lk := l.lockFor(id)
	lk.Lock()
	defer lk.Unlock()
	for _, dir := range []string{l.fanoutDir(id), l.taskDir(id)} {
		if err := mkdirDurable(dir); err != nil {
			l.pruneLocked(id)
			return fmt.Errorf("storage: creating directory: %w", err)
		}
	}
	l.mu.Lock()
	t := l.tasks[id]
	if t == nil {
		t = &task{gens: make(map[uint64]*generation), lastAccess: l.clock()}
		l.tasks[id] = t
	}
	if m.LastAccess.IsZero() {
		m.LastAccess = t.lastAccess
	}
	l.mu.Unlock()
	m.LastAccess = m.LastAccess.UTC()
	if err := l.writeMetaLocked(id, t, m); err != nil {
		l.pruneLocked(id)
		return err
	}
	return nil
}

// writeMetaLocked writes meta.json and records it in the index. The dirLock must be held.
func (l *Local) writeMetaLocked(id string, t *task, m Meta) error {
	data, err := json.Marshal(metaFile{V: metaVersion, Meta: m})
	if err != nil {
		return fmt.Errorf("storage: encoding meta: %w", err)
	}
	data = append(data, '\n')
	if err := writeFileDurable(l.taskDir(id), metaName, data); err != nil {
		return fmt.Errorf("storage: writing meta: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	size := int64(len(data))
	l.used.Add(size - t.metaBytes)
	t.bytes += size - t.metaBytes
	t.metaBytes = size
	mm := m
	t.meta = &mm
	t.savedAccess = m.LastAccess
	if m.LastAccess.After(t.lastAccess) {
		t.lastAccess = m.LastAccess
	}
	return nil
}

// GetMeta implements Driver.
func (l *Local) GetMeta(id string) (Meta, error) {
	if !api.ValidTaskID(id) {
		return Meta{}, ErrBadTaskID
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.tasks[id]
	if t == nil || t.meta == nil {
		return Meta{}, fmt.Errorf("%w: meta of task %s", ErrNotFound, id)
	}
	m := *t.meta
	m.LastAccess = t.lastAccess
	return m, nil
}

// DeleteTask implements Driver. The task directory is first renamed to a trash name in its
// fan-out directory (one atomic, fsynced step: after a crash the task is either whole or
// gone), then removed without holding the lock; a crash before that removal leaves only
// trash, which Open removes.
func (l *Local) DeleteTask(id string) error {
	if !api.ValidTaskID(id) {
		return ErrBadTaskID
	}
	lk := l.lockFor(id)
	lk.Lock()
	l.mu.Lock()
	if t := l.tasks[id]; t != nil {
		delete(l.tasks, id)
		l.used.Add(-t.bytes)
	}
	l.mu.Unlock()
	trash, err := l.trashLocked(id, l.taskDir(id), id)
	lk.Unlock()
	if err != nil {
		return fmt.Errorf("storage: deleting task: %w", err)
	}
	return l.emptyTrash(id, trash)
}

// DeleteGeneration implements Driver, the same way as DeleteTask.
func (l *Local) DeleteGeneration(id string, gen uint64) error {
	if !api.ValidTaskID(id) {
		return ErrBadTaskID
	}
	lk := l.lockFor(id)
	lk.Lock()
	l.mu.Lock()
	t := l.tasks[id]
	var g *generation
	if t != nil {
		g = t.gens[gen]
	}
	if g != nil {
		var bytes int64
		for _, p := range g.pieces {
			bytes += p.size
		}
		delete(t.gens, gen)
		t.bytes -= bytes
		t.pieces -= len(g.pieces)
		l.used.Add(-bytes)
	}
	l.mu.Unlock()
	if gen == 0 || t == nil {
		lk.Unlock()
		return nil
	}
	trash, err := l.trashLocked(id, l.genDir(id, gen), id+"-"+genName(gen))
	if err == nil && trash != "" {
		// The generation's name left the task directory: make that durable too.
		err = syncDir(l.taskDir(id))
	}
	l.pruneLocked(id)
	lk.Unlock()
	if err != nil {
		return fmt.Errorf("storage: deleting generation: %w", err)
	}
	return l.emptyTrash(id, trash)
}

// trashLocked renames dir to a unique trash name (.del-<label>-<seq>) in the task's fan-out
// directory and fsyncs that directory. It returns "" when dir does not exist. The task's
// dirLock must be held.
func (l *Local) trashLocked(id, dir, label string) (string, error) {
	trash := filepath.Join(l.fanoutDir(id), trashPrefix+label+"-"+
		strconv.FormatInt(time.Now().UnixNano(), 36)+"-"+strconv.FormatUint(l.trashSeq.Add(1), 36))
	if err := os.Rename(dir, trash); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", nil
		}
		return "", err
	}
	if err := syncDir(l.fanoutDir(id)); err != nil {
		return trash, err
	}
	return trash, nil
}

// emptyTrash removes a trash directory (no lock held: nothing else knows its name), then
// the fan-out directory if that left it empty.
func (l *Local) emptyTrash(id, trash string) error {
	if trash == "" {
		return nil
	}
	err := os.RemoveAll(trash)
	lk := l.lockFor(id)
	lk.Lock()
	_ = os.Remove(l.fanoutDir(id)) // only if no other task is left in it
	lk.Unlock()
	if err != nil {
		return fmt.Errorf("storage: removing deleted files: %w", err)
	}
	return nil
}

// Tasks implements Driver.
func (l *Local) Tasks() ([]Usage, error) {
	l.mu.Lock()
	out := make([]Usage, 0, len(l.tasks))
	for id, t := range l.tasks {
		if t.meta == nil && t.pieces == 0 {
			continue // only directories and writers in progress
		}
		u := Usage{TaskID: id, Bytes: t.bytes, Pieces: t.pieces, HasMeta: t.meta != nil, LastAccess: t.lastAccess}
		for gen, g := range t.gens {
			if len(g.pieces) > 0 {
				u.Generations = append(u.Generations, gen)
			}
		}
		slices.Sort(u.Generations)
		out = append(out, u)
	}
	l.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].LastAccess.Equal(out[j].LastAccess) {
			return out[i].LastAccess.Before(out[j].LastAccess)
		}
		return out[i].TaskID < out[j].TaskID
	})
	return out, nil
}

// UsedBytes implements Driver.
func (l *Local) UsedBytes() int64 { return l.used.Load() }

// Touch implements Driver.
func (l *Local) Touch(id string) error {
	if !api.ValidTaskID(id) {
		return ErrBadTaskID
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.tasks[id]
	if t == nil {
		return fmt.Errorf("%w: task %s", ErrNotFound, id)
	}
	t.lastAccess = l.clock()
	return nil
}

// Flush implements Driver.
func (l *Local) Flush() error {
	l.mu.Lock()
	var dirty []string
	for id, t := range l.tasks {
		if t.meta != nil && !t.lastAccess.Equal(t.savedAccess) {
			dirty = append(dirty, id)
		}
	}
	l.mu.Unlock()
	var errs []error
	for _, id := range dirty {
		lk := l.lockFor(id)
		lk.Lock()
		l.mu.Lock()
		t := l.tasks[id]
		var m Meta
		write := t != nil && t.meta != nil && !t.lastAccess.Equal(t.savedAccess)
		if write {
			m = *t.meta
			m.LastAccess = t.lastAccess
		}
		l.mu.Unlock()
		if write {
			if err := l.writeMetaLocked(id, t, m); err != nil {
				errs = append(errs, fmt.Errorf("task %s: %w", id, err))
			}
		}
		lk.Unlock()
	}
	return errors.Join(errs...)
}

// Close implements Driver: it flushes and releases the root's lock. Later calls do nothing.
func (l *Local) Close() error {
	if l.closed.Swap(true) {
		return nil
	}
	err := l.Flush()
	return errors.Join(err, l.lock.Close())
}
