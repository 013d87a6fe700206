package peer

import (
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/dfly-ha/dfha/sdk"
	"github.com/dfly-ha/dfha/sdk/api"
)

// Bounds of the download loop.
const (
	minBackoff = 250 * time.Millisecond
	maxBackoff = time.Second
	// maxScheduleErrors is how many scheduling calls in a row may fail (each after the
	// sdk's own retries over every member, ~20s) before the download gives up.
	maxScheduleErrors = 3
	// generationRestarts is how often a download starts over for a new generation.
	generationRestarts = 1
	// maxPieceRounds is how many rounds in a row may end without any source of a piece
	// delivering it (every source busy, without it, refusing, dead or corrupt) before the
	// download fails. With the backoff below, that is about 20 s of trying.
	maxPieceRounds = 10
	// busyPause is how long a worker waits after every peer source of a piece answered
	// busy before the piece is queued again.
	busyPause = 200 * time.Millisecond
)

// Backoff of a piece that no source delivered: it is not fetched again before
// pieceBackoffMin, doubling each round up to pieceBackoffMax. Variables for the tests.
var (
	pieceBackoffMin = 100 * time.Millisecond
	pieceBackoffMax = 4 * time.Second
	// memberWait is how long a piece whose peer sources are busy waits for them before a
	// member may serve it.
	memberWait = 1 * time.Second
)

var (
	// errNewGeneration: the task moved to another generation; the download starts over.
	errNewGeneration = errors.New("new task generation")
	// errWithdraw: the peer could not take back pieces the cluster wrongly lists for it.
	errWithdraw = errors.New("withdrawing pieces")
)

// download is one Download call. The coordinator (run and its loop) owns every field
// below "coordinator state"; workers read the per-generation fields, which do not change
// while they run.
type download struct {
	p      *Peer
	log    *zap.Logger
	req    Request
	want   string // the expected digest, normalized ("" for none)
	taskID string
	stream bool

	file    *os.File // the temp file (file mode)
	tmpPath string

	black    *blacklist
	received atomic.Int64
	ended    atomic.Int64 // when the download's context ended (unix ns), 0 before

	// Per generation, set before the workers start.
	gen       uint64
	minGen    uint64 // the newest generation an answer announced: older ones are ignored
	pieceSize int64
	length    int64
	count     int

	// Coordinator state.
	have        []bool
	held        int
	fromPeers   int64
	fromMembers int64
	doneBytes   int64
	out         *streamOut // stream mode
	streamed    bool       // bytes went to the stream: no starting over
	advertised  bool       // pieces were reported held (file mode)
	asks        int        // scheduling calls, for the logs
	emptyAsks   int        // of which brought no new piece
	reports     int64      // report calls
}

// Download fetches req's file through the cluster and its peers. On success the output
// file is complete and verified and the peer serves its pieces until Close; on failure no
// output file is left behind. A new generation of the task mid-way starts the download over
// once.
func (p *Peer) Download(ctx context.Context, req Request) (Result, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return Result{}, ErrClosed
	}
	p.downloads.Add(1)
	p.mu.Unlock()
	defer p.downloads.Done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(p.ctx, cancel)() // Close stops the download
	start := time.Now()
	failovers := p.client.Failovers()
	d, err := p.newDownload(req)
	if err != nil {
		return Result{}, err
	}
	defer context.AfterFunc(ctx, func() { d.ended.CompareAndSwap(0, time.Now().UnixNano()) })()
	res, err := d.run(ctx)
	res.DurationS = time.Since(start).Seconds()
	res.SupernodeFailovers = p.client.Failovers() - failovers
	return res, err
}

func (p *Peer) newDownload(req Request) (*download, error) {
	if _, err := api.CanonicalURL(req.URL, req.Filter); err != nil {
		return nil, fmt.Errorf("url %q: %w", req.URL, err)
	}
	want, err := api.NormalizeDigest(req.Digest)
	if err != nil {
		return nil, fmt.Errorf("digest %q: %w", req.Digest, err)
	}
	d := &download{p: p, req: req, want: want, stream: req.Stream != nil, black: newBlacklist(nil)}
	if !d.stream {
		if req.Output == "" {
			return nil, errors.New("no output file")
		}
		if fi, err := os.Stat(req.Output); err == nil && fi.IsDir() {
			return nil, fmt.Errorf("output %s is a directory", req.Output)
		}
	}
	return d, nil
}

// cleanupCtx bounds one step of winding the download down (the last reports, the stream
// writer, telling the cluster of a failure): every step ends at most ShutdownTimeout after
// the download's context ended (SIGINT, Close, a timeout), so that all of them together
// take no longer than that; before it ended, each step gets ShutdownTimeout.
func (d *download) cleanupCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	from := time.Now()
	if e := d.ended.Load(); e != 0 {
		from = time.Unix(0, e)
	}
	return context.WithDeadline(context.WithoutCancel(ctx), from.Add(d.p.cfg.ShutdownTimeout))
}

// clusterDigest is the part of the expected digest the cluster gets: a sha256 one only.
func (d *download) clusterDigest() string {
	if strings.HasPrefix(d.want, "sha256:") {
		return d.want
	}
	return ""
}

func (d *download) run(ctx context.Context) (Result, error) {
	p := d.p
	treq := api.RegisterTaskRequest{URL: d.req.URL, Headers: d.req.Headers, Filter: d.req.Filter,
		Digest: d.clusterDigest(), PeerID: p.id}
	task, _, err := p.client.RegisterTask(ctx, treq)
	if err != nil {
		return Result{}, fmt.Errorf("registering the task: %w", err)
	}
	d.taskID = task.TaskID
	d.log = p.log.With(zap.String("task", d.taskID))
	res := Result{TaskID: d.taskID}
	held, err := p.join(d.taskID, &joinedTask{req: treq, advertise: !d.stream})
	if err != nil {
		return res, err
	}
	if held {
		// Downloaded before: the cluster lists this peer as holding every piece, and would
		// schedule none. Take that back first.
		p.store.Remove(d.taskID)
		if err := p.reset(ctx); err != nil {
			p.leave(d.taskID)
			return res, fmt.Errorf("withdrawing the earlier download: %w", err)
		}
	}
	if !d.stream {
		dir, base := filepath.Split(d.req.Output)
		if dir == "" {
			dir = "."
		}
		if d.file, err = createTemp(dir, "."+base+".dfget-"); err != nil {
			p.leave(d.taskID)
			return res, fmt.Errorf("creating the output: %w", err)
		}
		d.tmpPath = d.file.Name()
	}
	digest, err := d.runGenerations(ctx)
	if err == nil {
		err = d.complete(digest)
	}
	if err != nil {
		return res, d.abort(ctx, err)
	}
	d.log.Info("download complete", zap.Int64("bytes", d.length), zap.Int64("received", d.received.Load()),
		zap.Int("pieces", d.count), zap.Int("schedule_calls", d.asks), zap.Int("empty_answers", d.emptyAsks),
		zap.Int64("report_calls", d.reports))
	res.Bytes, res.BytesReceived, res.Digest = d.length, d.received.Load(), digest.sha256
	res.PiecesFromPeers, res.PiecesFromSupernodes = d.fromPeers, d.fromMembers
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.ShutdownTimeout)
	defer cancel()
	if err := p.client.UpdateTask(uctx, d.taskID, api.UpdateTaskRequest{PeerID: p.id, Status: api.StatusSuccess}); err != nil {
		d.log.Warn("reporting the download done failed", zap.Error(err))
	}
	if d.stream {
		p.leave(d.taskID)
	} else {
		p.finished(d.taskID)
	}
	return res, nil
}

// runGenerations downloads every piece, starting over once if the task's generation
// changes, and returns the whole file's sha256 digest and the digest in the expected
// algorithm ("" when none was asked for).
func (d *download) runGenerations(ctx context.Context) (digests, error) {
	for restarts := 0; ; restarts++ {
		err := d.runGeneration(ctx)
		if err == nil {
			return d.digests()
		}
		if !errors.Is(err, errNewGeneration) {
			return digests{}, err
		}
		// The pieces held are of the old generation: nothing of them may be served, nor
		// reported by a registration made meanwhile (the heartbeat's, after a 404).
		d.p.setJoined(d.taskID, 0)
		if !d.stream {
			d.p.store.Add(d.taskID, d.file, 0, 0)
		}
		if restarts >= generationRestarts || d.streamed {
			return digests{}, fmt.Errorf("task %s: %w", d.taskID, ErrGenerationChanged)
		}
		d.log.Warn("the origin's file changed: starting over", zap.Uint64("generation", d.minGen))
	}
}

// createTemp creates a new file named prefix followed by a random number in dir, with
// the mode a plain file create gets (0666 less the umask): os.CreateTemp would make it 0600.
func createTemp(dir, prefix string) (*os.File, error) {
	for range 1000 {
		name := filepath.Join(dir, prefix+strconv.FormatUint(uint64(rand.Uint32()), 10))
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o666)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		return f, err
	}
	return nil, &os.PathError{Op: "createtemp", Path: filepath.Join(dir, prefix+"*"), Err: os.ErrExist}
}

// abort cleans up after a failure: the temp file goes, the cluster hears of it. It returns
// the download's error: cause, and the failure to withdraw the pieces of the removed file
// when there is one (the cluster would keep sending other peers here for them).
func (d *download) abort(ctx context.Context, cause error) error {
	p := d.p
	p.leave(d.taskID)
	if !d.stream {
		p.store.Remove(d.taskID)
		_ = d.file.Close()
		if err := os.Remove(d.tmpPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			d.log.Warn("removing the temp file", zap.String("path", d.tmpPath), zap.Error(err))
		}
	}
	uctx, cancel := d.cleanupCtx(ctx)
	defer cancel()
	err := p.client.UpdateTask(uctx, d.taskID, api.UpdateTaskRequest{PeerID: p.id, Status: api.StatusFailed,
		Reason: truncate(cause.Error(), 500)})
	if err != nil {
		d.log.Debug("reporting the failure failed", zap.Error(err))
	}
	if d.advertised {
		// Pieces of the removed file are in the piece map: other peers would be sent here
		// for them, and this peer would be told it has them. After Close there is nothing
		// to do: its DELETE /peers takes them all out.
		if err := p.reset(uctx); err != nil && !errors.Is(err, ErrClosed) && !errors.Is(cause, errWithdraw) {
			d.log.Warn("withdrawing the pieces of the failed download", zap.Error(err))
			return fmt.Errorf("%w (and withdrawing its pieces from the cluster failed: %v)", cause, err)
		}
	}
	return cause
}

// waitReady asks for work until the owner has probed the origin (the task leaves pending),
// backing off from 50ms to 1s, and returns that first answer.
func (d *download) waitReady(ctx context.Context, q api.ScheduleQuery) (*api.Schedule, error) {
	backoff, errs := minBackoff, 0
	for {
		s, err := d.p.client.Schedule(ctx, d.taskID, q)
		switch {
		case err != nil:
			if errs++; ctx.Err() != nil || errs >= maxScheduleErrors || !d.recoverable(ctx, err) {
				return nil, fmt.Errorf("asking for pieces: %w", err)
			}
		case s.Generation < d.minGen:
			errs = 0 // a member that is behind: ask again
		case s.Status == api.TaskFailed:
			return nil, d.taskFailed()
		case s.Status != api.TaskPending && s.PieceCount >= 0:
			return s, nil
		default:
			errs = 0
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// taskFailed is the error of a task the cluster gave up on. The API carries no reason; with
// an expected digest, the likeliest one is that the origin's file does not match it.
func (d *download) taskFailed() error {
	if want := d.clusterDigest(); want != "" {
		return fmt.Errorf("task %s: %w, or the file does not match the expected digest %s", d.taskID, ErrTaskFailed, want)
	}
	return fmt.Errorf("task %s: %w", d.taskID, ErrTaskFailed)
}

// recoverable reports whether a failed scheduling call may work later: not for requests
// the cluster refuses (bad, unauthorized). A peer or task the cluster does not know (the
// peer expired, the task was deleted) is registered again first.
func (d *download) recoverable(ctx context.Context, err error) bool {
	switch {
	case errors.Is(err, sdk.ErrBadRequest), errors.Is(err, sdk.ErrUnauthorized):
		return false
	case errors.Is(err, sdk.ErrNotFound):
		d.log.Warn("the cluster does not know this peer or task: registering again", zap.Error(err))
		if err := d.p.rejoin(ctx); err != nil {
			d.log.Warn("registering again failed", zap.Error(err))
		}
	}
	return true
}

// setGeneration takes the task's sizes from a schedule and resets the download's state.
func (d *download) setGeneration(s *api.Schedule) error {
	count := s.PieceCount
	switch {
	case s.ContentLength < 0 || count < 0 || count > api.MaxPieceIndex+1:
		return fmt.Errorf("%w: %d pieces, %d bytes", ErrBadSchedule, count, s.ContentLength)
	case count > 0 && (s.PieceSize <= 0 || (s.ContentLength+s.PieceSize-1)/s.PieceSize != count):
		return fmt.Errorf("%w: %d pieces of %d bytes for %d bytes", ErrBadSchedule, count, s.PieceSize, s.ContentLength)
	}
	d.gen, d.pieceSize, d.length, d.count = s.Generation, s.PieceSize, s.ContentLength, int(count)
	d.minGen = max(d.minGen, d.gen)
	d.have, d.held = make([]bool, d.count), 0
	d.fromPeers, d.fromMembers, d.doneBytes = 0, 0, 0
	if !d.stream {
		// The store holds nothing of this generation before the peer is joined at it: a
		// registration made meanwhile (the heartbeat's, after a 404) reports what the store
		// holds at the joined generation.
		d.p.store.Add(d.taskID, d.file, d.pieceSize, d.length)
		if err := d.file.Truncate(0); err != nil {
			return fmt.Errorf("resetting the output: %w", err)
		}
		if err := d.file.Truncate(d.length); err != nil {
			return fmt.Errorf("sizing the output: %w", err)
		}
	}
	d.p.setJoined(d.taskID, d.gen)
	d.progress()
	return nil
}

func (d *download) progress() {
	if d.req.Progress != nil {
		d.req.Progress(d.doneBytes, d.length)
	}
}

// pieceLen is the size of piece n.
func (d *download) pieceLen(n uint32) int64 {
	return min(d.pieceSize, d.length-int64(n)*d.pieceSize)
}

// job is a piece handed to a worker.
type job struct {
	n       uint32
	size    int64
	digest  [sha256.Size]byte
	sources []api.PieceSource
	// busySince is when a peer source of this piece first answered busy (zero: never).
	// Members serve the piece only once memberWait has passed since (see fetchPiece).
	busySince time.Time
}

// outcome is what a worker made of a job.
type outcome struct {
	n         uint32
	ok        bool
	src       api.PieceSource // the source that delivered it
	data      []byte          // the piece, in stream mode
	failures  []failure       // sources to report: those that sent corrupt bytes
	newGen    bool            // a member refused the generation
	last      error           // why the last source tried failed
	cancelled bool            // the download's context ended meanwhile
	busy      bool            // peers hold it but were busy: fetch it again soon, not from a member
	job       job             // the job, when busy
	err       error           // a local failure: the download stops
}

// fetchPiece tries the job's peer sources, then its member sources, until one delivers a
// verified piece. Members are uncapped and would always look better than peers capped like
// this one, so a member serves the piece only when no peer source can: none is listed, or
// every one is dead, missing or corrupt. When a peer source was merely busy (503), the
// piece is tried again from peers shortly after (outcome.busy: the coordinator queues it
// again, with fresher sources when an answer brings them), and members are tried only once
// memberWait has passed since a peer first answered busy for it.
func (d *download) fetchPiece(ctx context.Context, j job, buf *[]byte) outcome {
	o := outcome{n: j.n}
	peerBusy := false
	for pass := 0; pass < 2; pass++ {
		wantKind := api.SourcePeer
		if pass == 1 {
			wantKind = api.SourceMember
			if peerBusy && (j.busySince.IsZero() || time.Since(j.busySince) < memberWait) {
				if j.busySince.IsZero() {
					j.busySince = time.Now()
				}
				// Not a failed round: wait a moment (others finish their pieces) and let
				// the coordinator queue it again.
				t := time.NewTimer(busyPause)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					o.cancelled = true
					return o
				}
				o.busy, o.job = true, j
				return o
			}
		}
		for _, src := range j.sources {
			if (src.Kind == api.SourceMember) != (wantKind == api.SourceMember) {
				continue
			}
			if src.ID == d.p.id || src.Addr == "" || d.black.has(src.ID) {
				continue
			}
			var w io.Writer
			var mem *memWriter
			if d.stream {
				mem = &memWriter{p: (*buf)[:0]}
				w = mem
			} else {
				w = io.NewOffsetWriter(d.file, int64(j.n)*d.pieceSize)
			}
			url := pieceURL(src, d.taskID, j.n, d.gen, d.p.id)
			err := d.p.fetcher.fetch(ctx, url, j.size, j.digest, w, &d.received)
			if err == nil {
				o.ok, o.src = true, src
				if mem != nil {
					o.data = mem.p
					*buf = nil // handed over: the next piece gets a new buffer
				}
				return o
			}
			if mem != nil {
				*buf = mem.p
			}
			if ctx.Err() != nil {
				o.cancelled = true
				return o
			}
			var fe *fetchError
			if !errors.As(err, &fe) {
				o.err = fmt.Errorf("writing piece %d: %w", j.n, err)
				return o
			}
			o.last = fmt.Errorf("%s %s: %w", src.Kind, src.ID, err)
			d.log.Debug("source failed", zap.Uint32("piece", j.n), zap.String("source", src.ID),
				zap.String("kind", src.Kind), zap.Error(err))
			switch fe.kind {
			case failBusy:
				if src.Kind == api.SourcePeer {
					peerBusy = true
				}
			case failCorrupt:
				// The only failure the cluster hears of: it blacklists the source for the
				// whole task, for every peer.
				d.black.add(src.ID, true)
				o.failures = append(o.failures, failure{src.ID, err.Error()})
			case failDead:
				// Perhaps only a passing fault (a restart, a reset connection, an overloaded
				// peer): avoided by this download for a while, not reported.
				d.black.add(src.ID, false)
			case failMissing:
				if src.Kind == api.SourcePeer {
					// A peer without a piece the piece map says it has: its entry is stale.
					d.black.add(src.ID, false)
				}
			case failGeneration:
				o.newGen = true
				return o
			}
		}
	}
	return o
}

// memWriter collects a piece in memory (stream mode).
type memWriter struct{ p []byte }

func (m *memWriter) Write(b []byte) (int, error) {
	m.p = append(m.p, b...)
	return len(b), nil
}

// digests of a complete file: sha256 always, and the one the request asked for.
type digests struct {
	sha256 string // "sha256:HEX"
	wanted string // in the algorithm of the request's digest; "" when none was asked for
}

// digests computes the whole file's digests (stream mode: as it was written).
func (d *download) digests() (digests, error) {
	if d.stream {
		return d.out.digests(d.want), nil
	}
	h := newFileHash(d.want)
	if _, err := io.Copy(h, io.NewSectionReader(d.file, 0, d.length)); err != nil {
		return digests{}, fmt.Errorf("reading the output back: %w", err)
	}
	return h.digests(d.want), nil
}

// complete checks the expected digest and, in file mode, moves the temp file in place.
func (d *download) complete(dg digests) error {
	if d.want != "" && dg.wanted != d.want {
		return fmt.Errorf("%w: the file's is %s, %s was expected", ErrDigestMismatch, dg.wanted, d.want)
	}
	if d.stream {
		return nil
	}
	if err := d.file.Sync(); err != nil {
		return fmt.Errorf("writing the output: %w", err)
	}
	if err := os.Rename(d.tmpPath, d.req.Output); err != nil {
		return fmt.Errorf("moving the output in place: %w", err)
	}
	return nil
}

// fileHash computes sha256, and md5 when the expected digest is an md5 one.
type fileHash struct {
	sha hash.Hash
	md  hash.Hash // nil unless wanted
	io.Writer
}

func newFileHash(want string) *fileHash {
	h := &fileHash{sha: sha256.New()}
	h.Writer = h.sha
	if strings.HasPrefix(want, "md5:") {
		h.md = md5.New()
		h.Writer = io.MultiWriter(h.sha, h.md)
	}
	return h
}

func (h *fileHash) digests(want string) digests {
	dg := digests{sha256: "sha256:" + hex.EncodeToString(h.sha.Sum(nil))}
	switch {
	case h.md != nil:
		dg.wanted = "md5:" + hex.EncodeToString(h.md.Sum(nil))
	case want != "":
		dg.wanted = dg.sha256
	}
	return dg
}

// streamOut writes a stream-mode download to its writer, in order, on its own goroutine (a
// slow reader of stdout must not stall the coordinator), hashing what it writes.
type streamOut struct {
	w        io.Writer
	in       chan []byte   // pieces in order; capacity: the window
	written  atomic.Int64  // pieces written (or dropped after a write error)
	kick     chan struct{} // signalled when written grows (capacity 1)
	errc     chan error    // the first write error
	quit     chan struct{} // closed by stop: write nothing more
	stopOnce sync.Once
	done     chan struct{} // closed when the writer goroutine has ended
	hash     *fileHash
}

func newStreamOut(w io.Writer, window int, want string) *streamOut {
	o := &streamOut{w: w, in: make(chan []byte, window), kick: make(chan struct{}, 1),
		errc: make(chan error, 1), quit: make(chan struct{}), done: make(chan struct{}), hash: newFileHash(want)}
	go o.loop()
	return o
}

func (o *streamOut) loop() {
	defer close(o.done)
	failed := false
	for {
		var p []byte
		var ok bool
		select {
		case <-o.quit:
			return
		case p, ok = <-o.in:
			if !ok {
				return
			}
		}
		select {
		case <-o.quit: // both were ready: stopping wins
			return
		default:
		}
		if !failed {
			if _, err := o.w.Write(p); err != nil {
				failed = true
				o.errc <- fmt.Errorf("writing the output: %w", err)
			} else {
				_, _ = o.hash.Write(p)
			}
		}
		o.written.Add(1)
		select {
		case o.kick <- struct{}{}:
		default:
		}
	}
}

// stop makes the writer drop what is queued and waits until it has ended, or until ctx
// ends: a Write call cannot be interrupted, so a writer blocked in one (a stdout nobody
// reads) is left behind. It starts no other Write once that one returns, and ends then;
// stop reports whether the writer had ended.
func (o *streamOut) stop(ctx context.Context) bool {
	o.stopOnce.Do(func() { close(o.quit) })
	select {
	case <-o.done:
		return true
	case <-ctx.Done():
		return false
	}
}

func (o *streamOut) digests(want string) digests { return o.hash.digests(want) }

// workers runs n workers on jobs until jobs is closed; wait returns once all have ended.
func startWorkers(ctx context.Context, n int, jobs <-chan job, results chan<- outcome, fetch func(context.Context, job, *[]byte) outcome) (wait func()) {
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []byte
			for j := range jobs {
				if buf == nil && j.size > 0 {
					buf = make([]byte, 0, j.size)
				}
				results <- fetch(ctx, j, &buf)
			}
		}()
	}
	return wg.Wait
}
