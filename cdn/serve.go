package cdn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/dfly-ha/dfha/cdn/source"
	"github.com/dfly-ha/dfha/cdn/storage"
	"github.com/dfly-ha/dfha/sdk/api"
	"go.uber.org/zap"
)

// Headers of a piece-data answer.
const (
	HeaderGeneration  = "X-Task-Generation"
	HeaderPieceDigest = "X-Piece-Digest" // sha256:<hex> of the piece
)

// Piece is an open piece: its bytes (to be closed), size, generation and digest.
type Piece struct {
	Body       io.ReadCloser
	Size       int64
	Generation uint64
	Digest     [32]byte
}

// memberHTTP reads pieces from other members. Bodies are streamed, never buffered whole.
var memberHTTP = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16, ResponseHeaderTimeout: 30 * time.Second}}

// OpenPiece opens piece n of a task's current generation: from this member's cache, or
// (unless localOnly) streamed from a member that has cached it. generation, when non-zero,
// must be the task's current one (ErrGeneration otherwise).
func (c *CDN) OpenPiece(ctx context.Context, taskID string, n uint32, generation uint64, localOnly bool) (Piece, error) {
	t, ok := c.cfg.FSM.Task(taskID)
	if !ok {
		return Piece{}, ErrNoTask
	}
	if generation != 0 && generation != t.Generation {
		return Piece{}, fmt.Errorf("%w: the task is at generation %d", ErrGeneration, t.Generation)
	}
	digest, gen, ok := c.cfg.FSM.PieceDigest(taskID, n)
	if !ok {
		return Piece{}, ErrNotCached
	}
	body, size, err := c.cfg.Store.OpenPiece(taskID, gen, n)
	if err == nil {
		return Piece{Body: c.paced(body), Size: size, Generation: gen, Digest: digest}, nil
	}
	if !errors.Is(err, storage.ErrNotFound) {
		return Piece{}, fmt.Errorf("read cached piece: %w", err)
	}
	if localOnly {
		return Piece{}, ErrNotCached
	}
	for _, m := range c.cfg.FSM.PieceCachedBy(taskID, n) {
		if m == c.cfg.MemberID {
			continue
		}
		info, ok := c.cfg.FSM.Member(m)
		if !ok || !info.Alive {
			continue
		}
		p, err := c.fromMember(ctx, info.HTTPAddr, taskID, n, gen)
		if err == nil {
			p.Digest, p.Body = digest, c.paced(p.Body)
			return p, nil
		}
		c.log.Debug("piece not read from member", zap.String("member", m), zap.String("task", taskID), zap.Uint32("piece", n), zap.Error(err))
	}
	return Piece{}, ErrNotCached
}

// paced applies the upload limit, if any, to a body this member serves.
func (c *CDN) paced(body io.ReadCloser) io.ReadCloser {
	if c.cfg.UploadLimiter == nil {
		return body
	}
	return source.Paced(context.Background(), body, c.cfg.UploadLimiter)
}

// fromMember asks another member for a piece from its cache. The body outlives the call: it
// is streamed on after OpenPiece returns, so the request lives until the body is closed
// (ctx bounds only the wait for the answer's headers).
func (c *CDN) fromMember(ctx context.Context, addr, taskID string, n uint32, gen uint64) (Piece, error) {
	url := fmt.Sprintf("http://%s/tasks/%s/pieces/%d/data?generation=%d", addr, taskID, n, gen)
	reqCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	req, err := http.NewRequestWithContext(reqCtx, http.MethodGet, url, nil)
	if err != nil {
		cancel()
		return Piece{}, err
	}
	req.Header.Set(api.HeaderForwarded, c.cfg.MemberID) // the other member answers from its own cache only
	stop := context.AfterFunc(ctx, cancel)              // abandon the wait for headers with ctx
	resp, err := memberHTTP.Do(req)
	stop()
	if err != nil {
		cancel()
		return Piece{}, err
	}
	body := &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	if resp.StatusCode != http.StatusOK || resp.ContentLength < 0 {
		body.Close()
		return Piece{}, fmt.Errorf("member %s answered %d", addr, resp.StatusCode)
	}
	g, _ := strconv.ParseUint(resp.Header.Get(HeaderGeneration), 10, 64)
	if g != gen {
		body.Close()
		return Piece{}, fmt.Errorf("%w: member %s served generation %d", ErrGeneration, addr, g)
	}
	return Piece{Body: body, Size: resp.ContentLength, Generation: gen}, nil
}

// cancelOnClose ends a streamed request when its body is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// credentialHeaders are the origin headers that make a task private: a peer gets none of
// its pieces until the origin has accepted that peer's own headers.
var credentialHeaders = []string{"authorization", "cookie", "proxy-authorization"}

// Credentialed reports whether headers carry origin credentials.
func Credentialed(headers map[string]string) bool {
	for k := range headers {
		for _, c := range credentialHeaders {
			if strings.EqualFold(k, c) {
				return true
			}
		}
	}
	return false
}

// ErrForbidden: the origin refused the peer's credentials for a private task.
var ErrForbidden = errors.New("the origin refused these credentials")

// CheckAccess asks the origin, cheaply (a probe), whether it accepts headers for url. The
// API calls it before a peer joins a private task, so knowing a URL is not enough to read a
// private file through the cluster.
func (c *CDN) CheckAccess(ctx context.Context, url string, headers map[string]string) error {
	src, err := c.cfg.Sources.For(url)
	if err != nil {
		return err
	}
	if _, err := src.Probe(ctx, source.Request{URL: url, Headers: headers}); err != nil {
		if errors.Is(err, source.ErrUnauthorized) {
			return fmt.Errorf("%w: %v", ErrForbidden, err)
		}
		return err
	}
	return nil
}
