package cluster

import (
	"fmt"
	"net"
	"time"

	"github.com/dfly-ha/dfha/sdk/api"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Config configures a member's Raft node.
type Config struct {
	// ID is the member ID (^[A-Za-z0-9._-]{1,128}$), also its Raft server ID.
	ID string
	// DataDir holds raft/raft.db (logs and stable store) and raft/snapshots.
	DataDir string
	// RaftBind is the address the Raft transport listens on, unless RaftListener is set.
	RaftBind string
	// RaftListener, when set, is an already-bound listener for the transport (tests use it
	// to keep a member's port across a restart).
	RaftListener net.Listener
	// RaftAdvertise is the Raft address the other members dial; it must not be 0.0.0.0.
	RaftAdvertise string
	// HTTPAdvertise is this member's API address, recorded in the replicated state so that
	// every member can reach every other one.
	HTTPAdvertise string
	// Bootstrap starts a new single-member cluster if the data dir holds no Raft state; with
	// existing state it is ignored (and logged).
	Bootstrap bool

	// Raft timing. Shorter detects a dead leader sooner; too short makes a loaded machine
	// hold needless elections. Defaults: 500ms, 500ms, 250ms.
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	// SnapshotThreshold and SnapshotInterval: how often the log is compacted into a
	// snapshot; TrailingLogs: how many entries stay after it. Defaults 8192, 30s, 4096.
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	TrailingLogs      uint64

	// ApplyTimeout bounds how long a write waits to enter the log (default 5s).
	ApplyTimeout time.Duration
	// BatchMaxCommands is the most commands merged into one log entry (default 4096).
	BatchMaxCommands int
	// BatchMaxBytes bounds the encoded size of one log entry or forwarded request (default
	// 4 MiB, half the API's request body limit).
	BatchMaxBytes int
	// BatchWorkers is how many log entries the leader may have in flight at once (default 2:
	// Raft pipelines and group-commits them; fewer, larger entries cost less per command
	// than many small ones, measured with bench/cmd/corebench).
	BatchWorkers int
	// ForwardWorkers is how many merged requests a follower may have in flight to the
	// leader at once (default 2).
	ForwardWorkers int
	// MemberDeadAfter: the leader commits a member as dead when its heartbeats have failed
	// this long, and as alive again as soon as one succeeds (default 3s).
	MemberDeadAfter time.Duration
	// Token, when set, is sent as a bearer token with writes forwarded to the leader.
	Token string

	Logger     *zap.Logger
	Registerer prometheus.Registerer // metrics; nil: not registered
	Now        func() time.Time      // the leader's clock, stamped into log entries
}

func (c *Config) applyDefaults() {
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = 500 * time.Millisecond
	}
	if c.ElectionTimeout == 0 {
		c.ElectionTimeout = 500 * time.Millisecond
	}
	if c.LeaderLeaseTimeout == 0 {
		c.LeaderLeaseTimeout = c.HeartbeatTimeout / 2
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = 8192
	}
	if c.SnapshotInterval == 0 {
		c.SnapshotInterval = 30 * time.Second
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = 4096
	}
	if c.ApplyTimeout == 0 {
		c.ApplyTimeout = 5 * time.Second
	}
	if c.BatchMaxCommands == 0 {
		c.BatchMaxCommands = 4096
	}
	if c.BatchMaxBytes == 0 {
		c.BatchMaxBytes = 4 << 20
	}
	if c.BatchWorkers == 0 {
		c.BatchWorkers = 2
	}
	if c.ForwardWorkers == 0 {
		c.ForwardWorkers = 2
	}
	if c.MemberDeadAfter == 0 {
		c.MemberDeadAfter = 3 * time.Second
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate checks the fields that have no default.
func (c *Config) Validate() error {
	if !api.ValidID(c.ID) {
		return fmt.Errorf("%w: member id %q: %v", ErrBadConfig, c.ID, api.ErrBadID)
	}
	if c.DataDir == "" {
		return fmt.Errorf("%w: no data dir", ErrBadConfig)
	}
	if c.RaftListener == nil && c.RaftBind == "" {
		return fmt.Errorf("%w: no raft address", ErrBadConfig)
	}
	for name, addr := range map[string]string{"raft advertise": c.RaftAdvertise, "http advertise": c.HTTPAdvertise} {
		host, port, err := net.SplitHostPort(addr)
		if err != nil || port == "0" || port == "" {
			return fmt.Errorf("%w: %s address %q must be HOST:PORT", ErrBadConfig, name, addr)
		}
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			return fmt.Errorf("%w: %s address %q is not reachable by other members (give an address, not 0.0.0.0)", ErrBadConfig, name, addr)
		}
	}
	if c.LeaderLeaseTimeout > c.HeartbeatTimeout {
		return fmt.Errorf("%w: leader lease timeout above heartbeat timeout", ErrBadConfig)
	}
	return nil
}
