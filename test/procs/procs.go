// Package procs runs supernode clusters as real processes on loopback, for benchmarks and
// end-to-end tests: start N members the way a user does (first --bootstrap, the others
// --join), kill -9 one, restart it with nothing but its data dir, stop all.
package procs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/dfly-ha/dfha/sdk"
)

// Cluster is a set of supernode processes.
type Cluster struct {
	Bin       string   // path of the supernode binary
	Dir       string   // data dirs and logs
	ExtraArgs []string // flags added to every first start (listed in results)
	IDs       []string
	HTTPAddrs []string
	RaftAddrs []string
	procs     []*exec.Cmd
	done      []chan error
}

// FreeAddr returns a loopback address whose port is free right now.
func FreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// Start launches n members and waits until they agree on a leader.
func Start(ctx context.Context, bin, dir string, n int, extra ...string) (*Cluster, error) {
	c := &Cluster{Bin: bin, Dir: dir, ExtraArgs: extra, procs: make([]*exec.Cmd, n), done: make([]chan error, n)}
	for i := 0; i < n; i++ {
		h, err := FreeAddr()
		if err != nil {
			return nil, err
		}
		r, err := FreeAddr()
		if err != nil {
			return nil, err
		}
		c.IDs = append(c.IDs, "m"+strconv.Itoa(i))
		c.HTTPAddrs = append(c.HTTPAddrs, h)
		c.RaftAddrs = append(c.RaftAddrs, r)
	}
	for i := 0; i < n; i++ {
		args := []string{"--id", c.IDs[i], "--data-dir", filepath.Join(dir, c.IDs[i]),
			"--http-addr", c.HTTPAddrs[i], "--raft-addr", c.RaftAddrs[i]}
		if i == 0 {
			args = append(args, "--bootstrap")
		} else {
			args = append(args, "--join", c.HTTPAddrs[0])
		}
		if err := c.run(i, append(args, extra...)...); err != nil {
			c.StopAll()
			return nil, err
		}
	}
	if _, err := c.WaitLeader(ctx, c.All()); err != nil {
		c.StopAll()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) run(i int, args ...string) error {
	logf, err := os.OpenFile(filepath.Join(c.Dir, c.IDs[i]+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(c.Bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A member dies with the program that started it, even one killed with SIGKILL.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", c.IDs[i], err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); logf.Close() }()
	c.procs[i], c.done[i] = cmd, done
	return nil
}

// All returns the indexes of every member.
func (c *Cluster) All() []int {
	out := make([]int, len(c.IDs))
	for i := range out {
		out[i] = i
	}
	return out
}

// Pid returns member i's process ID (0 when not running).
func (c *Cluster) Pid(i int) int {
	if c.procs[i] == nil {
		return 0
	}
	return c.procs[i].Process.Pid
}

// Kill sends SIGKILL to member i and waits for it to exit.
func (c *Cluster) Kill(i int) error { return c.signal(i, syscall.SIGKILL) }

// Stop sends SIGTERM to member i and waits for it to exit.
func (c *Cluster) Stop(i int) error { return c.signal(i, syscall.SIGTERM) }

func (c *Cluster) signal(i int, s syscall.Signal) error {
	if c.procs[i] == nil {
		return nil
	}
	_ = c.procs[i].Process.Signal(s)
	var err error
	select {
	case err = <-c.done[i]:
	case <-time.After(20 * time.Second):
		_ = c.procs[i].Process.Kill()
		err = <-c.done[i]
	}
	c.procs[i] = nil
	if s == syscall.SIGKILL {
		return nil
	}
	return err
}

// Restart starts member i again with nothing but its data dir.
func (c *Cluster) Restart(i int) error {
	return c.run(i, "--data-dir", filepath.Join(c.Dir, c.IDs[i]))
}

// StopAll sends SIGTERM to every running member.
func (c *Cluster) StopAll() {
	for i := range c.procs {
		_ = c.Stop(i)
	}
}

// WaitLeader waits until the given members agree on one leader and returns its index.
func (c *Cluster) WaitLeader(ctx context.Context, members []int) (int, error) {
	cl, err := sdk.New(sdk.Config{Endpoints: c.HTTPAddrs, MaxAttempts: 1, RequestTimeout: time.Second})
	if err != nil {
		return -1, err
	}
	defer cl.Close()
	for {
		leader := ""
		agreed := true
		for _, i := range members {
			ms, err := cl.MembersAt(ctx, c.HTTPAddrs[i])
			if err != nil {
				agreed = false
				break
			}
			l := ""
			for _, m := range ms {
				if m.Leader {
					l = m.ID
				}
			}
			if l == "" || (leader != "" && l != leader) {
				agreed = false
				break
			}
			leader = l
		}
		if agreed {
			for i, id := range c.IDs {
				if id == leader {
					return i, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return -1, errors.New("members did not agree on a leader in time")
		case <-time.After(50 * time.Millisecond):
		}
	}
}
