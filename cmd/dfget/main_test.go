package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dfly-ha/dfha/peer"
	"github.com/dfly-ha/dfha/peer/peertest"
	tc "github.com/dfly-ha/dfha/test/cluster"
)

func TestUsageErrorsAreOneLineAndExitTwo(t *testing.T) {
	t.Setenv(envSupernodes, "")
	t.Setenv(envToken, "")
	out := filepath.Join(t.TempDir(), "f")
	ok := func(extra ...string) []string {
		return append([]string{"-u", "http://example.com/f", "-o", out, "-n", "127.0.0.1:8002"}, extra...)
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no url", []string{"-o", "x", "-n", "h:1"}, "no URL"},
		{"ftp url", append(ok()[2:], "-u", "ftp://example.com/f"), "http or https"},
		{"relative url", append(ok()[2:], "-u", "/f"), "http or https"},
		{"no output", []string{"-u", "http://h/f", "-n", "h:1"}, "no output"},
		{"no supernodes", ok()[:4], "no supernodes"},
		{"supernode without port", append(ok()[:4], "--supernodes", "h"), "HOST:PORT"},
		{"bad digest", ok("--digest", "sha256:xyz"), "--digest"},
		{"bad md5", ok("-m", "123"), "--md5"},
		{"digests disagree", ok("-m", strings.Repeat("a", 32), "--digest", "md5:"+strings.Repeat("b", 32)), "disagree"},
		{"bad header", ok("-H", "no colon"), "--header"},
		{"bad rate", ok("-s", "fast"), "--locallimit"},
		{"bad upload rate", ok("--upload-limit", "-1MB/s"), "--upload-limit"},
		{"bad timeout", ok("-e", "soon"), "--timeout"},
		{"bad peer addr", ok("--peer-addr", "nowhere"), "--peer-addr"},
		{"bad advertise ip", ok("--advertise-ip", "host"), "--advertise-ip"},
		{"unreadable token file", ok("--token-file", filepath.Join(t.TempDir(), "none")), "--token-file"},
		{"unknown flag", ok("--bogus"), "unknown flag"},
		{"stray argument", ok("extra"), "unexpected arguments"},
		{"bad log level", ok("--log-level", "loud"), "--log-level"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(c.args, &stdout, &stderr)
			msg := stderr.String()
			if code != exitUsage || !strings.HasPrefix(msg, "dfget: ") || strings.Count(msg, "\n") != 1 ||
				!strings.Contains(msg, c.want) || stdout.Len() != 0 {
				t.Fatalf("exit %d, stderr %q, stdout %q; want exit 2 and one line about %q", code, msg, stdout.String(), c.want)
			}
		})
	}
}

func TestHelpShowsEveryDefault(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"--help"}, &stdout, &stderr); code != exitOK {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"--url", "--output", "--supernodes", "--node", "--digest", "--md5", "--header",
		"--filter", `--locallimit RATE       download rate limit (RATE: 20MiB/s, 50MB/s, bytes per second) (default "none")`,
		`(default "none")`, `(default "0.0.0.0:0")`, "--advertise-ip", "default 0s", "--token-file", "--json",
		"--quiet", `(default "warn")`, "DFGET_SUPERNODES", "DFGET_TOKEN"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}

func TestDownloadThroughACluster(t *testing.T) {
	c := peertest.NewCluster(t)
	o := peertest.NewOrigin(t)
	data := peertest.RandomBytes(21, 10*peertest.PieceSize+99)
	url := o.Add("/dfget/file.bin", data)
	t.Setenv(envSupernodes, c.HTTPAddr(1)) // one member is enough
	base := []string{"-u", url, "--peer-addr", "127.0.0.1:0", "-q", "--json", "--log-level", "error"}

	t.Run("to a file", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "file.bin")
		var stdout, stderr bytes.Buffer
		if code := run(append(base, "-o", out), &stdout, &stderr); code != exitOK {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
		got, err := os.ReadFile(out)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("output: %d bytes, %v: differs from the origin's", len(got), err)
		}
		checkSummary(t, stdout.Bytes(), data)
	})
	t.Run("to stdout", func(t *testing.T) {
		dir := t.TempDir()
		t.Chdir(dir)
		var stdout, stderr bytes.Buffer
		if code := run(append(base, "-o", "-", "--digest", peertest.SHA256(data)), &stdout, &stderr); code != exitOK {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
		if !bytes.Equal(stdout.Bytes(), data) {
			t.Fatalf("stdout: %d bytes that differ from the origin's", stdout.Len())
		}
		checkSummary(t, stderr.Bytes(), data)
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Fatalf("streaming wrote %d files", len(entries))
		}
	})
	t.Run("digest mismatch", func(t *testing.T) {
		dir := t.TempDir()
		var stdout, stderr bytes.Buffer
		code := run(append(base, "-o", filepath.Join(dir, "f"), "-m", strings.Repeat("0", 32)), &stdout, &stderr)
		if code != exitFailure || !strings.Contains(stderr.String(), "digest mismatch") || stdout.Len() != 0 {
			t.Fatalf("exit %d, stderr %q, stdout %q; want exit 1 with a digest mismatch", code, stderr.String(), stdout.String())
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Fatalf("a failed download left %d files", len(entries))
		}
	})
}

// checkSummary checks the --json line: exactly the contract's fields, with sane values.
func checkSummary(t *testing.T, line []byte, data []byte) {
	t.Helper()
	var fields map[string]any
	if err := json.Unmarshal(line, &fields); err != nil || bytes.Count(line, []byte("\n")) != 1 {
		t.Fatalf("summary %q is not one JSON line: %v", line, err)
	}
	want := []string{"task_id", "bytes", "bytes_received", "duration_s", "pieces_from_peers",
		"pieces_from_supernodes", "supernode_failovers", "digest"}
	if len(fields) != len(want) {
		t.Fatalf("summary has fields %v, want %v", fields, want)
	}
	var res peer.Result
	_ = json.Unmarshal(line, &res)
	if res.Bytes != int64(len(data)) || res.Digest != peertest.SHA256(data) || len(res.TaskID) != 64 ||
		res.PiecesFromPeers+res.PiecesFromSupernodes != 11 {
		t.Fatalf("summary %s", line)
	}
}

// TestMain runs dfget's main instead of the tests when the test binary is started as dfget
// by the tests below (signals need a process of their own).
func TestMain(m *testing.M) {
	if os.Getenv("DFGET_TEST_AS_DFGET") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// startDfget starts this test binary as dfget with args; stdout goes to w.
func startDfget(t *testing.T, w *os.File, args ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "DFGET_TEST_AS_DFGET=1")
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = w, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return cmd, &stderr
}

// waitExit waits for cmd and returns its exit code (-1 when a signal killed it).
func waitExit(t *testing.T, cmd *exec.Cmd, within time.Duration) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var exit *exec.ExitError
		switch {
		case err == nil:
			return 0
		case errors.As(err, &exit):
			if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				t.Logf("dfget killed by %v", ws.Signal())
			}
			return exit.ExitCode()
		}
		t.Fatal(err)
	case <-time.After(within):
		t.Fatalf("dfget still running after %s", within)
	}
	return 0
}

// peersLeft waits until the cluster knows no peer, and fails the test if it still knows
// some after a few seconds: dfget did not leave (DELETE /peers) before exiting.
func peersLeft(t *testing.T, c *tc.Cluster) {
	t.Helper()
	f := c.Member(c.WaitForLeader(10 * time.Second)).Node().FSM()
	if !tc.Eventually(3*time.Second, func() bool { _, peers, _, _ := f.Counts(); return peers == 0 }) {
		_, peers, _, _ := f.Counts()
		t.Fatalf("the cluster still knows %d peers: dfget did not leave", peers)
	}
}

func TestClosedStdoutAndHangupCleanUp(t *testing.T) {
	c := peertest.NewCluster(t)
	o := peertest.NewOrigin(t)
	data := peertest.RandomBytes(22, 40*peertest.PieceSize)
	url := o.Add("/dfget/slow.bin", data)
	// 1 MiB/s: the 2.5 MiB download takes more than two seconds.
	base := []string{"-u", url, "--supernodes", c.HTTPAddr(0), "--peer-addr", "127.0.0.1:0", "-q",
		"--log-level", "error", "-s", "1MiB/s"}

	t.Run("stdout closed", func(t *testing.T) {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd, stderr := startDfget(t, w, append(base, "-o", "-")...)
		w.Close()
		// Read a little, then go away, as `dfget -o - | head -c 1000` does.
		if _, err := io.ReadFull(r, make([]byte, 1000)); err != nil {
			t.Fatal(err)
		}
		r.Close()
		code := waitExit(t, cmd, 30*time.Second)
		msg := stderr.String()
		if code != exitFailure || strings.Count(msg, "\n") != 1 || !strings.HasPrefix(msg, "dfget: ") {
			t.Fatalf("exit %d, stderr %q; want exit 1 and one line", code, msg)
		}
		t.Logf("stderr: %s", msg)
		peersLeft(t, c)
	})

	t.Run("hangup", func(t *testing.T) {
		dir := t.TempDir()
		out := filepath.Join(dir, "out.bin")
		devnull, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		defer devnull.Close()
		cmd, stderr := startDfget(t, devnull, append(base, "-o", out)...)
		// Wait until the temp file is there and the download under way.
		if !tc.Eventually(20*time.Second, func() bool {
			entries, _ := os.ReadDir(dir)
			return len(entries) == 1 && strings.HasPrefix(entries[0].Name(), ".out.bin.dfget-")
		}) {
			t.Fatal("no temp file appeared")
		}
		time.Sleep(300 * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		code := waitExit(t, cmd, 30*time.Second)
		msg := stderr.String()
		if code != exitFailure || msg != "dfget: interrupted\n" {
			t.Fatalf("exit %d, stderr %q; want exit 1 and %q", code, msg, "dfget: interrupted\n")
		}
		if took := time.Since(start); took > 6*time.Second {
			t.Fatalf("dfget took %s to exit after SIGHUP", took)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Fatalf("left %d files behind (%s)", len(entries), entries[0].Name())
		}
		peersLeft(t, c)
	})
}
