package test

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dfly-ha/dfha/cluster/member"
	"github.com/dfly-ha/dfha/sdk/api"
	tc "github.com/dfly-ha/dfha/test/cluster"
)

// summary is dfget's --json line.
type summary struct {
	TaskID               string  `json:"task_id"`
	Bytes                int64   `json:"bytes"`
	BytesReceived        int64   `json:"bytes_received"`
	DurationS            float64 `json:"duration_s"`
	PiecesFromPeers      int     `json:"pieces_from_peers"`
	PiecesFromSupernodes int     `json:"pieces_from_supernodes"`
	SupernodeFailovers   int     `json:"supernode_failovers"`
	Digest               string  `json:"digest"`
}

// dfgetRun is one finished dfget process.
type dfgetRun struct {
	exit           int
	stdout, stderr []byte
	sum            summary
}

// runDfget runs dfget with args (bounded by ctx) and parses the --json line, when there is
// one, from stdout (or from stderr when the file goes to stdout).
func runDfget(t *testing.T, ctx context.Context, args ...string) dfgetRun {
	t.Helper()
	cmd := exec.CommandContext(ctx, binary(t, "dfget"), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	r := dfgetRun{stdout: out.Bytes(), stderr: errb.Bytes()}
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		r.exit = exit.ExitCode()
	default:
		t.Errorf("dfget %v: %v", args, err)
		r.exit = -1
	}
	jsonFrom := r.stdout
	if containsArg(args, "-") {
		jsonFrom = r.stderr
	}
	lines := strings.Split(strings.TrimSpace(string(jsonFrom)), "\n")
	if last := lines[len(lines)-1]; strings.HasPrefix(last, "{") {
		if err := json.Unmarshal([]byte(last), &r.sum); err != nil {
			t.Errorf("dfget --json line %q: %v", last, err)
		}
	}
	return r
}

func containsArg(args []string, v string) bool {
	for _, a := range args {
		if a == v {
			return true
		}
	}
	return false
}

// p2pSetup is a 3-member cluster with small pieces and a real origin serving one file.
type p2pSetup struct {
	c      *tc.Cluster
	o      *origin
	url    string
	data   []byte
	digest string // sha256:HEX of data
}

const testPieceSize = 128 << 10

func newP2P(t *testing.T, size int) *p2pSetup {
	t.Helper()
	s := &p2pSetup{o: newOrigin(t), data: randomBytes(uint64(size), size)}
	s.url = s.o.add("/file.bin", s.data)
	sum := sha256.Sum256(s.data)
	s.digest = "sha256:" + hex.EncodeToString(sum[:])
	s.c = tc.New(t, 3, tc.Options{Configure: func(_ int, cfg *member.Config) {
		cfg.PieceSize = testPieceSize
		cfg.PeerTTL = 5 * time.Second
	}})
	return s
}

// peers runs n dfget processes at once; args(i) gives peer i's arguments after -u and -o.
func (s *p2pSetup) peers(t *testing.T, ctx context.Context, dir string, n int, args func(i int) []string) []dfgetRun {
	t.Helper()
	runs := make([]dfgetRun, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			a := append([]string{"-u", s.url, "-o", filepath.Join(dir, fmt.Sprintf("out-%d", i)), "--json", "-q",
				"--peer-addr", "127.0.0.1:0"}, args(i)...)
			runs[i] = runDfget(t, ctx, a...)
		}(i)
	}
	wg.Wait()
	return runs
}

// checkRuns asserts every run succeeded with the file's exact bytes and digest.
func (s *p2pSetup) checkRuns(t *testing.T, dir string, runs []dfgetRun) {
	t.Helper()
	for i, r := range runs {
		if r.exit != 0 {
			t.Fatalf("peer %d: exit %d: %s", i, r.exit, r.stderr)
		}
		got, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("out-%d", i)))
		if err != nil || !bytes.Equal(got, s.data) {
			t.Fatalf("peer %d: output differs from the origin's file (%d bytes, %v)", i, len(got), err)
		}
		if r.sum.Digest != s.digest || r.sum.Bytes != int64(len(s.data)) {
			t.Fatalf("peer %d: summary %+v, want digest %s and %d bytes", i, r.sum, s.digest, len(s.data))
		}
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "out-") {
			t.Fatalf("left behind in the output directory: %s", e.Name())
		}
	}
}

func TestTwelvePeersGetTheFileOnceFromTheOriginMostlyFromEachOther(t *testing.T) {
	s := newP2P(t, 4<<20)
	ctx := ctxT(t, 90*time.Second)
	dir := t.TempDir()
	eps := s.c.Endpoints()
	runs := s.peers(t, ctx, dir, 12, func(i int) []string {
		// Each peer starts from another member: registrations land on all three.
		return []string{"--supernodes", eps[i%3], "-s", "2MiB/s"}
	})
	s.checkRuns(t, dir, runs)
	if sent := s.o.bytesSent("/file.bin"); sent != int64(len(s.data)) {
		t.Fatalf("origin sent %d bytes, %.2f copies; want exactly one", sent, float64(sent)/float64(len(s.data)))
	}
	fromPeers, fromMembers := 0, 0
	for _, r := range runs {
		fromPeers += r.sum.PiecesFromPeers
		fromMembers += r.sum.PiecesFromSupernodes
	}
	pieces := 12 * (len(s.data) / testPieceSize)
	if fromPeers+fromMembers != pieces {
		t.Fatalf("summaries count %d+%d pieces, want %d", fromPeers, fromMembers, pieces)
	}
	if fromPeers <= fromMembers {
		t.Fatalf("%d pieces from peers and %d from supernodes: most should come from peers", fromPeers, fromMembers)
	}
	for i, r := range runs {
		t.Logf("peer %d: %.1fs peers %d members %d", i, r.sum.DurationS, r.sum.PiecesFromPeers, r.sum.PiecesFromSupernodes)
	}
	t.Logf("pieces from peers %d, from supernodes %d (share %.2f, limit %.2f)", fromPeers, fromMembers,
		float64(fromPeers)/float64(pieces), 11.0/12)
}

// corruptPeer is a peer's upload server that answers every piece with wrong bytes of the
// right length: a fault that no real peer produces on purpose.
type corruptPeer struct {
	srv  *http.Server
	addr *net.TCPAddr
	hits atomic.Int64
}

func newCorruptPeer(t *testing.T, pieceSize int) *corruptPeer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &corruptPeer{addr: ln.Addr().(*net.TCPAddr)}
	junk := randomBytes(99, pieceSize)
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.hits.Add(1)
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(junk)
	})}
	go p.srv.Serve(ln)
	t.Cleanup(func() { p.srv.Close() })
	return p
}

func TestCorruptingPeerIsCaughtBlacklistedAndDownloadsEndCorrect(t *testing.T) {
	s := newP2P(t, 2<<20)
	ctx := ctxT(t, 90*time.Second)
	cl := s.c.Client()
	evil := newCorruptPeer(t, testPieceSize)
	if _, err := cl.RegisterPeer(ctx, api.RegisterPeerRequest{ID: "evil", IP: "127.0.0.1", Port: evil.addr.Port, Hostname: "evil"}); err != nil {
		t.Fatal(err)
	}
	task, _, err := cl.RegisterTask(ctx, api.RegisterTaskRequest{URL: s.url, PeerID: "evil"})
	if err != nil {
		t.Fatal(err)
	}
	waitTask(t, s.c, task.TaskID, 20*time.Second, func(tk api.Task) bool { return tk.Status == api.TaskSuccess })
	pieces := len(s.data) / testPieceSize
	if err := cl.ReportPieces(ctx, task.TaskID, fmt.Sprintf("0-%d", pieces-1), api.PieceReport{PeerID: "evil", Status: api.StatusSuccess, Source: "m0"}); err != nil {
		t.Fatal(err)
	}
	beatCtx, stopBeats := context.WithCancel(ctx)
	defer stopBeats()
	go func() { // evil looks alive throughout
		for i := 0; i < 120 && beatCtx.Err() == nil; i++ {
			_, _ = cl.Heartbeat(beatCtx, "evil", api.Heartbeat{})
			select {
			case <-beatCtx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()

	dir := t.TempDir()
	eps := strings.Join(s.c.Endpoints(), ",")
	runs := s.peers(t, ctx, dir, 4, func(int) []string { return []string{"--supernodes", eps, "-s", "4MiB/s"} })
	stopBeats()
	s.checkRuns(t, dir, runs)
	if evil.hits.Load() == 0 {
		t.Fatal("the corrupting peer was never asked: the test proves nothing")
	}
	bad := s.c.Member(s.c.WaitForLeader(10 * time.Second)).Node().FSM().BadSources(task.TaskID)
	if bad["evil"] == 0 {
		t.Fatalf("bad sources %v: the corrupting peer was not reported", bad)
	}
	// Once reported, it is no longer scheduled: far fewer requests than pieces fetched.
	if hits := evil.hits.Load(); hits > int64(len(runs)*pieces/2) {
		t.Fatalf("the corrupting peer served %d pieces: it was not blacklisted", hits)
	}
	t.Logf("corrupting peer asked %d times, reported bad for %d pieces", evil.hits.Load(), bad["evil"])
}

func TestDownloadsSurviveADeadFirstEndpointAndTheLeaderKilledMidway(t *testing.T) {
	const size, workers = 4 << 20, 4
	s := newP2P(t, size)
	ctx := ctxT(t, 120*time.Second)
	leader := s.c.WaitForLeader(10 * time.Second)
	dead := freeAddr(t) // nothing listens there
	dir := t.TempDir()
	var runs []dfgetRun
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The only live endpoint given is the leader's: the others are discovered.
		runs = s.peers(t, ctx, dir, 10, func(int) []string {
			return []string{"--supernodes", dead + "," + s.c.HTTPAddr(leader), "-s", "1MiB/s", "--workers", fmt.Sprint(workers)}
		})
	}()
	// Kill the leader once the peers hold a fifth of what they want, well before they finish.
	id, err := api.TaskID(s.url, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	fsm := s.c.Member(leader).Node().FSM()
	if !tc.Eventually(60*time.Second, func() bool { return fsm.HeldCount(id) >= 10*size/testPieceSize/5 }) {
		t.Fatal("the peers did not get going")
	}
	s.c.Kill(leader)
	<-done
	s.checkRuns(t, dir, runs)
	for i, r := range runs {
		if limit := int64(size + workers*testPieceSize); r.sum.BytesReceived > limit {
			t.Fatalf("peer %d received %d bytes, more than %d: it restarted", i, r.sum.BytesReceived, limit)
		}
	}
}

func TestStdoutStreamDigestMismatchAndBadInput(t *testing.T) {
	s := newP2P(t, 1<<20+12345)
	ctx := ctxT(t, 60*time.Second)
	eps := strings.Join(s.c.Endpoints(), ",")

	// -o - streams the file in order; the summary goes to stderr.
	r := runDfget(t, ctx, "-u", s.url, "-o", "-", "--supernodes", eps, "--json")
	if r.exit != 0 || !bytes.Equal(r.stdout, s.data) {
		t.Fatalf("-o -: exit %d, %d bytes on stdout (want the file's %d): %s", r.exit, len(r.stdout), len(s.data), r.stderr)
	}
	if r.sum.Digest != s.digest {
		t.Fatalf("-o - summary %+v on stderr, want digest %s", r.sum, s.digest)
	}

	// A digest mismatch fails clearly and leaves nothing behind.
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	wrong := "sha256:" + strings.Repeat("0", 64)
	md5sum := md5.Sum(s.data)
	for _, args := range [][]string{{"--digest", wrong}, {"-m", strings.Repeat("f", 32)}} {
		r = runDfget(t, ctx, append([]string{"-u", s.url, "-o", out, "-n", eps}, args...)...)
		if r.exit == 0 || !oneLine(r.stderr, "digest") {
			t.Fatalf("%v: exit %d, stderr %q; want a non-zero exit and one line about the digest", args, r.exit, r.stderr)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Fatalf("%v: left %d files in the output directory", args, len(entries))
		}
	}
	// The right md5 (Dragonfly's -m) passes.
	r = runDfget(t, ctx, "-u", s.url, "-o", out, "-n", eps, "-m", hex.EncodeToString(md5sum[:]))
	if got, _ := os.ReadFile(out); r.exit != 0 || !bytes.Equal(got, s.data) {
		t.Fatalf("-m with the right md5: exit %d: %s", r.exit, r.stderr)
	}

	for _, tt := range []struct {
		args []string
		word string
	}{
		{[]string{"--no-such-flag"}, "flag"},
		{[]string{"-o", out, "--supernodes", eps}, "url"},
		{[]string{"-u", s.url, "--supernodes", eps}, "output"},
		{[]string{"-u", "ftp://127.0.0.1/x", "-o", out, "--supernodes", eps}, "url"},
		{[]string{"-u", "http://", "-o", out, "--supernodes", eps}, "url"},
		{[]string{"-u", s.url, "-o", out}, "supernode"},
		{[]string{"-u", s.url, "-o", out, "--supernodes", "not an address"}, "supernode"},
		{[]string{"-u", s.url, "-o", out, "--supernodes", eps, "-s", "fast"}, "locallimit"},
		{[]string{"-u", s.url, "-o", out, "--supernodes", eps, "--digest", "sha1:abc"}, "digest"},
		{[]string{"-u", s.url, "-o", out, "--supernodes", eps, "--token-file", filepath.Join(dir, "missing")}, "token"},
	} {
		r := runDfget(t, ctx, tt.args...)
		if r.exit == 0 || !oneLine(r.stderr, tt.word) {
			t.Errorf("dfget %v: exit %d, stderr %q; want a non-zero exit and one line mentioning %q", tt.args, r.exit, r.stderr, tt.word)
		}
	}
	// Supernodes that are all down: a clear failure within the timeout, not a hang.
	start := time.Now()
	r = runDfget(t, ctx, "-u", s.url, "-o", filepath.Join(dir, "never"), "--supernodes", freeAddr(t), "-e", "3s")
	if r.exit == 0 || !oneLine(r.stderr, "") || time.Since(start) > 20*time.Second {
		t.Fatalf("dead supernodes: exit %d after %s, stderr %q", r.exit, time.Since(start), r.stderr)
	}
}

// oneLine reports whether stderr is one line that mentions word (case-insensitive).
func oneLine(stderr []byte, word string) bool {
	s := strings.TrimSpace(string(stderr))
	return s != "" && !strings.Contains(s, "\n") && strings.Contains(strings.ToLower(s), strings.ToLower(word))
}
