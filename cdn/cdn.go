package cdn

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"strings"
	"sync"
	"time"

	"github.com/dfly-ha/dfha/cdn/source"
	"github.com/dfly-ha/dfha/cdn/storage"
	"github.com/dfly-ha/dfha/fsm"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// Errors of the CDN.
var (
	// ErrNotCached: no member has cached the piece (yet).
	ErrNotCached = errors.New("piece not cached yet")
	// ErrGeneration: the piece asked for belongs to another generation of the task.
	ErrGeneration = errors.New("piece of another task generation")
	// ErrNoTask: the task does not exist.
	ErrNoTask = errors.New("no such task")
)

// Proposer commits commands to the replicated state (cluster.Node).
type Proposer interface {
	Propose(ctx context.Context, cmds ...fsm.Command) (uint64, []fsm.Result, error)
	// CaughtUp reports whether the member's state is current (it sees a leader and has
	// applied all that is committed): until then, absence from the state proves nothing.
	CaughtUp() bool
}

// Config configures a member's CDN.
type Config struct {
	MemberID string
	FSM      *fsm.FSM
	Proposer Proposer
	Store    storage.Driver
	Sources  *source.Sources
	// PieceSize overrides the piece-size rule when positive (--piece-size).
	PieceSize int64
	// UploadLimiter, when set, paces every piece this member serves, all together
	// (--upload-limit).
	UploadLimiter *rate.Limiter
	// CacheMaxBytes bounds this member's cache (--cache-max-bytes; 0: no bound). Above 95%
	// of it, the least recently used tasks are deleted until it is under 85%.
	CacheMaxBytes int64
	// TaskExpiry: a task this member owns that nobody has used for this long is deleted
	// from the cluster (--task-expiry; 0: never).
	TaskExpiry time.Duration
	// BusyWindow: a task used this recently is never evicted (default 1 minute).
	BusyWindow time.Duration
	// MaxFetches bounds the origin fetches this member runs at once (default 4).
	MaxFetches int
	// Replicas is the number of members that cache each task (--cache-replicas, default 1):
	// the first owner on the ring fetches it from the origin, the others copy its pieces
	// from the members that have them.
	Replicas int
	// MaxCopies bounds the tasks whose pieces this member copies as a replica at once
	// (default 4).
	MaxCopies int
	// CommitEvery: digests are committed after this many pieces or CommitInterval, whichever
	// comes first (defaults 8 and 100ms), so that pieces become downloadable quickly without
	// a log entry per piece.
	CommitEvery    int
	CommitInterval time.Duration
	// Peers fetch pieces from any member; a member without the piece reads it from one that
	// has it through this client (default: net/http's with a 30s response header timeout).
	Logger *zap.Logger
}

func (c *Config) applyDefaults() {
	if c.MaxFetches == 0 {
		c.MaxFetches = 4
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.MaxCopies == 0 {
		c.MaxCopies = 4
	}
	if c.CommitEvery == 0 {
		c.CommitEvery = 8
	}
	if c.CommitInterval == 0 {
		c.CommitInterval = 100 * time.Millisecond
	}
	if c.BusyWindow == 0 {
		c.BusyWindow = time.Minute
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
}

// CDN is a member's cache role: it fetches the tasks it owns and serves pieces.
type CDN struct {
	cfg    Config
	log    *zap.Logger
	mu     sync.Mutex
	active map[string]bool // task IDs being fetched or copied by this member
	absent map[string]bool // cached tasks the state lacked at the last sweep
	slots  chan struct{}   // origin fetches
	copies chan struct{}   // replica copies
	wg     sync.WaitGroup
}

// New returns a CDN; Run starts its owner loop.
func New(cfg Config) (*CDN, error) {
	cfg.applyDefaults()
	if cfg.FSM == nil || cfg.Proposer == nil || cfg.Store == nil || cfg.Sources == nil || cfg.MemberID == "" {
		return nil, errors.New("cdn: member ID, FSM, proposer, store and sources are required")
	}
	if cfg.Replicas < 1 || cfg.MaxFetches < 1 || cfg.MaxCopies < 1 {
		return nil, fmt.Errorf("cdn: replicas (%d), fetches (%d) and copies (%d) must be at least 1", cfg.Replicas, cfg.MaxFetches, cfg.MaxCopies)
	}
	return &CDN{cfg: cfg, log: cfg.Logger.Named("cdn"), active: map[string]bool{}, absent: map[string]bool{},
		slots: make(chan struct{}, cfg.MaxFetches), copies: make(chan struct{}, cfg.MaxCopies)}, nil
}

// Run watches the replicated state for tasks this member owns and fetches them, and for
// tasks it holds a replica of and copies their pieces, until ctx ends; it returns when every
// fetch and copy has stopped.
func (c *CDN) Run(ctx context.Context) {
	defer c.wg.Wait()
	var lastSweep time.Time
	for {
		applied := c.cfg.FSM.AppliedIndex()
		c.scan(ctx)
		c.scanReplicas(ctx)
		if time.Since(lastSweep) >= sweepInterval {
			c.sweep()
			lastSweep = time.Now()
		}
		wait, cancel := context.WithTimeout(ctx, time.Second)
		_ = c.cfg.FSM.WaitApplied(wait, applied+1) // wake on the next change, or after a second
		cancel()
		if ctx.Err() != nil {
			return
		}
	}
}

// sweepInterval is how often a member drops from its cache what the replicated state no
// longer has: deleted tasks (DELETE /tasks/{id} removes the cache on every member this way)
// and generations older than the task's current one.
const sweepInterval = 2 * time.Second

// A member deletes only what a caught-up state lacks, and only after two sweeps in a row: a
// member that has just restarted has not replayed the log yet, and must not take its whole
// cache for deleted tasks.
func (c *CDN) sweep() {
	if !c.cfg.Proposer.CaughtUp() {
		return
	}
	tasks, err := c.cfg.Store.Tasks()
	if err != nil {
		c.log.Warn("listing the cache", zap.Error(err))
		return
	}
	for _, u := range tasks {
		c.mu.Lock()
		busy := c.active[u.TaskID]
		c.mu.Unlock()
		if busy {
			continue
		}
		t, ok := c.cfg.FSM.Task(u.TaskID)
		if !ok && !c.absent[u.TaskID] {
			c.absent[u.TaskID] = true // gone from the state: deleted at the next sweep
			continue
		}
		if !ok {
			delete(c.absent, u.TaskID)
			if err := c.cfg.Store.DeleteTask(u.TaskID); err != nil {
				c.log.Warn("removing a deleted task's cache", zap.String("task", u.TaskID), zap.Error(err))
			} else {
				c.log.Info("cache of a deleted task removed", zap.String("task", u.TaskID), zap.Int64("bytes", u.Bytes))
			}
			continue
		}
		delete(c.absent, u.TaskID)
		for _, g := range u.Generations {
			if g < t.Generation {
				if err := c.cfg.Store.DeleteGeneration(u.TaskID, g); err != nil {
					c.log.Warn("removing an old generation", zap.String("task", u.TaskID), zap.Error(err))
				}
			}
		}
	}
	c.evict(tasks)
}

// evict deletes, through Raft, the tasks this member owns that have expired, and, while the
// cache is above its high water mark, the least recently used ones until it is under the
// low water mark. Only a task's owner stores its pieces, so evicting them means the cluster
// no longer caches the task: it is deleted everywhere, and a later registration fetches it
// again. A task being fetched, or used within BusyWindow, is never chosen.
func (c *CDN) evict(lru []storage.Usage) {
	now := time.Now()
	used := c.cfg.Store.UsedBytes()
	high, low := c.cfg.CacheMaxBytes*95/100, c.cfg.CacheMaxBytes*85/100
	over := c.cfg.CacheMaxBytes > 0 && used > high
	if !over && c.cfg.TaskExpiry == 0 {
		return
	}
	for _, u := range lru { // least recently used first
		t, ok := c.cfg.FSM.Task(u.TaskID)
		if !ok || t.Owner != c.cfg.MemberID {
			continue
		}
		last := u.LastAccess
		if a := time.Unix(0, t.AccessedAt); a.After(last) {
			last = a
		}
		c.mu.Lock()
		busy := c.active[u.TaskID] || now.Sub(last) < c.cfg.BusyWindow
		c.mu.Unlock()
		expired := c.cfg.TaskExpiry > 0 && now.Sub(last) >= c.cfg.TaskExpiry
		if busy || !(expired || (over && used > low)) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := c.commit(ctx, fsm.TaskDelete{TaskID: u.TaskID})
		cancel()
		if err != nil {
			c.log.Warn("evicting a task", zap.String("task", u.TaskID), zap.Error(err))
			continue
		}
		if err := c.cfg.Store.DeleteTask(u.TaskID); err == nil {
			used -= u.Bytes
		}
		c.log.Info("task evicted", zap.String("task", u.TaskID), zap.Int64("bytes", u.Bytes),
			zap.Bool("expired", expired), zap.Int64("cache_bytes", used))
	}
}

// scan starts a fetch for every owned, incomplete task not being fetched, claiming it first.
func (c *CDN) scan(ctx context.Context) {
	for _, t := range c.cfg.FSM.OwnedTasks(c.cfg.MemberID) {
		c.mu.Lock()
		busy := c.active[t.ID]
		c.mu.Unlock()
		if busy {
			continue
		}
		select {
		case c.slots <- struct{}{}:
		default:
			return // all fetch slots busy: the next scan picks the rest up
		}
		if !t.Claimed {
			if err := c.claim(ctx, t); err != nil {
				<-c.slots
				c.log.Debug("claim refused", zap.String("task", t.ID), zap.Error(err))
				continue
			}
		}
		c.mu.Lock()
		c.active[t.ID] = true
		c.mu.Unlock()
		c.wg.Add(1)
		go func(t fsm.OwnedTask) {
			defer c.wg.Done()
			defer func() { <-c.slots }()
			defer func() {
				c.mu.Lock()
				delete(c.active, t.ID)
				c.mu.Unlock()
			}()
			if err := c.fetch(ctx, t); err != nil && ctx.Err() == nil {
				c.log.Warn("fetch stopped", zap.String("task", t.ID), zap.Error(err))
			}
		}(t)
	}
}

func (c *CDN) claim(ctx context.Context, t fsm.OwnedTask) error {
	return c.commit(ctx, fsm.TaskClaim{TaskID: t.ID, MemberID: c.cfg.MemberID, Epoch: t.RingEpoch})
}

// commit proposes commands and returns the first command's error, if any. Nothing is
// proposed once ctx has ended (a stopping member commits nothing more).
func (c *CDN) commit(ctx context.Context, cmds ...fsm.Command) error {
	_, err := c.commitAt(ctx, cmds...)
	return err
}

// commitAt is commit that also returns the log index the commands were applied at.
func (c *CDN) commitAt(ctx context.Context, cmds ...fsm.Command) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	index, res, err := c.cfg.Proposer.Propose(cctx, cmds...)
	if err != nil {
		return 0, err
	}
	for _, r := range res {
		if err := r.Err(); err != nil {
			return index, err
		}
	}
	return index, nil
}

// fetch reads a task from its origin once, from the first piece no member has cached, and
// commits each piece's digest as it is stored. It stops at the first refused commit: the
// member lost its claim, or the task moved to another generation.
func (c *CDN) fetch(ctx context.Context, t fsm.OwnedTask) error {
	log := c.log.With(zap.String("task", t.ID))
	src, err := c.cfg.Sources.For(t.URL)
	if err != nil {
		return c.failTask(ctx, t, err)
	}
	req := source.Request{URL: t.URL, Headers: t.Headers}
	info, err := src.Probe(ctx, req)
	if err != nil {
		return c.failTask(ctx, t, err)
	}
	gen, pieceSize := t.Generation, t.PieceSize
	if t.ContentLength >= 0 && info.ContentLength != t.ContentLength {
		gen++ // the origin's file changed since the task was probed: start afresh
	}
	if pieceSize <= 0 || gen != t.Generation {
		pieceSize = PieceSize(info.ContentLength, c.cfg.PieceSize)
	}
	meta := fsm.TaskMeta{TaskID: t.ID, MemberID: c.cfg.MemberID, Generation: gen, Status: fsm.TaskRunning,
		PieceSize: pieceSize, ContentLength: info.ContentLength, PieceCount: PieceCount(info.ContentLength, pieceSize)}
	if err := c.commit(ctx, meta); err != nil {
		return fmt.Errorf("commit task meta: %w", err)
	}
	first := uint32(0)
	if gen == t.Generation {
		first = c.cfg.FSM.FirstUncached(t.ID)
	}
	if meta.PieceCount >= 0 && int64(first) >= meta.PieceCount {
		return c.finish(ctx, meta, nil)
	}
	offset := int64(first) * pieceSize
	log.Info("fetching from the origin", zap.Uint64("generation", gen), zap.Int64("length", info.ContentLength),
		zap.Int64("piece_size", pieceSize), zap.Uint32("from_piece", first))
	rctx, stopReading := context.WithCancel(ctx)
	r := source.NewResumingReader(rctx, src, req, offset, info, source.ResumeOptions{Logger: c.log})
	defer r.Close()
	var whole hash.Hash // the whole file's digest, when the task expects one and the fetch starts at byte 0
	if strings.HasPrefix(t.Digest, "sha256:") && first == 0 {
		whole = sha256.New()
	}
	pieces := c.storePieces(rctx, r, t.ID, gen, first, pieceSize, whole)
	defer pieces.stop(stopReading)
	var pending [][32]byte
	pendingFrom, n := first, first
	lastCommit := time.Now()
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		err := c.commit(ctx, fsm.PiecesCached{TaskID: t.ID, MemberID: c.cfg.MemberID, Generation: gen, First: pendingFrom, Digests: pending})
		pendingFrom, pending, lastCommit = n, nil, time.Now()
		return err
	}
	total := offset
	for p := range pieces.next() {
		if p.err != nil {
			return fmt.Errorf("store piece %d: %w", p.n, p.err)
		}
		pending = append(pending, p.digest)
		n = p.n + 1
		total += p.size
		if len(pending) >= c.cfg.CommitEvery || time.Since(lastCommit) >= c.cfg.CommitInterval {
			if err := flush(); err != nil {
				return fmt.Errorf("commit pieces: %w", err)
			}
		}
	}
	switch rerr := pieces.err; {
	case rerr == nil:
	case errors.Is(rerr, source.ErrChanged):
		// The origin's file changed under us: nothing of this generation is kept; the
		// task starts over as generation gen+1 (the next scan fetches it).
		log.Info("origin file changed during the fetch: starting a new generation", zap.Uint64("generation", gen+1))
		return c.commit(ctx, fsm.TaskMeta{TaskID: t.ID, MemberID: c.cfg.MemberID, Generation: gen + 1,
			Status: fsm.TaskPending, PieceSize: -1, ContentLength: -1, PieceCount: -1})
	default:
		_ = flush()
		return c.failTask(ctx, t, rerr)
	}
	if err := flush(); err != nil {
		return fmt.Errorf("commit pieces: %w", err)
	}
	meta.ContentLength, meta.PieceCount = total, int64(n)
	return c.finish(ctx, meta, whole)
}

// finish checks the whole-file digest (when the task expects one and this member read the
// whole file) and marks the task complete.
func (c *CDN) finish(ctx context.Context, meta fsm.TaskMeta, whole hash.Hash) error {
	meta.Status = fsm.TaskSuccess
	if t, ok := c.cfg.FSM.Task(meta.TaskID); ok && t.Digest != "" && whole != nil {
		if want := t.Digest; len(want) > 7 && want[:7] == "sha256:" && fmt.Sprintf("sha256:%x", whole.Sum(nil)) != want {
			c.log.Warn("origin file does not match the task's digest", zap.String("task", meta.TaskID))
			meta.Status = fsm.TaskFailed
		}
	}
	if err := c.commit(ctx, meta); err != nil {
		return fmt.Errorf("commit completion: %w", err)
	}
	c.log.Info("task cached", zap.String("task", meta.TaskID), zap.Int64("bytes", meta.ContentLength),
		zap.Int64("pieces", meta.PieceCount), zap.String("status", meta.Status.String()))
	return nil
}

// failTask marks the task failed after an origin error. A fetch stopped because this member
// is stopping is not a failure: the task stays as it is for the next owner.
func (c *CDN) failTask(ctx context.Context, t fsm.OwnedTask, cause error) error {
	if ctx.Err() != nil {
		return cause
	}
	now, ok := c.cfg.FSM.Task(t.ID)
	if !ok {
		return cause
	}
	meta := fsm.TaskMeta{TaskID: t.ID, MemberID: c.cfg.MemberID, Generation: now.Generation, Status: fsm.TaskFailed,
		PieceSize: now.PieceSize, ContentLength: now.ContentLength, PieceCount: now.PieceCount}
	if err := c.commit(ctx, meta); err != nil {
		return fmt.Errorf("%w (and marking the task failed: %v)", cause, err)
	}
	return cause
}
