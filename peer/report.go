package peer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/dfly-ha/dfha/sdk"
	"github.com/dfly-ha/dfha/sdk/api"
)

// Bounds of the reporter.
const (
	// reportBackoffMin and reportBackoffMax bound the pause after a failed report: no
	// report goes out before it has passed, even when a full batch waits.
	reportBackoffMin = 100 * time.Millisecond
	reportBackoffMax = 5 * time.Second
	// maxReportRefusals is how many reports in a row the cluster may refuse with an answer
	// that no retry cures (500, 401, 403, 400, 413) before the download fails. Unreachable
	// members and 503s (the sdk already retried them over every member) only back off.
	maxReportRefusals = 6
)

// reporter sends a download's piece reports in batches: one PUT /tasks/{id}/pieces when
// ReportBatch pieces wait, or when the oldest waiting report is due. A piece fetched from a
// member is due after ReportInterval (other peers wait for it: the scheduler sends them to
// us for it), one from a peer after ReportLazy (they can get it from that peer already).
// After a failed report nothing goes out before a backoff (reportBackoffMin doubling up to
// reportBackoffMax) has passed; after maxReportRefusals refusals in a row the reporter
// gives up and says so on failed.
type reporter struct {
	client *sdk.Client
	log    *zap.Logger
	taskID string
	peerID string
	gen    uint64
	cfg    *Config

	mu      sync.Mutex
	ok      map[string][]uint32  // successes by source ID
	bad     map[failure][]uint32 // failures by source and reason
	pending int                  // pieces in ok and bad
	due     time.Time            // when what is pending must go out; zero when nothing is
	kick    chan struct{}        // wakes the loop (capacity 1)
	stop    chan struct{}        // closed by close: flush and end
	done    chan struct{}        // closed when the loop has ended
	cancel  context.CancelFunc   // of the loop's context
	ctx     context.Context      // bounds the requests of the loop
	onStale func()               // called once a report is refused for a stale generation
	stale   atomic.Bool          // a report got 409: the task is at another generation
	sent    atomic.Int64         // requests sent (for tests and logs)
	waiting atomic.Int64         // successes not yet accepted by the cluster
	failed  chan error           // the reason the reporter gave up (capacity 1)

	// Owned by the loop goroutine.
	retryAt  time.Time     // no report before (after a failed one)
	backoff  time.Duration // the next pause after a failure
	refusals int           // reports refused in a row
}

// failure is a source that failed, and why.
type failure struct{ source, reason string }

func newReporter(ctx context.Context, client *sdk.Client, log *zap.Logger, cfg *Config, taskID, peerID string, gen uint64, onStale func()) *reporter {
	r := &reporter{client: client, log: log, taskID: taskID, peerID: peerID, gen: gen, cfg: cfg,
		ok: map[string][]uint32{}, bad: map[failure][]uint32{}, kick: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{}), onStale: onStale, failed: make(chan error, 1),
		backoff: reportBackoffMin}
	r.ctx, r.cancel = context.WithCancel(context.WithoutCancel(ctx))
	go r.loop()
	return r
}

// success queues a verified piece; urgent ones (fetched from a member) go out sooner.
func (r *reporter) success(n uint32, source string, urgent bool) {
	r.mu.Lock()
	r.ok[source] = append(r.ok[source], n)
	r.waiting.Add(1)
	r.added(urgent)
	r.mu.Unlock()
}

// failure queues a source that failed to deliver piece n.
func (r *reporter) failure(n uint32, source, reason string) {
	r.mu.Lock()
	k := failure{source, truncate(reason, 200)}
	r.bad[k] = append(r.bad[k], n)
	r.added(true)
	r.mu.Unlock()
}

// added notes one more pending report and wakes the loop when its schedule changes.
// r.mu is held.
func (r *reporter) added(urgent bool) {
	r.pending++
	delay := r.cfg.ReportLazy
	if urgent {
		delay = r.cfg.ReportInterval
	}
	due := time.Now().Add(delay)
	wake := r.pending >= r.cfg.ReportBatch
	if r.due.IsZero() || due.Before(r.due) {
		r.due, wake = due, true
	}
	if wake {
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
}

// unconfirmed is the number of successes the cluster has not accepted yet: a scheduling
// answer may still list them.
func (r *reporter) unconfirmed() int { return int(r.waiting.Load()) }

// maxUnconfirmedLimit bounds how far unconfirmed successes raise the scheduling limit: while
// reports fail they pile up, and the limit would grow until the answers list nothing but
// pieces already held.
func (r *reporter) maxUnconfirmedLimit() int { return 2 * r.cfg.ReportBatch }

// close sends what is pending and stops the loop; bounded by ctx.
func (r *reporter) close(ctx context.Context) {
	close(r.stop)
	select {
	case <-r.done:
	case <-ctx.Done():
		r.cancel()
		<-r.done
	}
	r.cancel()
}

func (r *reporter) loop() {
	defer close(r.done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		r.mu.Lock()
		pending, due := r.pending, r.due
		r.mu.Unlock()
		now := time.Now()
		if pending >= r.cfg.ReportBatch {
			due = now
		}
		if pending > 0 && !now.Before(due) && !now.Before(r.retryAt) {
			r.flush()
			continue
		}
		wait := time.Hour
		if pending > 0 {
			if r.retryAt.After(due) {
				due = r.retryAt
			}
			wait = due.Sub(now)
		}
		timer.Reset(wait)
		select {
		case <-r.kick:
		case <-timer.C:
		case <-r.stop:
			r.flush()
			return
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// flush sends everything pending as one request. What a failed request carried waits for
// the next flush, which comes only after the backoff; what the cluster will never accept
// (400, 404: the task or the peer is gone, and registering again reports what is held) is
// dropped.
func (r *reporter) flush() {
	r.mu.Lock()
	ok, bad := r.ok, r.bad
	r.ok, r.bad, r.pending, r.due = map[string][]uint32{}, map[failure][]uint32{}, 0, time.Time{}
	r.mu.Unlock()
	okN := 0
	for _, ns := range ok {
		okN += len(ns)
	}
	reports := buildReports(ok, bad)
	if len(reports) == 0 || r.stale.Load() {
		r.waiting.Add(-int64(okN))
		return
	}
	r.sent.Add(1)
	err := r.client.ReportPieceBatch(r.ctx, r.taskID, api.PieceReportBatch{PeerID: r.peerID, Generation: r.gen, Reports: reports})
	switch {
	case err == nil:
		r.waiting.Add(-int64(okN))
		r.retryAt, r.backoff, r.refusals = time.Time{}, reportBackoffMin, 0
		return
	case errors.Is(err, sdk.ErrConflict):
		r.waiting.Add(-int64(okN))
		if !r.stale.Swap(true) && r.onStale != nil {
			r.onStale()
		}
		return
	case r.ctx.Err() != nil:
		r.waiting.Add(-int64(okN))
		return
	}
	r.log.Warn("piece report failed", zap.Error(err), zap.Duration("retry_in", r.backoff))
	r.retryAt = time.Now().Add(r.backoff)
	r.backoff = min(2*r.backoff, reportBackoffMax)
	if !errors.Is(err, sdk.ErrNoLeader) && !errors.Is(err, sdk.ErrUnavailable) && !errors.Is(err, sdk.ErrNotFound) {
		// An answer that no retry cures. It may still be a passing fault of the cluster:
		// give up only when it keeps coming.
		if r.refusals++; r.refusals >= maxReportRefusals {
			select {
			case r.failed <- fmt.Errorf("the cluster refused %d piece reports in a row: %w", r.refusals, err):
			default:
			}
		}
	}
	if errors.Is(err, sdk.ErrNotFound) || errors.Is(err, sdk.ErrBadRequest) {
		r.waiting.Add(-int64(okN))
		return // the task or the peer is gone, or the report will never be accepted
	}
	r.mu.Lock()
	for src, ns := range ok {
		r.ok[src] = append(r.ok[src], ns...)
		r.pending += len(ns)
	}
	for f, ns := range bad {
		r.bad[f] = append(r.bad[f], ns...)
		r.pending += len(ns)
	}
	if r.pending > 0 && r.due.IsZero() {
		r.due = time.Now()
	}
	r.mu.Unlock()
}

// buildReports groups pieces into one report item per source (and reason), as ranges.
func buildReports(ok map[string][]uint32, bad map[failure][]uint32) []api.PieceReportItem {
	var out []api.PieceReportItem
	for src, ns := range ok {
		out = append(out, api.PieceReportItem{Pieces: api.FormatRange(api.RangeOf(ns)), Status: api.StatusSuccess, Source: src})
	}
	for f, ns := range bad {
		out = append(out, api.PieceReportItem{Pieces: api.FormatRange(api.RangeOf(ns)), Status: api.StatusFailed,
			Source: f.source, Reason: f.reason})
	}
	slices.SortFunc(out, func(a, b api.PieceReportItem) int {
		if a.Status != b.Status {
			return cmp.Compare(b.Status, a.Status) // successes first
		}
		if c := cmp.Compare(a.Source, b.Source); c != 0 {
			return c
		}
		return cmp.Compare(a.Reason, b.Reason)
	})
	return out
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
