package sdk

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/dfly-ha/dfha/sdk/api"
)

// Defaults of Config.
const (
	DefaultRequestTimeout      = 10 * time.Second
	DefaultMaxAttempts         = 200
	DefaultRetryFor            = 20 * time.Second
	DefaultBackoffBase         = 50 * time.Millisecond
	DefaultBackoffMax          = 2 * time.Second
	DefaultMaxConnsPerEndpoint = 512
	// DefaultMaxResponseBytes bounds one answer's body.
	DefaultMaxResponseBytes = 64 << 20
)

const (
	// refreshInterval is the least time between two automatic Refresh calls.
	refreshInterval = 5 * time.Second
	// endpointCooldown is how long a member that could not be reached is tried only when
	// no other member is left in the round.
	endpointCooldown = time.Second
	// maxErrorMessage bounds the part of a non-JSON error body kept in APIError.Message.
	maxErrorMessage = 512
)

// Config configures a Client. Zero values take the defaults.
type Config struct {
	// Endpoints are the members' HTTP addresses (host:port); at least one. With a single
	// endpoint the client discovers the others through GET /cluster/members.
	Endpoints []string
	// Token, when non-empty, is sent as "Authorization: Bearer TOKEN" on every request.
	Token string
	// RequestTimeout bounds each attempt (dial, write, answer); the context's deadline
	// bounds it further. Default 10s.
	RequestTimeout time.Duration
	// MaxAttempts bounds the attempts of one call over all members. Default 200.
	MaxAttempts int
	// RetryFor bounds the time one call keeps retrying: no attempt starts after it has passed
	// (an attempt under way may still finish). It is meant to outlast a leader election, so
	// that losing a member is a pause, not an error. Default 20s.
	RetryFor time.Duration
	// Pinned sends every request to the configured endpoints only: no leader routing, no
	// discovery. For tools and tests that ask particular members.
	Pinned bool
	// BackoffBase is the backoff after the first round in which every member failed; it
	// doubles each round, with jitter. Default 50ms.
	BackoffBase time.Duration
	// BackoffMax caps the backoff and any Retry-After honoured. Default 2s.
	BackoffMax time.Duration
	// MaxConnsPerEndpoint bounds the connections open to one member; a call waits (within
	// its attempt's deadline) for a free one. Default 512.
	MaxConnsPerEndpoint int
	// Logger receives debug lines about failovers and refreshes. Default zap.NewNop().
	Logger *zap.Logger
}

func (c *Config) applyDefaults() {
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.RetryFor == 0 {
		c.RetryFor = DefaultRetryFor
	}
	if c.BackoffBase == 0 {
		c.BackoffBase = DefaultBackoffBase
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = DefaultBackoffMax
	}
	if c.MaxConnsPerEndpoint == 0 {
		c.MaxConnsPerEndpoint = DefaultMaxConnsPerEndpoint
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
}

// Validate checks the configuration; zero values are valid (they take the defaults).
func (c Config) Validate() error {
	if len(c.Endpoints) == 0 {
		return errors.New("sdk: at least one endpoint is required")
	}
	for _, ep := range c.Endpoints {
		if err := validEndpoint(ep); err != nil {
			return fmt.Errorf("sdk: endpoint %q: %w", ep, err)
		}
	}
	switch {
	case c.RequestTimeout < 0:
		return errors.New("sdk: RequestTimeout must not be negative")
	case c.MaxAttempts < 0:
		return errors.New("sdk: MaxAttempts must not be negative")
	case c.RetryFor < 0:
		return errors.New("sdk: RetryFor must not be negative")
	case c.BackoffBase < 0 || c.BackoffMax < 0:
		return errors.New("sdk: backoff durations must not be negative")
	case c.BackoffMax > 0 && c.BackoffBase > c.BackoffMax:
		return errors.New("sdk: BackoffBase must not exceed BackoffMax")
	case c.MaxConnsPerEndpoint < 0:
		return errors.New("sdk: MaxConnsPerEndpoint must not be negative")
	}
	return nil
}

// validEndpoint checks that ep is host:port with a non-empty host and a port in 1-65535.
func validEndpoint(ep string) error {
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		return fmt.Errorf("want host:port: %w", err)
	}
	if host == "" || strings.ContainsAny(host, "/?#@ ") {
		return errors.New("want host:port with a host")
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("bad port %q", port)
	}
	return nil
}

// endpoint is one member's HTTP address and how long it is avoided after a failure.
type endpoint struct {
	addr      string
	downUntil atomic.Int64 // unix nanoseconds
}

// endpointSet is an immutable list of endpoints; Refresh swaps in a new one.
type endpointSet struct {
	list   []*endpoint
	byAddr map[string]*endpoint
}

func newEndpointSet(addrs []string, old *endpointSet) *endpointSet {
	s := &endpointSet{byAddr: make(map[string]*endpoint, len(addrs))}
	for _, a := range addrs {
		if _, dup := s.byAddr[a]; dup {
			continue
		}
		e := (*endpoint)(nil)
		if old != nil {
			e = old.byAddr[a]
		}
		if e == nil {
			e = &endpoint{addr: a}
		}
		s.list = append(s.list, e)
		s.byAddr[a] = e
	}
	return s
}

// down reports whether addr failed recently; unknown addresses never are.
func (s *endpointSet) down(addr string, now int64) bool {
	e := s.byAddr[addr]
	return e != nil && e.downUntil.Load() > now
}

// Client is the supernode API client. It is safe for concurrent use and starts no goroutine.
type Client struct {
	cfg  Config
	log  *zap.Logger
	hc   *fasthttp.Client
	auth string

	eps         atomic.Pointer[endpointSet]
	leader      atomic.Pointer[string]   // HTTP address of the leader, nil if unknown
	rr          atomic.Uint64            // round-robin cursor of reads
	cur         atomic.Uint64            // current endpoint of writes when no leader is known
	lastIndex   atomic.Uint64            // highest X-Raft-Index of a write answer
	autoRefresh bool                     // started with one endpoint: discover the others
	refreshed   atomic.Bool              // a Refresh succeeded
	nextRefresh atomic.Int64             // unix nanoseconds before which no automatic Refresh
	cooldown    time.Duration            // how long an unreachable endpoint is avoided
	extraDown   atomic.Pointer[downMark] // an unreachable leader outside the endpoint list
	failovers   atomic.Uint64            // failed attempts after which another member is tried
}

// downMark notes that an address outside the endpoint list is avoided until a time.
type downMark struct {
	addr  string
	until int64 // unix nanoseconds
}

// New returns a Client for the cluster reachable at cfg.Endpoints.
func New(cfg Config) (*Client, error) {
	cfg.Endpoints = append([]string(nil), cfg.Endpoints...)
	cfg.applyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Client{
		cfg:      cfg,
		log:      cfg.Logger.Named("sdk"),
		cooldown: endpointCooldown,
		hc: &fasthttp.Client{
			Name:                "dfha-sdk",
			MaxConnsPerHost:     cfg.MaxConnsPerEndpoint,
			MaxConnWaitTimeout:  cfg.RequestTimeout,
			MaxResponseBodySize: DefaultMaxResponseBytes,
			// Retries are ours: fasthttp must not repeat a request on its own, which would
			// hide from us that a first attempt may have been applied.
			MaxIdemponentCallAttempts: 1,
			// IDs are sent as they are ("." and ".." are valid peer IDs).
			DisablePathNormalizing: true,
		},
	}
	if cfg.Token != "" {
		c.auth = "Bearer " + cfg.Token
	}
	set := newEndpointSet(cfg.Endpoints, nil)
	c.eps.Store(set)
	c.autoRefresh = len(set.list) == 1 && !cfg.Pinned
	return c, nil
}

// Close closes the idle connections. The Client must not be used afterwards. The sdk starts
// no goroutine; fasthttp's connection cleaners (fasthttp.(*Client).mCleaner and
// (*HostClient).connsCleaner) notice that no connection is left and end by themselves
// within fasthttp's idle period (10s).
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// Endpoints returns the members' HTTP addresses the client currently uses.
func (c *Client) Endpoints() []string {
	set := c.eps.Load()
	out := make([]string, len(set.list))
	for i, e := range set.list {
		out[i] = e.addr
	}
	return out
}

// Leader returns the leader's HTTP address as last learned, "" if unknown.
func (c *Client) Leader() string {
	if p := c.leader.Load(); p != nil {
		return *p
	}
	return ""
}

// Failovers returns how many attempts failed (unreachable member, 502/503/504) so that the
// client moved on to another member, since the client was created.
func (c *Client) Failovers() uint64 { return c.failovers.Load() }

// LastIndex returns the highest Raft index of a write answer this client has seen; reads
// wait for it (min_index).
func (c *Client) LastIndex() uint64 { return c.lastIndex.Load() }

// WaitFor makes this client's reads wait until members have applied index (never lowers
// it). Pass another client's LastIndex to read what that client wrote.
func (c *Client) WaitFor(index uint64) { c.raiseIndex(index) }

// RegisterPeer registers a peer and returns its ID. When req.ID is empty the sdk picks one
// (sanitized hostname + "-" + 16 random hex characters) before the first attempt, so that a
// retried registration is idempotent.
func (c *Client) RegisterPeer(ctx context.Context, req api.RegisterPeerRequest) (string, error) {
	if req.ID == "" {
		req.ID = NewPeerID(req.Hostname)
	} else if !api.ValidID(req.ID) {
		return "", badRequest("peer id %q: %w", req.ID, api.ErrBadID)
	}
	var out api.RegisterPeerResponse
	if _, err := c.do(ctx, &call{method: http.MethodPost, path: "/peers", body: req}, &out); err != nil {
		return "", err
	}
	if out.ID == "" {
		return req.ID, nil
	}
	return out.ID, nil
}

// GetPeer returns a registered peer.
func (c *Client) GetPeer(ctx context.Context, id string) (*api.Peer, error) {
	path, err := idPath("/peers/", id, "")
	if err != nil {
		return nil, err
	}
	var out api.Peer
	if _, err := c.do(ctx, &call{method: http.MethodGet, path: path, minIndex: true}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Heartbeat tells the cluster the peer is alive and how busy it is. It returns the number
// of uploads the scheduler wants the peer to serve at once (0 when the member did not say).
// ErrNotFound means the peer expired: register again.
func (c *Client) Heartbeat(ctx context.Context, id string, hb api.Heartbeat) (uploadSlots int, err error) {
	path, err := idPath("/peers/", id, "/heartbeat")
	if err != nil {
		return 0, err
	}
	var slots string
	cl := &call{method: http.MethodPut, path: path, body: hb, minIndex: true,
		header: api.HeaderUploadSlots, headerOut: &slots}
	if _, err = c.do(ctx, cl, nil); err != nil {
		return 0, err
	}
	n, _ := strconv.Atoi(slots)
	return max(n, 0), nil
}

// DeletePeer removes a peer; its pieces leave the piece map.
func (c *Client) DeletePeer(ctx context.Context, id string) error {
	path, err := idPath("/peers/", id, "")
	if err != nil {
		return err
	}
	_, err = c.do(ctx, &call{method: http.MethodDelete, path: path}, nil)
	return err
}

// RegisterTask registers a download (or finds the existing task of the same URL) and returns
// the task; created is true when this call created it. After a retried attempt, created may
// be false although the lost first attempt created the task.
func (c *Client) RegisterTask(ctx context.Context, req api.RegisterTaskRequest) (*api.Task, bool, error) {
	var out api.Task
	status, err := c.do(ctx, &call{method: http.MethodPost, path: "/tasks", body: req}, &out)
	if err != nil {
		return nil, false, err
	}
	return &out, status == http.StatusCreated, nil
}

// GetTask returns a task with its progress (pieces cached, peers).
func (c *Client) GetTask(ctx context.Context, id string) (*api.Task, error) {
	path, err := taskPath(id, "")
	if err != nil {
		return nil, err
	}
	var out api.Task
	if _, err := c.do(ctx, &call{method: http.MethodGet, path: path, minIndex: true}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// UpdateTask reports a peer's own progress on a task.
func (c *Client) UpdateTask(ctx context.Context, id string, req api.UpdateTaskRequest) error {
	path, err := taskPath(id, "")
	if err != nil {
		return err
	}
	_, err = c.do(ctx, &call{method: http.MethodPut, path: path, body: req}, nil)
	return err
}

// DeleteTask removes a task and its cache from every member.
func (c *Client) DeleteTask(ctx context.Context, id string) error {
	path, err := taskPath(id, "")
	if err != nil {
		return err
	}
	_, err = c.do(ctx, &call{method: http.MethodDelete, path: path}, nil)
	return err
}

// ReportPieces reports one piece range ("7", "0-15", "0-3,9") of a task.
func (c *Client) ReportPieces(ctx context.Context, taskID, pieces string, rep api.PieceReport) error {
	if _, err := api.ParseRange(pieces); err != nil {
		return badRequest("pieces %q: %w", pieces, err)
	}
	// A valid range holds only digits, '-' and ',', all legal in a path segment as they are.
	path, err := taskPath(taskID, "/pieces/"+pieces)
	if err != nil {
		return err
	}
	_, err = c.do(ctx, &call{method: http.MethodPut, path: path, body: rep}, nil)
	return err
}

// ReportPieceBatch reports several piece ranges of a task in one request.
func (c *Client) ReportPieceBatch(ctx context.Context, taskID string, batch api.PieceReportBatch) error {
	path, err := taskPath(taskID, "/pieces")
	if err != nil {
		return err
	}
	_, err = c.do(ctx, &call{method: http.MethodPut, path: path, body: batch}, nil)
	return err
}

// Schedule asks which pieces of a task the peer should fetch next, and from where. Any
// member answers; it reads this client's own reports (min_index).
func (c *Client) Schedule(ctx context.Context, taskID string, q api.ScheduleQuery) (*api.Schedule, error) {
	path, err := taskPath(taskID, "/pieces")
	if err != nil {
		return nil, err
	}
	if !api.ValidID(q.PeerID) {
		return nil, badRequest("peer id %q: %w", q.PeerID, api.ErrBadID)
	}
	v := url.Values{}
	v.Set(api.QueryPeerID, q.PeerID)
	if q.Limit > 0 {
		v.Set(api.QueryLimit, strconv.Itoa(q.Limit))
	}
	if q.Mode != "" {
		v.Set(api.QueryMode, q.Mode)
	}
	if q.Mode == api.ModeStream {
		v.Set(api.QueryFrom, strconv.FormatUint(uint64(q.From), 10))
	}
	if len(q.Exclude) > 0 {
		v.Set(api.QueryExclude, strings.Join(q.Exclude, ","))
	}
	var out api.Schedule
	// Every peer of a task asks the same member while it answers (rendezvous hashing of the
	// task ID), so that one scheduler sees all the work handed out for the task and sends
	// each piece that only members have to one peer at a time. Any other member answers
	// when that one fails.
	cl := &call{method: http.MethodGet, path: path, query: v.Encode(), minIndex: true, affinity: taskID}
	if _, err := c.do(ctx, cl, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Members lists the cluster's members (any member answers, with failover).
func (c *Client) Members(ctx context.Context) ([]api.Member, error) {
	return c.members(ctx, &call{method: http.MethodGet, path: "/cluster/members", minIndex: true})
}

// MembersAt lists the cluster's members as the member at endpoint sees them: one attempt,
// no failover.
func (c *Client) MembersAt(ctx context.Context, endpoint string) ([]api.Member, error) {
	if err := validEndpoint(endpoint); err != nil {
		return nil, badRequest("endpoint %q: %w", endpoint, err)
	}
	return c.members(ctx, &call{method: http.MethodGet, path: "/cluster/members", minIndex: true, endpoint: endpoint})
}

func (c *Client) members(ctx context.Context, cl *call) ([]api.Member, error) {
	var out []api.Member
	if _, err := c.do(ctx, cl, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// Join adds a member to the cluster (what supernode --join sends).
func (c *Client) Join(ctx context.Context, req api.JoinRequest) error {
	if !api.ValidID(req.ID) {
		return badRequest("member id %q: %w", req.ID, api.ErrBadID)
	}
	_, err := c.do(ctx, &call{method: http.MethodPost, path: "/cluster/members", body: req}, nil)
	return err
}

// RemoveMember removes a member from the cluster.
func (c *Client) RemoveMember(ctx context.Context, id string) error {
	path, err := idPath("/cluster/members/", id, "")
	if err != nil {
		return err
	}
	_, err = c.do(ctx, &call{method: http.MethodDelete, path: path}, nil)
	return err
}

// State returns the applied index and replicated-state hash of some member.
func (c *Client) State(ctx context.Context) (*api.ClusterState, error) {
	return c.state(ctx, &call{method: http.MethodGet, path: "/cluster/state", minIndex: true})
}

// StateAt returns the applied index and state hash of the member at endpoint: one attempt,
// no failover (to compare members).
func (c *Client) StateAt(ctx context.Context, endpoint string) (*api.ClusterState, error) {
	if err := validEndpoint(endpoint); err != nil {
		return nil, badRequest("endpoint %q: %w", endpoint, err)
	}
	return c.state(ctx, &call{method: http.MethodGet, path: "/cluster/state", minIndex: true, endpoint: endpoint})
}

func (c *Client) state(ctx context.Context, cl *call) (*api.ClusterState, error) {
	var out api.ClusterState
	if _, err := c.do(ctx, cl, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Ready returns nil when the member at endpoint is ready (sees a leader): one attempt, no
// failover. A 503 comes back as an *APIError wrapping ErrNoLeader.
func (c *Client) Ready(ctx context.Context, endpoint string) error {
	if err := validEndpoint(endpoint); err != nil {
		return badRequest("endpoint %q: %w", endpoint, err)
	}
	_, err := c.do(ctx, &call{method: http.MethodGet, path: "/readyz", endpoint: endpoint}, nil)
	return err
}

// Refresh learns the cluster: it asks any member for GET /cluster/members, replaces the
// endpoint list with the members' HTTP addresses (keeping the current list if the answer
// has none) and notes the leader.
func (c *Client) Refresh(ctx context.Context) error {
	return c.refresh(ctx, false)
}

func (c *Client) refresh(ctx context.Context, onePass bool) error {
	var members []api.Member
	cl := &call{method: http.MethodGet, path: "/cluster/members", noRefresh: true, onePass: onePass}
	if _, err := c.do(ctx, cl, &members); err != nil {
		return err
	}
	var addrs []string
	leader := ""
	for _, m := range members {
		if err := validEndpoint(m.HTTPAddr); err != nil {
			c.log.Warn("member with a bad http_addr ignored", zap.String("member", m.ID),
				zap.String("http_addr", m.HTTPAddr), zap.Error(err))
			continue
		}
		addrs = append(addrs, m.HTTPAddr)
		if m.Leader {
			leader = m.HTTPAddr
		}
	}
	if len(addrs) > 0 {
		c.eps.Store(newEndpointSet(addrs, c.eps.Load()))
	}
	if leader != "" {
		c.setLeader(leader)
	}
	c.refreshed.Store(true)
	c.log.Debug("refreshed", zap.Strings("endpoints", c.Endpoints()), zap.String("leader", c.Leader()))
	return nil
}

// maybeRefresh runs an automatic Refresh for a client started with one endpoint: after a
// success until one Refresh worked, and on every failover; at most once per refreshInterval.
func (c *Client) maybeRefresh(ctx context.Context, afterSuccess bool) {
	if !c.autoRefresh || (afterSuccess && c.refreshed.Load()) {
		return
	}
	now := time.Now().UnixNano()
	next := c.nextRefresh.Load()
	if now < next || !c.nextRefresh.CompareAndSwap(next, now+int64(refreshInterval)) {
		return
	}
	if err := c.refresh(ctx, true); err != nil {
		c.log.Debug("automatic refresh failed", zap.Error(err))
	}
}

// NewPeerID returns a fresh peer ID: hostname (os.Hostname() if empty) with every character
// outside [A-Za-z0-9._-] replaced by '-', cut to 100 bytes, then "-" and 16 random hex
// characters. It matches ^[A-Za-z0-9._-]{1,128}$.
func NewPeerID(hostname string) string {
	if hostname == "" {
		hostname, _ = os.Hostname()
	}
	b := make([]byte, 0, 100+1+16)
	for i := 0; i < len(hostname) && len(b) < 100; i++ {
		ch := hostname[i]
		switch {
		case ch >= 'a' && ch <= 'z', ch >= 'A' && ch <= 'Z', ch >= '0' && ch <= '9',
			ch == '.', ch == '_', ch == '-':
			b = append(b, ch)
		default:
			b = append(b, '-')
		}
	}
	if len(b) == 0 {
		b = append(b, "peer"...)
	}
	var r [8]byte
	_, _ = crand.Read(r[:]) // crypto/rand.Read never fails (Go 1.24+)
	b = append(b, '-')
	return string(hex.AppendEncode(b, r[:]))
}

func idPath(prefix, id, suffix string) (string, error) {
	if !api.ValidID(id) {
		return "", badRequest("id %q: %w", id, api.ErrBadID)
	}
	return prefix + url.PathEscape(id) + suffix, nil
}

func taskPath(id, suffix string) (string, error) {
	if !api.ValidTaskID(id) {
		return "", badRequest("task id %q: %w", id, api.ErrBadTaskID)
	}
	return "/tasks/" + url.PathEscape(id) + suffix, nil
}

// call describes one API call.
type call struct {
	method    string
	path      string // escaped path
	query     string // encoded query, without '?'
	body      any    // JSON-encoded when non-nil
	header    string // a response header to copy into headerOut
	headerOut *string
	affinity  string // a read that prefers one member for this key (see Schedule)
	minIndex  bool   // a read that carries ?min_index
	endpoint  string // ask this member only, once
	noRefresh bool   // never trigger an automatic Refresh (Refresh itself)
	onePass   bool   // at most one attempt per endpoint, no backoff (automatic Refresh)
}

func (cl *call) write() bool { return cl.method != http.MethodGet && cl.method != http.MethodHead }

// do runs a call with routing, failover and retries, decodes a 2xx answer into out (when
// non-nil) and returns the status.
func (c *Client) do(ctx context.Context, cl *call, out any) (int, error) {
	var body []byte
	if cl.body != nil {
		var err error
		if body, err = json.Marshal(cl.body); err != nil {
			return 0, badRequest("encoding the body: %w", err)
		}
	}
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod(cl.method)
	if c.auth != "" {
		req.Header.Set("Authorization", c.auth)
	}
	if body != nil {
		req.Header.SetContentType("application/json")
		req.SetBodyRaw(body)
	}

	write := cl.write()
	maxAttempts := c.cfg.MaxAttempts
	switch {
	case cl.endpoint != "":
		maxAttempts = 1
	case cl.onePass:
		maxAttempts = len(c.eps.Load().list)
	}
	var start uint64
	if write {
		start = c.cur.Load()
	} else {
		start = c.rr.Add(1) - 1
	}

	began := time.Now()
	outOfTime := func() bool { return time.Since(began) >= c.cfg.RetryFor }
	var (
		tried      []string      // endpoints that failed in this round
		round      int           // rounds in which every endpoint failed
		retryAfter time.Duration // largest Retry-After of this round
		ambiguous  bool          // an earlier attempt may have been applied
		staleDone  bool          // the one immediate retry of a closed connection is used
		staleRetry string        // endpoint to try again at once
		last503    error         // last 503 answer: the final error if there is one
		lastErr    error         // last failure
		attempt    int
	)
	for attempt = 1; ; attempt++ {
		if err := ctxDone(ctx); err != nil {
			return 0, c.ctxError(cl, err, lastErr)
		}
		ep := cl.endpoint
		switch {
		case ep != "":
		case staleRetry != "":
			ep, staleRetry = staleRetry, ""
		default:
			ep = ""
			if cl.affinity != "" && len(tried) == 0 && round == 0 {
				ep = c.preferred(cl.affinity)
			}
			if ep == "" {
				ep = c.pick(write, start, tried)
			}
			if ep == "" { // every endpoint failed once in this round
				round++
				wait := min(c.backoff(round, retryAfter), c.cfg.RetryFor-time.Since(began))
				if err := sleepCtx(ctx, max(wait, 0)); err != nil {
					return 0, c.ctxError(cl, err, lastErr)
				}
				tried, retryAfter = tried[:0], 0
				ep = c.pick(write, start, tried)
			}
			tried = append(tried, ep)
		}

		uri := "http://" + ep + cl.path
		sep := "?"
		if cl.query != "" {
			uri += sep + cl.query
			sep = "&"
		}
		if cl.minIndex {
			if n := c.lastIndex.Load(); n > 0 {
				uri += sep + api.QueryMinIndex + "=" + strconv.FormatUint(n, 10)
			}
		}
		req.SetRequestURI(uri)
		resp.Reset()
		deadline := time.Now().Add(c.cfg.RequestTimeout)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		err := c.hc.DoDeadline(req, resp, deadline)
		if err != nil {
			if ctxErr := ctxDone(ctx); ctxErr != nil {
				return 0, c.ctxError(cl, ctxErr, err)
			}
			sent := !notSent(err)
			ambiguous = ambiguous || sent
			lastErr = fmt.Errorf("%w: %s: %w", ErrUnavailable, ep, err)
			if sent && closedConn(err) && !staleDone && cl.endpoint == "" && attempt < maxAttempts {
				// Most likely the member closed an idle keep-alive connection: try it once
				// more at once before calling it down.
				staleDone, staleRetry = true, ep
				c.log.Debug("connection closed, retrying", zap.String("endpoint", ep), zap.Error(err))
				continue
			}
			c.failed(ep, "", cl.endpoint == "")
			if attempt >= maxAttempts || outOfTime() {
				break
			}
			c.log.Debug("failover", zap.String("endpoint", ep), zap.String("method", cl.method),
				zap.String("path", cl.path), zap.Int("attempt", attempt), zap.Error(err))
			if !cl.noRefresh && cl.endpoint == "" {
				c.maybeRefresh(ctx, false)
			}
			continue
		}

		status := resp.StatusCode()
		hdrLeader := ""
		if h := resp.Header.Peek(api.HeaderRaftLeader); len(h) > 0 {
			if cur := c.leader.Load(); cur != nil && string(h) == *cur {
				hdrLeader = *cur // the usual case: no allocation
			} else {
				hdrLeader = string(h)
				c.setLeader(hdrLeader)
			}
		}
		if status >= 200 && status < 300 {
			if write {
				c.noteIndex(resp.Header.Peek(api.HeaderRaftIndex))
			}
			if cl.headerOut != nil {
				*cl.headerOut = string(resp.Header.Peek(cl.header))
			}
			if out != nil && len(resp.Body()) > 0 {
				if err := json.Unmarshal(resp.Body(), out); err != nil {
					return status, fmt.Errorf("sdk: %s %s: decoding the answer of %s: %w", cl.method, cl.path, ep, err)
				}
			}
			if !cl.noRefresh && cl.endpoint == "" {
				c.maybeRefresh(ctx, true)
			}
			return status, nil
		}
		if status == http.StatusNotFound && cl.method == http.MethodDelete && ambiguous {
			// An earlier attempt may have deleted it: gone is what the caller asked for.
			c.log.Debug("404 on a retried delete taken as success", zap.String("path", cl.path))
			return http.StatusNoContent, nil
		}
		apiErr := &APIError{Status: status, Message: errorMessage(resp.Body()), Endpoint: ep}
		if !retryableStatus(status) {
			if status < 400 {
				apiErr.Message = "unexpected answer: " + apiErr.Message
			}
			return status, fmt.Errorf("sdk: %s %s: %w", cl.method, cl.path, apiErr)
		}
		ambiguous = true // a write the member forwarded may have been applied
		lastErr = apiErr
		if status == http.StatusServiceUnavailable {
			last503 = apiErr
			retryAfter = max(retryAfter, c.parseRetryAfter(resp.Header.Peek("Retry-After")))
		}
		c.failed(ep, hdrLeader, false)
		if attempt >= maxAttempts || outOfTime() {
			break
		}
		c.log.Debug("failover", zap.String("endpoint", ep), zap.String("method", cl.method),
			zap.String("path", cl.path), zap.Int("attempt", attempt), zap.Int("status", status),
			zap.String("error", apiErr.Message))
		if !cl.noRefresh && cl.endpoint == "" {
			c.maybeRefresh(ctx, false)
		}
	}
	final := lastErr
	if last503 != nil {
		final = last503
	}
	if maxAttempts == 1 {
		return 0, fmt.Errorf("sdk: %s %s: %w", cl.method, cl.path, final)
	}
	return 0, fmt.Errorf("sdk: %s %s: %d attempts failed: %w", cl.method, cl.path, attempt, final)
}

// retryableStatus reports whether another member may answer better: 503 (no leader, member
// behind, overloaded) and 502/504 (a follower could not reach the leader).
func retryableStatus(status int) bool {
	return status == http.StatusServiceUnavailable || status == http.StatusBadGateway ||
		status == http.StatusGatewayTimeout
}

// preferred returns the endpoint that rendezvous hashing assigns to key among the current
// endpoints (every client with the same member list picks the same one), or "" when it
// is marked down.
func (c *Client) preferred(key string) string {
	set := c.eps.Load()
	best, bestScore := "", uint64(0)
	for _, e := range set.list {
		if score := xxhash.Sum64String(key + "\x00" + e.addr); best == "" || score > bestScore {
			best, bestScore = e.addr, score
		}
	}
	if best == "" || set.down(best, time.Now().UnixNano()) {
		return ""
	}
	return best
}

// pick chooses the endpoint of the next attempt: for writes the leader if known, then the
// endpoints from start on, those not tried in this round first, recently failed ones last.
// It returns "" when every endpoint was tried in this round.
func (c *Client) pick(write bool, start uint64, tried []string) string {
	set := c.eps.Load()
	now := time.Now().UnixNano()
	leader := ""
	if write && !c.cfg.Pinned {
		leader = c.Leader()
		if leader != "" && !containsN(tried, leader, 1) && !set.down(leader, now) && !c.extraIsDown(leader, now) {
			return leader
		}
	}
	fallback := ""
	n := uint64(len(set.list))
	for i := uint64(0); i < n; i++ {
		e := set.list[(start+i)%n]
		if containsN(tried, e.addr, 1) {
			continue
		}
		if e.downUntil.Load() > now {
			if fallback == "" {
				fallback = e.addr
			}
			continue
		}
		return e.addr
	}
	if fallback == "" && leader != "" && !containsN(tried, leader, 1) {
		fallback = leader
	}
	return fallback
}

// failed notes a failure at ep: the leader is forgotten if it was ep (unless the answer
// itself named ep the leader), writes move on to the next endpoint, and an unreachable
// endpoint is avoided for a while.
func (c *Client) failed(ep, hdrLeader string, unreachable bool) {
	c.failovers.Add(1)
	if p := c.leader.Load(); p != nil && *p == ep && hdrLeader != ep {
		c.leader.CompareAndSwap(p, nil)
	}
	set := c.eps.Load()
	if n := uint64(len(set.list)); n > 0 {
		cur := c.cur.Load()
		if set.list[cur%n].addr == ep {
			c.cur.CompareAndSwap(cur, cur+1)
		}
	}
	if unreachable {
		until := time.Now().Add(c.cooldown).UnixNano()
		if e := set.byAddr[ep]; e != nil {
			e.downUntil.Store(until)
		} else {
			c.extraDown.Store(&downMark{addr: ep, until: until})
		}
	}
}

// extraIsDown reports whether addr, outside the endpoint list, failed recently.
func (c *Client) extraIsDown(addr string, now int64) bool {
	d := c.extraDown.Load()
	return d != nil && d.addr == addr && d.until > now
}

func (c *Client) setLeader(addr string) {
	if p := c.leader.Load(); p != nil && *p == addr {
		return
	}
	if validEndpoint(addr) != nil {
		return
	}
	c.leader.Store(&addr)
}

// noteIndex raises lastIndex to the X-Raft-Index of a write answer.
func (c *Client) noteIndex(h []byte) {
	if len(h) == 0 {
		return
	}
	n, err := strconv.ParseUint(string(h), 10, 64)
	if err != nil {
		return
	}
	c.raiseIndex(n)
}

func (c *Client) raiseIndex(n uint64) {
	for {
		old := c.lastIndex.Load()
		if n <= old || c.lastIndex.CompareAndSwap(old, n) {
			return
		}
	}
}

// backoff is the sleep after the round-th round in which every endpoint failed: BackoffBase
// doubled each round up to BackoffMax, jittered to [d/2, d], and at least minimum.
func (c *Client) backoff(round int, minimum time.Duration) time.Duration {
	d := c.cfg.BackoffBase
	for i := 1; i < round && d < c.cfg.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, c.cfg.BackoffMax)
	if half := d / 2; half > 0 {
		d = half + rand.N(half+1)
	}
	return max(d, minimum)
}

// parseRetryAfter reads a Retry-After header (seconds or an HTTP date), capped at BackoffMax.
func (c *Client) parseRetryAfter(h []byte) time.Duration {
	if len(h) == 0 {
		return 0
	}
	s := strings.TrimSpace(string(h))
	var d time.Duration
	if secs, err := strconv.ParseInt(s, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		d = time.Duration(min(secs, 1<<20)) * time.Second
	} else if t, err := http.ParseTime(s); err == nil {
		d = time.Until(t)
	}
	return max(0, min(d, c.cfg.BackoffMax))
}

func (c *Client) ctxError(cl *call, ctxErr, lastErr error) error {
	if lastErr != nil {
		return fmt.Errorf("sdk: %s %s: %w (last failure: %v)", cl.method, cl.path, ctxErr, lastErr)
	}
	return fmt.Errorf("sdk: %s %s: %w", cl.method, cl.path, ctxErr)
}

// ctxDone is ctx.Err(), or DeadlineExceeded as soon as the deadline has passed (the
// context's own timer may fire a little later).
func ctxDone(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// notSent reports whether err certainly happened before the request reached a member.
func notSent(err error) bool {
	var dialErr *fasthttp.ErrDialWithUpstream
	var opErr *net.OpError
	return errors.As(err, &dialErr) || errors.Is(err, fasthttp.ErrDialTimeout) ||
		errors.Is(err, fasthttp.ErrNoFreeConns) || (errors.As(err, &opErr) && opErr.Op == "dial")
}

// closedConn reports whether err says the member closed the connection before answering.
func closedConn(err error) bool {
	return errors.Is(err, fasthttp.ErrConnectionClosed) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// containsN reports whether s holds v at least n times.
func containsN(s []string, v string, n int) bool {
	for _, x := range s {
		if x == v {
			if n--; n == 0 {
				return true
			}
		}
	}
	return false
}

// errorMessage extracts the message of an error answer: {"error": ...}, else the body's start.
func errorMessage(body []byte) string {
	var e api.Error
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		return e.Error
	}
	s := strings.TrimSpace(string(body))
	if len(s) > maxErrorMessage {
		s = s[:maxErrorMessage] + "..."
	}
	return s
}
