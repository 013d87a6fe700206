// Package cluster starts real supernode clusters for tests: N members, each started with
// member.Start exactly as cmd/supernode starts one, on ephemeral 127.0.0.1 ports that a
// member keeps across restarts, with data under t.TempDir() and short Raft timeouts.
package cluster

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/dfly-ha/dfha/cluster/member"
	"github.com/dfly-ha/dfha/sdk"
	"github.com/dfly-ha/dfha/sdk/api"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// Options tune a test cluster.
type Options struct {
	Token   string
	Verbose bool // log members' info lines into the test log (default: warnings only)
	// Configure, when set, can change a member's configuration before each start.
	Configure func(i int, cfg *member.Config)
}

// Cluster is a running test cluster.
type Cluster struct {
	t    testing.TB
	opts Options

	mu      sync.Mutex
	slots   []*slot
	stopped bool
}

type slot struct {
	id, dataDir, httpAddr, raftAddr string
	m                               *member.Member // nil while stopped
}

// Test members run with the defaults users get (Raft timings included), except that a
// dead member is declared dead sooner.
const memberDeadAfter = time.Second

// New starts an n-member cluster: the first bootstraps, the others join it. It returns when
// every member sees the same leader; Cleanup stops all.
func New(t testing.TB, n int, opts Options) *Cluster {
	t.Helper()
	c := &Cluster{t: t, opts: opts}
	t.Cleanup(c.Close)
	for i := 0; i < n; i++ {
		c.Add()
	}
	c.WaitForLeader(10 * time.Second)
	return c
}

// Add starts one more member that joins the cluster (or bootstraps it, if first) and
// returns its index.
func (c *Cluster) Add() int {
	c.t.Helper()
	c.mu.Lock()
	i := len(c.slots)
	s := &slot{id: fmt.Sprintf("m%d", i), dataDir: fmt.Sprintf("%s/m%d", c.t.TempDir(), i)}
	c.slots = append(c.slots, s)
	var join []string
	for _, o := range c.slots[:i] {
		if o.m != nil {
			join = append(join, o.httpAddr)
		}
	}
	c.mu.Unlock()
	if err := c.start(i, s, join); err != nil {
		c.t.Fatalf("start member %d: %v", i, err)
	}
	return i
}

func (c *Cluster) start(i int, s *slot, join []string) error {
	httpLn, err := listen(s.httpAddr)
	if err != nil {
		return err
	}
	raftLn, err := listen(s.raftAddr)
	if err != nil {
		httpLn.Close()
		return err
	}
	log := zaptest.NewLogger(c.t, zaptest.Level(zap.WarnLevel))
	if c.opts.Verbose {
		log = zaptest.NewLogger(c.t, zaptest.Level(zap.InfoLevel))
	}
	cfg := member.Config{
		ID: s.id, DataDir: s.dataDir, HTTPListener: httpLn, RaftListener: raftLn,
		Bootstrap: i == 0 && len(join) == 0, Join: join, Token: c.opts.Token,
		MemberDeadAfter: memberDeadAfter, JoinTimeout: 20 * time.Second,
		ShutdownTimeout: 5 * time.Second, Logger: log,
	}
	if c.opts.Configure != nil {
		c.opts.Configure(i, &cfg)
	}
	m, err := member.Start(context.Background(), cfg)
	if err != nil {
		httpLn.Close()
		raftLn.Close()
		return err
	}
	c.mu.Lock()
	s.m, s.httpAddr, s.raftAddr = m, m.HTTPAddr(), m.RaftAddr()
	c.mu.Unlock()
	return nil
}

// listen binds addr, or an ephemeral loopback port when addr is "". A restarted member
// binds its old port again; it may take a moment to be free.
func listen(addr string) (net.Listener, error) {
	if addr == "" {
		return net.Listen("tcp", "127.0.0.1:0")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		ln, err := net.Listen("tcp", addr)
		if err == nil || time.Now().After(deadline) {
			return ln, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// N is the number of member slots (running or not).
func (c *Cluster) N() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.slots)
}

// Member returns member i (nil while stopped).
func (c *Cluster) Member(i int) *member.Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.slots[i].m
}

// HTTPAddr returns member i's API address (kept across restarts).
func (c *Cluster) HTTPAddr(i int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.slots[i].httpAddr
}

// Endpoints returns the API addresses of all member slots.
func (c *Cluster) Endpoints() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, len(c.slots))
	for i, s := range c.slots {
		out[i] = s.httpAddr
	}
	return out
}

// Running returns the indexes of running members.
func (c *Cluster) Running() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []int
	for i, s := range c.slots {
		if s.m != nil {
			out = append(out, i)
		}
	}
	return out
}

// Leader returns the index of the running member that is leader, or -1.
func (c *Cluster) Leader() int {
	for _, i := range c.Running() {
		if m := c.Member(i); m != nil && m.Node().IsLeader() {
			return i
		}
	}
	return -1
}

// WaitForLeader waits until one running member leads and every running member knows it;
// it returns the leader's index.
func (c *Cluster) WaitForLeader(timeout time.Duration) int {
	c.t.Helper()
	var last string
	ok := Eventually(timeout, func() bool {
		l := c.Leader()
		if l < 0 {
			last = "no leader"
			return false
		}
		want := c.HTTPAddr(l)
		for _, i := range c.Running() {
			if got, _ := c.Member(i).Node().LeaderHTTP(); got != want {
				last = fmt.Sprintf("member %d sees leader %q, not %q", i, got, want)
				return false
			}
		}
		return true
	})
	if !ok {
		c.t.Fatalf("no agreed leader within %s: %s", timeout, last)
	}
	return c.Leader()
}

// Client returns an sdk client over every member slot.
func (c *Cluster) Client() *sdk.Client {
	c.t.Helper()
	cl, err := sdk.New(sdk.Config{Endpoints: c.Endpoints(), Token: c.opts.Token})
	if err != nil {
		c.t.Fatalf("sdk client: %v", err)
	}
	return cl
}

// take marks member i stopped and returns it (the test fails if it was not running).
func (c *Cluster) take(i int) *member.Member {
	c.t.Helper()
	c.mu.Lock()
	m := c.slots[i].m
	c.slots[i].m = nil
	c.mu.Unlock()
	if m == nil {
		c.t.Fatalf("member %d is not running", i)
	}
	return m
}

// Kill stops member i abruptly (no leadership hand-over), as a crash would.
func (c *Cluster) Kill(i int) {
	c.t.Helper()
	c.take(i).Kill()
}

// Stop stops member i the orderly way (SIGTERM's path).
func (c *Cluster) Stop(i int) {
	c.t.Helper()
	if err := c.take(i).Stop(); err != nil {
		c.t.Errorf("stop member %d: %v", i, err)
	}
}

// Restart starts a stopped member again on its data dir and ports, with no bootstrap or
// join: it comes back with its stored identity.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	c.mu.Lock()
	s := c.slots[i]
	c.mu.Unlock()
	if s.m != nil {
		c.t.Fatalf("member %d is running", i)
	}
	if err := c.start(i, s, nil); err != nil {
		c.t.Fatalf("restart member %d: %v", i, err)
	}
}

// StateHashes asks each running member for its applied index and state hash.
func (c *Cluster) StateHashes(ctx context.Context) (map[int]api.ClusterState, error) {
	cl := c.Client()
	out := map[int]api.ClusterState{}
	for _, i := range c.Running() {
		st, err := cl.StateAt(ctx, c.HTTPAddr(i))
		if err != nil {
			return nil, fmt.Errorf("member %d: %w", i, err)
		}
		out[i] = *st
	}
	return out, nil
}

// WaitConverged waits until every running member reports the same state hash, and
// returns it.
func (c *Cluster) WaitConverged(timeout time.Duration) string {
	c.t.Helper()
	var hash, last string
	ok := Eventually(timeout, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		states, err := c.StateHashes(ctx)
		if err != nil {
			last = err.Error()
			return false
		}
		hash = ""
		for i, st := range states {
			if hash == "" {
				hash = st.StateHash
			} else if st.StateHash != hash {
				last = fmt.Sprintf("member %d: %s at index %d differs", i, st.StateHash, st.AppliedIndex)
				return false
			}
		}
		return hash != ""
	})
	if !ok {
		c.t.Fatalf("state hashes did not converge within %s: %s", timeout, last)
	}
	return hash
}

// Close stops every running member (abruptly: tests end fast).
func (c *Cluster) Close() {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return
	}
	c.stopped = true
	var ms []*member.Member
	for _, s := range c.slots {
		if s.m != nil {
			ms = append(ms, s.m)
			s.m = nil
		}
	}
	c.mu.Unlock()
	for _, m := range ms {
		m.Kill()
	}
}

// Eventually polls cond every 20ms until it holds or timeout passes.
func Eventually(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}
