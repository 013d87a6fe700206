package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dfly-ha/dfha/test/procs"
)

// ClusterConfig says how to start a cluster of supernode processes.
type ClusterConfig struct {
	Bin     string   // supernode binary; default ./bin/supernode
	Members int      // default 3
	Flags   []string // flags for every member beyond identity and addresses (listed in results)
	// StartTimeout bounds the start until the members agree on a leader; default 60s.
	StartTimeout time.Duration
	// KeepDir keeps the members' data and logs after Close (its path is printed).
	KeepDir bool
}

// Cluster is a running cluster of supernode processes in a temporary directory.
type Cluster struct {
	*procs.Cluster
	Flags  []string
	forget func()
	keep   bool
}

// StartCluster starts the members (the first --bootstrap, the others --join) and waits for
// a leader. Close stops them; so does Cleanup.
func StartCluster(ctx context.Context, cfg ClusterConfig) (*Cluster, error) {
	if cfg.Bin == "" {
		cfg.Bin = "./bin/supernode"
	}
	if cfg.Members == 0 {
		cfg.Members = 3
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 60 * time.Second
	}
	dir, err := os.MkdirTemp("", "dfha-bench-cluster")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	pc, err := procs.Start(ctx, cfg.Bin, dir, cfg.Members, cfg.Flags...)
	if err != nil {
		return nil, fmt.Errorf("start %d members (logs in %s): %w", cfg.Members, dir, err)
	}
	c := &Cluster{Cluster: pc, Flags: cfg.Flags, keep: cfg.KeepDir}
	c.forget = onCleanup(c.stop)
	return c, nil
}

// Close stops every member and removes the directory (unless KeepDir).
func (c *Cluster) Close() {
	c.forget()
	c.stop()
}

func (c *Cluster) stop() {
	c.StopAll()
	if c.keep {
		fmt.Fprintf(os.Stderr, "members' data and logs kept in %s\n", c.Dir)
		return
	}
	_ = os.RemoveAll(c.Dir)
}

// Endpoints returns every member's HTTP address, starting with member first (mod the
// size): giving peer i Endpoints(i) spreads registrations over all members.
func (c *Cluster) Endpoints(first int) []string {
	n := len(c.HTTPAddrs)
	out := make([]string, 0, n)
	for k := 0; k < n; k++ {
		out = append(out, c.HTTPAddrs[(first+k)%n])
	}
	return out
}

// PeakRSS returns each running member's peak resident set (VmHWM) in bytes; 0 for a member
// not running.
func (c *Cluster) PeakRSS() ([]int64, error) {
	out := make([]int64, len(c.IDs))
	for i := range c.IDs {
		pid := c.Pid(i)
		if pid == 0 {
			continue
		}
		v, err := PeakRSS(pid)
		if err != nil {
			return nil, fmt.Errorf("member %s: %w", c.IDs[i], err)
		}
		out[i] = v
	}
	return out, nil
}

// LogTail returns the last n lines of member i's log, for error reports.
func (c *Cluster) LogTail(i, n int) string {
	p, err := os.ReadFile(filepath.Join(c.Dir, c.IDs[i]+".log"))
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(p), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
