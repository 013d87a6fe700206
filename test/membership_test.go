package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dfly-ha/dfha/cluster"
	"github.com/dfly-ha/dfha/cluster/member"
	"github.com/dfly-ha/dfha/fsm"
	"github.com/dfly-ha/dfha/sdk/api"
	tc "github.com/dfly-ha/dfha/test/cluster"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// startExtra starts a member outside the test cluster's slots, on the given addresses
// (fresh ports for ""); the test's cleanup kills it.
func startExtra(t *testing.T, cfg member.Config, addrs ...string) (*member.Member, error) {
	t.Helper()
	addrs = append(addrs, "", "")
	for i := range addrs[:2] {
		if addrs[i] == "" {
			addrs[i] = "127.0.0.1:0"
		}
	}
	hl, err := net.Listen("tcp", addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	rl, err := net.Listen("tcp", addrs[1])
	if err != nil {
		t.Fatal(err)
	}
	cfg.HTTPListener, cfg.RaftListener = hl, rl
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	}
	m, err := member.Start(context.Background(), cfg)
	if err != nil {
		hl.Close()
		rl.Close()
		return nil, err
	}
	t.Cleanup(m.Kill)
	return m, nil
}

func memberCount(t *testing.T, c *tc.Cluster) int {
	t.Helper()
	ms, err := c.Member(c.WaitForLeader(10 * time.Second)).Node().Members()
	if err != nil {
		t.Fatal(err)
	}
	return len(ms)
}

func TestFailedJoinCanBeRetried(t *testing.T) {
	c := tc.New(t, 3, tc.Options{Token: "good"})
	dir := t.TempDir()
	cfg := member.Config{ID: "late", DataDir: dir, Join: []string{c.HTTPAddr(0)}, JoinTimeout: 10 * time.Second}
	cfg.Token = "bad"
	httpAddr, raftAddr := freeAddr(t), freeAddr(t)
	if _, err := startExtra(t, cfg, httpAddr, raftAddr); err == nil {
		t.Fatal("a join with a wrong token was accepted")
	}
	// Another listener than the stored identity's is refused, not advertised wrongly.
	if _, err := startExtra(t, cfg); err == nil || !strings.Contains(err.Error(), "stored with address") {
		t.Fatalf("start on other ports than the stored identity: %v", err)
	}
	cfg.Token = "good" // the same data dir and ports, started again with --join
	m, err := startExtra(t, cfg, httpAddr, raftAddr)
	if err != nil {
		t.Fatalf("second join: %v", err)
	}
	if !tc.Eventually(10*time.Second, func() bool { return memberCount(t, c) == 4 && m.Node().Ready() }) {
		t.Fatalf("the member that failed to join once never joined (members: %d)", memberCount(t, c))
	}
}

func TestRejoinedMemberIsAliveAgain(t *testing.T) {
	c := tc.New(t, 3, tc.Options{})
	l := c.WaitForLeader(10 * time.Second)
	v := (l + 1) % 3
	vid := c.Member(v).ID()
	c.Kill(v)
	lead := c.Member(l).Node()
	if !tc.Eventually(10*time.Second, func() bool { m, _ := lead.FSM().Member(vid); return !m.Alive }) {
		t.Fatal("killed member never committed dead")
	}
	if err := lead.RemoveMember(context.Background(), vid); err != nil {
		t.Fatal(err)
	}
	// The same member ID comes back on a new data dir (a rebuilt host) and joins.
	if _, err := startExtra(t, member.Config{ID: vid, DataDir: t.TempDir(), Join: []string{c.HTTPAddr(l)}, MemberDeadAfter: time.Second}); err != nil {
		t.Fatal(err)
	}
	if !tc.Eventually(10*time.Second, func() bool { m, ok := lead.FSM().Member(vid); return ok && m.Alive }) {
		m, _ := lead.FSM().Member(vid)
		t.Fatalf("rejoined member not alive: %+v", m)
	}
}

func TestJoinCannotTakeOverAnotherMembersID(t *testing.T) {
	c := tc.New(t, 3, tc.Options{})
	l := c.WaitForLeader(10 * time.Second)
	vid := c.Member((l + 1) % 3).ID()
	st, msg := rawCall(t, "POST", "http://"+c.HTTPAddr(l)+"/cluster/members",
		fmt.Sprintf(`{"id":%q,"http_addr":"127.0.0.1:1","raft_addr":"127.0.0.1:2"}`, vid), nil)
	if st != http.StatusConflict {
		t.Fatalf("join with an existing member's ID and another address: %d %s, want 409", st, msg)
	}
	c.WaitConverged(10 * time.Second)
	for _, i := range c.Running() {
		m, _ := c.Member(i).Node().FSM().Member(vid)
		if m.RaftAddr != c.Member((l+1)%3).RaftAddr() {
			t.Fatalf("member %d: %s's address changed to %s", i, vid, m.RaftAddr)
		}
	}
}

func TestForwardRouteRefusesStrangersAndMembershipCommands(t *testing.T) {
	c := tc.New(t, 3, tc.Options{})
	l := c.WaitForLeader(10 * time.Second)
	before := c.WaitConverged(10 * time.Second)
	send := func(from string, cmds ...fsm.Command) int {
		req, _ := http.NewRequest("POST", "http://"+c.HTTPAddr(l)+cluster.ForwardPath, strings.NewReader(string(fsm.Batch{Commands: cmds}.Encode())))
		req.Header.Set(api.HeaderForwarded, from)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	peer := fsm.PeerRegister{ID: "p", IP: "127.0.0.1", Port: 1, Hostname: "h"}
	if got := send("stranger", peer); got != http.StatusForbidden {
		t.Fatalf("forward from a non-member: %d, want 403", got)
	}
	follower := c.Member((l + 1) % 3).ID()
	if got := send(follower, fsm.MemberUpsert{ID: "ghost", HTTPAddr: "10.9.9.9:1", RaftAddr: "10.9.9.9:2"}); got != http.StatusBadRequest {
		t.Fatalf("forwarded membership command: %d, want 400", got)
	}
	// Malformed commands from a member are refused by Apply itself, on every member alike.
	if got := send(follower, fsm.PeerRegister{ID: "", IP: "not-an-ip", Hostname: "\x00"}); got != http.StatusOK {
		t.Fatalf("forwarded batch: %d", got)
	}
	if after := c.WaitConverged(10 * time.Second); after != before {
		t.Fatal("refused commands changed the state")
	}
}

func TestCommittedWriteKeepsIndexWhenItsCommandFails(t *testing.T) {
	c := tc.New(t, 3, tc.Options{})
	req, _ := http.NewRequest("DELETE", "http://"+c.HTTPAddr(1)+"/tasks/"+strings.Repeat("a", 64), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || resp.Header.Get(api.HeaderRaftIndex) == "" || resp.Header.Get(api.HeaderRaftLeader) == "" {
		t.Fatalf("DELETE of an unknown task: %d, index %q, leader %q; want 404 with both headers",
			resp.StatusCode, resp.Header.Get(api.HeaderRaftIndex), resp.Header.Get(api.HeaderRaftLeader))
	}
}

func TestLargeWritesThroughAFollowerAllCommit(t *testing.T) {
	c := tc.New(t, 3, tc.Options{})
	l := c.WaitForLeader(10 * time.Second)
	f := (l + 1) % 3
	ctx := ctxT(t, 60*time.Second)
	cl := c.Client()
	mustRegisterPeer(t, ctx, cl, "p1", 1)
	hdr := map[string]string{}
	for i := 0; i < 15; i++ { // just under the 16 KiB limit of a task's headers
		hdr[fmt.Sprintf("X-H%d", i)] = strings.Repeat("v", 1000)
	}
	hp, _ := json.Marshal(hdr)
	var wg sync.WaitGroup
	errs := make(chan string, 300)
	for i := 0; i < 300; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			body := fmt.Sprintf(`{"url":"http://127.0.0.1:9/f%d","peer_id":"p1","headers":%s}`, i, hp)
			st, msg := rawCall(t, "POST", "http://"+c.HTTPAddr(f)+"/tasks", body, map[string]string{api.HeaderRaftIndex: ""})
			if st != http.StatusCreated {
				errs <- fmt.Sprintf("%d %s", st, msg)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatalf("large registration through a follower: %s", e)
	}
	c.WaitConverged(15 * time.Second)
	if _, _, tasks, _ := c.Member(f).Node().FSM().Counts(); tasks != 300 {
		t.Fatalf("%d tasks, want 300", tasks)
	}
}

func TestGracefulLeaderStopDoesNotFailForwardedWrites(t *testing.T) {
	c := tc.New(t, 3, tc.Options{})
	l := c.WaitForLeader(10 * time.Second)
	f := (l + 1) % 3
	stopped := make(chan struct{})
	go func() { c.Stop(l); close(stopped) }()
	// Plain requests with no retry: the leader hands over before it stops answering, so a
	// write through a follower sees at most the hand-over itself.
	fails, total := 0, 0
	deadline := time.Now().Add(4 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		st, _ := rawCallOnce(t, "POST", "http://"+c.HTTPAddr(f)+"/peers",
			fmt.Sprintf(`{"id":"g%d","ip":"127.0.0.1","port":1000,"hostname":"h"}`, i), nil)
		total++
		if st != http.StatusCreated {
			fails++
		}
		time.Sleep(20 * time.Millisecond)
	}
	<-stopped
	if fails > total/10 {
		t.Fatalf("%d of %d writes through a follower failed during the leader's orderly stop", fails, total)
	}
	t.Logf("%d of %d plain writes failed during the hand-over", fails, total)
}
