package peer

import (
	"context"
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/dfly-ha/dfha/sdk/api"
)

// askResult is the answer of a scheduling call made in the background.
type askResult struct {
	s   *api.Schedule
	err error
}

// runGeneration downloads every piece of the task's current generation. It returns
// errNewGeneration when the task moves to another one.
func (d *download) runGeneration(ctx context.Context) error {
	workers := d.p.cfg.Workers
	first, err := d.waitReady(ctx, d.query(nil, 0))
	if err != nil {
		return err
	}
	if err := d.setGeneration(first); err != nil {
		return err
	}
	if d.count == 0 {
		if d.stream {
			d.out = newStreamOut(d.req.Stream, 1, d.want)
			close(d.out.in)
			<-d.out.done
		}
		return nil
	}

	window := d.count // pieces that may be held in memory or in flight past the written ones
	if d.stream {
		window = int(min(int64(2*workers), max(1, d.p.cfg.StreamMemory/d.pieceSize)))
		d.out = newStreamOut(d.req.Stream, window, d.want)
		// Nothing reaches the stream once the generation is over: the writer drops what is
		// queued, and is waited for (bounded, see streamOut.stop).
		defer func() {
			cctx, cancel := d.cleanupCtx(ctx)
			defer cancel()
			if !d.out.stop(cctx) {
				d.log.Warn("the output is still blocked in a write; nothing more is written once it returns")
			}
		}()
	}
	recheck := make(chan struct{}, 1)
	rep := newReporter(ctx, d.p.client, d.log, &d.p.cfg, d.taskID, d.p.id, d.gen, func() {
		select {
		case recheck <- struct{}{}:
		default:
		}
	})
	defer func() {
		cctx, cancel := d.cleanupCtx(ctx)
		rep.close(cctx)
		cancel()
		d.reports += rep.sent.Load()
	}()

	wctx, stopWorkers := context.WithCancel(ctx)
	jobs := make(chan job)
	results := make(chan outcome, workers) // a worker never blocks on its last result
	wait := startWorkers(wctx, workers, jobs, results, d.fetchPiece)
	defer func() {
		// No worker writes to the file once the generation is over. Results are drained
		// meanwhile: a worker may be blocked handing one over.
		stopWorkers()
		close(jobs)
		ended := make(chan struct{})
		go func() { wait(); close(ended) }()
		for {
			select {
			case <-results:
			case <-ended:
				return
			}
		}
	}()

	l := &loop{d: d, rep: rep, window: window, inflight: map[uint32]bool{}, queued: map[uint32]bool{},
		backoff: minBackoff, tries: map[uint32]int{}, cool: map[uint32]time.Time{}}
	if err := l.take(ctx, first); err != nil {
		return err
	}
	askc := make(chan askResult, 1)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for d.held < d.count {
		now := time.Now()
		due := l.nextAsk()
		if !l.asking && (l.force || (!now.Before(due) && l.needWork())) {
			l.asking, l.force = true, false
			q := d.query(l, window)
			go func() {
				s, err := d.p.client.Schedule(ctx, d.taskID, q)
				askc <- askResult{s, err}
			}()
		}
		var jobc chan<- job
		var next job
		if len(l.queue) > 0 && l.inWindow(l.queue[0].n) {
			jobc, next = jobs, l.queue[0]
		}
		var timerc <-chan time.Time
		if !l.asking && due.After(now) {
			timer.Reset(due.Sub(now))
			timerc = timer.C
		}
		var written <-chan struct{}
		var writeErr <-chan error
		if d.stream {
			written, writeErr = d.out.kick, d.out.errc
		}
		select {
		case jobc <- next:
			l.queue = l.queue[1:]
			delete(l.queued, next.n)
			l.inflight[next.n] = true
		case o := <-results:
			if err := l.done(o); err != nil {
				return err
			}
		case a := <-askc:
			l.asking = false
			if err := l.answer(ctx, a); err != nil {
				return err
			}
		case <-timerc:
		case <-recheck:
			l.force = true
		case <-written:
			l.written = int(d.out.written.Load())
		case err := <-writeErr:
			return err
		case err := <-rep.failed:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
		if timerc != nil {
			timer.Stop()
		}
	}
	if d.stream {
		// Every piece is handed to the writer: wait until it has written them.
		for int(d.out.written.Load()) < d.count {
			select {
			case <-d.out.kick:
			case err := <-d.out.errc:
				return err
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		select {
		case err := <-d.out.errc:
			return err
		default:
		}
	}
	return nil
}

// query is the next scheduling request. It asks for a few pieces per worker, plus as many
// as the cluster may still list although this peer already has them in hand (in flight,
// queued, or held but not reported yet), since it would skip those.
func (d *download) query(l *loop, window int) api.ScheduleQuery {
	q := api.ScheduleQuery{PeerID: d.p.id, Limit: 4 * d.p.cfg.Workers, Exclude: d.black.list()}
	if l != nil {
		// Successes the cluster has not accepted count, but only so far: while reports fail
		// they pile up, and the answers would list nothing else.
		q.Limit += len(l.inflight) + len(l.queue) + l.cooling() +
			min(l.rep.unconfirmed(), l.rep.maxUnconfirmedLimit())
	}
	if d.stream {
		q.Mode = api.ModeStream
		if l != nil {
			q.From = l.firstMissing()
			q.Limit = window + len(l.inflight)
		} else {
			q.Limit = max(window, 2*d.p.cfg.Workers)
		}
	}
	q.Limit = min(q.Limit, api.MaxScheduleLimit)
	return q
}

// loop is the coordinator's state for one generation.
type loop struct {
	d        *download
	rep      *reporter
	window   int
	queue    []job // pieces to hand out, in the cluster's order (stream mode: by number)
	queued   map[uint32]bool
	inflight map[uint32]bool
	asking   bool      // a scheduling call is under way
	force    bool      // ask at once (a report found the generation stale)
	retryAt  time.Time // no scheduling call before (after an empty answer or a failure)
	backoff  time.Duration
	errs     int  // scheduling calls failed in a row
	starved  bool // the last answer brought no new piece
	resets   int  // answers that said Done while pieces were missing
	// idleAt: after a short answer that brought pieces (they trickle in from the origin),
	// a peer with nothing left to fetch may ask again from then on, before retryAt.
	idleAt time.Time
	// Pieces no source delivered: the rounds that failed, and when the piece may be
	// fetched again (exponential backoff per piece).
	tries map[uint32]int
	cool  map[uint32]time.Time
	// Stream mode: pieces verified but not yet handed to the writer, the next piece to
	// hand over, and how many the writer has written.
	buffered map[uint32][]byte
	next     uint32
	written  int
}

// inWindow reports whether piece n may be fetched now: in stream mode only pieces within
// the window past those written may be in memory.
func (l *loop) inWindow(n uint32) bool {
	return !l.d.stream || int(n) < l.written+l.window
}

// firstMissing is the first piece not yet verified nor being fetched.
func (l *loop) firstMissing() uint32 {
	for n := int(l.next); n < l.d.count; n++ {
		if !l.d.have[n] && !l.inflight[uint32(n)] {
			return uint32(n)
		}
	}
	return uint32(l.d.count)
}

// needWork reports whether the queue runs low while pieces remain to be fetched (in stream
// mode: within the window).
func (l *loop) needWork() bool {
	if l.starved && len(l.inflight) >= l.d.p.cfg.Workers {
		return false // the last answer had nothing new: wait until a worker is free
	}
	if l.d.stream {
		ready := 0
		for _, j := range l.queue {
			if l.inWindow(j.n) {
				ready++
			}
		}
		if ready >= l.d.p.cfg.Workers {
			return false
		}
		for n := l.written; n < min(l.written+l.window, l.d.count); n++ {
			if !l.d.have[n] && !l.inflight[uint32(n)] && !l.queued[uint32(n)] {
				return true
			}
		}
		return false
	}
	// Pieces queued again because their peers were busy do not count: an answer may bring
	// other pieces, and more holders for them (see refresh).
	fresh := 0
	for _, j := range l.queue {
		if j.busySince.IsZero() {
			fresh++
		}
	}
	return fresh < l.d.p.cfg.Workers && l.d.held+len(l.inflight)+fresh < l.d.count
}

// answer takes a scheduling answer, or backs off after a failed call.
func (l *loop) answer(ctx context.Context, a askResult) error {
	if a.err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		l.errs++
		if l.errs >= maxScheduleErrors || !l.d.recoverable(ctx, a.err) {
			return fmt.Errorf("asking for pieces: %w", a.err)
		}
		l.d.log.Warn("asking for pieces failed", zap.Error(a.err))
		l.later()
		return nil
	}
	l.errs = 0
	return l.take(ctx, a.s)
}

// take queues the pieces of an answer that are not already held, in flight, queued or
// cooling down after a failed round.
func (l *loop) take(ctx context.Context, s *api.Schedule) error {
	d := l.d
	switch {
	case s.Generation < d.gen:
		// A member that is behind: ask again, later.
		d.log.Debug("answer of an older generation ignored", zap.Uint64("generation", s.Generation))
		d.asks++
		d.emptyAsks++
		l.starved = true
		l.later()
		return nil
	case s.Status == api.TaskFailed:
		return d.taskFailed()
	case s.Generation > d.gen:
		d.minGen = s.Generation
		return errNewGeneration
	case s.Done && d.held < d.count:
		return l.wronglyDone(ctx)
	}
	now := time.Now()
	added := 0
	for _, p := range s.Pieces {
		if l.queued[p.N] && len(p.Sources) > 0 {
			l.refresh(p)
		}
		if int64(p.N) >= int64(d.count) || d.have[p.N] || l.inflight[p.N] || l.queued[p.N] {
			continue
		}
		if until, ok := l.cool[p.N]; ok && now.Before(until) {
			continue // it just failed: not before its backoff has passed
		}
		digest, ok := parseDigest(p.Digest)
		if !ok || p.Size != d.pieceLen(p.N) || len(p.Sources) == 0 {
			d.log.Warn("bad scheduled piece ignored", zap.Uint32("piece", p.N), zap.Int64("size", p.Size),
				zap.String("digest", p.Digest), zap.Int("sources", len(p.Sources)))
			continue
		}
		l.queue = append(l.queue, job{n: p.N, size: p.Size, digest: digest, sources: p.Sources})
		l.queued[p.N] = true
		added++
	}
	if d.stream {
		slices.SortFunc(l.queue, func(a, b job) int { return int(a.n) - int(b.n) })
	}
	d.asks++
	d.log.Debug("scheduled", zap.Int("pieces", len(s.Pieces)), zap.Int("new", added), zap.String("status", s.Status),
		zap.Bool("done", s.Done), zap.Int("held", d.held), zap.Int("in_flight", len(l.inflight)))
	// An answer with less than one new piece per worker shows the cluster has little to
	// give now (pieces still coming from the origin, or held back for other peers to bring
	// into the swarm): the next call waits, backing off as after an empty one. Only an
	// answer that keeps every worker busy lets the next call go as soon as one is needed.
	l.starved = added == 0
	if added == 0 {
		d.emptyAsks++
	}
	l.idleAt = time.Time{}
	if added < d.p.cfg.Workers {
		l.later()
		if added > 0 {
			l.idleAt = now.Add(minBackoff)
		}
	} else {
		l.backoff, l.retryAt = minBackoff, time.Time{}
	}
	return nil
}

// wronglyDone handles an answer that says this peer holds every piece while it does not:
// the cluster's piece map lists pieces this peer does not hold (of an older generation, or
// of a file since removed), and would never schedule them. The peer resets (leaves and
// registers again with what it really holds), once per generation; a failed reset, or the
// same answer after one, fails the download.
func (l *loop) wronglyDone(ctx context.Context) error {
	d := l.d
	if l.resets >= 1 {
		return fmt.Errorf("%w: the cluster lists this peer as holding every piece of task %s, it holds %d of %d",
			ErrBadSchedule, d.taskID, d.held, d.count)
	}
	l.resets++
	d.log.Warn("the cluster lists pieces this peer does not hold: registering again",
		zap.Int("held", d.held), zap.Int("pieces", d.count))
	if err := d.p.reset(ctx); err != nil {
		return fmt.Errorf("%w the cluster wrongly lists for this peer: %w", errWithdraw, err)
	}
	l.force = true
	return nil
}

// refresh gives a queued piece that peers were busy for the sources of a newer answer
// (more peers may hold it by now).
func (l *loop) refresh(p api.ScheduledPiece) {
	for i := range l.queue {
		if j := &l.queue[i]; j.n == p.N && !j.busySince.IsZero() && p.Size == j.size {
			if digest, ok := parseDigest(p.Digest); ok && digest == j.digest {
				j.sources = p.Sources
			}
			return
		}
	}
}

// nextAsk is when the next scheduling call may go: retryAt, or idleAt when this peer has
// nothing in flight nor queued.
func (l *loop) nextAsk() time.Time {
	if !l.idleAt.IsZero() && l.idleAt.Before(l.retryAt) && len(l.inflight) == 0 && len(l.queue) == 0 {
		return l.idleAt
	}
	return l.retryAt
}

// later delays the next scheduling call, doubling the delay up to maxBackoff.
func (l *loop) later() {
	l.retryAt = time.Now().Add(l.backoff)
	l.backoff = min(2*l.backoff, maxBackoff)
}

// cooling is the number of pieces waiting out their backoff after a failed round: the
// cluster may list them, and they are skipped.
func (l *loop) cooling() int {
	now := time.Now()
	n := 0
	for _, until := range l.cool {
		if now.Before(until) {
			n++
		}
	}
	return n
}

// failed notes a round in which no source delivered piece n: the piece waits
// pieceBackoffMin, doubling up to pieceBackoffMax, before it is fetched again, and after
// maxPieceRounds such rounds the download fails.
func (l *loop) failed(o outcome) error {
	t := l.tries[o.n] + 1
	l.tries[o.n] = t
	if t >= maxPieceRounds {
		why := "no source could be tried"
		if o.last != nil {
			why = "last: " + o.last.Error()
		}
		return fmt.Errorf("piece %d of task %s: no source delivered it in %d attempts (%s)", o.n, l.d.taskID, t, why)
	}
	l.cool[o.n] = time.Now().Add(min(pieceBackoffMin<<(t-1), pieceBackoffMax))
	return nil
}

// done takes a worker's outcome.
func (l *loop) done(o outcome) error {
	d := l.d
	delete(l.inflight, o.n)
	if o.err != nil {
		return o.err
	}
	for _, f := range o.failures {
		l.rep.failure(o.n, f.source, f.reason)
	}
	if o.newGen {
		l.force = true
	}
	if o.busy {
		// Peers hold it but were busy: queue it again (behind the others), not a failed
		// round; members serve it only after memberWait (fetchPiece).
		l.queue = append(l.queue, o.job)
		l.queued[o.n] = true
		return nil
	}
	if !o.ok {
		if o.cancelled {
			return nil
		}
		if err := l.failed(o); err != nil {
			return err
		}
		if len(l.queue) == 0 && l.retryAt.IsZero() {
			l.later() // every source failed: let the cluster hear of it before asking again
		}
		return nil
	}
	delete(l.tries, o.n)
	delete(l.cool, o.n)
	d.have[o.n] = true
	d.held++
	d.doneBytes += d.pieceLen(o.n)
	if o.src.Kind == api.SourceMember {
		d.fromMembers++
	} else {
		d.fromPeers++
	}
	if d.stream {
		if l.buffered == nil {
			l.buffered = map[uint32][]byte{}
		}
		l.buffered[o.n] = o.data
		for p, ok := l.buffered[l.next]; ok; p, ok = l.buffered[l.next] {
			d.out.in <- p // never blocks: the window bounds what is handed over unwritten
			delete(l.buffered, l.next)
			l.next++
			d.streamed = true
		}
	} else {
		d.p.store.MarkHeld(d.taskID, o.n)
		l.rep.success(o.n, o.src.ID, o.src.Kind == api.SourceMember)
		d.advertised = true
	}
	d.progress()
	return nil
}
