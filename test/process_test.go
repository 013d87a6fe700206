package test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dfly-ha/dfha/sdk"
	tc "github.com/dfly-ha/dfha/test/cluster"
)

// Binaries are compiled once per test binary run, into one temporary directory.
var (
	buildMu  sync.Mutex
	binDir   string
	binBuilt = map[string]error{}
)

// binary compiles ./cmd/NAME (once) and returns the path of the executable.
func binary(t *testing.T, name string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if binDir == "" {
		dir, err := os.MkdirTemp("", "dfha-bin")
		if err != nil {
			t.Fatal(err)
		}
		binDir = dir
	}
	path := filepath.Join(binDir, name)
	err, done := binBuilt[name]
	if !done {
		if out, berr := exec.Command("go", "build", "-o", path, "../cmd/"+name).CombinedOutput(); berr != nil {
			err = fmt.Errorf("go build %s: %v\n%s", name, berr, out)
		}
		binBuilt[name] = err
	}
	if err != nil {
		t.Fatal(err)
	}
	return path
}

func supernodeBinary(t *testing.T) string { return binary(t, "supernode") }

// freeAddr returns a loopback address with a port free right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

type proc struct {
	cmd  *exec.Cmd
	done chan error
}

// startProc runs the supernode binary with args; the test's cleanup kills it.
func startProc(t *testing.T, logPath string, args ...string) *proc {
	t.Helper()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(supernodeBinary(t), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait(); logf.Close() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
	})
	return p
}

func (p *proc) signal(t *testing.T, s syscall.Signal) error {
	t.Helper()
	_ = p.cmd.Process.Signal(s)
	select {
	case err := <-p.done:
		p.done <- err // keep it for the cleanup
		return err
	case <-time.After(15 * time.Second):
		t.Fatalf("process %d did not exit after %v", p.cmd.Process.Pid, s)
		return nil
	}
}

func TestProcessesFormClusterSurviveKill9AndRejoin(t *testing.T) {
	dir := t.TempDir()
	ids := []string{"a", "b", "c"}
	httpAddrs := make([]string, 3)
	procs := make([]*proc, 3)
	for i, id := range ids {
		httpAddrs[i] = freeAddr(t)
		args := []string{"--id", id, "--data-dir", filepath.Join(dir, id), "--http-addr", httpAddrs[i], "--raft-addr", freeAddr(t)}
		if i == 0 {
			args = append(args, "--bootstrap")
		} else {
			args = append(args, "--join", httpAddrs[0])
		}
		procs[i] = startProc(t, filepath.Join(dir, id+".log"), args...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cl, err := sdk.New(sdk.Config{Endpoints: httpAddrs})
	if err != nil {
		t.Fatal(err)
	}

	// Every member shows three members and the same single leader.
	leaderOf := func(alive []int) (string, bool) {
		var leader string
		for _, i := range alive {
			ms, err := cl.MembersAt(ctx, httpAddrs[i])
			if err != nil || len(ms) != 3 {
				return "", false
			}
			n := 0
			for _, m := range ms {
				if m.Leader {
					n++
					if leader != "" && leader != m.ID {
						return "", false
					}
					leader = m.ID
				}
			}
			if n != 1 {
				return "", false
			}
		}
		return leader, true
	}
	var leader string
	if !tc.Eventually(30*time.Second, func() (ok bool) { leader, ok = leaderOf([]int{0, 1, 2}); return ok }) {
		t.Fatalf("three processes did not agree on 3 members and one leader; logs in %s", dir)
	}
	for i := 0; i < 20; i++ {
		mustRegisterPeer(t, ctx, cl, fmt.Sprintf("proc-peer-%d", i), i)
	}

	// kill -9 the leader: the survivors elect another and take writes within seconds.
	li := map[string]int{"a": 0, "b": 1, "c": 2}[leader]
	killedAt := time.Now()
	if err := procs[li].signal(t, syscall.SIGKILL); err == nil {
		t.Fatal("kill -9 reported a clean exit")
	}
	survivors := []int{(li + 1) % 3, (li + 2) % 3}
	var newLeader string
	if !tc.Eventually(15*time.Second, func() (ok bool) {
		newLeader, ok = leaderOf(survivors)
		return ok && newLeader != leader
	}) {
		t.Fatalf("no new leader after kill -9 of %s", leader)
	}
	mustRegisterPeer(t, ctx, cl, "after-kill", 99)
	t.Logf("leader %s killed; %s leads; next write accepted after %s", leader, newLeader, time.Since(killedAt).Round(time.Millisecond))

	// The killed member restarts with no flags but its data dir, and rejoins.
	procs[li] = startProc(t, filepath.Join(dir, ids[li]+".log"), "--data-dir", filepath.Join(dir, ids[li]))
	if !tc.Eventually(30*time.Second, func() bool { _, ok := leaderOf([]int{0, 1, 2}); return ok }) {
		t.Fatalf("restarted member %s did not rejoin; logs in %s", ids[li], dir)
	}
	var hash string
	if !tc.Eventually(30*time.Second, func() bool {
		hash = ""
		for i := range ids {
			st, err := cl.StateAt(ctx, httpAddrs[i])
			if err != nil || (hash != "" && st.StateHash != hash) {
				return false
			}
			hash = st.StateHash
		}
		return true
	}) {
		t.Fatal("members do not report the same state_hash after the rejoin")
	}
	p, err := clientAt(t, httpAddrs[li]).GetPeer(ctx, "after-kill")
	if err != nil || p.Port != 20099 {
		t.Fatalf("restarted member lacks the write made while it was down: %+v %v", p, err)
	}

	// SIGTERM: every member exits 0.
	for i := range procs {
		if err := procs[i].signal(t, syscall.SIGTERM); err != nil {
			t.Fatalf("member %s: SIGTERM exit: %v", ids[i], err)
		}
	}
}

func TestSupernodeFlagErrors(t *testing.T) {
	bin := supernodeBinary(t)
	dir := t.TempDir()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cases := []struct {
		name string
		args []string
	}{
		{"unknown flag", []string{"--nope"}},
		{"new member without bootstrap or join", []string{"--id", "x", "--data-dir", filepath.Join(dir, "1")}},
		{"bad id", []string{"--id", "a/b", "--bootstrap", "--data-dir", filepath.Join(dir, "2")}},
		{"bootstrap and join", []string{"--id", "x", "--bootstrap", "--join", "127.0.0.1:1", "--data-dir", filepath.Join(dir, "3")}},
		{"unreachable advertise", []string{"--id", "x", "--bootstrap", "--http-addr", "0.0.0.0:0", "--data-dir", filepath.Join(dir, "4")}},
		{"port in use", []string{"--id", "x", "--bootstrap", "--http-addr", busy.Addr().String(), "--raft-addr", freeAddr(t), "--data-dir", filepath.Join(dir, "5")}},
		{"missing token file", []string{"--id", "x", "--bootstrap", "--token-file", filepath.Join(dir, "none"), "--data-dir", filepath.Join(dir, "6")}},
		{"bad log level", []string{"--id", "x", "--bootstrap", "--log-level", "loud", "--data-dir", filepath.Join(dir, "7")}},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(bin, tt.args...)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("exit 0 for %v; output %q", tt.args, out)
			}
			if len(out) == 0 || len(out) > 2000 {
				t.Fatalf("want one clear error line, got %q", out)
			}
		})
	}
	help, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("--help: %v", err)
	}
	for _, want := range []string{"127.0.0.1:8002", "127.0.0.1:8003", "./supernode-data", "--token-file", "500ms"} {
		if !strings.Contains(string(help), want) {
			t.Errorf("--help does not show the default %q", want)
		}
	}
}
