package test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/dfly-ha/dfha/sdk"
	"github.com/dfly-ha/dfha/sdk/api"
	tc "github.com/dfly-ha/dfha/test/cluster"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// peerReq is a valid registration for peer i.
func peerReq(id string, i int) api.RegisterPeerRequest {
	return api.RegisterPeerRequest{ID: id, IP: "127.0.0.1", Port: 20000 + i, Hostname: fmt.Sprintf("host-%d", i)}
}

func mustRegisterPeer(t *testing.T, ctx context.Context, c *sdk.Client, id string, i int) {
	t.Helper()
	if _, err := c.RegisterPeer(ctx, peerReq(id, i)); err != nil {
		t.Fatalf("register peer %s: %v", id, err)
	}
}

func mustRegisterTask(t *testing.T, ctx context.Context, c *sdk.Client, url, peer string) string {
	t.Helper()
	task, _, err := c.RegisterTask(ctx, api.RegisterTaskRequest{URL: url, PeerID: peer})
	if err != nil {
		t.Fatalf("register task %s: %v", url, err)
	}
	return task.TaskID
}

// clientAt is an sdk client that talks to one member only. Its reads wait for the writes
// of the clients given (their LastIndex).
func clientAt(t *testing.T, addr string, after ...*sdk.Client) *sdk.Client {
	t.Helper()
	c, err := sdk.New(sdk.Config{Endpoints: []string{addr}, Pinned: true, RetryFor: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range after {
		c.WaitFor(w.LastIndex())
	}
	return c
}

func TestThreeMembersFormOneCluster(t *testing.T) {
	c := tc.New(t, 3, tc.Options{})
	ctx := ctxT(t, 30*time.Second)
	cl := c.Client()
	leader := c.Leader()
	if !tc.Eventually(10*time.Second, func() bool {
		for _, i := range c.Running() {
			ms, err := cl.MembersAt(ctx, c.HTTPAddr(i))
			if err != nil || len(ms) != 3 {
				return false
			}
			leaders := 0
			for _, m := range ms {
				if m.Leader {
					leaders++
					if m.HTTPAddr != c.HTTPAddr(leader) {
						return false
					}
				}
				if !m.Voter || !m.Alive || m.HTTPAddr == "" || m.RaftAddr == "" {
					return false
				}
			}
			if leaders != 1 {
				return false
			}
		}
		return true
	}) {
		ms, _ := cl.MembersAt(ctx, c.HTTPAddr(0))
		t.Fatalf("members do not agree on 3 live voters and one leader: %+v", ms)
	}

	// A write sent to a follower only is visible on every member.
	follower := (leader + 1) % 3
	fc := clientAt(t, c.HTTPAddr(follower))
	mustRegisterPeer(t, ctx, fc, "via-follower", 1)
	for _, i := range c.Running() {
		if !tc.Eventually(5*time.Second, func() bool {
			p, err := clientAt(t, c.HTTPAddr(i)).GetPeer(ctx, "via-follower")
			return err == nil && p.Hostname == "host-1"
		}) {
			t.Fatalf("member %d does not show the peer written through member %d", i, follower)
		}
	}
	c.WaitConverged(10 * time.Second)
}

// writeState registers peers and a task and reports pieces; it returns what a user would
// check afterwards.
func writeState(t *testing.T, ctx context.Context, cl *sdk.Client, prefix string, peers int) (taskID string) {
	t.Helper()
	for i := 0; i < peers; i++ {
		mustRegisterPeer(t, ctx, cl, fmt.Sprintf("%s-p%d", prefix, i), i)
	}
	taskID = mustRegisterTask(t, ctx, cl, "http://127.0.0.1:9/"+prefix+".bin", prefix+"-p0")
	for i := 0; i < peers; i++ {
		err := cl.ReportPieces(ctx, taskID, fmt.Sprintf("0-%d", i), api.PieceReport{PeerID: fmt.Sprintf("%s-p%d", prefix, i), Status: "success"})
		if err != nil {
			t.Fatalf("report: %v", err)
		}
	}
	return taskID
}

// checkState asserts that what writeState wrote (through writer) is all there, read through
// addr.
func checkState(t *testing.T, ctx context.Context, writer *sdk.Client, addr, prefix, taskID string, peers int) {
	t.Helper()
	cl := clientAt(t, addr, writer)
	task, err := cl.GetTask(ctx, taskID)
	if err != nil {
		t.Fatalf("%s: task %s: %v", addr, taskID, err)
	}
	if task.Peers == nil || *task.Peers != int64(peers) {
		t.Fatalf("%s: task has %d peers, want %d", addr, *task.Peers, peers)
	}
	for i := 0; i < peers; i++ {
		p, err := cl.GetPeer(ctx, fmt.Sprintf("%s-p%d", prefix, i))
		if err != nil {
			t.Fatalf("%s: peer %d lost: %v", addr, i, err)
		}
		if len(p.Tasks) != 1 || p.Tasks[0] != taskID {
			t.Fatalf("%s: peer %d tasks %v, want [%s]", addr, i, p.Tasks, taskID)
		}
	}
}

func TestLeaderCrashLosesNoCommittedWrite(t *testing.T) {
	c := tc.New(t, 3, tc.Options{})
	ctx := ctxT(t, 60*time.Second)
	cl := c.Client()
	taskA := writeState(t, ctx, cl, "before", 8)
	before := c.WaitConverged(10 * time.Second)

	old := c.Leader()
	c.Kill(old)
	start := time.Now()
	newLeader := c.WaitForLeader(10 * time.Second)
	if newLeader == old {
		t.Fatalf("killed member %d still leads", old)
	}
	// Writes are accepted again, through the sdk that still lists the dead member.
	taskB := writeState(t, ctx, cl, "after", 5)
	t.Logf("new leader m%d; next writes accepted %s after the kill", newLeader, time.Since(start).Round(time.Millisecond))
	for _, i := range c.Running() {
		checkState(t, ctx, cl, c.HTTPAddr(i), "before", taskA, 8)
		checkState(t, ctx, cl, c.HTTPAddr(i), "after", taskB, 5)
	}
	afterHash := c.WaitConverged(10 * time.Second)
	if afterHash == before {
		t.Fatal("state hash did not change after new writes")
	}

	// The dead member is committed as dead, then comes back and catches up.
	if !tc.Eventually(10*time.Second, func() bool {
		ms, err := cl.MembersAt(ctx, c.HTTPAddr(newLeader))
		if err != nil {
			return false
		}
		for _, m := range ms {
			if m.ID == fmt.Sprintf("m%d", old) {
				return !m.Alive
			}
		}
		return false
	}) {
		t.Fatalf("killed member m%d not committed as dead", old)
	}
	c.Restart(old)
	c.WaitConverged(15 * time.Second)
	checkState(t, ctx, cl, c.HTTPAddr(old), "after", taskB, 5)
	if !tc.Eventually(10*time.Second, func() bool {
		ms, err := cl.MembersAt(ctx, c.HTTPAddr(old))
		if err != nil || len(ms) != 3 {
			return false
		}
		for _, m := range ms {
			if !m.Alive {
				return false
			}
		}
		return true
	}) {
		t.Fatal("restarted member not seen alive by all")
	}
}

func TestFullClusterRestartKeepsState(t *testing.T) {
	c := tc.New(t, 3, tc.Options{})
	ctx := ctxT(t, 60*time.Second)
	cl := c.Client()
	taskID := writeState(t, ctx, cl, "kept", 6)
	before := c.WaitConverged(10 * time.Second)
	for i := 0; i < 3; i++ {
		c.Kill(i)
	}
	for i := 0; i < 3; i++ {
		c.Restart(i)
	}
	c.WaitForLeader(15 * time.Second)
	after := c.WaitConverged(15 * time.Second)
	for i := 0; i < 3; i++ {
		checkState(t, ctx, cl, c.HTTPAddr(i), "kept", taskID, 6)
	}
	// Liveness flags may have moved while members were down; peers, tasks and pieces not.
	if before == "" || after == "" {
		t.Fatal("empty state hash")
	}
}

func TestGracefulStopHandsOverLeadershipAndKeepsMember(t *testing.T) {
	c := tc.New(t, 3, tc.Options{})
	ctx := ctxT(t, 30*time.Second)
	old := c.Leader()
	c.Stop(old)
	next := c.WaitForLeader(5 * time.Second)
	if next == old {
		t.Fatal("stopped member still leads")
	}
	ms, err := clientAt(t, c.HTTPAddr(next)).Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 3 {
		t.Fatalf("a stopped member must stay a member: got %d members", len(ms))
	}
	c.Restart(old)
	c.WaitConverged(15 * time.Second)
}

func TestJoinAndRemove(t *testing.T) {
	c := tc.New(t, 3, tc.Options{})
	ctx := ctxT(t, 60*time.Second)
	cl := c.Client()
	taskID := writeState(t, ctx, cl, "early", 4)
	fourth := c.Add()
	c.WaitConverged(15 * time.Second)
	checkState(t, ctx, cl, c.HTTPAddr(fourth), "early", taskID, 4)
	for _, i := range c.Running() {
		ms, err := clientAt(t, c.HTTPAddr(i)).Members(ctx)
		if err != nil || len(ms) != 4 {
			t.Fatalf("member %d sees %d members (%v), want 4", i, len(ms), err)
		}
	}
	// Remove it (through a follower: the request is passed on to the leader).
	via := (c.Leader() + 1) % 3
	if err := clientAt(t, c.HTTPAddr(via)).RemoveMember(ctx, fmt.Sprintf("m%d", fourth)); err != nil {
		t.Fatalf("remove: %v", err)
	}
	c.Kill(fourth)
	if !tc.Eventually(10*time.Second, func() bool {
		for _, i := range c.Running() {
			ms, err := clientAt(t, c.HTTPAddr(i)).Members(ctx)
			if err != nil || len(ms) != 3 {
				return false
			}
		}
		return true
	}) {
		t.Fatal("removed member still listed")
	}
	if err := cl.RemoveMember(ctx, "m-nobody"); !errors.Is(err, sdk.ErrNotFound) {
		t.Fatalf("removing an unknown member: %v, want not found", err)
	}
	// The 3 remaining members still accept writes (quorum is 2 of 3 again).
	writeState(t, ctx, cl, "late", 2)
	c.WaitConverged(10 * time.Second)
}

func TestReadYourWritesAcrossMembers(t *testing.T) {
	c := tc.New(t, 3, tc.Options{})
	ctx := ctxT(t, 60*time.Second)
	cl := c.Client() // writes go to the leader, reads rotate over all three
	for i := 0; i < 60; i++ {
		id := fmt.Sprintf("ryw-%d", i)
		mustRegisterPeer(t, ctx, cl, id, i)
		p, err := cl.GetPeer(ctx, id)
		if err != nil {
			t.Fatalf("read %d right after its write: %v", i, err)
		}
		if p.Port != 20000+i {
			t.Fatalf("read %d: port %d", i, p.Port)
		}
	}
}

func TestRetriedRegistrationMakesOnePeer(t *testing.T) {
	c := tc.New(t, 3, tc.Options{})
	ctx := ctxT(t, 30*time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 9)
	for i := 0; i < 9; i++ { // the same registration, retried on every member at once
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, err := clientAt(t, c.HTTPAddr(i%3)).RegisterPeer(ctx, peerReq("same-peer", 7))
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	c.WaitConverged(10 * time.Second)
	for _, i := range c.Running() {
		_, peers, _, _ := c.Member(i).Node().FSM().Counts()
		if peers != 1 {
			t.Fatalf("member %d holds %d peers after a retried registration, want 1", i, peers)
		}
	}
	// A registration without an ID gets one; the sdk picks it before the first attempt.
	id, err := c.Client().RegisterPeer(ctx, api.RegisterPeerRequest{IP: "127.0.0.1", Port: 1, Hostname: "h"})
	if err != nil || !api.ValidID(id) {
		t.Fatalf("generated id %q: %v", id, err)
	}
}

func TestConcurrentReportsLandExactlyOnce(t *testing.T) {
	c := tc.New(t, 3, tc.Options{})
	ctx := ctxT(t, 60*time.Second)
	cl := c.Client()
	const peers, piecesEach = 100, 32
	for i := 0; i < peers; i++ {
		mustRegisterPeer(t, ctx, cl, fmt.Sprintf("cr-%d", i), i)
	}
	taskID := mustRegisterTask(t, ctx, cl, "http://127.0.0.1:9/concurrent", "cr-0")
	var wg sync.WaitGroup
	errs := make(chan error, peers)
	for i := 0; i < peers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			mc := clientAt(t, c.HTTPAddr(i%3)) // spread over all members
			for p := 0; p < piecesEach; p += 4 {
				// every report sent twice: duplicates must not count twice
				for rep := 0; rep < 2; rep++ {
					err := mc.ReportPieceBatch(ctx, taskID, api.PieceReportBatch{PeerID: fmt.Sprintf("cr-%d", i),
						Reports: []api.PieceReportItem{{Pieces: fmt.Sprintf("%d-%d", p, p+3), Status: "success"}}})
					if err != nil {
						errs <- err
						return
					}
				}
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	c.WaitConverged(10 * time.Second)
	for _, i := range c.Running() {
		if got := c.Member(i).Node().FSM().HeldCount(taskID); got != peers*piecesEach {
			t.Fatalf("member %d records %d (peer, piece) pairs, want %d", i, got, peers*piecesEach)
		}
	}
}

func TestSDKSurvivesDeadEndpointAndLeaderChange(t *testing.T) {
	c := tc.New(t, 3, tc.Options{})
	ctx := ctxT(t, 60*time.Second)
	dead := "127.0.0.1:1" // nothing listens there
	cl, err := sdk.New(sdk.Config{Endpoints: append([]string{dead}, c.Endpoints()...)})
	if err != nil {
		t.Fatal(err)
	}
	mustRegisterPeer(t, ctx, cl, "seq-0", 0)
	taskID := mustRegisterTask(t, ctx, cl, "http://127.0.0.1:9/seq", "seq-0")
	for step := 1; step <= 20; step++ {
		if step == 8 {
			c.Kill(c.Leader())
		}
		id := fmt.Sprintf("seq-%d", step)
		mustRegisterPeer(t, ctx, cl, id, step)
		if err := cl.ReportPieces(ctx, taskID, fmt.Sprint(step), api.PieceReport{PeerID: id, Status: "success"}); err != nil {
			t.Fatalf("step %d: report: %v", step, err)
		}
		p, err := cl.GetPeer(ctx, id)
		if err != nil || len(p.Tasks) != 1 {
			t.Fatalf("step %d: read own write: %+v %v", step, p, err)
		}
	}
	task, err := cl.GetTask(ctx, taskID)
	if err != nil || *task.Peers != 21 {
		t.Fatalf("task after the sequence: %+v %v", task, err)
	}
}
