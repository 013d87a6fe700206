// Command supernode runs one member of a supernode cluster. See the README for a 3-host
// deployment; `supernode --help` lists every flag with its default.
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/dfly-ha/dfha/cluster/member"
	"github.com/dfly-ha/dfha/cmd/internal/logging"
	"github.com/dfly-ha/dfha/cmd/internal/units"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "supernode:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := pflag.NewFlagSet("supernode", pflag.ContinueOnError)
	fs.SortFlags = false
	var (
		cfg       member.Config
		join      string
		tokenFile string
		logLevel  string
		logFormat string
		debugAddr string
		pieceSize string
		originLim string
		uploadLim string
		cacheMax  string
	)
	fs.StringVar(&cfg.ID, "id", "", "member ID ([A-Za-z0-9._-], up to 128); needed the first time only")
	fs.StringVar(&cfg.DataDir, "data-dir", "./supernode-data", "directory of the member's Raft log, snapshots and identity")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", "127.0.0.1:8002", "address the HTTP API listens on")
	fs.StringVar(&cfg.RaftAddr, "raft-addr", "127.0.0.1:8003", "address Raft listens on")
	fs.BoolVar(&cfg.Bootstrap, "bootstrap", false, "start a new cluster with this member as its first (ignored on existing state)")
	fs.StringVar(&join, "join", "", "HTTP_ADDR[,HTTP_ADDR...] of existing members to join (ignored on existing state)")
	fs.StringVar(&cfg.AdvertiseHTTP, "advertise-http", "", "HTTP address other members and peers use (default: --http-addr)")
	fs.StringVar(&cfg.AdvertiseRaft, "advertise-raft", "", "Raft address other members use (default: --raft-addr)")
	fs.StringVar(&tokenFile, "token-file", "", "file holding a bearer token required for membership changes, task deletion and peer registration (default: none, open)")
	fs.StringVar(&pieceSize, "piece-size", "auto", "piece size of new tasks (SIZE: 4MiB, 262144...); auto: 4 MiB, doubled for files over 8 GiB to stay within 2,048 pieces")
	fs.StringVar(&originLim, "origin-limit", "none", "cap on all origin reads of this member together (RATE: 100MiB/s, 50MB/s...)")
	fs.StringVar(&cacheMax, "cache-max-bytes", "none", "bound of this member's cache (SIZE: 512MiB, 20GB...); above 95% the least recently used tasks are deleted down to 85%")
	fs.IntVar(&cfg.CacheReplicas, "cache-replicas", 1, "members that cache each task: the first on the ring fetches it from the origin, the others copy its pieces from members")
	fs.DurationVar(&cfg.TaskExpiry, "task-expiry", 0, "delete tasks nobody has used for this long (0: never)")
	fs.DurationVar(&cfg.PeerTTL, "peer-ttl", 15*time.Second, "a peer without a heartbeat for this long is no longer a source, and is removed")
	fs.StringVar(&uploadLim, "upload-limit", "none", "cap on all piece serving of this member together (RATE: 100MiB/s, 50MB/s...)")
	fs.DurationVar(&cfg.HeartbeatTimeout, "raft-heartbeat-timeout", 500*time.Millisecond, "time without leader contact before a follower starts an election")
	fs.DurationVar(&cfg.ElectionTimeout, "raft-election-timeout", 500*time.Millisecond, "time a candidate waits for votes")
	fs.DurationVar(&cfg.MemberDeadAfter, "member-dead-after", 3*time.Second, "failed heartbeats for this long mark a member dead (committed by the leader)")
	fs.StringVar(&debugAddr, "debug-addr", "", "serve Go pprof profiles on this address (default: off; keep it private)")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&logFormat, "log-format", "json", "json or console")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: supernode --id ID [--bootstrap | --join HTTP_ADDR,...] [flags]\n\n%s", fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		if err == pflag.ErrHelp {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if cfg.Bootstrap && join != "" {
		return fmt.Errorf("--bootstrap and --join exclude each other")
	}
	for _, a := range strings.Split(join, ",") {
		if a = strings.TrimSpace(a); a != "" {
			cfg.Join = append(cfg.Join, a)
		}
	}
	if pieceSize != "auto" {
		n, err := units.ParseSize(pieceSize)
		if err != nil || n < 1 || n > 1<<30 {
			return fmt.Errorf("--piece-size %q: want auto or a size from 1 byte to 1GiB", pieceSize)
		}
		cfg.PieceSize = n
	}
	if originLim != "none" {
		r, err := units.ParseRate(originLim)
		if err != nil || r <= 0 {
			return fmt.Errorf("--origin-limit %q: want none or a positive rate such as 100MiB/s", originLim)
		}
		cfg.OriginLimit = r
	}
	if cacheMax != "none" {
		n, err := units.ParseSize(cacheMax)
		if err != nil || n <= 0 {
			return fmt.Errorf("--cache-max-bytes %q: want none or a positive size such as 20GB", cacheMax)
		}
		cfg.CacheMaxBytes = n
	}
	if cfg.CacheReplicas < 1 {
		return fmt.Errorf("--cache-replicas %d: want at least 1", cfg.CacheReplicas)
	}
	if uploadLim != "none" {
		r, err := units.ParseRate(uploadLim)
		if err != nil || r <= 0 {
			return fmt.Errorf("--upload-limit %q: want none or a positive rate such as 100MiB/s", uploadLim)
		}
		cfg.UploadLimit = r
	}
	if tokenFile != "" {
		p, err := os.ReadFile(tokenFile)
		if err != nil {
			return fmt.Errorf("--token-file: %w", err)
		}
		if cfg.Token = strings.TrimSpace(string(p)); cfg.Token == "" {
			return fmt.Errorf("--token-file %s is empty", tokenFile)
		}
	}
	log, err := logging.New(logLevel, logFormat)
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck
	cfg.Logger = log

	if debugAddr != "" {
		ln, err := net.Listen("tcp", debugAddr)
		if err != nil {
			return fmt.Errorf("--debug-addr: %w", err)
		}
		go func() { _ = http.Serve(ln, nil) }() // net/http/pprof registers on the default mux
		log.Info("pprof served", zap.String("addr", ln.Addr().String()))
	}
	// Signals count from here: one that arrives while the member is still joining cancels
	// the join (a later start with --join joins again).
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case s := <-sigs:
			log.Info("signal received while starting: giving up", zap.String("signal", s.String()))
			cancel()
		case <-ctx.Done():
		}
	}()
	m, err := member.Start(ctx, cfg)
	if err != nil {
		return err
	}
	cancel()
	select {
	case s := <-sigs:
		log.Info("signal received: stopping", zap.String("signal", s.String()))
		if err := m.Stop(); err != nil {
			log.Warn("stop", zap.Error(err))
		}
		return nil
	case err := <-m.Done():
		m.Kill()
		return fmt.Errorf("http server stopped: %w", err)
	}
}
