package peer

import (
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"go.uber.org/zap"

	"github.com/dfly-ha/dfha/sdk/api"
)

// Errors of the peer engine. Download errors wrap one of them (or an sdk error, or a
// context error).
var (
	// ErrTaskFailed: the cluster could not fetch the file from the origin.
	ErrTaskFailed = errors.New("the cluster could not fetch the file from the origin")
	// ErrDigestMismatch: the whole file's digest differs from the expected one.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrGenerationChanged: the origin's file changed during the download more often than
	// the download starts over (once), or after bytes were already streamed out.
	ErrGenerationChanged = errors.New("the origin's file changed during the download")
	// ErrBadSchedule: the cluster described the task inconsistently (sizes, digests).
	ErrBadSchedule = errors.New("inconsistent answer from the cluster")
	// ErrBusy: the peer is already downloading this task.
	ErrBusy = errors.New("this peer is already downloading the task")
	// ErrClosed: the peer was closed.
	ErrClosed = errors.New("peer closed")
)

// Defaults of Config.
const (
	DefaultPeerAddr          = "0.0.0.0:0"
	DefaultWorkers           = 4
	DefaultUploadSlots       = 8
	DefaultHeartbeatInterval = 5 * time.Second
	DefaultReportInterval    = 200 * time.Millisecond
	DefaultReportLazy        = time.Second
	DefaultReportBatch       = 16
	DefaultPieceIdleTimeout  = 15 * time.Second
	DefaultStreamMemory      = 64 << 20
	DefaultShutdownTimeout   = 5 * time.Second
)

// Config configures a Peer. Zero values take the defaults.
type Config struct {
	// Supernodes are members' HTTP addresses (host:port); one is enough, the others are
	// discovered.
	Supernodes []string
	// Token is the cluster's bearer token, if it has one.
	Token string
	// PeerAddr is where the upload server listens (default "0.0.0.0:0": any free port).
	// Binding fails if the address is taken: a port is never shared.
	PeerAddr string
	// AdvertiseIP is the address other peers dial (default: the listen IP when it is a
	// specific one, else the local address that routes to the first supernode).
	AdvertiseIP string
	// PeerID is the peer's ID (default: sdk.NewPeerID of the hostname).
	PeerID string
	// Hostname is sent at registration (default os.Hostname()).
	Hostname string
	// DownloadLimit caps the bytes per second this peer reads from the network, all
	// downloads together (0: no limit).
	DownloadLimit float64
	// UploadLimit caps the bytes per second the upload server sends (0: no limit).
	UploadLimit float64
	// UploadSlots bounds the uploads served at once until the cluster advises otherwise
	// through the heartbeat (default 8).
	UploadSlots int
	// Workers is the number of pieces fetched at once per download (default 4).
	Workers int
	// HeartbeatInterval is the time between heartbeats (default 5s; the cluster expires a
	// peer after about 15s without one).
	HeartbeatInterval time.Duration
	// ReportInterval is how long a piece fetched from a member (one no peer could serve)
	// waits before it is reported (default 200ms): other peers wait for it.
	ReportInterval time.Duration
	// ReportLazy is how long a piece fetched from a peer, or a failure, may wait to be
	// reported with others (default 1s): others can already get it from that peer.
	ReportLazy time.Duration
	// ReportBatch sends the reports at once when this many pieces wait (default 16).
	ReportBatch int
	// PieceIdleTimeout gives up on a source that sends nothing for this long (default 15s).
	PieceIdleTimeout time.Duration
	// StreamMemory bounds the bytes a streaming download keeps in memory (default 64 MiB);
	// the window is the smaller of this and two pieces per worker.
	StreamMemory int64
	// ShutdownTimeout bounds leaving the cluster and stopping the server in Close
	// (default 5s).
	ShutdownTimeout time.Duration
	// Logger receives the engine's logs (default: none).
	Logger *zap.Logger
}

func (c *Config) applyDefaults() {
	if c.PeerAddr == "" {
		c.PeerAddr = DefaultPeerAddr
	}
	if c.UploadSlots == 0 {
		c.UploadSlots = DefaultUploadSlots
	}
	if c.Workers == 0 {
		c.Workers = DefaultWorkers
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.ReportInterval == 0 {
		c.ReportInterval = DefaultReportInterval
	}
	if c.ReportLazy == 0 {
		c.ReportLazy = max(DefaultReportLazy, c.ReportInterval)
	}
	if c.ReportBatch == 0 {
		c.ReportBatch = DefaultReportBatch
	}
	if c.PieceIdleTimeout == 0 {
		c.PieceIdleTimeout = DefaultPieceIdleTimeout
	}
	if c.StreamMemory == 0 {
		c.StreamMemory = DefaultStreamMemory
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
}

// Validate checks the configuration (after the defaults).
func (c Config) Validate() error {
	if len(c.Supernodes) == 0 {
		return errors.New("peer: at least one supernode address is required")
	}
	if _, _, err := net.SplitHostPort(c.PeerAddr); err != nil {
		return fmt.Errorf("peer: peer address %q: want host:port: %w", c.PeerAddr, err)
	}
	if c.AdvertiseIP != "" && net.ParseIP(c.AdvertiseIP) == nil {
		return fmt.Errorf("peer: advertise IP %q is not an IP address", c.AdvertiseIP)
	}
	if c.PeerID != "" && !api.ValidID(c.PeerID) {
		return fmt.Errorf("peer: peer id %q: %w", c.PeerID, api.ErrBadID)
	}
	switch {
	case c.DownloadLimit < 0 || c.UploadLimit < 0:
		return errors.New("peer: rate limits must not be negative")
	case c.UploadSlots < 1:
		return errors.New("peer: upload slots must be at least 1")
	case c.Workers < 1 || c.Workers > api.MaxScheduleLimit/4:
		return fmt.Errorf("peer: workers must be in 1..%d", api.MaxScheduleLimit/4)
	case c.HeartbeatInterval < 0 || c.ReportInterval < 0 || c.ReportLazy < 0 ||
		c.PieceIdleTimeout < 0 || c.ShutdownTimeout < 0:
		return errors.New("peer: durations must not be negative")
	case c.ReportBatch < 1:
		return errors.New("peer: report batch must be at least 1")
	case c.StreamMemory < 1:
		return errors.New("peer: stream memory must be positive")
	}
	return nil
}

// Request is one download.
type Request struct {
	// URL is the file's http or https URL.
	URL string
	// Headers are sent to the origin (by the cluster); credentials make the task private.
	Headers map[string]string
	// Filter names query parameters left out of the task's identity.
	Filter []string
	// Digest is the expected digest of the whole file, "sha256:HEX" or "md5:HEX" (optional).
	// Only a sha256 digest is sent to the cluster (it is part of the task's identity); an
	// md5 one is checked locally only.
	Digest string
	// Output is the file to write. It appears only once complete and verified (a temp file
	// in the same directory is renamed). Ignored when Stream is set.
	Output string
	// Stream, when set, receives the file in order instead (nothing is written to disk and
	// the peer serves none of its pieces).
	Stream io.Writer
	// Progress, when set, is called with the bytes verified so far and the file's size
	// (-1 until known). It runs on the download's own goroutine: keep it quick.
	Progress func(done, total int64)
}

// Result summarises a finished download; the JSON names are dfget's --json summary.
type Result struct {
	TaskID               string  `json:"task_id"`
	Bytes                int64   `json:"bytes"`
	BytesReceived        int64   `json:"bytes_received"`
	DurationS            float64 `json:"duration_s"`
	PiecesFromPeers      int64   `json:"pieces_from_peers"`
	PiecesFromSupernodes int64   `json:"pieces_from_supernodes"`
	SupernodeFailovers   uint64  `json:"supernode_failovers"`
	Digest               string  `json:"digest"`
}
