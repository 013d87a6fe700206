package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/dfly-ha/dfha/sdk/api"
)

const testTaskID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// seenRequest is what a fake member recorded of one request.
type seenRequest struct {
	Method, Path, Query, Auth string
	Body                      []byte
}

// fakeMember is a real HTTP server on a loopback ephemeral port that emulates a supernode
// member with a programmable handler. It records every request it receives.
type fakeMember struct {
	addr   string
	mu     sync.Mutex
	seen   []seenRequest
	handle func(w http.ResponseWriter, r *http.Request, body []byte)
}

func newMember(t *testing.T, handle func(w http.ResponseWriter, r *http.Request, body []byte)) *fakeMember {
	t.Helper()
	m := &fakeMember{handle: handle}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		m.mu.Lock()
		m.seen = append(m.seen, seenRequest{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Authorization"), body})
		m.mu.Unlock()
		m.handle(w, r, body)
	}))
	t.Cleanup(srv.Close)
	m.addr = srv.Listener.Addr().String()
	return m
}

// requests returns the recorded requests with this method and path prefix ("" matches all).
func (m *fakeMember) requests(method, prefix string) []seenRequest {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []seenRequest
	for _, r := range m.seen {
		if (method == "" || r.Method == method) && strings.HasPrefix(r.Path, prefix) {
			out = append(out, r)
		}
	}
	return out
}

// deadAddr returns a loopback address on which nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if v != nil {
		_ = json.NewEncoder(w).Encode(v)
	}
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, api.Error{Error: msg})
}

// hangUp closes the connection without answering, after the request was read.
func hangUp(t *testing.T, w http.ResponseWriter) {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err != nil {
		t.Errorf("hijack: %v", err)
		return
	}
	_ = conn.Close()
}

// task answers GET /tasks/{id}, 204 for other writes, and [] for /cluster/members.
func basicHandler(w http.ResponseWriter, r *http.Request, _ []byte) {
	switch {
	case r.URL.Path == "/cluster/members":
		writeJSON(w, http.StatusOK, []api.Member{})
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/tasks/"):
		writeJSON(w, http.StatusOK, api.Task{TaskID: strings.TrimPrefix(r.URL.Path, "/tasks/"), Generation: 1,
			Status: api.TaskPending, PieceSize: -1, ContentLength: -1, PieceCount: -1})
	case r.Method == http.MethodGet:
		writeError(w, http.StatusNotFound, "no such route")
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}

func newClient(t *testing.T, cfg Config) *Client {
	t.Helper()
	if cfg.BackoffBase == 0 {
		cfg.BackoffBase = time.Millisecond
	}
	if cfg.BackoffMax == 0 {
		cfg.BackoffMax = 10 * time.Millisecond
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = 5 * time.Second
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestFailoverToNextEndpoint(t *testing.T) {
	good := newMember(t, basicHandler)
	c := newClient(t, Config{Endpoints: []string{deadAddr(t), good.addr}, MaxAttempts: 3})
	ctx := testCtx(t)

	// The first read starts at the first endpoint (dead), as does the first write.
	for i := 0; i < 4; i++ {
		task, err := c.GetTask(ctx, testTaskID)
		if err != nil {
			t.Fatalf("GetTask %d: %v", i, err)
		}
		if task.TaskID != testTaskID {
			t.Fatalf("task id %q", task.TaskID)
		}
	}
	if err := c.UpdateTask(ctx, testTaskID, api.UpdateTaskRequest{PeerID: "p1", Status: api.StatusRunning}); err != nil {
		t.Fatalf("UpdateTask: %v", err)
	}
	if n := len(good.requests(http.MethodGet, "/tasks/")); n != 4 {
		t.Errorf("live member saw %d reads, want 4", n)
	}
	if n := len(good.requests(http.MethodPut, "/tasks/")); n != 1 {
		t.Errorf("live member saw %d writes, want 1", n)
	}
}

// hangingUpMember listens on a loopback port, accepts connections and closes them without
// answering; it returns its address and the count of connections accepted.
func hangingUpMember(t *testing.T) (string, *atomic.Int32) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepts := new(atomic.Int32)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			accepts.Add(1)
			_ = conn.Close()
		}
	}()
	t.Cleanup(func() { _ = l.Close(); <-done })
	return l.Addr().String(), accepts
}

func TestUnreachableMemberAvoidedAfterFailure(t *testing.T) {
	bad, accepts := hangingUpMember(t)
	good := newMember(t, basicHandler)
	c := newClient(t, Config{Endpoints: []string{bad, good.addr}})
	c.cooldown = time.Minute
	for i := 0; i < 6; i++ {
		if _, err := c.GetTask(testCtx(t), testTaskID); err != nil {
			t.Fatal(err)
		}
	}
	// The first read tried the bad member twice (once more at once, as for a closed
	// keep-alive connection); after that it is avoided while another member answers.
	if n := accepts.Load(); n != 2 {
		t.Errorf("bad member got %d connections, want 2", n)
	}
	if n := len(good.requests(http.MethodGet, "/tasks/")); n != 6 {
		t.Errorf("good member saw %d reads, want 6", n)
	}
}

func TestUnreachableAdvertisedLeaderAvoided(t *testing.T) {
	leader, accepts := hangingUpMember(t)
	follower := newMember(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set(api.HeaderRaftLeader, leader) // a leader this client cannot reach
		basicHandler(w, r, body)
	})
	c := newClient(t, Config{Endpoints: []string{follower.addr, follower.addr}})
	c.cooldown = time.Minute
	ctx := testCtx(t)
	if _, err := c.GetTask(ctx, testTaskID); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		if err := c.UpdateTask(ctx, testTaskID, api.UpdateTaskRequest{PeerID: "p", Status: api.StatusRunning}); err != nil {
			t.Fatal(err)
		}
	}
	if n := accepts.Load(); n != 2 {
		t.Errorf("unreachable leader got %d connections, want 2 (first write only)", n)
	}
	if n := len(follower.requests(http.MethodPut, "")); n != 4 {
		t.Errorf("follower saw %d writes, want 4", n)
	}
}

func TestWritesGoToAdvertisedLeader(t *testing.T) {
	var leaderAddr atomic.Value
	advertise := func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set(api.HeaderRaftLeader, leaderAddr.Load().(string))
		if r.Method != http.MethodGet {
			w.Header().Set(api.HeaderRaftIndex, "42")
		}
		basicHandler(w, r, body)
	}
	leader := newMember(t, advertise)
	leaderAddr.Store(leader.addr)
	f1, f2 := newMember(t, advertise), newMember(t, advertise)

	// The leader is not among the configured endpoints: it is learned from the header.
	c := newClient(t, Config{Endpoints: []string{f1.addr, f2.addr}})
	ctx := testCtx(t)
	if _, err := c.GetTask(ctx, testTaskID); err != nil {
		t.Fatal(err)
	}
	if got := c.Leader(); got != leader.addr {
		t.Fatalf("Leader() = %q, want %q", got, leader.addr)
	}
	for i := 0; i < 3; i++ {
		if err := c.UpdateTask(ctx, testTaskID, api.UpdateTaskRequest{PeerID: "p1", Status: api.StatusRunning}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.DeleteTask(ctx, testTaskID); err != nil {
		t.Fatal(err)
	}
	if n := len(leader.requests(http.MethodPut, "/tasks/")); n != 3 {
		t.Errorf("leader saw %d PUTs, want 3", n)
	}
	if n := len(leader.requests(http.MethodDelete, "/tasks/")); n != 1 {
		t.Errorf("leader saw %d DELETEs, want 1", n)
	}
	for _, f := range []*fakeMember{f1, f2} {
		if n := len(f.requests(http.MethodPut, "")) + len(f.requests(http.MethodDelete, "")); n != 0 {
			t.Errorf("follower %s saw %d writes, want 0", f.addr, n)
		}
	}
	if got := c.LastIndex(); got != 42 {
		t.Errorf("LastIndex() = %d, want 42", got)
	}
}

func TestWriteFollowsLeaderNamedBy503(t *testing.T) {
	leader := newMember(t, basicHandler)
	follower := newMember(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		if r.Method != http.MethodGet {
			// A forwarded write reached a non-leader: 503, naming the leader.
			w.Header().Set(api.HeaderRaftLeader, leader.addr)
			writeError(w, http.StatusServiceUnavailable, "not the leader")
			return
		}
		basicHandler(w, r, body)
	})
	c := newClient(t, Config{Endpoints: []string{follower.addr}, MaxAttempts: 3})
	if _, err := c.Heartbeat(testCtx(t), "peer-1", api.Heartbeat{UploadsRunning: 2}); err != nil {
		t.Fatal(err)
	}
	hb := leader.requests(http.MethodPut, "/peers/peer-1/heartbeat")
	if len(hb) != 1 {
		t.Fatalf("leader saw %d heartbeats, want 1", len(hb))
	}
	var got api.Heartbeat
	if err := json.Unmarshal(hb[0].Body, &got); err != nil || got.UploadsRunning != 2 {
		t.Errorf("heartbeat body %s (%v)", hb[0].Body, err)
	}
}

func TestLeaderForgottenWhenItFails(t *testing.T) {
	var stopAdvertising atomic.Bool
	var leaderAddrV atomic.Value
	advertise := func(w http.ResponseWriter, r *http.Request, body []byte) {
		if !stopAdvertising.Load() {
			w.Header().Set(api.HeaderRaftLeader, leaderAddrV.Load().(string))
		}
		basicHandler(w, r, body)
	}
	leaderSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		advertise(w, r, nil)
	}))
	t.Cleanup(leaderSrv.Close)
	leaderAddr := leaderSrv.Listener.Addr().String()
	leaderAddrV.Store(leaderAddr)
	follower := newMember(t, advertise)

	c := newClient(t, Config{Endpoints: []string{leaderAddr, follower.addr}, MaxAttempts: 4})
	ctx := testCtx(t)
	if _, err := c.GetTask(ctx, testTaskID); err != nil {
		t.Fatal(err)
	}
	if c.Leader() != leaderAddr {
		t.Fatalf("Leader() = %q, want %q", c.Leader(), leaderAddr)
	}
	leaderSrv.Close() // the leader dies; the follower no longer names it
	stopAdvertising.Store(true)

	for i := 0; i < 2; i++ {
		if err := c.UpdateTask(ctx, testTaskID, api.UpdateTaskRequest{PeerID: "p1", Status: api.StatusSuccess}); err != nil {
			t.Fatalf("UpdateTask %d: %v", i, err)
		}
	}
	if got := c.Leader(); got != "" {
		t.Errorf("Leader() = %q after the leader failed, want \"\"", got)
	}
	if n := len(follower.requests(http.MethodPut, "/tasks/")); n != 2 {
		t.Errorf("follower saw %d writes, want 2", n)
	}
}

func TestReadsCarryMinIndexOfLastWrite(t *testing.T) {
	indexes := []string{"7", "12", "5"} // the last one is lower: the client keeps 12
	var next atomic.Int32
	var mu sync.Mutex
	var lastQuery string
	handler := func(w http.ResponseWriter, r *http.Request, body []byte) {
		if r.Method == http.MethodGet {
			mu.Lock()
			lastQuery = r.URL.RawQuery
			mu.Unlock()
		} else {
			w.Header().Set(api.HeaderRaftIndex, indexes[int(next.Add(1)-1)%len(indexes)])
		}
		basicHandler(w, r, body)
	}
	a, b := newMember(t, handler), newMember(t, handler)
	c := newClient(t, Config{Endpoints: []string{a.addr, b.addr}})
	ctx := testCtx(t)

	read := func() string {
		t.Helper()
		if _, err := c.GetTask(ctx, testTaskID); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		return lastQuery
	}
	write := func() {
		t.Helper()
		if err := c.ReportPieces(ctx, testTaskID, "0-3", api.PieceReport{PeerID: "p1", Status: api.StatusSuccess}); err != nil {
			t.Fatal(err)
		}
	}
	if q := read(); q != "" {
		t.Errorf("read before any write carried %q, want no query", q)
	}
	for _, want := range []string{"7", "12", "12"} {
		write()
		for i := 0; i < 2; i++ { // both members, through round-robin
			if q := read(); q != "min_index="+want {
				t.Errorf("read query %q, want min_index=%s", q, want)
			}
		}
	}
	if got := c.LastIndex(); got != 12 {
		t.Errorf("LastIndex() = %d, want 12", got)
	}
	if n1, n2 := len(a.requests(http.MethodGet, "")), len(b.requests(http.MethodGet, "")); n1 == 0 || n2 == 0 {
		t.Errorf("reads not spread: %d and %d", n1, n2)
	}
}

func TestTypedErrors(t *testing.T) {
	var status atomic.Int32
	m := newMember(t, func(w http.ResponseWriter, r *http.Request, _ []byte) {
		s := int(status.Load())
		writeError(w, s, "message "+strconv.Itoa(s))
	})
	c := newClient(t, Config{Endpoints: []string{m.addr}})
	sentinels := []error{ErrNotFound, ErrConflict, ErrUnauthorized, ErrBadRequest, ErrNoLeader, ErrUnavailable}
	for _, tc := range []struct {
		status int
		want   error // nil: none of the sentinels
	}{
		{404, ErrNotFound},
		{409, ErrConflict},
		{401, ErrUnauthorized},
		{403, ErrUnauthorized},
		{400, ErrBadRequest},
		{413, ErrBadRequest},
		{422, ErrBadRequest},
		{500, nil},
	} {
		t.Run(strconv.Itoa(tc.status), func(t *testing.T) {
			status.Store(int32(tc.status))
			before := len(m.requests("", ""))
			_, err := c.GetPeer(testCtx(t), "peer-1")
			if err == nil {
				t.Fatal("no error")
			}
			for _, s := range sentinels {
				if got := errors.Is(err, s); got != (s == tc.want) {
					t.Errorf("errors.Is(err, %v) = %v; err = %v", s, got, err)
				}
			}
			var apiErr *APIError
			if !errors.As(err, &apiErr) {
				t.Fatalf("not an *APIError: %v", err)
			}
			if apiErr.Status != tc.status || apiErr.Message != "message "+strconv.Itoa(tc.status) || apiErr.Endpoint != m.addr {
				t.Errorf("APIError = %+v", apiErr)
			}
			if n := len(m.requests("", "")) - before; n != 1 {
				t.Errorf("%d requests for a %d, want 1 (no retry)", n, tc.status)
			}
		})
	}
}

func TestInvalidArgumentsSendNothing(t *testing.T) {
	m := newMember(t, basicHandler)
	c := newClient(t, Config{Endpoints: []string{m.addr}})
	ctx := testCtx(t)
	for name, call := range map[string]func() error{
		"task id uppercase": func() error { _, err := c.GetTask(ctx, strings.ToUpper(testTaskID)); return err },
		"task id short":     func() error { return c.DeleteTask(ctx, "abc") },
		"peer id slash":     func() error { _, err := c.GetPeer(ctx, "a/b"); return err },
		"peer id empty":     func() error { return c.DeletePeer(ctx, "") },
		"member id":         func() error { return c.RemoveMember(ctx, "x y") },
		"join id":           func() error { return c.Join(ctx, api.JoinRequest{ID: "", HTTPAddr: "h:1"}) },
		"register bad id": func() error {
			_, err := c.RegisterPeer(ctx, api.RegisterPeerRequest{ID: "a?b", IP: "127.0.0.1", Port: 1})
			return err
		},
		"range backwards": func() error {
			return c.ReportPieces(ctx, testTaskID, "3-1", api.PieceReport{PeerID: "p", Status: api.StatusSuccess})
		},
		"range text": func() error {
			return c.ReportPieces(ctx, testTaskID, "../x", api.PieceReport{PeerID: "p", Status: api.StatusSuccess})
		},
		"endpoint": func() error { _, err := c.StateAt(ctx, "http://h:1"); return err },
	} {
		if err := call(); !errors.Is(err, ErrBadRequest) {
			t.Errorf("%s: err = %v, want ErrBadRequest", name, err)
		}
	}
	if n := len(m.requests("", "")); n != 0 {
		t.Errorf("member saw %d requests, want 0", n)
	}
}

func TestGeneratedPeerIDStableAcrossRetries(t *testing.T) {
	var posts atomic.Int32
	m := newMember(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		if r.Method == http.MethodPost && r.URL.Path == "/peers" {
			if posts.Add(1) <= 2 {
				hangUp(t, w) // the registration may or may not have been applied
				return
			}
			var req api.RegisterPeerRequest
			if err := json.Unmarshal(body, &req); err != nil {
				writeError(w, http.StatusBadRequest, err.Error())
				return
			}
			writeJSON(w, http.StatusCreated, api.RegisterPeerResponse{ID: req.ID})
			return
		}
		basicHandler(w, r, body)
	})
	c := newClient(t, Config{Endpoints: []string{m.addr}})
	id, err := c.RegisterPeer(testCtx(t), api.RegisterPeerRequest{IP: "10.0.0.1", Port: 65001, Hostname: "node 7.example/x"})
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^node-7\.example-x-[0-9a-f]{16}$`).MatchString(id) {
		t.Errorf("generated id %q", id)
	}
	reqs := m.requests(http.MethodPost, "/peers")
	if len(reqs) != 3 {
		t.Fatalf("member saw %d registrations, want 3", len(reqs))
	}
	for i, r := range reqs {
		var got api.RegisterPeerRequest
		if err := json.Unmarshal(r.Body, &got); err != nil {
			t.Fatal(err)
		}
		if got.ID != id {
			t.Errorf("attempt %d sent id %q, want %q", i, got.ID, id)
		}
	}
}

func TestRegisterTaskCreated(t *testing.T) {
	var calls atomic.Int32
	m := newMember(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		if r.URL.Path != "/tasks" {
			basicHandler(w, r, body)
			return
		}
		status := http.StatusOK
		if calls.Add(1) == 1 {
			status = http.StatusCreated
		}
		writeJSON(w, status, api.Task{TaskID: testTaskID, Generation: 1, Status: api.TaskPending,
			PieceSize: -1, ContentLength: -1, PieceCount: -1, Owners: []string{"m1"}})
	})
	c := newClient(t, Config{Endpoints: []string{m.addr, m.addr}}) // duplicates collapse
	ctx := testCtx(t)
	req := api.RegisterTaskRequest{URL: "http://origin/f", PeerID: "p1"}
	for i, wantCreated := range []bool{true, false} {
		task, created, err := c.RegisterTask(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if created != wantCreated || task.TaskID != testTaskID || len(task.Owners) != 1 || task.PieceCount != -1 {
			t.Errorf("call %d: created=%v task=%+v", i, created, task)
		}
	}
	if got := c.Endpoints(); len(got) != 1 {
		t.Errorf("Endpoints() = %v", got)
	}
}

func TestNoLeaderEndsWithinBoundsAndHonoursRetryAfter(t *testing.T) {
	unavailable := func(w http.ResponseWriter, r *http.Request, _ []byte) {
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "no leader")
	}
	a, b := newMember(t, unavailable), newMember(t, unavailable)
	const backoffMax = 150 * time.Millisecond
	c := newClient(t, Config{Endpoints: []string{a.addr, b.addr}, MaxAttempts: 4,
		BackoffBase: time.Millisecond, BackoffMax: backoffMax})

	start := time.Now()
	err := c.UpdateTask(testCtx(t), testTaskID, api.UpdateTaskRequest{PeerID: "p", Status: api.StatusFailed})
	elapsed := time.Since(start)
	if !errors.Is(err, ErrNoLeader) {
		t.Fatalf("err = %v, want ErrNoLeader", err)
	}
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 503 || apiErr.Message != "no leader" {
		t.Errorf("err = %v", err)
	}
	if n := len(a.requests("", "")) + len(b.requests("", "")); n != 4 {
		t.Errorf("%d attempts, want 4", n)
	}
	// Two rounds of two members: one backoff in between, raised to the Retry-After (1s)
	// capped at BackoffMax, instead of the 1ms base.
	if elapsed < backoffMax || elapsed > 5*time.Second {
		t.Errorf("took %v, want between %v and 5s", elapsed, backoffMax)
	}
}

func TestUnreachableClusterEndsWithinBounds(t *testing.T) {
	c := newClient(t, Config{Endpoints: []string{deadAddr(t), deadAddr(t), deadAddr(t)}, MaxAttempts: 5})
	start := time.Now()
	_, err := c.GetTask(testCtx(t), testTaskID)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	if errors.Is(err, ErrNoLeader) {
		t.Errorf("err = %v is also ErrNoLeader", err)
	}
	if !strings.Contains(err.Error(), "5 attempts") {
		t.Errorf("err = %v, want 5 attempts", err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("took %v", elapsed)
	}
}

func TestUnreachableLeaderAndNoLeaderFollowerIsErrNoLeader(t *testing.T) {
	follower := newMember(t, func(w http.ResponseWriter, r *http.Request, _ []byte) {
		writeError(w, http.StatusServiceUnavailable, "election in progress")
	})
	c := newClient(t, Config{Endpoints: []string{deadAddr(t), follower.addr}, MaxAttempts: 4})
	err := c.DeletePeer(testCtx(t), "peer-1")
	if !errors.Is(err, ErrNoLeader) {
		t.Fatalf("err = %v, want ErrNoLeader", err)
	}
}

func TestCancelledContextStopsRetries(t *testing.T) {
	t.Run("cancelled during an attempt", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		cancelAndRefuse := func(w http.ResponseWriter, r *http.Request, _ []byte) {
			cancel()
			writeError(w, http.StatusServiceUnavailable, "busy")
		}
		m1, m2 := newMember(t, cancelAndRefuse), newMember(t, cancelAndRefuse)
		c := newClient(t, Config{Endpoints: []string{m1.addr, m2.addr}, MaxAttempts: 6})
		err := c.UpdateTask(ctx, testTaskID, api.UpdateTaskRequest{PeerID: "p", Status: api.StatusRunning})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		if n := len(m1.requests("", "")) + len(m2.requests("", "")); n != 1 {
			t.Errorf("%d attempts after the cancel, want 1", n)
		}
	})
	t.Run("cancelled during the backoff", func(t *testing.T) {
		seen := make(chan struct{}, 16)
		unavailable := func(w http.ResponseWriter, r *http.Request, _ []byte) {
			writeError(w, http.StatusServiceUnavailable, "busy")
			seen <- struct{}{}
		}
		a, b := newMember(t, unavailable), newMember(t, unavailable)
		// After both members fail the client would sleep 5-10s.
		c := newClient(t, Config{Endpoints: []string{a.addr, b.addr}, BackoffBase: 10 * time.Second, BackoffMax: 10 * time.Second})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan error, 1)
		start := time.Now()
		go func() { _, err := c.GetTask(ctx, testTaskID); done <- err }()
		for i := 0; i < 2; i++ { // both members answered: the client is in its backoff
			select {
			case <-seen:
			case err := <-done:
				t.Fatalf("returned before trying both members: %v", err)
			case <-time.After(10 * time.Second):
				t.Fatal("the client did not try both members")
			}
		}
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("err = %v, want context.Canceled", err)
			}
			if elapsed := time.Since(start); elapsed > 4*time.Second {
				t.Errorf("returned after %v", elapsed)
			}
		case <-time.After(4 * time.Second):
			t.Fatal("the backoff did not stop on cancel")
		}
		if n := len(a.requests("", "")) + len(b.requests("", "")); n != 2 {
			t.Errorf("%d attempts, want 2", n)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		m := newMember(t, func(w http.ResponseWriter, r *http.Request, _ []byte) {
			writeError(w, http.StatusServiceUnavailable, "busy")
		})
		c := newClient(t, Config{Endpoints: []string{m.addr, deadAddr(t)}, BackoffBase: 10 * time.Second, BackoffMax: 10 * time.Second})
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := c.State(ctx)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want context.DeadlineExceeded", err)
		}
		if elapsed := time.Since(start); elapsed > 4*time.Second {
			t.Errorf("returned after %v", elapsed)
		}
	})
}

func TestDeleteRetriedAfterAmbiguousFailure(t *testing.T) {
	var deletes atomic.Int32
	m := newMember(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		if r.Method == http.MethodDelete {
			if deletes.Add(1) == 1 {
				hangUp(t, w) // applied, but the answer is lost
				return
			}
			writeError(w, http.StatusNotFound, "no such task")
			return
		}
		basicHandler(w, r, body)
	})
	c := newClient(t, Config{Endpoints: []string{m.addr}})
	ctx := testCtx(t)
	if err := c.DeleteTask(ctx, testTaskID); err != nil {
		t.Fatalf("retried delete: %v, want success", err)
	}
	if n := deletes.Load(); n != 2 {
		t.Errorf("%d DELETEs, want 2", n)
	}
	// Without an ambiguous first attempt, 404 is an error.
	if err := c.DeleteTask(ctx, testTaskID); !errors.Is(err, ErrNotFound) {
		t.Errorf("plain delete of a missing task: %v, want ErrNotFound", err)
	}
}

func TestDiscoversMembersFromOneEndpoint(t *testing.T) {
	var addrs [3]string
	var addrsMu sync.Mutex
	members := func() []api.Member {
		addrsMu.Lock()
		defer addrsMu.Unlock()
		return []api.Member{
			{ID: "a", HTTPAddr: addrs[0], RaftAddr: "127.0.0.1:1", Voter: true, Alive: true},
			{ID: "b", HTTPAddr: addrs[1], RaftAddr: "127.0.0.1:2", Voter: true, Alive: true, Leader: true},
			{ID: "c", HTTPAddr: addrs[2], RaftAddr: "127.0.0.1:3", Voter: true, Alive: true},
		}
	}
	handler := func(w http.ResponseWriter, r *http.Request, body []byte) {
		if r.URL.Path == "/cluster/members" {
			writeJSON(w, http.StatusOK, members())
			return
		}
		basicHandler(w, r, body)
	}
	ms := []*fakeMember{newMember(t, handler), newMember(t, handler), newMember(t, handler)}
	addrsMu.Lock()
	for i, m := range ms {
		addrs[i] = m.addr
	}
	addrsMu.Unlock()
	c := newClient(t, Config{Endpoints: []string{addrs[0]}})
	ctx := testCtx(t)
	if _, err := c.GetTask(ctx, testTaskID); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.Endpoints(), ","); got != strings.Join(addrs[:], ",") {
		t.Errorf("Endpoints() = %s, want %v", got, addrs)
	}
	if c.Leader() != addrs[1] {
		t.Errorf("Leader() = %q, want %q", c.Leader(), addrs[1])
	}
	if err := c.UpdateTask(ctx, testTaskID, api.UpdateTaskRequest{PeerID: "p", Status: api.StatusRunning}); err != nil {
		t.Fatal(err)
	}
	if n := len(ms[1].requests(http.MethodPut, "")); n != 1 {
		t.Errorf("leader saw %d writes, want 1", n)
	}
	for i := 0; i < 6; i++ {
		if _, err := c.GetTask(ctx, testTaskID); err != nil {
			t.Fatal(err)
		}
	}
	refreshes := 0
	for i, m := range ms {
		if len(m.requests(http.MethodGet, "/tasks/")) == 0 {
			t.Errorf("member %d got no read", i)
		}
		refreshes += len(m.requests(http.MethodGet, "/cluster/members"))
	}
	if refreshes != 1 {
		t.Errorf("%d automatic refreshes, want 1", refreshes)
	}

	// A member list the client can use replaces the endpoints; an empty one keeps them.
	got, err := c.MembersAt(ctx, addrs[2])
	if err != nil || len(got) != 3 || !got[1].Leader {
		t.Fatalf("MembersAt = %+v, %v", got, err)
	}
	empty := newMember(t, basicHandler) // answers []
	c2 := newClient(t, Config{Endpoints: []string{empty.addr, addrs[0]}})
	if err := c2.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(c2.Endpoints()); n != 2 {
		t.Errorf("Endpoints() after refresh = %v", c2.Endpoints())
	}
}

func TestOneMemberCalls(t *testing.T) {
	var ready atomic.Bool
	m := newMember(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		switch r.URL.Path {
		case "/readyz":
			if ready.Load() {
				w.WriteHeader(http.StatusOK)
			} else {
				writeError(w, http.StatusServiceUnavailable, "no leader")
			}
		case "/cluster/state":
			writeJSON(w, http.StatusOK, api.ClusterState{AppliedIndex: 9, StateHash: "abc"})
		default:
			basicHandler(w, r, body)
		}
	})
	dead := deadAddr(t)
	c := newClient(t, Config{Endpoints: []string{dead, m.addr}, MaxAttempts: 6})
	ctx := testCtx(t)

	st, err := c.StateAt(ctx, m.addr)
	if err != nil || st.AppliedIndex != 9 || st.StateHash != "abc" {
		t.Fatalf("StateAt = %+v, %v", st, err)
	}
	if _, err := c.StateAt(ctx, dead); !errors.Is(err, ErrUnavailable) {
		t.Errorf("StateAt(dead) = %v, want ErrUnavailable", err)
	}
	if _, err := c.MembersAt(ctx, dead); !errors.Is(err, ErrUnavailable) {
		t.Errorf("MembersAt(dead) = %v, want ErrUnavailable", err)
	}
	if err := c.Ready(ctx, m.addr); !errors.Is(err, ErrNoLeader) {
		t.Errorf("Ready before leader = %v, want ErrNoLeader", err)
	}
	if n := len(m.requests(http.MethodGet, "/readyz")); n != 1 {
		t.Errorf("Ready made %d attempts, want 1", n)
	}
	ready.Store(true)
	if err := c.Ready(ctx, m.addr); err != nil {
		t.Errorf("Ready = %v", err)
	}
	// State with failover reaches the live member.
	if st, err := c.State(ctx); err != nil || st.AppliedIndex != 9 {
		t.Errorf("State = %+v, %v", st, err)
	}
}

func TestRequestShapes(t *testing.T) {
	m := newMember(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		switch {
		case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/peers/"):
			writeJSON(w, http.StatusOK, api.Peer{ID: "peer.1", IP: "10.0.0.1", Port: 7, Tasks: []string{testTaskID}})
		case r.URL.Path == "/cluster/members" && r.Method == http.MethodGet:
			writeJSON(w, http.StatusOK, []api.Member{})
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	})
	c := newClient(t, Config{Endpoints: []string{m.addr}, Token: "s3cret"})
	ctx := testCtx(t)
	p, err := c.GetPeer(ctx, "peer.1")
	if err != nil || p.ID != "peer.1" || len(p.Tasks) != 1 {
		t.Fatalf("GetPeer = %+v, %v", p, err)
	}
	steps := []struct {
		name, method, path string
		call               func() error
	}{
		{"ReportPieces", http.MethodPut, "/tasks/" + testTaskID + "/pieces/0-3,9", func() error {
			return c.ReportPieces(ctx, testTaskID, "0-3,9", api.PieceReport{PeerID: "p", Status: api.StatusSuccess, Source: "m1"})
		}},
		{"ReportPieceBatch", http.MethodPut, "/tasks/" + testTaskID + "/pieces", func() error {
			return c.ReportPieceBatch(ctx, testTaskID, api.PieceReportBatch{PeerID: "p",
				Reports: []api.PieceReportItem{{Pieces: "1", Status: api.StatusSuccess}}})
		}},
		{"Join", http.MethodPost, "/cluster/members", func() error {
			return c.Join(ctx, api.JoinRequest{ID: "m4", HTTPAddr: "127.0.0.1:9", RaftAddr: "127.0.0.1:10"})
		}},
		{"RemoveMember", http.MethodDelete, "/cluster/members/m4", func() error { return c.RemoveMember(ctx, "m4") }},
		{"DeletePeer", http.MethodDelete, "/peers/peer.1", func() error { return c.DeletePeer(ctx, "peer.1") }},
	}
	for _, s := range steps {
		if err := s.call(); err != nil {
			t.Errorf("%s: %v", s.name, err)
			continue
		}
		n := 0
		for _, r := range m.requests(s.method, s.path) {
			if r.Path == s.path {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s: %d requests %s %s, want 1", s.name, n, s.method, s.path)
		}
	}
	for _, r := range m.requests("", "") {
		if r.Auth != "Bearer s3cret" {
			t.Errorf("%s %s sent Authorization %q", r.Method, r.Path, r.Auth)
		}
	}
	for _, r := range m.requests(http.MethodPut, "/tasks/"+testTaskID+"/pieces") {
		var batch api.PieceReportBatch
		var single api.PieceReport
		switch {
		case r.Path == "/tasks/"+testTaskID+"/pieces":
			if err := json.Unmarshal(r.Body, &batch); err != nil || len(batch.Reports) != 1 || batch.Reports[0].Pieces != "1" {
				t.Errorf("batch body %s (%v)", r.Body, err)
			}
		default:
			if err := json.Unmarshal(r.Body, &single); err != nil || single.Source != "m1" || single.PeerID != "p" {
				t.Errorf("report body %s (%v)", r.Body, err)
			}
		}
	}

	// Without a token no Authorization header is sent.
	c2 := newClient(t, Config{Endpoints: []string{m.addr}})
	before := len(m.requests("", ""))
	if _, err := c2.GetPeer(ctx, "peer.1"); err != nil {
		t.Fatal(err)
	}
	if r := m.requests("", "")[before]; r.Auth != "" {
		t.Errorf("Authorization %q sent without a token", r.Auth)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"one endpoint", Config{Endpoints: []string{"127.0.0.1:8002"}}, true},
		{"host names", Config{Endpoints: []string{"a.example:1", "[::1]:8002"}}, true},
		{"none", Config{}, false},
		{"scheme", Config{Endpoints: []string{"http://127.0.0.1:8002"}}, false},
		{"no port", Config{Endpoints: []string{"127.0.0.1"}}, false},
		{"no host", Config{Endpoints: []string{":8002"}}, false},
		{"port 0", Config{Endpoints: []string{"h:0"}}, false},
		{"negative timeout", Config{Endpoints: []string{"h:1"}, RequestTimeout: -1}, false},
		{"negative attempts", Config{Endpoints: []string{"h:1"}, MaxAttempts: -1}, false},
		{"base above max", Config{Endpoints: []string{"h:1"}, BackoffBase: time.Second, BackoffMax: time.Millisecond}, false},
	} {
		_, err := New(tc.cfg)
		if (err == nil) != tc.ok {
			t.Errorf("%s: New err = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	cfg := Config{Endpoints: []string{"h:1"}}
	cfg.applyDefaults()
	if cfg.RequestTimeout != 10*time.Second || cfg.MaxAttempts != DefaultMaxAttempts || cfg.RetryFor != 20*time.Second || cfg.BackoffBase != 50*time.Millisecond ||
		cfg.BackoffMax != 2*time.Second || cfg.Logger == nil {
		t.Errorf("defaults: %+v", cfg)
	}
}

func TestNewPeerID(t *testing.T) {
	valid := regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)
	seen := map[string]bool{}
	for _, host := range []string{"", "host", "ünïcode host", strings.Repeat("x", 300), "a/b:c"} {
		id := NewPeerID(host)
		if !valid.MatchString(id) || !api.ValidID(id) {
			t.Errorf("NewPeerID(%q) = %q: invalid", host, id)
		}
		if seen[id] {
			t.Errorf("NewPeerID(%q) = %q repeated", host, id)
		}
		seen[id] = true
	}
}

func TestBackoff(t *testing.T) {
	c := newClient(t, Config{Endpoints: []string{"h:1"}, BackoffBase: 100 * time.Millisecond, BackoffMax: time.Second})
	for round, want := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond,
		4: 800 * time.Millisecond, 5: time.Second, 60: time.Second} {
		for i := 0; i < 20; i++ {
			if d := c.backoff(round, 0); d < want/2 || d > want {
				t.Errorf("backoff(%d) = %v, want in [%v, %v]", round, d, want/2, want)
			}
		}
	}
	if d := c.backoff(1, 700*time.Millisecond); d != 700*time.Millisecond {
		t.Errorf("backoff with Retry-After 700ms = %v", d)
	}
	for h, want := range map[string]time.Duration{"1": time.Second, "30": time.Second, "0": 0, "x": 0, "": 0} {
		if got := c.parseRetryAfter([]byte(h)); got != want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", h, got, want)
		}
	}
}

// TestAgainstFasthttpServer runs the client against a fasthttp server, as the members are.
func TestAgainstFasthttpServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var paths []string
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		ctx.Response.Header.Set(api.HeaderRaftLeader, l.Addr().String())
		if string(ctx.Path()) == "/cluster/members" { // the client's discovery
			ctx.SetContentType("application/json")
			ctx.SetBodyString("[]")
			return
		}
		mu.Lock()
		paths = append(paths, string(ctx.Method())+" "+string(ctx.Path()))
		mu.Unlock()
		if ctx.IsGet() {
			ctx.SetStatusCode(http.StatusNotFound)
			ctx.SetContentType("application/json")
			ctx.SetBodyString(`{"error":"no such peer"}`)
			return
		}
		ctx.Response.Header.Set(api.HeaderRaftIndex, "3")
		ctx.SetStatusCode(http.StatusNoContent)
	}}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		_ = srv.Shutdown()
		<-served
	})
	c := newClient(t, Config{Endpoints: []string{l.Addr().String(), l.Addr().String()}})
	ctx := testCtx(t)
	if err := c.ReportPieces(ctx, testTaskID, "0-3,9", api.PieceReport{PeerID: "p", Status: api.StatusSuccess}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetPeer(ctx, "peer-1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetPeer = %v, want ErrNotFound", err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{"PUT /tasks/" + testTaskID + "/pieces/0-3,9", "GET /peers/peer-1"}
	if strings.Join(paths, "\n") != strings.Join(want, "\n") {
		t.Errorf("server saw %q, want %q", paths, want)
	}
	if c.LastIndex() != 3 || c.Leader() != l.Addr().String() {
		t.Errorf("LastIndex %d, Leader %q", c.LastIndex(), c.Leader())
	}
}

func TestRetryForBoundsACallInTime(t *testing.T) {
	unavailable := func(w http.ResponseWriter, r *http.Request, _ []byte) {
		writeError(w, http.StatusServiceUnavailable, "no leader")
	}
	a, b := newMember(t, unavailable), newMember(t, unavailable)
	const retryFor = 400 * time.Millisecond
	c := newClient(t, Config{Endpoints: []string{a.addr, b.addr}, MaxAttempts: 1_000_000,
		RetryFor: retryFor, BackoffBase: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond})
	start := time.Now()
	err := c.UpdateTask(testCtx(t), testTaskID, api.UpdateTaskRequest{PeerID: "p", Status: api.StatusFailed})
	elapsed := time.Since(start)
	if !errors.Is(err, ErrNoLeader) {
		t.Fatalf("err = %v, want ErrNoLeader", err)
	}
	if elapsed < retryFor || elapsed > retryFor+2*time.Second {
		t.Errorf("gave up after %v, want about %v", elapsed, retryFor)
	}
	if n := len(a.requests("", "")) + len(b.requests("", "")); n < 4 {
		t.Errorf("only %d attempts within RetryFor: it should keep trying until the budget ends", n)
	}
}

func TestPinnedClientIgnoresAdvertisedLeader(t *testing.T) {
	leader := newMember(t, basicHandler)
	follower := newMember(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set(api.HeaderRaftLeader, leader.addr)
		basicHandler(w, r, body)
	})
	c := newClient(t, Config{Endpoints: []string{follower.addr}, Pinned: true})
	ctx := testCtx(t)
	for i := 0; i < 3; i++ {
		if err := c.UpdateTask(ctx, testTaskID, api.UpdateTaskRequest{PeerID: "p1", Status: api.StatusRunning}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.GetTask(ctx, testTaskID); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(leader.requests("", "")); n != 0 {
		t.Errorf("the advertised leader saw %d requests from a pinned client, want 0", n)
	}
	if n := len(follower.requests(http.MethodPut, "/tasks/")); n != 3 {
		t.Errorf("the pinned member saw %d writes, want 3", n)
	}
	if got := c.Endpoints(); len(got) != 1 || got[0] != follower.addr {
		t.Errorf("a pinned client discovered members: %v", got)
	}
}

func TestWaitForCarriesAnotherClientsIndex(t *testing.T) {
	m := newMember(t, basicHandler)
	c := newClient(t, Config{Endpoints: []string{m.addr}, Pinned: true})
	c.WaitFor(77)
	c.WaitFor(5) // never lowers it
	if _, err := c.GetTask(testCtx(t), testTaskID); err != nil {
		t.Fatal(err)
	}
	reads := m.requests(http.MethodGet, "/tasks/")
	if len(reads) != 1 || reads[0].Query != "min_index=77" {
		t.Fatalf("read carried %+v, want min_index=77", reads)
	}
}

// Every client of a task asks the same member for its schedule, whatever the order of its
// endpoints, and another member when that one is down.
func TestScheduleCallsOfATaskGoToOneMember(t *testing.T) {
	schedule := func(w http.ResponseWriter, r *http.Request, _ []byte) {
		writeJSON(w, http.StatusOK, api.Schedule{Status: api.TaskSuccess, Pieces: []api.ScheduledPiece{}})
	}
	ms := []*fakeMember{newMember(t, schedule), newMember(t, schedule), newMember(t, schedule)}
	tasks := []string{strings.Repeat("a", 64), strings.Repeat("b", 64), strings.Repeat("c", 64), strings.Repeat("d", 64)}
	orders := [][]int{{0, 1, 2}, {2, 1, 0}, {1, 0, 2}}
	for _, order := range orders {
		var eps []string
		for _, i := range order {
			eps = append(eps, ms[i].addr)
		}
		c := newClient(t, Config{Endpoints: eps, Pinned: true})
		for _, id := range tasks {
			for k := 0; k < 3; k++ {
				if _, err := c.Schedule(testCtx(t), id, api.ScheduleQuery{PeerID: "p"}); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	askedBy := map[string]map[int]bool{}
	for i, m := range ms {
		for _, r := range m.requests(http.MethodGet, "/tasks/") {
			id := strings.Split(strings.TrimPrefix(r.Path, "/tasks/"), "/")[0]
			if askedBy[id] == nil {
				askedBy[id] = map[int]bool{}
			}
			askedBy[id][i] = true
		}
	}
	spread := map[int]bool{}
	for _, id := range tasks {
		if len(askedBy[id]) != 1 {
			t.Fatalf("task %s… was scheduled by members %v, want one", id[:4], askedBy[id])
		}
		for i := range askedBy[id] {
			spread[i] = true
		}
	}
	if len(spread) < 2 {
		t.Fatalf("4 tasks all went to member %v: no spread over members", spread)
	}

	// The preferred member down: another answers.
	dead := deadAddr(t)
	c := newClient(t, Config{Endpoints: []string{dead, ms[0].addr}, Pinned: true})
	for _, id := range tasks {
		if _, err := c.Schedule(testCtx(t), id, api.ScheduleQuery{PeerID: "p"}); err != nil {
			t.Fatalf("task %s… with one member down: %v", id[:4], err)
		}
	}
}
