// Package member assembles one supernode member: its persisted identity, the Raft node
// (cluster), the HTTP API (httpapi), joining an existing cluster, and an orderly or abrupt
// stop. cmd/supernode and the test cluster start members through it, the same way.
package member

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/dfly-ha/dfha/cdn"
	"github.com/dfly-ha/dfha/cdn/source"
	"github.com/dfly-ha/dfha/cdn/storage"
	"github.com/dfly-ha/dfha/cluster"
	"github.com/dfly-ha/dfha/cluster/httpapi"
	"github.com/dfly-ha/dfha/scheduler"
	"github.com/dfly-ha/dfha/sdk"
	"github.com/dfly-ha/dfha/sdk/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// Errors of starting a member.
var (
	// ErrNoCluster: a new member was given neither Bootstrap nor Join.
	ErrNoCluster = errors.New("a new member needs --bootstrap (first member) or --join (the others)")
	// ErrBadAddress: an address cannot be listened on or advertised.
	ErrBadAddress = errors.New("bad address")
)

// Config is a member's configuration, as cmd/supernode builds it from flags.
type Config struct {
	ID            string
	DataDir       string
	HTTPAddr      string // listen address of the API
	RaftAddr      string // listen address of Raft
	AdvertiseHTTP string // what other members and peers use ("" = HTTPAddr)
	AdvertiseRaft string // what other members use ("" = RaftAddr)
	Bootstrap     bool
	Join          []string // HTTP addresses of existing members
	Token         string

	// Listeners already bound (tests keep ports across restarts); nil: listen on the addresses.
	HTTPListener net.Listener
	RaftListener net.Listener

	// JoinTimeout bounds how long a new member keeps asking to be added (default 60s).
	JoinTimeout time.Duration
	// ShutdownTimeout bounds the orderly stop's wait for in-flight requests (default 10s).
	ShutdownTimeout time.Duration

	// PieceSize overrides the CDN's piece-size rule when positive (--piece-size).
	PieceSize int64
	// OriginLimit caps all origin reads of this member together, in bytes per second
	// (--origin-limit; 0: no limit).
	OriginLimit float64
	// CacheMaxBytes bounds the member's cache (--cache-max-bytes; 0: no bound); TaskExpiry
	// deletes tasks nobody used for that long (--task-expiry; 0: never); a task used within
	// CacheBusyWindow is never evicted (0: 1 minute).
	CacheMaxBytes   int64
	TaskExpiry      time.Duration
	CacheBusyWindow time.Duration
	// UploadLimit caps all piece serving of this member together, in bytes per second
	// (--upload-limit; 0: no limit).
	UploadLimit float64
	// CacheReplicas is the number of members that cache each task (--cache-replicas; 0: 1).
	CacheReplicas int
	// PeerTTL: a peer that sent no heartbeat for this long is no longer scheduled as a
	// source, and the leader removes it (--peer-ttl; 0: 15s).
	PeerTTL time.Duration
	// Sources overrides the origin sources (tests add origins that need a custom TLS
	// client); nil: http, https and file with the defaults.
	Sources *source.Sources

	// Raft tuning, passed to cluster.Config (zero: its defaults).
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	MemberDeadAfter    time.Duration
	SnapshotThreshold  uint64
	SnapshotInterval   time.Duration
	TrailingLogs       uint64

	Logger *zap.Logger
}

func (c *Config) applyDefaults() {
	if c.JoinTimeout == 0 {
		c.JoinTimeout = 60 * time.Second
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.PeerTTL == 0 {
		c.PeerTTL = 15 * time.Second
	}
}

// Member is a running supernode member.
type Member struct {
	cfg      Config
	ident    cluster.Identity
	log      *zap.Logger
	node     *cluster.Node
	api      *httpapi.Server
	httpLn   net.Listener
	served   chan error
	Registry *prometheus.Registry

	store     *storage.Local
	cdn       *cdn.CDN
	cdnCancel context.CancelFunc
	cdnDone   chan struct{}

	peersCancel context.CancelFunc
	peersDone   chan struct{}
}

// Start brings a member up. On a data dir that already holds an identity, the member comes
// back as it was (ID and addresses from the data dir). Whether it still has to bootstrap or
// join is decided by its Raft state, not its identity: a member whose first join failed
// joins again when started with --join. ctx bounds the join (and cancels it on a signal).
func Start(ctx context.Context, cfg Config) (*Member, error) {
	cfg.applyDefaults()
	log := cfg.Logger
	ident, existing, err := cluster.LoadIdentity(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	if existing {
		if cfg.ID != "" && cfg.ID != ident.ID {
			return nil, fmt.Errorf("data dir %s belongs to member %q, not %q", cfg.DataDir, ident.ID, cfg.ID)
		}
		for _, l := range []struct {
			ln     net.Listener
			stored string
		}{{cfg.HTTPListener, ident.HTTPAddr}, {cfg.RaftListener, ident.RaftAddr}} {
			if l.ln != nil && l.ln.Addr().String() != l.stored {
				return nil, fmt.Errorf("%w: member %s is stored with address %s, but was given a listener on %s",
					ErrBadAddress, ident.ID, l.stored, l.ln.Addr())
			}
		}
		if ignored := ignoredAddressFlags(cfg, ident); len(ignored) > 0 {
			log.Info("data dir holds the member's identity: its stored addresses are used, not the flags",
				zap.String("id", ident.ID), zap.Strings("ignored", ignored))
		}
	} else if ident, err = newIdentity(cfg); err != nil {
		return nil, err
	}
	log = log.With(zap.String("member", ident.ID))
	m := &Member{cfg: cfg, ident: ident, log: log, served: make(chan error, 1), Registry: prometheus.NewRegistry()}
	m.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	m.httpLn = cfg.HTTPListener
	if m.httpLn == nil {
		if m.httpLn, err = net.Listen("tcp", ident.HTTPAddr); err != nil {
			return nil, fmt.Errorf("http listen on %s (is another member or program using it? choose --http-addr): %w", ident.HTTPAddr, err)
		}
	}
	raftLn := cfg.RaftListener
	if raftLn == nil {
		if raftLn, err = net.Listen("tcp", ident.RaftAddr); err != nil {
			m.httpLn.Close()
			return nil, fmt.Errorf("raft listen on %s (is another member or program using it? choose --raft-addr): %w", ident.RaftAddr, err)
		}
	}
	if !existing {
		if err := cluster.SaveIdentity(cfg.DataDir, ident); err != nil {
			m.httpLn.Close()
			raftLn.Close()
			return nil, err
		}
	}
	m.node, err = cluster.Open(cluster.Config{
		ID: ident.ID, DataDir: cfg.DataDir, RaftListener: raftLn,
		RaftAdvertise: ident.AdvertiseRaft, HTTPAdvertise: ident.AdvertiseHTTP,
		Bootstrap: cfg.Bootstrap, Token: cfg.Token,
		HeartbeatTimeout: cfg.HeartbeatTimeout, ElectionTimeout: cfg.ElectionTimeout,
		LeaderLeaseTimeout: cfg.LeaderLeaseTimeout, MemberDeadAfter: cfg.MemberDeadAfter,
		SnapshotThreshold: cfg.SnapshotThreshold, SnapshotInterval: cfg.SnapshotInterval,
		TrailingLogs: cfg.TrailingLogs,
		Logger:       log, Registerer: m.Registry,
	})
	if err != nil {
		m.httpLn.Close()
		raftLn.Close()
		return nil, err
	}
	mustJoin := false
	switch {
	case m.node.HadState():
		if len(cfg.Join) > 0 {
			log.Info("member already belongs to a cluster: --join ignored")
		}
	case cfg.Bootstrap:
	case len(cfg.Join) > 0:
		mustJoin = true
	default:
		m.Kill()
		return nil, ErrNoCluster
	}
	if err := m.startCDN(); err != nil {
		m.Kill()
		return nil, err
	}
	// A paced upload of a large piece must not trip the response timeout.
	responseTimeout := 60 * time.Second
	if cfg.UploadLimit > 0 {
		largest := float64(max(cfg.PieceSize, cdn.MaxPieceSize))
		responseTimeout = max(responseTimeout, time.Duration(2*largest/cfg.UploadLimit*float64(time.Second)))
	}
	loads := scheduler.NewLoadTable(nil)
	m.api, err = httpapi.New(httpapi.Config{Store: m.node, Loads: loads, PeerTTL: cfg.PeerTTL,
		Pieces: m.cdn, Token: cfg.Token, Logger: log, Registry: m.Registry, ResponseTimeout: responseTimeout,
		Replicas: cfg.CacheReplicas})
	if err != nil {
		m.Kill()
		return nil, err
	}
	go func() { m.served <- m.api.Serve(m.httpLn) }()
	peersCtx, peersCancel := context.WithCancel(context.Background())
	m.peersCancel, m.peersDone = peersCancel, make(chan struct{})
	go func() { defer close(m.peersDone); m.peerDuties(peersCtx, loads, cfg.PeerTTL) }()
	log.Info("member started", zap.String("http", ident.AdvertiseHTTP), zap.String("raft", ident.AdvertiseRaft),
		zap.String("data_dir", cfg.DataDir), zap.Bool("restarted", m.node.HadState()))
	if mustJoin {
		if err := m.join(ctx, cfg.Join); err != nil {
			m.Kill()
			return nil, err
		}
	}
	return m, nil
}

// startCDN opens the piece store (DATA/cdn) and starts the owner loop.
func (m *Member) startCDN() error {
	var err error
	if m.store, err = storage.OpenConfig(storage.Config{Root: filepath.Join(m.cfg.DataDir, "cdn"), Logger: m.log}); err != nil {
		return fmt.Errorf("open the piece store: %w", err)
	}
	sources := m.cfg.Sources
	if sources == nil {
		var limiter *rate.Limiter // nil: no limit
		if m.cfg.OriginLimit > 0 {
			limiter = cdn.NewLimiter(m.cfg.OriginLimit)
		}
		sources = source.NewSources(source.Config{Logger: m.log, Limiter: limiter})
	}
	m.cdn, err = cdn.New(cdn.Config{MemberID: m.ident.ID, FSM: m.node.FSM(), Proposer: m.node,
		Store: m.store, Sources: sources, PieceSize: m.cfg.PieceSize,
		UploadLimiter: cdn.NewLimiter(m.cfg.UploadLimit), CacheMaxBytes: m.cfg.CacheMaxBytes,
		TaskExpiry: m.cfg.TaskExpiry, BusyWindow: m.cfg.CacheBusyWindow, Replicas: m.cfg.CacheReplicas, Logger: m.log})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.cdnCancel, m.cdnDone = cancel, make(chan struct{})
	go func() { defer close(m.cdnDone); m.cdn.Run(ctx) }()
	return nil
}

// stopCDN stops the owner loop (fetches in flight stop; another member or a restart resumes
// them from the pieces committed) and closes the piece store.
func (m *Member) stopCDN() {
	if m.cdnCancel != nil {
		m.cdnCancel()
		<-m.cdnDone
	}
	if m.store != nil {
		_ = m.store.Close()
	}
}

// stopPeerDuties stops the heartbeat exchange and peer expiry.
func (m *Member) stopPeerDuties() {
	if m.peersCancel != nil {
		m.peersCancel()
		<-m.peersDone
	}
}

// ignoredAddressFlags names the address settings that differ from the stored identity.
func ignoredAddressFlags(cfg Config, id cluster.Identity) []string {
	var out []string
	for _, f := range []struct{ name, given, stored string }{
		{"--http-addr", cfg.HTTPAddr, id.HTTPAddr}, {"--raft-addr", cfg.RaftAddr, id.RaftAddr},
		{"--advertise-http", cfg.AdvertiseHTTP, id.AdvertiseHTTP}, {"--advertise-raft", cfg.AdvertiseRaft, id.AdvertiseRaft},
	} {
		if f.given != "" && f.given != f.stored && cfg.HTTPListener == nil {
			out = append(out, f.name+"="+f.given+" (stored "+f.stored+")")
		}
	}
	return out
}

// newIdentity derives a new member's identity from its configuration.
func newIdentity(cfg Config) (cluster.Identity, error) {
	if !api.ValidID(cfg.ID) {
		return cluster.Identity{}, fmt.Errorf("--id %q: %w", cfg.ID, api.ErrBadID)
	}
	id := cluster.Identity{ID: cfg.ID, HTTPAddr: cfg.HTTPAddr, RaftAddr: cfg.RaftAddr,
		AdvertiseHTTP: cfg.AdvertiseHTTP, AdvertiseRaft: cfg.AdvertiseRaft}
	// Listeners handed in fix the addresses (tests bind port 0 first).
	if cfg.HTTPListener != nil {
		id.HTTPAddr = cfg.HTTPListener.Addr().String()
	}
	if cfg.RaftListener != nil {
		id.RaftAddr = cfg.RaftListener.Addr().String()
	}
	var err error
	if id.AdvertiseHTTP, err = advertise(id.AdvertiseHTTP, id.HTTPAddr, "http"); err != nil {
		return id, err
	}
	if id.AdvertiseRaft, err = advertise(id.AdvertiseRaft, id.RaftAddr, "raft"); err != nil {
		return id, err
	}
	return id, nil
}

// advertise returns the address to advertise: the given one, or the listen address when
// that names a host others can dial.
func advertise(adv, listen, what string) (string, error) {
	if adv == "" {
		adv = listen
	}
	host, port, err := net.SplitHostPort(adv)
	if err != nil {
		return "", fmt.Errorf("%w: %s address %q: %v", ErrBadAddress, what, adv, err)
	}
	if port == "0" || port == "" {
		return "", fmt.Errorf("%w: %s address %q needs a fixed port: Raft stores it", ErrBadAddress, what, adv)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		return "", fmt.Errorf("%w: %s listens on %q, which other members cannot dial: set --advertise-%s HOST:PORT", ErrBadAddress, what, listen, what)
	}
	return adv, nil
}

// join asks the listed members to add this one, until one accepts, JoinTimeout passes or
// ctx ends.
func (m *Member) join(ctx context.Context, addrs []string) error {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.JoinTimeout)
	defer cancel()
	client, err := sdk.New(sdk.Config{Endpoints: addrs, Token: m.cfg.Token, Logger: m.log})
	if err != nil {
		return fmt.Errorf("join: %w", err)
	}
	req := api.JoinRequest{ID: m.ident.ID, HTTPAddr: m.ident.AdvertiseHTTP, RaftAddr: m.ident.AdvertiseRaft}
	backoff := 200 * time.Millisecond
	for {
		err := client.Join(ctx, req)
		if err == nil {
			m.log.Info("joined the cluster", zap.Strings("via", addrs))
			return nil
		}
		if errors.Is(err, sdk.ErrUnauthorized) || errors.Is(err, sdk.ErrConflict) || errors.Is(err, sdk.ErrBadRequest) {
			return fmt.Errorf("join via %v refused: %w", addrs, err)
		}
		m.log.Warn("join failed, retrying", zap.Strings("via", addrs), zap.Error(err))
		select {
		case <-ctx.Done():
			return fmt.Errorf("join via %v: gave up (%v): %w", addrs, context.Cause(ctx), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// ID returns the member ID.
func (m *Member) ID() string { return m.ident.ID }

// HTTPAddr returns the API address others use.
func (m *Member) HTTPAddr() string { return m.ident.AdvertiseHTTP }

// RaftAddr returns the Raft address others use.
func (m *Member) RaftAddr() string { return m.ident.AdvertiseRaft }

// Node returns the member's Raft node.
func (m *Member) Node() *cluster.Node { return m.node }

// Done delivers the HTTP server's exit error (nil after Stop or Kill).
func (m *Member) Done() <-chan error { return m.served }

// Stop is the orderly stop (SIGTERM): hand leadership over if leader (while the API still
// answers, so that the writes other members forward are not refused meanwhile), stop
// accepting requests and finish those in flight, shut Raft down. The member stays in the
// cluster.
func (m *Member) Stop() error {
	m.node.HandOver()
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.ShutdownTimeout)
	defer cancel()
	herr := m.api.Shutdown(ctx)
	m.stopPeerDuties()
	m.stopCDN()
	nerr := m.node.Shutdown(false)
	m.log.Info("member stopped")
	return errors.Join(herr, nerr)
}

// Kill stops the member abruptly, as a crash would as far as the others can tell: no
// leadership hand-over, connections dropped.
func (m *Member) Kill() {
	if m.api != nil {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_ = m.api.Shutdown(ctx)
	}
	m.httpLn.Close()
	m.stopPeerDuties()
	m.stopCDN()
	if m.node != nil {
		_ = m.node.Shutdown(false)
	}
}
