package harness

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dfly-ha/dfha/peer"
)

// Dfget says how dfget processes are started. Flags other than these are left at dfget's
// defaults; Args lists every flag set.
type Dfget struct {
	Bin           string        // default ./bin/dfget
	DownloadLimit string        // -s RATE; "" leaves the default (none)
	UploadLimit   string        // --upload-limit RATE; "" leaves the default (none)
	Extra         []string      // further flags (listed)
	Timeout       time.Duration // each process is killed after this long; default 5m
}

// Summary is dfget's --json line (the peer engine's result).
type Summary = peer.Result

// Peer is what one dfget process did.
type Peer struct {
	Index      int
	Start, End time.Time
	ExitCode   int      // -1: killed or not started
	Summary    *Summary // nil when no --json line was printed
	Stderr     string   // the last 4 KiB
	SHA256     string   // of the output file; "" when there is none
	MaxRSS     int64    // peak resident set in bytes (from rusage)
	Err        error    // why the download is not right; nil when it is
}

// Duration is the peer's own time, from its start to its exit.
func (p Peer) Duration() time.Duration { return p.End.Sub(p.Start) }

// Args returns the flags a peer gets (besides -u, -o and --supernodes, which every peer
// needs), for the results.
func (d Dfget) Args() []string {
	args := []string{"--json", "--peer-addr", "127.0.0.1:0"}
	if d.DownloadLimit != "" {
		args = append(args, "-s", d.DownloadLimit)
	}
	if d.UploadLimit != "" {
		args = append(args, "--upload-limit", d.UploadLimit)
	}
	return append(args, d.Extra...)
}

// Run starts n dfget processes at once, peer i fetching file through supernodes(i) into its
// own directory under dir, waits for all (bounded by Timeout and ctx) and checks each one:
// exit code 0, a --json summary, and an output whose SHA-256 is the origin's. The outputs
// are removed afterwards.
func (d Dfget) Run(ctx context.Context, f *File, dir string, n int, supernodes func(i int) []string) Run[Peer] {
	if d.Bin == "" {
		d.Bin = "./bin/dfget"
	}
	if d.Timeout == 0 {
		d.Timeout = 5 * time.Minute
	}
	if abs, err := filepath.Abs(d.Bin); err == nil {
		d.Bin = abs // each peer runs in its own directory
	}
	ctx, cancel := context.WithTimeout(ctx, d.Timeout)
	defer cancel()
	out := Run[Peer]{Items: make([]Peer, n)}
	cmds := make([]*exec.Cmd, n)
	stderrs := make([]*tailBuffer, n)
	stdouts := make([]*bytes.Buffer, n)
	outputs := make([]string, n)
	var (
		mu      sync.Mutex
		running = map[int]*exec.Cmd{}
	)
	forget := onCleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range running {
			killGroup(c)
		}
	})
	defer forget()

	// Prepare every command first so that starting them is quick.
	for i := 0; i < n; i++ {
		pdir := filepath.Join(dir, fmt.Sprintf("peer-%03d", i))
		out.Items[i] = Peer{Index: i, ExitCode: -1}
		if err := os.MkdirAll(pdir, 0o755); err != nil {
			out.Items[i].Err = err
			continue
		}
		outputs[i] = filepath.Join(pdir, f.Name)
		args := append([]string{"-u", f.URL, "-o", outputs[i],
			"--supernodes", strings.Join(supernodes(i), ",")}, d.Args()...)
		c := exec.Command(d.Bin, args...)
		c.Dir = pdir
		stdouts[i], stderrs[i] = &bytes.Buffer{}, &tailBuffer{max: 4 << 10}
		c.Stdout, c.Stderr = stdouts[i], stderrs[i]
		// Own process group, so that the whole group can be killed; killed with us.
		c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		cmds[i] = c
	}
	cpu := StartCPU()
	out.Start = time.Now()
	var wg sync.WaitGroup
	for i, c := range cmds {
		if c == nil {
			continue
		}
		out.Items[i].Start = time.Now()
		if err := c.Start(); err != nil {
			out.Items[i].Err = err
			continue
		}
		mu.Lock()
		running[i] = c
		mu.Unlock()
		wg.Add(1)
		go func(i int, c *exec.Cmd) {
			defer wg.Done()
			done := make(chan error, 1)
			go func() { done <- c.Wait() }()
			var err error
			select {
			case err = <-done:
			case <-ctx.Done():
				killGroup(c)
				err = <-done
			}
			p := &out.Items[i]
			p.End = time.Now()
			mu.Lock()
			delete(running, i)
			mu.Unlock()
			p.ExitCode = c.ProcessState.ExitCode()
			if ru, ok := c.ProcessState.SysUsage().(*syscall.Rusage); ok {
				p.MaxRSS = ru.Maxrss << 10
			}
			p.Stderr = stderrs[i].String()
			p.Summary = parseSummary(stdouts[i].Bytes())
			p.Err = check(p, f, outputs[i], err, ctx.Err())
			_ = os.RemoveAll(filepath.Dir(outputs[i]))
		}(i, c)
	}
	wg.Wait()
	out.End = time.Now()
	out.CPU = cpu.Stop()
	return out
}

// check says what is wrong with a peer's download, nil if nothing.
func check(p *Peer, f *File, output string, waitErr, ctxErr error) error {
	if ctxErr != nil {
		return fmt.Errorf("killed after the time limit (%w); its stderr ended with: %s", ctxErr, lastLine(p.Stderr))
	}
	if p.ExitCode != 0 {
		return fmt.Errorf("exit %d (%v): %s", p.ExitCode, waitErr, lastLine(p.Stderr))
	}
	sum, err := fileSHA256(output)
	if err != nil {
		return fmt.Errorf("exit 0 but the output: %w", err)
	}
	p.SHA256 = sum
	if sum != f.SHA256 {
		return fmt.Errorf("output sha256 %s, the origin's is %s", sum, f.SHA256)
	}
	if p.Summary == nil {
		return errors.New("no --json summary line on stdout")
	}
	if d := strings.TrimPrefix(p.Summary.Digest, "sha256:"); d != "" && d != f.SHA256 {
		return fmt.Errorf("summary digest %s, the origin's is sha256:%s", p.Summary.Digest, f.SHA256)
	}
	return nil
}

// parseSummary finds the last JSON object line of stdout.
func parseSummary(stdout []byte) *Summary {
	lines := strings.Split(strings.TrimSpace(string(stdout)), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if !strings.HasPrefix(l, "{") {
			continue
		}
		var s Summary
		if json.Unmarshal([]byte(l), &s) == nil {
			return &s
		}
	}
	return nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// killGroup kills a process started with Setpgid and everything it started.
func killGroup(c *exec.Cmd) {
	if c.Process != nil {
		_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
	}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if s == "" {
		return "(nothing on stderr)"
	}
	return s
}

// tailBuffer keeps the last max bytes written.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// Failed counts the peers whose download is not right.
func Failed(r Run[Peer]) int {
	n := 0
	for _, p := range r.Items {
		if p.Err != nil {
			n++
		}
	}
	return n
}

// Errors lists the failed peers' errors ("peer 3: ..."), at most max of them.
func Errors(r Run[Peer], max int) []string {
	var out []string
	for _, p := range r.Items {
		if p.Err != nil && len(out) < max {
			out = append(out, "peer "+strconv.Itoa(p.Index)+": "+p.Err.Error())
		}
	}
	return out
}

// Pieces sums the pieces the peers got from other peers and from members (summaries).
func Pieces(r Run[Peer]) (fromPeers, fromMembers int64) {
	for _, p := range r.Items {
		if p.Summary != nil {
			fromPeers += p.Summary.PiecesFromPeers
			fromMembers += p.Summary.PiecesFromSupernodes
		}
	}
	return
}
