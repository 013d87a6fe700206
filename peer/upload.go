package peer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/dfly-ha/dfha/cdn/source"
	"github.com/dfly-ha/dfha/sdk/api"
)

// PiecePath is the upload server's route prefix: GET /pieces/{task_id}/{n}.
const PiecePath = "/pieces/"

// Pieces is what the upload server serves: the pieces this peer holds. Store implements it.
type Pieces interface {
	// Piece returns the bytes of piece n of a task, or false when the peer does not hold it.
	Piece(taskID string, n uint32) (*io.SectionReader, bool)
}

// UploadConfig configures an UploadServer.
type UploadConfig struct {
	// Addr is the listen address (default "0.0.0.0:0"); ignored when Listener is set.
	Addr string
	// Listener, when set, is served instead of listening on Addr.
	Listener net.Listener
	// Pieces is what is served.
	Pieces Pieces
	// Limit caps the bytes per second sent, all uploads together (0: no limit).
	Limit float64
	// Slots bounds the uploads served at once (default 8); SetSlots changes it.
	Slots int
	// Logger receives the server's logs (default: none).
	Logger *zap.Logger
}

// UploadServer serves the pieces a peer holds to other peers, on fasthttp. Beyond its upload
// slots it answers 503 with Retry-After at once, so that the downloader moves on to its next
// source instead of queueing.
type UploadServer struct {
	cfg     UploadConfig
	log     *zap.Logger
	ln      net.Listener
	srv     *fasthttp.Server
	limiter *rate.Limiter // nil: no limit
	ctx     context.Context
	cancel  context.CancelFunc

	slots   atomic.Int64
	running atomic.Int64
	served  atomic.Int64 // pieces whose body was sent whole
	refused atomic.Int64 // 503s for want of a slot
	done    chan struct{}
	err     error // of Serve, read after done
}

// NewUploadServer binds the server's address; Start serves it. A taken address is an error:
// a port is never shared.
func NewUploadServer(cfg UploadConfig) (*UploadServer, error) {
	if cfg.Addr == "" {
		cfg.Addr = DefaultPeerAddr
	}
	if cfg.Slots == 0 {
		cfg.Slots = DefaultUploadSlots
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Pieces == nil {
		return nil, errors.New("peer: upload server without pieces")
	}
	if cfg.Slots < 1 || cfg.Limit < 0 {
		return nil, errors.New("peer: upload slots must be at least 1 and the limit not negative")
	}
	ln := cfg.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", cfg.Addr); err != nil {
			if errors.Is(err, syscall.EADDRINUSE) {
				return nil, fmt.Errorf("peer address %s is already in use (another dfget or dfdaemon?): %w", cfg.Addr, err)
			}
			return nil, fmt.Errorf("peer address %s: %w", cfg.Addr, err)
		}
	}
	s := &UploadServer{cfg: cfg, log: cfg.Logger.Named("upload"), ln: ln, limiter: newLimiter(cfg.Limit),
		done: make(chan struct{})}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.slots.Store(int64(cfg.Slots))
	s.srv = &fasthttp.Server{
		Handler: s.handle,
		ErrorHandler: func(ctx *fasthttp.RequestCtx, err error) {
			replyError(ctx, fasthttp.StatusBadRequest, "malformed request: "+err.Error())
		},
		Name:        "dfha-peer",
		ReadTimeout: 30 * time.Second,
		// A rate-limited upload of a large piece takes long; the downloader gives up on a
		// source that stalls, so only a bound against dead connections is needed here.
		WriteTimeout:       10 * time.Minute,
		IdleTimeout:        90 * time.Second,
		MaxRequestBodySize: 4 << 10, // GET requests only
		CloseOnShutdown:    true,
		Logger:             stdLog(s.log),
	}
	return s, nil
}

// stdLog turns fasthttp's own log lines into debug lines: they are about connections that
// downloaders dropped, which is how peers leave.
func stdLog(l *zap.Logger) *log.Logger {
	std, err := zap.NewStdLogAt(l, zap.DebugLevel)
	if err != nil {
		return zap.NewStdLog(zap.NewNop())
	}
	return std
}

// newLimiter returns a limiter of bytesPerSecond with a burst of at most 256 KiB (so that
// concurrent transfers interleave), or nil for no limit.
func newLimiter(bytesPerSecond float64) *rate.Limiter {
	if bytesPerSecond <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(bytesPerSecond), int(max(1, min(bytesPerSecond, 256<<10))))
}

// Addr is the address the server listens on.
func (s *UploadServer) Addr() *net.TCPAddr { return s.ln.Addr().(*net.TCPAddr) }

// Start serves in the background until Shutdown.
func (s *UploadServer) Start() {
	go func() {
		defer close(s.done)
		s.err = s.srv.Serve(s.ln)
	}()
}

// Shutdown stops accepting connections and lets the uploads under way finish, bounded by
// ctx: when it ends, uploads still waiting for the rate limiter are cut short (their
// downloaders move on to other sources).
func (s *UploadServer) Shutdown(ctx context.Context) error {
	stop := context.AfterFunc(ctx, s.cancel)
	defer stop()
	err := s.srv.ShutdownWithContext(ctx)
	s.cancel()
	select {
	case <-s.done:
	case <-ctx.Done():
		return errors.Join(err, ctx.Err())
	}
	if err == nil && s.err != nil && !errors.Is(s.err, net.ErrClosed) {
		err = s.err
	}
	return err
}

// SetSlots changes how many uploads are served at once (n < 1 is ignored). Uploads under
// way finish even when the new bound is lower.
func (s *UploadServer) SetSlots(n int) {
	if n >= 1 {
		s.slots.Store(int64(n))
	}
}

// Slots is the current bound of uploads served at once.
func (s *UploadServer) Slots() int { return int(s.slots.Load()) }

// Running is the number of uploads under way.
func (s *UploadServer) Running() int { return int(s.running.Load()) }

// Served is the number of pieces sent whole since the start.
func (s *UploadServer) Served() int64 { return s.served.Load() }

// Refused is the number of requests answered 503 for want of a free slot.
func (s *UploadServer) Refused() int64 { return s.refused.Load() }

// acquire takes an upload slot, or reports that none is free.
func (s *UploadServer) acquire() bool {
	for {
		r := s.running.Load()
		if r >= s.slots.Load() {
			return false
		}
		if s.running.CompareAndSwap(r, r+1) {
			return true
		}
	}
}

func (s *UploadServer) handle(ctx *fasthttp.RequestCtx) {
	if !ctx.IsGet() && !ctx.IsHead() {
		ctx.Response.Header.Set("Allow", "GET, HEAD")
		replyError(ctx, fasthttp.StatusMethodNotAllowed, "method not allowed: use GET")
		return
	}
	rest, ok := strings.CutPrefix(string(ctx.Path()), PiecePath)
	if !ok {
		replyError(ctx, fasthttp.StatusNotFound, "no such route: pieces are at /pieces/{task_id}/{n}")
		return
	}
	id, nStr, _ := strings.Cut(rest, "/")
	if !api.ValidTaskID(id) {
		replyError(ctx, fasthttp.StatusBadRequest, api.ErrBadTaskID.Error())
		return
	}
	n, err := strconv.ParseUint(nStr, 10, 32)
	if err != nil || n > api.MaxPieceIndex {
		replyError(ctx, fasthttp.StatusBadRequest, "piece number must be an integer in 0.."+strconv.Itoa(api.MaxPieceIndex))
		return
	}
	piece, ok := s.cfg.Pieces.Piece(id, uint32(n))
	if !ok {
		replyError(ctx, fasthttp.StatusNotFound, "piece "+nStr+" of task "+id+" is not held by this peer")
		return
	}
	if !s.acquire() {
		s.refused.Add(1)
		ctx.Response.Header.Set("Retry-After", "1")
		replyError(ctx, fasthttp.StatusServiceUnavailable, fmt.Sprintf("all %d upload slots are busy", s.Slots()))
		return
	}
	var body io.ReadCloser = io.NopCloser(piece)
	if s.limiter != nil {
		body = source.Paced(s.ctx, body, s.limiter)
	}
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetContentType("application/octet-stream")
	// fasthttp closes the body once it is sent, or when the response is dropped.
	ctx.SetBodyStream(&uploadBody{ReadCloser: body, s: s, size: piece.Size()}, int(piece.Size()))
}

// uploadBody is a piece being sent: closing it frees the slot (once).
type uploadBody struct {
	io.ReadCloser
	s    *UploadServer
	size int64
	sent int64
	once sync.Once
}

func (b *uploadBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.sent += int64(n)
	return n, err
}

func (b *uploadBody) Close() error {
	b.once.Do(func() {
		if b.sent == b.size {
			b.s.served.Add(1)
		}
		b.s.running.Add(-1)
	})
	return b.ReadCloser.Close()
}

// replyError answers with status and {"error": msg}, like the supernodes.
func replyError(ctx *fasthttp.RequestCtx, status int, msg string) {
	p, _ := json.Marshal(api.Error{Error: msg})
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(append(p, '\n'))
}
