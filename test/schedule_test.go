package test

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/dfly-ha/dfha/cluster/member"
	"github.com/dfly-ha/dfha/sdk"
	"github.com/dfly-ha/dfha/sdk/api"
	tc "github.com/dfly-ha/dfha/test/cluster"
)

// TestSchedulerAnswersOnEveryMemberAndExpiresSilentPeers: pieces a peer lacks come with
// their sources (peers that hold them before members, never the peer itself), on any
// member; heartbeats received by a follower reach the leader, and the leader removes the
// peer that sent none, whose pieces then stop being scheduled.
func TestSchedulerAnswersOnEveryMemberAndExpiresSilentPeers(t *testing.T) {
	const pieceSize, pieces, ttl = 64 << 10, 10, 3 * time.Second
	o := newOrigin(t)
	data := randomBytes(7, pieces*pieceSize-100)
	c := tc.New(t, 3, tc.Options{Configure: func(_ int, cfg *member.Config) {
		cfg.PieceSize = pieceSize
		cfg.PeerTTL = ttl
	}})
	ctx := ctxT(t, 60*time.Second)
	cl := c.Client()
	for i, p := range []string{"holder", "asker", "silent"} {
		mustRegisterPeer(t, ctx, cl, p, i)
	}
	var id string
	for _, p := range []string{"holder", "asker", "silent"} {
		id = mustRegisterTask(t, ctx, cl, o.add("/f", data), p)
	}
	waitTask(t, c, id, 20*time.Second, func(task api.Task) bool { return task.Status == api.TaskSuccess })
	if err := cl.ReportPieces(ctx, id, "0-4", api.PieceReport{PeerID: "holder", Status: api.StatusSuccess, Source: "m0"}); err != nil {
		t.Fatal(err)
	}
	if err := cl.ReportPieces(ctx, id, "5-9", api.PieceReport{PeerID: "silent", Status: api.StatusSuccess, Source: "m0"}); err != nil {
		t.Fatal(err)
	}

	// A follower answers; heartbeats go to that follower only.
	leader := c.WaitForLeader(10 * time.Second)
	follower := (leader + 1) % 3
	at := clientAt(t, c.HTTPAddr(follower), cl)
	stop := make(chan struct{})
	beats := make(chan error, 1)
	go func() {
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < 60; i++ { // bounded: 30 s at most
			for _, p := range []string{"holder", "asker"} {
				if _, err := at.Heartbeat(ctx, p, api.Heartbeat{UploadsRunning: 1}); err != nil {
					beats <- err
					return
				}
			}
			select {
			case <-stop:
				beats <- nil
				return
			case <-tick.C:
			}
		}
		beats <- errors.New("heartbeats ran out")
	}()
	defer func() { close(stop); <-beats }()

	plan, err := at.Schedule(ctx, id, api.ScheduleQuery{PeerID: "asker", Limit: 16})
	if err != nil {
		t.Fatal(err)
	}
	if plan.Status != api.TaskSuccess || plan.PieceCount != pieces || plan.PieceSize != pieceSize || plan.Done || len(plan.Pieces) != pieces {
		t.Fatalf("schedule %+v, want all %d pieces of a complete task", plan, pieces)
	}
	for _, p := range plan.Pieces {
		want := "holder"
		if p.N >= 5 {
			want = "silent"
		}
		if p.Sources[0].Kind != api.SourcePeer || p.Sources[0].ID != want || p.Sources[0].Addr != fmt.Sprintf("127.0.0.1:%d", 20000+map[string]int{"holder": 0, "silent": 2}[want]) {
			t.Fatalf("piece %d sources %+v, want peer %s first", p.N, p.Sources, want)
		}
		last := p.Sources[len(p.Sources)-1]
		if last.Kind != api.SourceMember {
			t.Fatalf("piece %d sources %+v, want members after the peers", p.N, p.Sources)
		}
		wantSize := int64(pieceSize)
		if p.N == pieces-1 {
			wantSize = pieceSize - 100
		}
		if p.Size != wantSize || len(p.Digest) != len("sha256:")+64 {
			t.Fatalf("piece %d: size %d digest %q", p.N, p.Size, p.Digest)
		}
	}
	stream, err := at.Schedule(ctx, id, api.ScheduleQuery{PeerID: "holder", Limit: 3, Mode: api.ModeStream, From: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(stream.Pieces) != 3 || stream.Pieces[0].N != 5 || stream.Pieces[2].N != 7 {
		t.Fatalf("stream window %+v, want 5, 6, 7 (holder has 0-4)", stream.Pieces)
	}

	// "silent" never sent a heartbeat: after the TTL the leader removes it, and its pieces
	// are then scheduled from members only. The others, whose heartbeats reached only a
	// follower, stay.
	if !tc.Eventually(6*ttl, func() bool {
		_, err := cl.GetPeer(ctx, "silent")
		return errors.Is(err, sdk.ErrNotFound)
	}) {
		t.Fatal("a peer without heartbeats was not expired")
	}
	for _, p := range []string{"holder", "asker"} {
		if _, err := cl.GetPeer(ctx, p); err != nil {
			t.Fatalf("peer %s, whose heartbeats reached a follower, is gone: %v", p, err)
		}
	}
	plan, err = clientAt(t, c.HTTPAddr(leader), cl).Schedule(ctx, id, api.ScheduleQuery{PeerID: "asker", Limit: 16})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range plan.Pieces {
		for _, s := range p.Sources {
			if s.ID == "silent" {
				t.Fatalf("piece %d still lists the expired peer: %+v", p.N, p.Sources)
			}
		}
	}
	slots, err := at.Heartbeat(ctx, "holder", api.Heartbeat{UploadsRunning: 3})
	if err != nil || slots < 2 {
		t.Fatalf("heartbeat advised %d upload slots (%v), want at least 2", slots, err)
	}
}

func TestSchedulingBadRequests(t *testing.T) {
	c := tc.New(t, 1, tc.Options{})
	ctx := ctxT(t, 20*time.Second)
	cl := c.Client()
	mustRegisterPeer(t, ctx, cl, "p", 1)
	mustRegisterPeer(t, ctx, cl, "outsider", 2)
	id := mustRegisterTask(t, ctx, cl, "http://127.0.0.1:9/file", "p")
	base := "http://" + c.HTTPAddr(0) + "/tasks/"
	for _, tt := range []struct {
		path   string
		status int
	}{
		{id + "/pieces", 400},
		{id + "/pieces?peer_id=" + url.QueryEscape("../x"), 400},
		{id + "/pieces?peer_id=p&limit=0", 400},
		{id + "/pieces?peer_id=p&limit=" + strconv.Itoa(api.MaxScheduleLimit+1), 400},
		{id + "/pieces?peer_id=p&mode=sideways", 400},
		{id + "/pieces?peer_id=p&mode=stream", 400},
		{id + "/pieces?peer_id=p&mode=stream&from=-1", 400},
		{id + "/pieces?peer_id=p&exclude=ok,bad%2Fid", 400},
		{"not-a-task/pieces?peer_id=p", 400},
		{id + "/pieces?peer_id=nobody", 404},
		{id + "/pieces?peer_id=outsider", 404},
		{fmt.Sprintf("%064x/pieces?peer_id=p", 1), 404},
		{id + "/pieces?peer_id=p&limit=5", 200},
	} {
		resp, err := http.Get(base + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.status || resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("GET %s: %d (%s), want %d with a JSON body", tt.path, resp.StatusCode, resp.Header.Get("Content-Type"), tt.status)
		}
	}
	// A task whose origin was not probed yet (nothing listens on port 9: it fails) has
	// no pieces to give.
	plan, err := cl.Schedule(ctx, id, api.ScheduleQuery{PeerID: "p"})
	if err != nil || len(plan.Pieces) != 0 || plan.Done {
		t.Fatalf("schedule of a task without pieces: %+v, %v", plan, err)
	}
}
