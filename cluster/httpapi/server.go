// Package httpapi serves a supernode member's HTTP API on fasthttp: validation of every
// body, ID and parameter, bearer-token checks, read-your-writes (min_index), the leader and
// index headers, forwarding of membership changes, and the /metrics endpoint. Writes become
// typed fsm commands handed to the Store; reads come from the member's own FSM.
package httpapi

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	stdlog "log"
	"net"
	"strconv"
	"time"

	"github.com/dfly-ha/dfha/cluster"
	"github.com/dfly-ha/dfha/fsm"
	"github.com/dfly-ha/dfha/scheduler"
	"github.com/dfly-ha/dfha/sdk/api"
	"github.com/fasthttp/router"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
	"go.uber.org/zap"
)

// Store is what the API needs of the member's Raft node (cluster.Node implements it).
type Store interface {
	ID() string
	FSM() *fsm.FSM
	Propose(ctx context.Context, cmds ...fsm.Command) (uint64, []fsm.Result, error)
	ProposeLocal(ctx context.Context, cmds ...fsm.Command) (uint64, []fsm.Result, error)
	LeaderHTTP() (addr, id string)
	IsLeader() bool
	AddMember(ctx context.Context, id, httpAddr, raftAddr string) error
	RemoveMember(ctx context.Context, id string) error
	Members() ([]api.Member, error)
	Ready() bool
}

var _ Store = (*cluster.Node)(nil)

// Config configures the API server.
type Config struct {
	Store Store
	// Loads is the member's live load of peers (heartbeats, work handed out).
	Loads *scheduler.LoadTable
	// Scheduler picks a peer's next pieces (default scheduler.Policy{}).
	Scheduler scheduler.Scheduler
	// PeerTTL: a peer whose newest heartbeat is older is not scheduled as a source
	// (default 15s).
	PeerTTL time.Duration
	// Pieces serves piece data; nil leaves GET /tasks/{id}/pieces/{n}/data unregistered.
	Pieces PieceSource
	// Token, when set, is required as "Authorization: Bearer TOKEN" on membership changes,
	// task deletion, peer registration and member-to-member forwarding.
	Token string
	// WriteTimeout bounds how long a write waits for its commit (default 10s).
	WriteTimeout time.Duration
	// MinIndexWait bounds how long a read waits for ?min_index (default 3s), after which it
	// answers 503 so that the client tries another member.
	MinIndexWait time.Duration
	// ResponseTimeout bounds the writing of one whole answer (default 60s; a member with an
	// upload limit needs more for large pieces).
	ResponseTimeout time.Duration
	// Replicas is the number of members that cache each task (--cache-replicas, default 1):
	// a task's answers list that many owners.
	Replicas int
	// MaxBodyBytes bounds request bodies (default 8 MiB; forwarded batches are the largest).
	MaxBodyBytes int
	Logger       *zap.Logger
	// Registry receives the API's metrics and is what /metrics serves (nil: a new one).
	Registry *prometheus.Registry
}

func (c *Config) applyDefaults() {
	if c.WriteTimeout == 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.MinIndexWait == 0 {
		c.MinIndexWait = 3 * time.Second
	}
	if c.ResponseTimeout == 0 {
		c.ResponseTimeout = 60 * time.Second
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 8 << 20
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
	if c.Loads == nil {
		c.Loads = scheduler.NewLoadTable(nil)
	}
	if c.Scheduler == nil {
		c.Scheduler = scheduler.Policy{}
	}
	if c.PeerTTL == 0 {
		c.PeerTTL = 15 * time.Second
	}
}

// Server is the HTTP API of one member.
type Server struct {
	cfg     Config
	log     *zap.Logger
	fsm     *fsm.FSM
	http    *fasthttp.Server
	proxy   *fasthttp.Client
	metrics *apiMetrics
}

// New builds the server; Serve starts it.
func New(cfg Config) (*Server, error) {
	cfg.applyDefaults()
	if cfg.Store == nil {
		return nil, errors.New("httpapi: no store")
	}
	s := &Server{
		cfg:   cfg,
		log:   cfg.Logger.Named("http"),
		fsm:   cfg.Store.FSM(),
		proxy: &fasthttp.Client{Name: "dfha-member", MaxConnsPerHost: 64},
	}
	s.metrics = newAPIMetrics(cfg.Registry, s.fsm, cfg.Loads)
	r := router.New()
	r.NotFound = func(ctx *fasthttp.RequestCtx) { s.fail(ctx, fasthttp.StatusNotFound, "no such route") }
	r.MethodNotAllowed = func(ctx *fasthttp.RequestCtx) {
		s.fail(ctx, fasthttp.StatusMethodNotAllowed, "method not allowed on this route")
	}
	r.PanicHandler = func(ctx *fasthttp.RequestCtx, v interface{}) {
		s.log.Error("handler panic", zap.Any("panic", v), zap.ByteString("path", ctx.Path()))
		s.fail(ctx, fasthttp.StatusInternalServerError, "internal error")
	}
	s.routes(r)
	s.http = &fasthttp.Server{
		Handler:            r.Handler,
		ErrorHandler:       s.transportError,
		Name:               "supernode",
		ReadTimeout:        30 * time.Second,
		WriteTimeout:       cfg.ResponseTimeout,
		IdleTimeout:        90 * time.Second,
		MaxRequestBodySize: cfg.MaxBodyBytes,
		CloseOnShutdown:    true,
		Logger:             stdLogAtWarn(s.log),
	}
	return s, nil
}

// Serve answers requests on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error { return s.http.Serve(ln) }

// Shutdown stops accepting connections and waits (bounded by ctx) for in-flight requests.
func (s *Server) Shutdown(ctx context.Context) error {
	return s.http.ShutdownWithContext(ctx)
}

func (s *Server) routes(r *router.Router) {
	s.handle(r, "POST", "/peers", s.authed(s.registerPeer))
	s.handle(r, "GET", "/peers/{id}", s.getPeer)
	s.handle(r, "PUT", "/peers/{id}/heartbeat", s.heartbeat)
	s.handle(r, "DELETE", "/peers/{id}", s.deletePeer)
	s.handle(r, "POST", "/tasks", s.registerTask)
	s.handle(r, "GET", "/tasks/{id}", s.getTask)
	s.handle(r, "PUT", "/tasks/{id}", s.updateTask)
	s.handle(r, "DELETE", "/tasks/{id}", s.authed(s.deleteTask))
	s.handle(r, "PUT", "/tasks/{id}/pieces/{range}", s.reportRange)
	s.handle(r, "PUT", "/tasks/{id}/pieces", s.reportBatch)
	s.handle(r, "GET", "/tasks/{id}/pieces", s.schedule)
	if s.cfg.Pieces != nil {
		s.handle(r, "GET", "/tasks/{id}/pieces/{n}/data", s.pieceData)
	}
	s.handle(r, "GET", "/cluster/members", s.members)
	s.handle(r, "POST", "/cluster/members", s.authed(s.join))
	s.handle(r, "DELETE", "/cluster/members/{id}", s.authed(s.removeMember))
	s.handle(r, "GET", "/cluster/state", s.clusterState)
	s.handle(r, "GET", "/healthz", s.healthz)
	s.handle(r, "GET", "/readyz", s.readyz)
	s.handle(r, "POST", cluster.ForwardPath, s.authed(s.forwarded))
	s.handle(r, "POST", LoadsPath, s.authed(s.loads))
	metrics := fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(s.cfg.Registry, promhttp.HandlerOpts{}))
	s.handle(r, "GET", "/metrics", metrics)
}

// stdLogAtWarn adapts log for fasthttp's own messages, which are logged as warnings.
func stdLogAtWarn(log *zap.Logger) *stdlog.Logger {
	l, err := zap.NewStdLogAt(log, zap.WarnLevel)
	if err != nil { // only for a level zap does not know
		return zap.NewStdLog(log)
	}
	return l
}

// handle registers a route, wrapped with the leader header and per-route metrics.
func (s *Server) handle(r *router.Router, method, path string, h fasthttp.RequestHandler) {
	observe := s.metrics.route(method, path)
	r.Handle(method, path, func(ctx *fasthttp.RequestCtx) {
		start := time.Now()
		if addr, _ := s.cfg.Store.LeaderHTTP(); addr != "" {
			ctx.Response.Header.Set(api.HeaderRaftLeader, addr)
		}
		h(ctx)
		observe(ctx.Response.StatusCode(), time.Since(start))
	})
}

// authed requires the bearer token when one is configured.
func (s *Server) authed(h fasthttp.RequestHandler) fasthttp.RequestHandler {
	if s.cfg.Token == "" {
		return h
	}
	want := []byte("Bearer " + s.cfg.Token)
	return func(ctx *fasthttp.RequestCtx) {
		got := ctx.Request.Header.Peek("Authorization")
		if subtle.ConstantTimeCompare(got, want) != 1 {
			ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="supernode"`)
			s.fail(ctx, fasthttp.StatusUnauthorized, "missing or wrong bearer token")
			return
		}
		h(ctx)
	}
}

// transportError answers fasthttp's own errors (bad request line, body too large, timeouts)
// with JSON like every other error.
func (s *Server) transportError(ctx *fasthttp.RequestCtx, err error) {
	var small *fasthttp.ErrSmallBuffer
	switch {
	case errors.As(err, &small):
		s.fail(ctx, fasthttp.StatusRequestHeaderFieldsTooLarge, "request headers too large")
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		s.fail(ctx, fasthttp.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", s.cfg.MaxBodyBytes))
	default:
		var netErr net.Error
		if errors.As(err, &netErr) && netErr.Timeout() {
			s.fail(ctx, fasthttp.StatusRequestTimeout, "request timed out")
			return
		}
		s.fail(ctx, fasthttp.StatusBadRequest, "malformed request: "+err.Error())
	}
}

// fail answers with status and {"error": msg}. A write that was committed keeps its
// X-Raft-Index even when its command failed, so the client can read at that index.
func (s *Server) fail(ctx *fasthttp.RequestCtx, status int, msg string) {
	index := string(ctx.Response.Header.Peek(api.HeaderRaftIndex))
	ctx.Response.Reset()
	if index != "" {
		ctx.Response.Header.Set(api.HeaderRaftIndex, index)
	}
	if status == fasthttp.StatusServiceUnavailable {
		ctx.Response.Header.Set("Retry-After", "1")
	}
	if addr, _ := s.cfg.Store.LeaderHTTP(); addr != "" {
		ctx.Response.Header.Set(api.HeaderRaftLeader, addr)
	}
	s.reply(ctx, status, api.Error{Error: msg})
}

// reply writes v as JSON with status.
func (s *Server) reply(ctx *fasthttp.RequestCtx, status int, v any) {
	p, err := json.Marshal(v)
	if err != nil {
		status, p = fasthttp.StatusInternalServerError, []byte(`{"error":"encoding the answer failed"}`)
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(append(p, '\n'))
}

// decode reads a JSON object body into v; false (and a 400 answered) when it cannot.
func (s *Server) decode(ctx *fasthttp.RequestCtx, v any) bool {
	body := ctx.PostBody()
	if len(body) == 0 {
		s.fail(ctx, fasthttp.StatusBadRequest, "empty body: a JSON object is required")
		return false
	}
	if err := json.Unmarshal(body, v); err != nil {
		s.fail(ctx, fasthttp.StatusBadRequest, "malformed JSON body: "+err.Error())
		return false
	}
	return true
}

// param returns a path parameter validated as a task ID or a peer/member ID.
func (s *Server) taskID(ctx *fasthttp.RequestCtx) (string, bool) {
	id, _ := ctx.UserValue("id").(string)
	if !api.ValidTaskID(id) {
		s.fail(ctx, fasthttp.StatusBadRequest, api.ErrBadTaskID.Error())
		return "", false
	}
	return id, true
}

func (s *Server) entityID(ctx *fasthttp.RequestCtx) (string, bool) {
	id, _ := ctx.UserValue("id").(string)
	if !api.ValidID(id) {
		s.fail(ctx, fasthttp.StatusBadRequest, api.ErrBadID.Error())
		return "", false
	}
	return id, true
}

// propose commits cmds and answers errors; on success it sets X-Raft-Index and returns the
// results.
func (s *Server) propose(ctx *fasthttp.RequestCtx, cmds ...fsm.Command) (uint64, []fsm.Result, bool) {
	c, cancel := context.WithTimeout(context.Background(), s.cfg.WriteTimeout)
	defer cancel()
	index, results, err := s.cfg.Store.Propose(c, cmds...)
	if err != nil {
		s.writeFailed(ctx, err)
		return 0, nil, false
	}
	ctx.Response.Header.Set(api.HeaderRaftIndex, strconv.FormatUint(index, 10))
	for _, r := range results {
		if err := r.Err(); err != nil {
			s.fail(ctx, statusOf(err), err.Error())
			return index, results, false
		}
	}
	return index, results, true
}

// writeFailed answers a write that could not be committed: 503 (retry, maybe elsewhere)
// for everything to do with leadership and time.
func (s *Server) writeFailed(ctx *fasthttp.RequestCtx, err error) {
	switch {
	case errors.Is(err, cluster.ErrNotLeader), errors.Is(err, cluster.ErrNoLeader),
		errors.Is(err, cluster.ErrShutdown), errors.Is(err, cluster.ErrTimeout),
		errors.Is(err, cluster.ErrForward), errors.Is(err, context.DeadlineExceeded):
		s.fail(ctx, fasthttp.StatusServiceUnavailable, "write not committed, retry: "+err.Error())
	default:
		s.log.Error("write failed", zap.Error(err))
		s.fail(ctx, fasthttp.StatusInternalServerError, "write failed: "+err.Error())
	}
}

func statusOf(err error) int {
	switch {
	case errors.Is(err, fsm.ErrNotFound), errors.Is(err, cluster.ErrUnknownMember):
		return fasthttp.StatusNotFound
	case errors.Is(err, fsm.ErrConflict), errors.Is(err, cluster.ErrMemberConflict):
		return fasthttp.StatusConflict
	default:
		return fasthttp.StatusBadRequest
	}
}

// readable waits for ?min_index; false (and 400 or 503 answered) when the read cannot go on.
func (s *Server) readable(ctx *fasthttp.RequestCtx) bool {
	raw := ctx.QueryArgs().Peek(api.QueryMinIndex)
	if len(raw) == 0 {
		return true
	}
	min, err := strconv.ParseUint(string(raw), 10, 64)
	if err != nil {
		s.fail(ctx, fasthttp.StatusBadRequest, "min_index must be a non-negative integer")
		return false
	}
	c, cancel := context.WithTimeout(context.Background(), s.cfg.MinIndexWait)
	defer cancel()
	if err := s.fsm.WaitApplied(c, min); err != nil {
		s.fail(ctx, fasthttp.StatusServiceUnavailable,
			fmt.Sprintf("member %s has not applied index %d yet (at %d)", s.cfg.Store.ID(), min, s.fsm.AppliedIndex()))
		return false
	}
	return true
}
