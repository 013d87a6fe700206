package peer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/dfly-ha/dfha/cdn/source"
	"github.com/dfly-ha/dfha/sdk/api"
)

// failKind classifies why a source did not deliver a piece, which decides what follows.
type failKind uint8

const (
	// failBusy: the source has no free upload slot (503) or refused for now: try the next
	// source, report nothing.
	failBusy failKind = iota + 1
	// failMissing: the source does not have the piece (yet), or refuses this peer (403/404):
	// try the next source, report nothing; a peer (whose piece map entry is then stale) is
	// blacklisted locally for a while.
	failMissing
	// failDead: unreachable, stalled, broken off or an error answer: blacklist it locally
	// for a while, report nothing (it may be a passing fault).
	failDead
	// failCorrupt: the bytes do not match the digest or the size: blacklist it for the rest
	// of the download, and report it with the source named, so that the cluster blacklists
	// it for the whole task.
	failCorrupt
	// failGeneration: a member says the task is at another generation (409).
	failGeneration
)

// fetchError is a source's failure to deliver a piece.
type fetchError struct {
	kind failKind
	err  error
}

func (e *fetchError) Error() string { return e.err.Error() }
func (e *fetchError) Unwrap() error { return e.err }

// fetcher reads pieces from other peers and from members. It uses net/http rather than
// fasthttp's client: a body read that stalls must end with the download's context (SIGINT)
// or the idle timeout, in the middle of the body, which net/http's request context does.
type fetcher struct {
	hc      *http.Client
	limiter *rate.Limiter // the peer's download limit, nil: none
	idle    time.Duration
}

func newFetcher(workers int, limiter *rate.Limiter, idle time.Duration) *fetcher {
	return &fetcher{
		hc: &http.Client{Transport: &http.Transport{
			MaxIdleConnsPerHost: max(workers, 4),
			IdleConnTimeout:     30 * time.Second,
			DisableCompression:  true,
		}},
		limiter: limiter,
		idle:    idle,
	}
}

func (f *fetcher) close() { f.hc.CloseIdleConnections() }

// pieceURL is where src serves piece n of a task.
func pieceURL(src api.PieceSource, taskID string, n uint32, generation uint64, peerID string) string {
	if src.Kind == api.SourceMember {
		q := url.Values{"generation": {strconv.FormatUint(generation, 10)}, api.QueryPeerID: {peerID}}
		return fmt.Sprintf("http://%s/tasks/%s/pieces/%d/data?%s", src.Addr, taskID, n, q.Encode())
	}
	return fmt.Sprintf("http://%s%s%s/%d", src.Addr, PiecePath, taskID, n)
}

// fetch reads one piece from src into w and checks it against size and the digest
// ("sha256:HEX"). Every byte read from the network is added to received, bad ones too.
func (f *fetcher) fetch(ctx context.Context, rawURL string, size int64, digest [sha256.Size]byte, w io.Writer, received *atomic.Int64) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stalled := fmt.Errorf("no byte for %s", f.idle)
	idle := time.AfterFunc(f.idle, func() { cancel(stalled) })
	defer idle.Stop()

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return &fetchError{failDead, err}
	}
	resp, err := f.hc.Do(req)
	if err != nil {
		return &fetchError{failDead, causeOf(ctx, err)}
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusOK:
	case resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusTooManyRequests:
		return &fetchError{failBusy, fmt.Errorf("busy (%d)", resp.StatusCode)}
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusForbidden:
		return &fetchError{failMissing, fmt.Errorf("answered %d: %s", resp.StatusCode, errorBody(resp.Body))}
	case resp.StatusCode == http.StatusConflict:
		return &fetchError{failGeneration, fmt.Errorf("answered 409: %s", errorBody(resp.Body))}
	default:
		return &fetchError{failDead, fmt.Errorf("answered %d: %s", resp.StatusCode, errorBody(resp.Body))}
	}
	if resp.ContentLength >= 0 && resp.ContentLength != size {
		return &fetchError{failCorrupt, fmt.Errorf("sent %d bytes for a piece of %d", resp.ContentLength, size)}
	}
	var body io.Reader = resp.Body
	if f.limiter != nil {
		body = source.Paced(ctx, resp.Body, f.limiter)
	}
	h := sha256.New()
	buf := make([]byte, 64<<10)
	var got int64
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			idle.Reset(f.idle)
			received.Add(int64(n))
			if got+int64(n) > size {
				return &fetchError{failCorrupt, fmt.Errorf("sent more than the piece's %d bytes", size)}
			}
			h.Write(buf[:n])
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr // a local failure: not the source's fault
			}
			got += int64(n)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return &fetchError{failDead, causeOf(ctx, rerr)}
		}
	}
	if got != size {
		return &fetchError{failCorrupt, fmt.Errorf("sent %d bytes for a piece of %d", got, size)}
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	if sum != digest {
		return &fetchError{failCorrupt, fmt.Errorf("sha256 %s differs from the piece's digest", hex.EncodeToString(sum[:]))}
	}
	return nil
}

// causeOf prefers the reason the attempt's context ended (a stall) to the error it caused.
func causeOf(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return err
}

// parseDigest reads a piece digest "sha256:HEX".
func parseDigest(s string) ([sha256.Size]byte, bool) {
	var d [sha256.Size]byte
	h, ok := strings.CutPrefix(s, "sha256:")
	if !ok || len(h) != 2*sha256.Size {
		return d, false
	}
	if _, err := hex.Decode(d[:], []byte(h)); err != nil {
		return d, false
	}
	return d, true
}

// errorBody reads the message of an error answer, bounded.
func errorBody(r io.Reader) string {
	p, _ := io.ReadAll(io.LimitReader(r, 512))
	var e api.Error
	if err := json.Unmarshal(p, &e); err == nil && e.Error != "" {
		return e.Error
	}
	return strings.TrimSpace(string(p))
}
