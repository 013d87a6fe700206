package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dfly-ha/dfha/fsm"
	"github.com/dfly-ha/dfha/sdk/api"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/valyala/fasthttp"
	"go.uber.org/zap"
)

// Node is one member's Raft node and its write path.
type Node struct {
	cfg   Config
	log   *zap.Logger
	fsm   *fsm.FSM
	raft  *raft.Raft
	trans *raft.NetworkTransport
	store *raftboltdb.BoltStore

	leaderWrites  *batcher // on the leader: commands -> log entries
	forwardWrites *batcher // on a follower: commands -> one forwarded request
	fwd           *fasthttp.Client

	observations chan raft.Observation
	observer     *raft.Observer
	metrics      *metrics

	mu       sync.Mutex
	failing  map[raft.ServerID]failure // followers whose heartbeats fail (leader only)
	leaving  atomic.Bool               // this member is removing itself: do not re-add it
	caughtUp atomic.Bool               // latched by CaughtUp
	hadState bool                      // the data dir held Raft state at start

	stop     chan struct{}
	wg       sync.WaitGroup
	stopOnce sync.Once
}

// Open starts the member's Raft node on its data dir. A new data dir with cfg.Bootstrap
// starts a one-member cluster; existing state is reloaded as it was (cfg.Bootstrap is then
// ignored).
func Open(cfg Config) (*Node, error) {
	cfg.applyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger.Named("cluster")
	n := &Node{
		cfg:          cfg,
		log:          log,
		fsm:          fsm.New(cfg.Logger.Named("fsm")),
		fwd:          &fasthttp.Client{Name: "dfha-member", ReadTimeout: cfg.ApplyTimeout + 5*time.Second, WriteTimeout: 10 * time.Second, MaxConnsPerHost: 256, MaxResponseBodySize: 16 << 20},
		failing:      map[raft.ServerID]failure{},
		stop:         make(chan struct{}),
		observations: make(chan raft.Observation, 256),
	}
	raftDir := filepath.Join(cfg.DataDir, "raft")
	if err := os.MkdirAll(raftDir, 0o755); err != nil {
		return nil, fmt.Errorf("create raft dir: %w", err)
	}
	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(raftDir, "raft.db")})
	if err != nil {
		return nil, fmt.Errorf("open raft store: %w", err)
	}
	n.store = store
	hclogger := newHCLogger(log)
	snaps, err := raft.NewFileSnapshotStoreWithLogger(raftDir, 2, hclogger)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("open snapshot store: %w", err)
	}
	ln := cfg.RaftListener
	if ln == nil {
		if ln, err = net.Listen("tcp", cfg.RaftBind); err != nil {
			store.Close()
			return nil, fmt.Errorf("raft listen on %s: %w", cfg.RaftBind, err)
		}
	}
	adv, err := net.ResolveTCPAddr("tcp", cfg.RaftAdvertise)
	if err != nil {
		ln.Close()
		store.Close()
		return nil, fmt.Errorf("raft advertise address: %w", err)
	}
	n.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  &tcpStream{ln: ln, advertise: adv},
		MaxPool: 4,
		Timeout: transportTimeout,
		Logger:  hclogger,
	})

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.Logger = hclogger
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.TrailingLogs = cfg.TrailingLogs
	// BatchApplyCh stays off: with it, a future still in the buffered channel when Raft shuts
	// down is never answered and Error() blocks forever. Our batcher merges writes already.
	rc.BatchApplyCh = false
	rc.MaxAppendEntries = 512

	logs, err := raft.NewLogCache(1024, store)
	if err != nil {
		n.closeStores()
		return nil, fmt.Errorf("log cache: %w", err)
	}
	existing, err := raft.HasExistingState(logs, store, snaps)
	if err != nil {
		n.closeStores()
		return nil, fmt.Errorf("inspect raft state: %w", err)
	}
	n.hadState = existing
	if cfg.Bootstrap && existing {
		log.Info("data dir already holds raft state: bootstrap ignored", zap.String("data_dir", cfg.DataDir))
	}
	if cfg.Bootstrap && !existing {
		boot := raft.Configuration{Servers: []raft.Server{{
			Suffrage: raft.Voter, ID: rc.LocalID, Address: raft.ServerAddress(cfg.RaftAdvertise)}}}
		if err := raft.BootstrapCluster(rc, logs, store, snaps, n.trans, boot); err != nil {
			n.closeStores()
			return nil, fmt.Errorf("bootstrap: %w", err)
		}
		log.Info("bootstrapped a new cluster", zap.String("id", cfg.ID))
	}
	r, err := raft.NewRaft(rc, n.fsm, logs, store, snaps, n.trans)
	if err != nil {
		n.closeStores()
		return nil, fmt.Errorf("start raft: %w", err)
	}
	n.raft = r
	n.metrics = newMetrics(n, cfg.Registerer)
	n.observer = raft.NewObserver(n.observations, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.FailedHeartbeatObservation, raft.ResumedHeartbeatObservation,
			raft.LeaderObservation, raft.RaftState:
			return true
		}
		return false
	})
	r.RegisterObserver(n.observer)

	n.leaderWrites = newBatcher(n.commit, cfg.BatchWorkers, cfg.BatchMaxCommands, cfg.BatchMaxBytes, n.metrics.observeBatch)
	n.forwardWrites = newBatcher(n.forward, cfg.ForwardWorkers, cfg.BatchMaxCommands, cfg.BatchMaxBytes, nil)
	n.wg.Add(2)
	go n.watch()
	go n.leaderDuties()
	return n, nil
}

func (n *Node) closeStores() {
	if n.trans != nil {
		n.trans.Close()
	}
	n.store.Close()
}

// transportTimeout bounds a Raft RPC's dial and I/O: a member that stops answering without
// closing connections (power loss, partition) shows as failing after this long.
const transportTimeout = 3 * time.Second

// HadState reports whether the data dir held Raft state when the node started: false for a
// member that has never been part of a cluster (it must bootstrap or join).
func (n *Node) HadState() bool { return n.hadState }

// FSM returns the member's replicated state (read side).
func (n *Node) FSM() *fsm.FSM { return n.fsm }

// ID returns the member ID.
func (n *Node) ID() string { return n.cfg.ID }

// IsLeader reports whether this member is the leader now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// LeaderHTTP returns the leader's HTTP address and ID, or "" when no leader is known (or
// the leader's address is not yet in the replicated state).
func (n *Node) LeaderHTTP() (addr, id string) {
	_, lid := n.raft.LeaderWithID()
	if lid == "" {
		return "", ""
	}
	if string(lid) == n.cfg.ID {
		return n.cfg.HTTPAdvertise, n.cfg.ID
	}
	m, ok := n.fsm.Member(string(lid))
	if !ok {
		return "", string(lid)
	}
	return m.HTTPAddr, m.ID
}

// Propose commits cmds: directly when this member leads, else by forwarding them (merged
// with other writes) to the leader, once. It returns the index the commands were applied at
// and one result per command.
func (n *Node) Propose(ctx context.Context, cmds ...fsm.Command) (uint64, []fsm.Result, error) {
	if n.IsLeader() {
		return n.leaderWrites.submit(ctx, cmds)
	}
	return n.forwardWrites.submit(ctx, cmds)
}

// ProposeLocal commits cmds only if this member is the leader; otherwise ErrNotLeader. The
// leader uses it for writes other members forwarded, so a write is forwarded at most once.
func (n *Node) ProposeLocal(ctx context.Context, cmds ...fsm.Command) (uint64, []fsm.Result, error) {
	if !n.IsLeader() {
		return 0, nil, ErrNotLeader
	}
	return n.leaderWrites.submit(ctx, cmds)
}

// commit is the leader's sink: one log entry for the batch.
func (n *Node) commit(cmds []fsm.Command) (uint64, []fsm.Result, error) {
	start := time.Now()
	data := fsm.Batch{UnixNano: n.cfg.Now().UnixNano(), Commands: cmds}.Encode()
	f := n.raft.Apply(data, n.cfg.ApplyTimeout)
	if err := f.Error(); err != nil {
		return 0, nil, translate(err)
	}
	n.metrics.applySeconds.Observe(time.Since(start).Seconds())
	res, ok := f.Response().(*fsm.BatchResult)
	if !ok {
		return 0, nil, fmt.Errorf("fsm answered %T", f.Response())
	}
	return res.Index, res.Results, nil
}

// ForwardPath is the member-to-member route a follower forwards merged writes to.
const ForwardPath = "/internal/v1/apply"

// forward is a follower's sink: one request to the leader for the batch. If this member has
// become the leader meanwhile, it commits directly.
func (n *Node) forward(cmds []fsm.Command) (uint64, []fsm.Result, error) {
	if n.IsLeader() {
		return n.commit(cmds)
	}
	addr, _ := n.LeaderHTTP()
	if addr == "" {
		return 0, nil, ErrNoLeader
	}
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://" + addr + ForwardPath)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.Header.Set(api.HeaderForwarded, n.cfg.ID)
	req.Header.SetContentType("application/octet-stream")
	if n.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+n.cfg.Token)
	}
	req.SetBodyRaw(fsm.Batch{Commands: cmds}.Encode())
	if err := n.fwd.DoTimeout(req, resp, n.cfg.ApplyTimeout+5*time.Second); err != nil {
		return 0, nil, fmt.Errorf("%w: leader %s: %v", ErrForward, addr, err)
	}
	switch resp.StatusCode() {
	case fasthttp.StatusOK:
	case fasthttp.StatusServiceUnavailable:
		return 0, nil, fmt.Errorf("%w: %s answered 503: %s", ErrNotLeader, addr, resp.Body())
	default:
		return 0, nil, fmt.Errorf("%w: leader %s answered %d: %s", ErrForward, addr, resp.StatusCode(), resp.Body())
	}
	index, results, err := fsm.DecodeResults(resp.Body())
	if err != nil {
		return 0, nil, fmt.Errorf("%w: %v", ErrForward, err)
	}
	return index, results, nil
}

// AddMember makes a member a voter and records its addresses (leader only). It is
// idempotent: adding a member that is already there with the same addresses changes nothing.
func (n *Node) AddMember(ctx context.Context, id, httpAddr, raftAddr string) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return translate(err)
	}
	present := false
	for _, s := range cf.Configuration().Servers {
		if string(s.Address) == raftAddr && string(s.ID) != id {
			return fmt.Errorf("%w: raft address %s already belongs to member %s", ErrMemberConflict, raftAddr, s.ID)
		}
		if string(s.ID) == id && string(s.Address) != raftAddr {
			// Another host (or a typo'd --id) must not take over a member's identity.
			return fmt.Errorf("%w: member %s already exists with raft address %s; remove it first to move it", ErrMemberConflict, id, s.Address)
		}
		if string(s.ID) == id && s.Suffrage == raft.Voter {
			present = true
		}
	}
	if m, ok := n.fsm.Member(id); ok && present && m.HTTPAddr != httpAddr {
		return fmt.Errorf("%w: member %s already exists with http address %s", ErrMemberConflict, id, m.HTTPAddr)
	}
	n.forgetFailures(id)
	if !present {
		if err := n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(raftAddr), 0, n.cfg.ApplyTimeout).Error(); err != nil {
			return translate(err)
		}
		n.log.Info("member added", zap.String("member", id), zap.String("raft_addr", raftAddr), zap.String("http_addr", httpAddr))
	}
	_, res, err := n.ProposeLocal(ctx, fsm.MemberUpsert{ID: id, HTTPAddr: httpAddr, RaftAddr: raftAddr})
	if err != nil {
		return err
	}
	return res[0].Err()
}

// RemoveMember takes a member out of the cluster for good (leader only).
func (n *Node) RemoveMember(ctx context.Context, id string) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return translate(err)
	}
	inRaft := false
	for _, s := range cf.Configuration().Servers {
		inRaft = inRaft || string(s.ID) == id
	}
	_, inState := n.fsm.Member(id)
	if !inRaft && !inState {
		return fmt.Errorf("%w: %s", ErrUnknownMember, id)
	}
	removeFromState := func() error {
		if !inState {
			return nil
		}
		_, res, err := n.ProposeLocal(ctx, fsm.MemberRemove{ID: id})
		if err != nil {
			return err
		}
		return res[0].Err()
	}
	n.forgetFailures(id)
	if id == n.cfg.ID { // the leader removes itself: record it while it still leads
		n.leaving.Store(true)
		if err := removeFromState(); err != nil {
			n.leaving.Store(false)
			return err
		}
	}
	if inRaft {
		if err := n.raft.RemoveServer(raft.ServerID(id), 0, n.cfg.ApplyTimeout).Error(); err != nil {
			return translate(err)
		}
	}
	n.log.Info("member removed", zap.String("member", id))
	if id != n.cfg.ID {
		return removeFromState()
	}
	return nil
}

// Errors of membership changes.
var (
	// ErrMemberConflict: the address is already used by another member.
	ErrMemberConflict = errors.New("member conflict")
	// ErrUnknownMember: no such member.
	ErrUnknownMember = errors.New("unknown member")
)

// Members lists the members as the contract shows them: Raft's configuration (voter,
// leader) joined with the replicated state (addresses, liveness), sorted by ID.
func (n *Node) Members() ([]api.Member, error) {
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return nil, translate(err)
	}
	_, leader := n.raft.LeaderWithID()
	byID := map[string]*api.Member{}
	for _, s := range cf.Configuration().Servers {
		byID[string(s.ID)] = &api.Member{ID: string(s.ID), RaftAddr: string(s.Address),
			Voter: s.Suffrage == raft.Voter, Leader: s.ID == leader, Alive: true}
	}
	for _, m := range n.fsm.Members() {
		e := byID[m.ID]
		if e == nil {
			e = &api.Member{ID: m.ID, RaftAddr: m.RaftAddr}
			byID[m.ID] = e
		}
		e.HTTPAddr, e.Alive = m.HTTPAddr, m.Alive
	}
	if e := byID[n.cfg.ID]; e != nil && e.HTTPAddr == "" {
		e.HTTPAddr = n.cfg.HTTPAdvertise
	}
	out := make([]api.Member, 0, len(byID))
	for _, m := range byID {
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Ready reports whether this member sees a leader.
func (n *Node) Ready() bool {
	addr, _ := n.raft.LeaderWithID()
	return addr != ""
}

// CaughtUp reports whether this member has, since it started, seen a leader and applied
// every entry it then knew to be committed. A member that has just restarted is not caught
// up until it has replayed the log; afterwards it stays caught up (the state only moves
// forward), even while new writes keep the applied index a step behind the commit index.
func (n *Node) CaughtUp() bool {
	if n.caughtUp.Load() {
		return true
	}
	if n.Ready() && n.raft.CommitIndex() > 0 && n.raft.AppliedIndex() >= n.raft.CommitIndex() {
		n.caughtUp.Store(true)
		return true
	}
	return false
}

// Barrier waits until this member has applied everything committed before the call
// (leader only); tests and tools use it to read a settled state.
func (n *Node) Barrier(timeout time.Duration) error {
	return translate(n.raft.Barrier(timeout).Error())
}

// Stats exposes Raft's own counters (for metrics and debugging).
func (n *Node) Stats() map[string]string { return n.raft.Stats() }

// HandOver transfers leadership to another member if this one leads, and waits for it
// (bounded by Raft). Writes then go to the new leader; this member keeps following.
func (n *Node) HandOver() {
	if !n.IsLeader() {
		return
	}
	if err := n.raft.LeadershipTransfer().Error(); err != nil {
		n.log.Warn("leadership transfer failed", zap.Error(err))
		return
	}
	n.log.Info("leadership handed over")
}

// Shutdown stops the node. With handOver, a leader first transfers leadership so that
// clients see the shortest gap. It never removes the member from the cluster.
func (n *Node) Shutdown(handOver bool) error {
	var err error
	n.stopOnce.Do(func() {
		if handOver {
			n.HandOver()
		}
		close(n.stop)
		n.wg.Wait()
		n.raft.DeregisterObserver(n.observer)
		err = n.raft.Shutdown().Error()
		n.leaderWrites.close()
		n.forwardWrites.close()
		n.fwd.CloseIdleConnections()
		if cerr := n.trans.Close(); err == nil {
			err = cerr
		}
		if cerr := n.store.Close(); err == nil {
			err = cerr
		}
		n.metrics.unregister()
	})
	return err
}
