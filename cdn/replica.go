package cdn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/dfly-ha/dfha/cdn/storage"
	"github.com/dfly-ha/dfha/fsm"
	"go.uber.org/zap"
)

// Replicas. With --cache-replicas N, a task's owners are RingOwners(id, N): the first claims
// it and fetches it from the origin (fetch), the others are its replicas and copy every piece
// whose digest is committed from a live member that has cached it, never from the origin.
// When the primary dies, the next owner on the ring is a replica: its claim resumes the
// origin read at FirstUncached, which counts the replica's copies, and peers read the
// pieces from it meanwhile.

// copyStallTimeout: a member that sends nothing of a piece for this long is given up on (the
// next one is tried), so that a copy never hangs on an unreachable member.
const copyStallTimeout = 30 * time.Second

// progressReader pushes timer back by copyStallTimeout whenever bytes arrive.
type progressReader struct {
	r     io.Reader
	timer *time.Timer
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.timer.Reset(copyStallTimeout)
	}
	return n, err
}

// errNotReplica: this member is no longer a replica owner of the task (the ring changed, or
// the task went away or failed). The copy stops; the owner loop or the next scan takes over.
var errNotReplica = errors.New("no longer a replica owner of the task")

// scanReplicas starts a copy for every task this member is a replica owner of that has
// pieces to copy and that this member is not already working on, within MaxCopies.
func (c *CDN) scanReplicas(ctx context.Context) {
	if c.cfg.Replicas <= 1 {
		return
	}
	for _, t := range c.cfg.FSM.ReplicaTasks(c.cfg.MemberID, c.cfg.Replicas) {
		c.mu.Lock()
		if c.active[t.ID] {
			c.mu.Unlock()
			continue
		}
		select {
		case c.copies <- struct{}{}:
		default:
			c.mu.Unlock()
			return // all copy slots busy: the next scan picks the rest up
		}
		c.active[t.ID] = true
		c.mu.Unlock()
		c.wg.Add(1)
		go func(t fsm.ReplicaTask) {
			defer c.wg.Done()
			defer func() { <-c.copies }()
			defer func() {
				c.mu.Lock()
				delete(c.active, t.ID)
				c.mu.Unlock()
			}()
			err := c.copyTask(ctx, t.ID, t.Generation)
			switch {
			case err == nil || ctx.Err() != nil:
			case errors.Is(err, errNotReplica), errors.Is(err, ErrGeneration), errors.Is(err, ErrNotCached), errors.Is(err, fsm.ErrConflict), errors.Is(err, fsm.ErrNotFound):
				c.log.Debug("replica copy stopped", zap.String("task", t.ID), zap.Error(err))
			default:
				c.log.Warn("replica copy stopped", zap.String("task", t.ID), zap.Error(err))
			}
		}(t)
	}
}

// isReplica reports whether this member is a replica owner (not the primary) of the task
// on the current ring, and the task is still worth copying.
func (c *CDN) isReplica(taskID string, gen uint64) error {
	t, ok := c.cfg.FSM.Task(taskID)
	if !ok || (t.Status != fsm.TaskRunning && t.Status != fsm.TaskSuccess) {
		return errNotReplica
	}
	if t.Generation != gen {
		return fmt.Errorf("%w: the task moved to generation %d", ErrGeneration, t.Generation)
	}
	if owners := c.cfg.FSM.RingOwners(taskID, c.cfg.Replicas); len(owners) < 2 || !slices.Contains(owners[1:], c.cfg.MemberID) {
		return errNotReplica
	}
	return nil
}

// copyTask copies, in order, the pieces of generation gen that live members have cached and
// this member has not, and commits them (PiecesCached with this member's ID) every
// CommitEvery pieces or CommitInterval. It returns once nothing is left to copy (a later
// commit by the primary starts a new copy), or with an error when the member stops being a
// replica owner, the generation changes (the sweep then drops what was copied of it, and the
// next scan copies the new one) or a commit is refused.
//
// A piece is copied at most once: one copy per task runs at a time, a piece already stored
// with the committed digest (copied before a crash or a refused commit) is committed without
// being read again, and each commit is applied locally before the state is read again.
func (c *CDN) copyTask(ctx context.Context, taskID string, gen uint64) error {
	stored := map[uint32]bool{} // pieces stored by this copy, committed or pending
	var pending []uint32
	lastCommit := time.Now()
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		cmds, err := c.cachedCommands(taskID, gen, pending)
		pending, lastCommit = nil, time.Now()
		if err != nil {
			return err
		}
		index, err := c.commitAt(ctx, cmds...)
		if err != nil {
			return fmt.Errorf("commit copied pieces: %w", err)
		}
		// Read the state again only once it shows these copies.
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return c.cfg.FSM.WaitApplied(wctx, index)
	}
	for {
		if err := c.isReplica(taskID, gen); err != nil {
			return err
		}
		g, todo := c.cfg.FSM.PiecesToCopy(taskID, c.cfg.MemberID)
		if g != gen {
			return fmt.Errorf("%w: the task moved to generation %d", ErrGeneration, g)
		}
		todo = slices.DeleteFunc(todo, func(n uint32) bool { return stored[n] })
		if len(todo) == 0 {
			return nil
		}
		have, err := c.storedDigests(taskID, gen)
		if err != nil {
			return err
		}
		progress := false
		for _, n := range todo {
			if err := ctx.Err(); err != nil {
				return err
			}
			digest, g, ok := c.cfg.FSM.PieceDigest(taskID, n)
			if !ok || g != gen {
				return fmt.Errorf("%w: piece %d is not of generation %d any more", ErrGeneration, n, gen)
			}
			if d, ok := have[n]; !ok || d != digest {
				if err := c.copyPiece(ctx, taskID, gen, n, digest); err != nil {
					if errors.Is(err, ErrNotCached) {
						continue // no live member could send it now: the next pass retries
					}
					_ = flush()
					return fmt.Errorf("copy piece %d: %w", n, err)
				}
			}
			stored[n], progress = true, true
			pending = append(pending, n)
			if len(pending) >= c.cfg.CommitEvery || time.Since(lastCommit) >= c.cfg.CommitInterval {
				if err := flush(); err != nil {
					return err
				}
				if err := c.isReplica(taskID, gen); err != nil {
					return err
				}
			}
		}
		if err := flush(); err != nil {
			return err
		}
		if !progress {
			return ErrNotCached // nothing could be read now; a later scan tries again
		}
	}
}

// storedDigests returns the digests of the pieces of generation gen this member stores.
func (c *CDN) storedDigests(taskID string, gen uint64) (map[uint32][32]byte, error) {
	infos, err := c.cfg.Store.PieceInfos(taskID, gen)
	if err != nil {
		return nil, fmt.Errorf("list stored pieces: %w", err)
	}
	out := make(map[uint32][32]byte, len(infos))
	for _, p := range infos {
		out[p.N] = p.Digest
	}
	return out, nil
}

// cachedCommands turns pieces (increasing) into one PiecesCached per run of consecutive
// pieces, with the digests the state holds: one log entry commits them all.
func (c *CDN) cachedCommands(taskID string, gen uint64, pieces []uint32) ([]fsm.Command, error) {
	var runs []fsm.PiecesCached
	for _, n := range pieces {
		digest, g, ok := c.cfg.FSM.PieceDigest(taskID, n)
		if !ok || g != gen {
			return nil, fmt.Errorf("%w: piece %d is not of generation %d any more", ErrGeneration, n, gen)
		}
		if k := len(runs); k == 0 || runs[k-1].First+uint32(len(runs[k-1].Digests)) != n {
			runs = append(runs, fsm.PiecesCached{TaskID: taskID, MemberID: c.cfg.MemberID, Generation: gen, First: n})
		}
		runs[len(runs)-1].Digests = append(runs[len(runs)-1].Digests, digest)
	}
	cmds := make([]fsm.Command, len(runs))
	for i, r := range runs {
		cmds[i] = r
	}
	return cmds, nil
}

// copyPiece reads piece n from a live member that has cached it and stores it; the store
// checks the bytes against digest (the state's) and keeps nothing else. Members are tried
// in turn, starting at a different one per piece so that the copies spread over them.
// ErrNotCached when no member could send it.
func (c *CDN) copyPiece(ctx context.Context, taskID string, gen uint64, n uint32, digest [32]byte) error {
	holders := c.cfg.FSM.PieceCachedBy(taskID, n)
	for i := range holders {
		m := holders[(int(n)+i)%len(holders)]
		if m == c.cfg.MemberID {
			continue
		}
		info, ok := c.cfg.FSM.Member(m)
		if !ok || !info.Alive {
			continue
		}
		p, err := c.fromMember(ctx, info.HTTPAddr, taskID, n, gen)
		if err != nil {
			if errors.Is(err, ErrGeneration) {
				return err
			}
			c.log.Debug("piece not copied from member", zap.String("member", m), zap.String("task", taskID), zap.Uint32("piece", n), zap.Error(err))
			continue
		}
		stop := context.AfterFunc(ctx, func() { p.Body.Close() }) // a stopping member stops reading
		stalled := time.AfterFunc(copyStallTimeout, func() { p.Body.Close() })
		err = c.cfg.Store.WritePiece(taskID, gen, n, &progressReader{r: p.Body, timer: stalled}, p.Size, digest)
		stalled.Stop()
		stop()
		p.Body.Close()
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, storage.ErrDigestMismatch), errors.Is(err, storage.ErrSizeMismatch):
			c.log.Warn("a member sent a piece that does not match its digest", zap.String("member", m),
				zap.String("task", taskID), zap.Uint32("piece", n), zap.Error(err))
		case errors.Is(err, storage.ErrDeleted):
			return fmt.Errorf("%w: deleted while copying", ErrGeneration)
		case errors.Is(err, storage.ErrInvalid), errors.Is(err, storage.ErrBadTaskID):
			return err
		default:
			// A body broken in the middle is a read error of WritePiece: try another member.
			c.log.Debug("piece copy from member failed", zap.String("member", m), zap.String("task", taskID), zap.Uint32("piece", n), zap.Error(err))
		}
	}
	return ErrNotCached
}
