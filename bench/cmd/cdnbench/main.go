// Command cdnbench measures a member's CDN role on a 3-member cluster of real supernode
// processes on loopback, each figure side by side with its baseline:
//
//	serving: GET /tasks/{id}/pieces/{n}/data for every piece of a cached task from the member
//	  that caches it, sequentially and with several parallel readers, against reading the
//	  same file from disk with the same pattern (same bytes, same chunks, same readers).
//	origin fetch: the time from POST /tasks until GET /tasks/{id} says success, the file
//	  coming from a local HTTP origin (this program's net/http server on 127.0.0.1 serving
//	  it from disk), against `curl -s -o FILE URL` of the same URL onto the same disk, then fsync(FILE).
//
// Each figure is the median of --runs runs, with the spread; results go to stdout and, with
// --out, to a Markdown file.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dfly-ha/dfha/bench/harness"
	"github.com/dfly-ha/dfha/sdk"
	"github.com/dfly-ha/dfha/sdk/api"
	"github.com/dfly-ha/dfha/test/procs"
	"github.com/spf13/pflag"
)

type options struct {
	bin       string
	curl      string
	size      int64
	pieceSize int64
	runs      int
	readers   int
	dir       string
	out       string
	extraArgs []string
}

func main() {
	var o options
	var size, pieceSize string
	fs := pflag.NewFlagSet("cdnbench", pflag.ContinueOnError)
	fs.StringVar(&o.bin, "supernode", "./bin/supernode", "supernode binary")
	fs.StringVar(&o.curl, "curl", "curl", "curl binary (the origin fetch's baseline)")
	fs.StringVar(&size, "size", "256MiB", "size of the file (SIZE)")
	fs.StringVar(&pieceSize, "piece-size", "4MiB", "--piece-size of the members (SIZE)")
	fs.IntVar(&o.runs, "runs", 5, "runs of each figure (the median is reported, with the spread)")
	fs.IntVar(&o.readers, "readers", 4, "parallel readers of the parallel serving figure")
	fs.StringVar(&o.dir, "dir", "", "directory for the file and the members' data (default: a new temp dir, removed at the end)")
	fs.StringVar(&o.out, "out", "", "also write the results as Markdown to this file")
	fs.StringSliceVar(&o.extraArgs, "supernode-arg", nil, "extra flag for every member (repeatable; listed in the results)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	var err error
	if o.size, err = parseSize(size); err != nil || o.size <= 0 {
		fmt.Fprintf(os.Stderr, "cdnbench: --size %q: want a positive size\n", size)
		os.Exit(2)
	}
	if o.pieceSize, err = parseSize(pieceSize); err != nil || o.pieceSize <= 0 {
		fmt.Fprintf(os.Stderr, "cdnbench: --piece-size %q: want a positive size\n", pieceSize)
		os.Exit(2)
	}
	if o.runs < 1 || o.readers < 1 {
		fmt.Fprintln(os.Stderr, "cdnbench: --runs and --readers must be at least 1")
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "cdnbench:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	dir := o.dir
	if dir == "" {
		d, err := os.MkdirTemp("", "cdnbench")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	file := filepath.Join(dir, "origin.bin")
	if err := writeRandomFile(file, o.size); err != nil {
		return err
	}
	org, err := startOrigin(file)
	if err != nil {
		return err
	}
	defer org.close()

	args := append([]string{"--piece-size", strconv.FormatInt(o.pieceSize, 10)}, o.extraArgs...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	c, err := procs.Start(ctx, o.bin, dir, 3, args...)
	cancel()
	if err != nil {
		return err
	}
	defer c.StopAll()
	cl, err := sdk.New(sdk.Config{Endpoints: c.HTTPAddrs})
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()

	// Origin fetch: curl and the cluster take turns, on a new URL (a new task) each run.
	var curlMiBs, fetchMiBs []float64
	var fetchBusy []float64
	var kept *api.Task
	for r := 0; r < o.runs; r++ {
		url := fmt.Sprintf("%s/origin.bin?run=%d", org.url, r)
		d, err := curlTime(ctx, o.curl, url, filepath.Join(dir, "curl.out"))
		if err != nil {
			return err
		}
		curlMiBs = append(curlMiBs, mibs(o.size, d))
		before := org.sent.Load()
		cpu := harness.StartCPU()
		task, d, err := fetchTime(ctx, cl, url)
		if err != nil {
			return fmt.Errorf("origin fetch run %d: %w", r+1, err)
		}
		fetchBusy = append(fetchBusy, cpu.Stop().Busy)
		if sent := org.sent.Load() - before; sent != o.size {
			return fmt.Errorf("origin fetch run %d: the origin sent %d bytes for a %d-byte file", r+1, sent, o.size)
		}
		fetchMiBs = append(fetchMiBs, mibs(o.size, d))
		fmt.Fprintf(os.Stderr, "origin fetch run %d: curl %.0f MiB/s, cluster %.0f MiB/s\n", r+1, curlMiBs[r], fetchMiBs[r])
		kept = task // every run's task is kept: deleting one would load the disk during the next run
	}

	// Serving: the member that caches the last task, against the file on disk.
	owner := -1
	for i, id := range c.IDs {
		if len(kept.Owners) > 0 && id == kept.Owners[0] {
			owner = i
		}
	}
	if owner < 0 {
		return fmt.Errorf("task %s: owner %v is not a member", kept.TaskID, kept.Owners)
	}
	other := (owner + 1) % len(c.IDs)
	count := int((o.size + o.pieceSize - 1) / o.pieceSize)
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	disk := func(n int, buf []byte) error {
		off := int64(n) * o.pieceSize
		return drain(io.NewSectionReader(f, off, min(o.pieceSize, o.size-off)), buf, min(o.pieceSize, o.size-off))
	}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}}
	member := func(addr string) func(int, []byte) error {
		return func(n int, buf []byte) error {
			resp, err := hc.Get(fmt.Sprintf("http://%s/tasks/%s/pieces/%d/data", addr, kept.TaskID, n))
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("piece %d: status %d", n, resp.StatusCode)
			}
			off := int64(n) * o.pieceSize
			return drain(resp.Body, buf, min(o.pieceSize, o.size-off))
		}
	}
	// Cold runs read from the disk on both sides: before each one, the pages of the file and
	// of the member's pieces are dropped from the page cache.
	pieceDir := filepath.Join(dir, c.IDs[owner], "cdn")
	dropAll := func() error {
		if err := dropCache(file); err != nil {
			return err
		}
		return filepath.WalkDir(pieceDir, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".piece") {
				return err
			}
			return dropCache(path)
		})
	}
	type figure struct {
		name          string
		readers       int
		cold          bool
		ours, base    []float64
		busy          []float64
		target        string
		oursFn, baseF func(int, []byte) error
	}
	figs := []*figure{
		{name: "serving, cold, 1 reader", readers: 1, cold: true, target: ">= 0.8", oursFn: member(c.HTTPAddrs[owner]), baseF: disk},
		{name: fmt.Sprintf("serving, cold, %d readers", o.readers), readers: o.readers, cold: true, target: ">= 0.8", oursFn: member(c.HTTPAddrs[owner]), baseF: disk},
		{name: "serving, warm, 1 reader", readers: 1, target: "-", oursFn: member(c.HTTPAddrs[owner]), baseF: disk},
		{name: fmt.Sprintf("serving, warm, %d readers", o.readers), readers: o.readers, target: "-", oursFn: member(c.HTTPAddrs[owner]), baseF: disk},
		{name: "serving, warm, 1 reader, through a member without the pieces", readers: 1, target: "-", oursFn: member(c.HTTPAddrs[other]), baseF: disk},
	}
	for _, fg := range figs {
		// Warm up once (connections, page cache), then alternate baseline and ours.
		if _, err := readAll(count, fg.readers, fg.baseF, o.pieceSize); err != nil {
			return fmt.Errorf("%s (disk): %w", fg.name, err)
		}
		if _, err := readAll(count, fg.readers, fg.oursFn, o.pieceSize); err != nil {
			return fmt.Errorf("%s: %w", fg.name, err)
		}
		for r := 0; r < o.runs; r++ {
			if fg.cold {
				if err := dropAll(); err != nil {
					return fmt.Errorf("dropping the page cache: %w", err)
				}
			}
			d, err := readAll(count, fg.readers, fg.baseF, o.pieceSize)
			if err != nil {
				return fmt.Errorf("%s (disk): %w", fg.name, err)
			}
			fg.base = append(fg.base, mibs(o.size, d))
			if fg.cold {
				if err := dropAll(); err != nil {
					return fmt.Errorf("dropping the page cache: %w", err)
				}
			}
			cpu := harness.StartCPU()
			d, err = readAll(count, fg.readers, fg.oursFn, o.pieceSize)
			if err != nil {
				return fmt.Errorf("%s: %w", fg.name, err)
			}
			fg.busy = append(fg.busy, cpu.Stop().Busy)
			fg.ours = append(fg.ours, mibs(o.size, d))
			fmt.Fprintf(os.Stderr, "%s run %d: disk %.0f MiB/s, member %.0f MiB/s\n", fg.name, r+1, fg.base[r], fg.ours[r])
		}
	}

	var lines []string
	say := func(f string, a ...any) {
		line := fmt.Sprintf(f, a...)
		fmt.Println(line)
		lines = append(lines, line)
	}
	host, _ := os.Hostname()
	say("# cdnbench: CDN serving and origin fetch, 3 supernode processes on loopback")
	say("")
	say("machine: %s, %d CPUs, %s/%s; date: %s", host, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, time.Now().UTC().Format(time.RFC3339))
	say("file: %s (%d pieces of %s); %d runs per figure, median (min..max); throughput in MiB/s", sizeString(o.size), count, sizeString(o.pieceSize), o.runs)
	say("supernode flags: defaults, plus: --piece-size %d %s", o.pieceSize, orNone(o.extraArgs))
	say("")
	say("| figure | ours (MiB/s) | baseline (MiB/s) | ratio | target | notes |")
	say("| --- | --- | --- | --- | --- | --- |")
	for _, fg := range figs {
		om, olo, ohi := medianSpread(fg.ours)
		bm, blo, bhi := medianSpread(fg.base)
		how := fmt.Sprintf("every piece with GET /tasks/{id}/pieces/{n}/data over loopback from the member that caches it (%s)", c.IDs[owner])
		if fg.oursFn != nil && strings.Contains(fg.name, "without") {
			how = fmt.Sprintf("every piece from member %s, which streams it from %s", c.IDs[other], c.IDs[owner])
		}
		cache := "page cache warm on both sides"
		if fg.cold {
			cache = "page cache of the file and of the pieces dropped before each run (posix_fadvise)"
		}
		say("| %s | %.0f (%.0f..%.0f) | %.0f (%.0f..%.0f) | %.2f | %s | %s; baseline: the same %s chunks of the file read from disk by as many readers; %s%s |",
			fg.name, om, olo, ohi, bm, blo, bhi, om/bm, fg.target, how, sizeString(o.pieceSize), cache, cpuBound(fg.busy))
	}
	om, olo, ohi := medianSpread(fetchMiBs)
	bm, blo, bhi := medianSpread(curlMiBs)
	say("| origin fetch: POST /tasks -> status success vs curl | %.0f (%.0f..%.0f) | %.0f (%.0f..%.0f) | %.2f | >= 0.9 | a new task per run from a net/http origin on 127.0.0.1 serving the file from disk; baseline: `curl -s -o FILE URL` onto the same disk, then fsync(FILE); the member also hashes every piece and commits its digest; origin sent 1.00 copy per run%s |",
		om, olo, ohi, bm, blo, bhi, om/bm, cpuBound(fetchBusy))
	say("")
	say("runs (ours / baseline, MiB/s):")
	for _, fg := range figs {
		say("- %s: %s / %s", fg.name, floats(fg.ours), floats(fg.base))
	}
	say("- origin fetch: %s / %s", floats(fetchMiBs), floats(curlMiBs))
	if o.out != "" {
		return os.WriteFile(o.out, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
	}
	return nil
}

// writeRandomFile writes size random bytes to path, durably.
func writeRandomFile(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	_, err = io.CopyN(f, rand.Reader, size)
	if err == nil {
		err = f.Sync() // clean pages: the cold runs can drop them from the page cache
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// origin is a net/http server on 127.0.0.1 that serves one file from disk (Range, HEAD,
// Last-Modified) at any path, and counts the body bytes it sends.
type origin struct {
	url  string
	srv  *http.Server
	sent atomic.Int64
}

func startOrigin(path string) (*origin, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	o := &origin{url: "http://" + ln.Addr().String()}
	o.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Open(path)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		http.ServeContent(&countingWriter{ResponseWriter: w, sent: &o.sent}, r, "", st.ModTime(), f)
	})}
	go func() { _ = o.srv.Serve(ln) }()
	return o, nil
}

func (o *origin) close() { _ = o.srv.Close() }

// countingWriter counts the body bytes of a response. It passes ReadFrom on, so that
// net/http still sends the file with sendfile.
type countingWriter struct {
	http.ResponseWriter
	sent *atomic.Int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.sent.Add(int64(n))
	return n, err
}

func (w *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	n, err := w.ResponseWriter.(io.ReaderFrom).ReadFrom(r)
	w.sent.Add(n)
	return n, err
}

// curlTime times `curl -s -o FILE URL` and an fsync of FILE: the file stored durably on
// the same disk as the members' caches, as a member stores its pieces before it announces
// them (it also hashes every piece).
func curlTime(ctx context.Context, curl, url, file string) (time.Duration, error) {
	defer os.Remove(file)
	start := time.Now()
	out, err := exec.CommandContext(ctx, curl, "-s", "-f", "-o", file, url).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("curl %s: %v %s", url, err, out)
	}
	f, err := os.Open(file)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("fsync %s: %w", file, err)
	}
	return time.Since(start), nil
}

// fetchTime registers url and polls the task until it is complete. The peer that registers
// it is registered again first (idempotent): it sends no heartbeats, so the cluster may have
// expired it since the last run.
func fetchTime(ctx context.Context, cl *sdk.Client, url string) (*api.Task, time.Duration, error) {
	if _, err := cl.RegisterPeer(ctx, api.RegisterPeerRequest{ID: "cdnbench", IP: "127.0.0.1", Port: 1, Hostname: "cdnbench"}); err != nil {
		return nil, 0, err
	}
	start := time.Now()
	task, _, err := cl.RegisterTask(ctx, api.RegisterTaskRequest{URL: url, PeerID: "cdnbench"})
	if err != nil {
		return nil, 0, err
	}
	for {
		t, err := cl.GetTask(ctx, task.TaskID)
		if err != nil {
			return nil, 0, err
		}
		switch t.Status {
		case "success":
			return t, time.Since(start), nil
		case "failed":
			return nil, 0, errors.New("the task failed")
		}
		select {
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// readAll reads pieces 0..count-1 with read, from readers goroutines taking the next piece
// in turn, and returns the time it took.
func readAll(count, readers int, read func(int, []byte) error, pieceSize int64) (time.Duration, error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	start := time.Now()
	for range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, min(pieceSize, 256<<10))
			for {
				n := int(next.Add(1) - 1)
				if n >= count {
					return
				}
				if err := read(n, buf); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	d := time.Since(start)
	return d, <-errs
}

// drain reads r to its end through buf and checks that it gave want bytes.
func drain(r io.Reader, buf []byte, want int64) error {
	var got int64
	for {
		n, err := r.Read(buf)
		got += int64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if got != want {
		return fmt.Errorf("read %d bytes, want %d", got, want)
	}
	return nil
}

func mibs(size int64, d time.Duration) float64 { return float64(size) / (1 << 20) / d.Seconds() }

func cpuBound(busy []float64) string {
	for _, b := range busy {
		if b >= harness.CPUBoundAt {
			return "; **CPU-bound** (host CPU busy >= 90%)"
		}
	}
	return ""
}

// medianSpread is harness.Of as three numbers, for the table.
func medianSpread(v []float64) (med, lo, hi float64) {
	st := harness.Of(v...)
	return st.Median, st.Min, st.Max
}

func floats(v []float64) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = fmt.Sprintf("%.0f", x)
	}
	return strings.Join(parts, ", ")
}

func orNone(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return strings.Join(v, " ")
}

func sizeString(n int64) string {
	switch {
	case n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// parseSize reads 256MiB, 4MiB, 512KiB or plain bytes.
func parseSize(s string) (int64, error) {
	for _, m := range []struct {
		suffix string
		factor int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}, {"", 1}} {
		if num, ok := strings.CutSuffix(strings.TrimSpace(s), m.suffix); ok {
			v, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("size %q: want bytes or a whole number of KiB, MiB or GiB", s)
			}
			return v * m.factor, nil
		}
	}
	return 0, fmt.Errorf("size %q", s)
}
