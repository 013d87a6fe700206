package peer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/dfly-ha/dfha/sdk"
	"github.com/dfly-ha/dfha/sdk/api"
)

// Peer is a registered peer: its upload server, its heartbeats and its downloads.
type Peer struct {
	cfg     Config
	log     *zap.Logger
	client  *sdk.Client
	id      string
	ip      string
	port    int
	store   *Store
	uploads *UploadServer
	fetcher *fetcher
	limiter *rate.Limiter // download limit shared by all downloads, nil: none

	hostname string

	mu        sync.Mutex
	tasks     map[string]*joinedTask // tasks this peer joined, for a re-registration
	closed    bool                   // Close has begun
	closeDone chan struct{}          // closed when Close has ended
	closeErr  error                  // Close's result, set before closeDone is closed
	regMu     sync.Mutex             // serializes registering again, and leaving

	hbCancel context.CancelFunc
	hbDone   chan struct{}

	ctx       context.Context // cancelled by Close: downloads under way stop
	cancel    context.CancelFunc
	downloads sync.WaitGroup
}

// joinedTask is a task this peer registered to, and how, so that it can join again after
// the cluster expired the peer.
type joinedTask struct {
	req       api.RegisterTaskRequest
	gen       uint64 // of the pieces held, 0 before they are known
	advertise bool   // its pieces are in the store (not a stream)
	active    bool   // a download of it is under way
}

// Start binds the upload server, learns the cluster, registers the peer (POST /peers) and
// starts its heartbeats. Close undoes all of it.
func Start(ctx context.Context, cfg Config) (*Peer, error) {
	cfg.Supernodes = append([]string(nil), cfg.Supernodes...)
	cfg.applyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	client, err := sdk.New(sdk.Config{Endpoints: cfg.Supernodes, Token: cfg.Token, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	p := &Peer{cfg: cfg, log: cfg.Logger.Named("peer"), client: client, store: NewStore(),
		limiter: newLimiter(cfg.DownloadLimit), tasks: map[string]*joinedTask{}, closeDone: make(chan struct{})}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.fetcher = newFetcher(cfg.Workers, p.limiter, cfg.PieceIdleTimeout)
	p.uploads, err = NewUploadServer(UploadConfig{Addr: cfg.PeerAddr, Pieces: p.store, Limit: cfg.UploadLimit,
		Slots: cfg.UploadSlots, Logger: cfg.Logger})
	if err != nil {
		client.Close()
		return nil, err
	}
	p.uploads.Start()
	fail := func(err error) (*Peer, error) {
		p.cancel()
		sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		_ = p.uploads.Shutdown(sctx)
		p.fetcher.close()
		client.Close()
		return nil, err
	}
	if err := client.Refresh(ctx); err != nil {
		return fail(fmt.Errorf("reaching the supernodes %v: %w", cfg.Supernodes, err))
	}
	p.port = p.uploads.Addr().Port
	if p.ip, err = advertiseIP(cfg.AdvertiseIP, p.uploads.Addr().IP, client.Endpoints(), cfg.Supernodes[0]); err != nil {
		return fail(err)
	}
	p.hostname = cfg.Hostname
	if p.hostname == "" {
		p.hostname, _ = os.Hostname()
	}
	id := cfg.PeerID
	if id == "" {
		id = sdk.NewPeerID(p.hostname)
	}
	if p.id, err = client.RegisterPeer(ctx, p.registration(id)); err != nil {
		return fail(fmt.Errorf("registering the peer: %w", err))
	}
	p.log = p.log.With(zap.String("peer", p.id))
	p.log.Info("peer registered", zap.String("ip", p.ip), zap.Int("port", p.port))
	var hctx context.Context
	hctx, p.hbCancel = context.WithCancel(context.Background())
	p.hbDone = make(chan struct{})
	go p.heartbeats(hctx)
	return p, nil
}

func (p *Peer) registration(id string) api.RegisterPeerRequest {
	return api.RegisterPeerRequest{ID: id, IP: p.ip, Port: p.port, Hostname: p.hostname}
}

// ID is the peer's ID in the cluster.
func (p *Peer) ID() string { return p.id }

// Addr is what other peers dial for this peer's pieces (ip:port).
func (p *Peer) Addr() string { return net.JoinHostPort(p.ip, strconv.Itoa(p.port)) }

// Uploads is the peer's upload server.
func (p *Peer) Uploads() *UploadServer { return p.uploads }

// Client is the sdk client the peer talks to the cluster with.
func (p *Peer) Client() *sdk.Client { return p.client }

// Close stops the downloads under way (they clean up as on any failure), leaves the cluster
// (DELETE /peers/{id}: its pieces leave the piece map), stops the heartbeats and the upload
// server, and closes the files of held tasks. It takes at most about
// Config.ShutdownTimeout: see Shutdown.
func (p *Peer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.ShutdownTimeout)
	defer cancel()
	return p.Shutdown(ctx)
}

// minLeaveTime is the least time Shutdown gives DELETE /peers and stopping the upload
// server, even when the downloads used up ctx: a cluster that answers at once still hears
// that the peer left.
const minLeaveTime = time.Second

// Shutdown is Close bounded by ctx: it waits for the downloads under way to end until ctx
// ends (they are cancelled, and their own cleanup ends at most ShutdownTimeout after
// that), then leaves the cluster and stops the upload server by ctx's deadline (or within
// ShutdownTimeout when it has none), but taking at least minLeaveTime. Once Shutdown has
// begun, nothing registers the peer again.
// A second call waits for the first and returns its result.
func (p *Peer) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.closeDone
		return p.closeErr
	}
	p.closed = true
	p.mu.Unlock()
	defer close(p.closeDone)
	p.cancel()
	waited := make(chan struct{})
	go func() { p.downloads.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-ctx.Done():
		p.log.Warn("downloads still stopping; closing anyway")
	}
	p.hbCancel()
	<-p.hbDone
	leaveBy := time.Now().Add(p.cfg.ShutdownTimeout)
	if d, ok := ctx.Deadline(); ok {
		leaveBy = d
	}
	if least := time.Now().Add(minLeaveTime); leaveBy.Before(least) {
		leaveBy = least
	}
	lctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), leaveBy)
	defer cancel()
	var errs []error
	// regMu: a registration under way (a download's reset) ends before the peer leaves.
	p.regMu.Lock()
	err := p.client.DeletePeer(lctx, p.id)
	p.regMu.Unlock()
	if err != nil && !errors.Is(err, sdk.ErrNotFound) {
		errs = append(errs, fmt.Errorf("leaving the cluster: %w", err))
	}
	if err := p.uploads.Shutdown(lctx); err != nil {
		errs = append(errs, fmt.Errorf("stopping the upload server: %w", err))
	}
	p.store.Close()
	p.fetcher.close()
	p.client.Close()
	p.log.Info("peer closed")
	p.closeErr = errors.Join(errs...)
	return p.closeErr
}

func (p *Peer) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// heartbeats sends PUT /peers/{id}/heartbeat every HeartbeatInterval with the uploads under
// way and applies the upload slots the cluster advises. A 404 means the cluster expired the
// peer: it registers again with the same ID and joins its tasks again.
func (p *Peer) heartbeats(ctx context.Context) {
	defer close(p.hbDone)
	t := time.NewTicker(p.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		hctx, cancel := context.WithTimeout(ctx, max(p.cfg.HeartbeatInterval*4, 5*time.Second))
		slots, err := p.client.Heartbeat(hctx, p.id, api.Heartbeat{UploadsRunning: p.uploads.Running()})
		switch {
		case err == nil:
			if slots > 0 && slots != p.uploads.Slots() {
				p.log.Debug("upload slots advised", zap.Int("slots", slots))
				p.uploads.SetSlots(slots)
			}
		case ctx.Err() != nil:
		case errors.Is(err, sdk.ErrNotFound):
			p.log.Warn("the cluster expired this peer: registering again")
			if err := p.rejoin(hctx); err != nil {
				p.log.Warn("registering again failed", zap.Error(err))
			}
		default:
			p.log.Warn("heartbeat failed", zap.Error(err))
		}
		cancel()
	}
}

// rejoin registers the peer again with the same ID, joins its tasks again and reports the
// pieces it holds: after the cluster expired the peer, or forgot it on purpose (reset).
func (p *Peer) rejoin(ctx context.Context) error {
	p.regMu.Lock()
	defer p.regMu.Unlock()
	return p.rejoinLocked(ctx)
}

// rejoinLocked is rejoin with regMu held. After Close it refuses (ErrClosed): the peer left.
func (p *Peer) rejoinLocked(ctx context.Context) error {
	if p.isClosed() {
		return ErrClosed
	}
	if _, err := p.client.RegisterPeer(ctx, p.registration(p.id)); err != nil {
		return err
	}
	p.mu.Lock()
	tasks := make(map[string]joinedTask, len(p.tasks))
	for id, t := range p.tasks {
		tasks[id] = *t
	}
	p.mu.Unlock()
	var errs []error
	for id, t := range tasks {
		if _, _, err := p.client.RegisterTask(ctx, t.req); err != nil {
			errs = append(errs, fmt.Errorf("task %s: %w", id, err))
			continue
		}
		held := p.store.Held(id)
		if !t.advertise || t.gen == 0 || len(held) == 0 {
			continue
		}
		reports := buildReports(map[string][]uint32{"": held}, nil)
		err := p.client.ReportPieceBatch(ctx, id, api.PieceReportBatch{PeerID: p.id, Generation: t.gen, Reports: reports})
		if err != nil {
			errs = append(errs, fmt.Errorf("task %s: reporting held pieces: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// reset makes the cluster forget pieces this peer advertised but no longer holds (a failed
// download removed its file): the API has no way to take back a piece, so the peer leaves
// (DELETE /peers/{id}) and registers again with what it still holds. After Close it
// refuses (ErrClosed): Close's own DELETE /peers withdraws everything.
func (p *Peer) reset(ctx context.Context) error {
	p.regMu.Lock()
	defer p.regMu.Unlock()
	if p.isClosed() {
		return ErrClosed
	}
	if err := p.client.DeletePeer(ctx, p.id); err != nil && !errors.Is(err, sdk.ErrNotFound) {
		return err
	}
	return p.rejoinLocked(ctx)
}

// join notes a task this peer is about to download. held reports that the peer already
// holds (and advertises) a finished download of it.
func (p *Peer) join(id string, t *joinedTask) (held bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false, ErrClosed
	}
	old := p.tasks[id]
	if old != nil && old.active {
		return false, ErrBusy
	}
	t.active = true
	p.tasks[id] = t
	return old != nil && old.advertise, nil
}

// finished notes that the download of a task ended well: the peer keeps serving it.
func (p *Peer) finished(id string) {
	p.mu.Lock()
	if t := p.tasks[id]; t != nil {
		t.active = false
	}
	p.mu.Unlock()
}

func (p *Peer) setJoined(id string, gen uint64) {
	p.mu.Lock()
	if t := p.tasks[id]; t != nil {
		t.gen = gen
	}
	p.mu.Unlock()
}

func (p *Peer) leave(id string) {
	p.mu.Lock()
	delete(p.tasks, id)
	p.mu.Unlock()
}

// advertiseIP picks the address other peers dial: the configured one, else the listen IP
// when it is a specific address, else the local address of a UDP socket "connected" to a
// supernode (no packet is sent), so that a loopback cluster gets 127.0.0.1.
func advertiseIP(configured string, listen net.IP, endpoints []string, first string) (string, error) {
	if configured != "" {
		return configured, nil
	}
	if listen != nil && !listen.IsUnspecified() {
		return listen.String(), nil
	}
	var lastErr error
	for _, ep := range append([]string{first}, endpoints...) {
		conn, err := net.Dial("udp", ep)
		if err != nil {
			lastErr = err
			continue
		}
		ip := conn.LocalAddr().(*net.UDPAddr).IP
		conn.Close()
		return ip.String(), nil
	}
	return "", fmt.Errorf("finding the local address that reaches the supernodes (set --advertise-ip): %w", lastErr)
}
