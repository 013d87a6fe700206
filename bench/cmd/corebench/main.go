// Command corebench measures the replicated core on a 3-member cluster of real supernode
// processes on loopback:
//
//	raft-reports: newly recorded (peer, piece) pairs per second, end to end through the HTTP
//	  API, from P concurrent simulated peers spread over all members, R pieces per request.
//	failover: the leader is killed (SIGKILL) K times during a steady write load; time from
//	  the kill to the next accepted write, and elections during a loaded run without kills.
//
// Results go to stdout and, with --out, to a Markdown file.
package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dfly-ha/dfha/sdk"
	"github.com/dfly-ha/dfha/sdk/api"
	"github.com/dfly-ha/dfha/test/procs"
	"github.com/spf13/pflag"
	"github.com/valyala/fasthttp"
)

type options struct {
	bin       string
	peers     int
	perReq    int
	duration  time.Duration
	kills     int
	runs      int
	out       string
	extraArgs []string
	endpoints []string
}

func main() {
	var o options
	fs := pflag.NewFlagSet("corebench", pflag.ContinueOnError)
	fs.StringVar(&o.bin, "supernode", "./bin/supernode", "supernode binary")
	fs.IntVar(&o.peers, "peers", 200, "concurrent simulated peers (raft-reports)")
	fs.IntVar(&o.perReq, "pieces-per-request", 4, "pieces per report request")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "length of one raft-reports run (also the no-kill loaded run)")
	fs.IntVar(&o.runs, "runs", 3, "raft-reports runs (the median is reported)")
	fs.IntVar(&o.kills, "kills", 5, "leader kills in the failover run")
	fs.StringVar(&o.out, "out", "", "also write the results as Markdown to this file")
	fs.StringSliceVar(&o.endpoints, "endpoints", nil, "measure raft-reports once against this running cluster instead (no failover run)")
	fs.StringSliceVar(&o.extraArgs, "supernode-arg", nil, "extra flag for every member (repeatable; listed in the results)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "corebench:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	var lines []string
	say := func(f string, a ...any) {
		line := fmt.Sprintf(f, a...)
		fmt.Println(line)
		lines = append(lines, line)
	}
	host, _ := os.Hostname()
	say("# corebench: replicated core, 3 supernode processes on loopback")
	say("")
	say("machine: %s, %d CPUs, %s/%s; date: %s", host, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, time.Now().UTC().Format(time.RFC3339))
	say("supernode flags: defaults, plus: %s", orNone(o.extraArgs))
	say("")

	var pairs []float64
	var cpuBusy []float64
	var detail []string
	for r := 0; r < o.runs; r++ {
		res, err := raftReports(o)
		if err != nil {
			return fmt.Errorf("raft-reports run %d: %w", r+1, err)
		}
		pairs = append(pairs, res.pairsPerSec)
		cpuBusy = append(cpuBusy, res.cpuBusy)
		detail = append(detail, res.String())
	}
	med, lo, hi := medianSpread(pairs)
	if len(o.endpoints) > 0 {
		say("%s", detail[0])
		return nil
	}
	say("| figure | ours | target | notes |")
	say("| --- | --- | --- | --- |")
	say("| raft-reports: new (peer, piece) pairs/s | %.0f (runs: %s) | >= 200,000 | %d peers, %d pieces/request, to all 3 members, %s each%s |",
		med, spread(lo, hi, len(pairs)), o.peers, o.perReq, o.duration, cpuBound(cpuBusy))

	fo, err := failover(o)
	if err != nil {
		return fmt.Errorf("failover: %w", err)
	}
	say("| failover: kill -9 leader -> next accepted write, p50 | %s | < 1.5 s | %d kills under a %d-peer write load |", fo.p50.Round(time.Millisecond), len(fo.times), fo.loadPeers)
	say("| failover: worst | %s | - | all kill times: %s |", fo.worst.Round(time.Millisecond), durations(fo.times))
	say("| failover: failed writes that were never accepted | %d | 0 | writes retried through the sdk |", fo.lostWrites)
	say("| unplanned elections in a loaded run without kills | %d | 0 | %s of raft-reports load |", fo.unplanned, o.duration)
	say("")
	say("raft-reports runs:")
	for _, d := range detail {
		say("- %s", d)
	}
	if o.out != "" {
		return os.WriteFile(o.out, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
	}
	return nil
}

type reportResult struct {
	pairsPerSec, reqPerSec, cpuBusy float64
	p50, p99                        time.Duration
	errors                          int64
	cmdsPerEntry                    float64
}

func (r reportResult) String() string {
	return fmt.Sprintf("%.0f pairs/s, %.0f requests/s, latency p50 %s p99 %s, %.1f commands per log entry, %d errors, host CPU busy %.0f%%",
		r.pairsPerSec, r.reqPerSec, r.p50.Round(time.Microsecond), r.p99.Round(time.Microsecond), r.cmdsPerEntry, r.errors, 100*r.cpuBusy)
}

// startCluster starts 3 members in a fresh temp dir.
func startCluster(o options) (*procs.Cluster, func(), error) {
	dir, err := os.MkdirTemp("", "corebench")
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := procs.Start(ctx, o.bin, dir, 3, o.extraArgs...)
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	return c, func() { c.StopAll(); os.RemoveAll(dir) }, nil
}

// setupPeers registers n peers and one task; it returns the task ID.
func setupPeers(ctx context.Context, cl *sdk.Client, n int, prefix string) (string, error) {
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			_, err := cl.RegisterPeer(ctx, api.RegisterPeerRequest{ID: fmt.Sprintf("%s-%d", prefix, i), IP: "127.0.0.1", Port: 30000 + i%30000, Hostname: "bench"})
			if err != nil {
				firstErr.CompareAndSwap(nil, err)
			}
		}(i)
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return "", err
	}
	task, _, err := cl.RegisterTask(ctx, api.RegisterTaskRequest{URL: "http://127.0.0.1:9/" + prefix, PeerID: prefix + "-0"})
	if err != nil {
		return "", err
	}
	return task.TaskID, nil
}

// loadGen runs p simulated peers, each sending PUT /tasks/{id}/pieces with perReq new
// pieces to one member (peers spread over all members), until stop is closed.
type loadGen struct {
	ok, failed atomic.Int64
	latMu      sync.Mutex
	lat        []time.Duration
}

func (g *loadGen) run(addrs []string, taskID, prefix string, p, perReq int, stop <-chan struct{}) {
	var wg sync.WaitGroup
	clients := make([]*fasthttp.HostClient, len(addrs))
	for i, a := range addrs {
		clients[i] = &fasthttp.HostClient{Addr: a, MaxConns: p, ReadTimeout: 15 * time.Second, WriteTimeout: 5 * time.Second}
	}
	for i := 0; i < p; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			hc := clients[i%len(clients)]
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			uri := "http://" + hc.Addr + "/tasks/" + taskID + "/pieces"
			peerID := fmt.Sprintf("%s-%d", prefix, i)
			var body []byte
			var lats []time.Duration
			for next := 0; next+perReq-1 <= api.MaxPieceIndex; next += perReq {
				select {
				case <-stop:
					g.latMu.Lock()
					g.lat = append(g.lat, lats...)
					g.latMu.Unlock()
					return
				default:
				}
				// {"peer_id":"P","reports":[{"pieces":"A-B","status":"success"}]}, built without
				// reflection so that the load generator leaves the CPU to the members
				body = append(body[:0], `{"peer_id":"`...)
				body = append(body, peerID...)
				body = append(body, `","reports":[{"pieces":"`...)
				body = strconv.AppendInt(body, int64(next), 10)
				body = append(body, '-')
				body = strconv.AppendInt(body, int64(next+perReq-1), 10)
				body = append(body, `","status":"success"}]}`...)
				req.Reset()
				req.SetRequestURI(uri)
				req.Header.SetMethod("PUT")
				req.Header.SetContentType("application/json")
				req.SetBody(body)
				start := time.Now()
				err := hc.Do(req, resp)
				if err == nil && resp.StatusCode() == fasthttp.StatusNoContent {
					g.ok.Add(1)
					lats = append(lats, time.Since(start))
				} else {
					g.failed.Add(1)
					next -= perReq // retry the same pieces: they must land once
					time.Sleep(20 * time.Millisecond)
				}
			}
		}(i)
	}
	wg.Wait()
}

func raftReports(o options) (reportResult, error) {
	addrs := o.endpoints
	if len(addrs) == 0 {
		c, done, err := startCluster(o)
		if err != nil {
			return reportResult{}, err
		}
		defer done()
		addrs = c.HTTPAddrs
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cl, err := sdk.New(sdk.Config{Endpoints: addrs})
	if err != nil {
		return reportResult{}, err
	}
	prefix := fmt.Sprintf("rr%d", time.Now().UnixNano()%1e6)
	taskID, err := setupPeers(ctx, cl, o.peers, prefix)
	if err != nil {
		return reportResult{}, fmt.Errorf("setup: %w", err)
	}
	leaderAddr := cl.Leader()
	entriesBefore, cmdsBefore := entryStats(leaderAddr)
	var g loadGen
	stop := make(chan struct{})
	cpu0 := readCPU()
	start := time.Now()
	go func() { time.Sleep(o.duration); close(stop) }()
	g.run(addrs, taskID, prefix, o.peers, o.perReq, stop)
	elapsed := time.Since(start)
	busy := cpuBusySince(cpu0)
	entriesAfter, cmdsAfter := entryStats(leaderAddr)
	sort.Slice(g.lat, func(i, j int) bool { return g.lat[i] < g.lat[j] })
	res := reportResult{
		pairsPerSec: float64(g.ok.Load()*int64(o.perReq)) / elapsed.Seconds(),
		reqPerSec:   float64(g.ok.Load()) / elapsed.Seconds(),
		errors:      g.failed.Load(),
		cpuBusy:     busy,
	}
	if n := len(g.lat); n > 0 {
		res.p50, res.p99 = g.lat[n/2], g.lat[n*99/100]
	}
	if e := entriesAfter - entriesBefore; e > 0 {
		res.cmdsPerEntry = (cmdsAfter - cmdsBefore) / e
	}
	return res, nil
}

type failoverResult struct {
	times      []time.Duration
	p50, worst time.Duration
	lostWrites int64
	unplanned  int
	loadPeers  int
}

func failover(o options) (failoverResult, error) {
	c, done, err := startCluster(o)
	if err != nil {
		return failoverResult{}, err
	}
	defer done()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cl, err := sdk.New(sdk.Config{Endpoints: c.HTTPAddrs})
	if err != nil {
		return failoverResult{}, err
	}
	loadPeers := 20
	taskID, err := setupPeers(ctx, cl, max(o.peers, loadPeers), "fo")
	if err != nil {
		return failoverResult{}, err
	}
	res := failoverResult{loadPeers: loadPeers}

	// A loaded run without kills: no elections may happen.
	before := electionsTotal(c)
	var g loadGen
	stop := make(chan struct{})
	go func() { time.Sleep(o.duration); close(stop) }()
	g.run(c.HTTPAddrs, taskID, "fo", o.peers, o.perReq, stop)
	res.unplanned = electionsTotal(c) - before

	// Kills under a steady load of sdk writers (they retry through failovers).
	for k := 0; k < o.kills; k++ {
		leader, err := c.WaitLeader(ctx, c.All())
		if err != nil {
			return res, err
		}
		stopLoad := make(chan struct{})
		var wg sync.WaitGroup
		var lost atomic.Int64
		for w := 0; w < loadPeers; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for n := 0; ; n++ {
					select {
					case <-stopLoad:
						return
					default:
					}
					wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
					err := cl.ReportPieces(wctx, taskID, strconv.Itoa(n%100000), api.PieceReport{PeerID: fmt.Sprintf("fo-%d", w), Status: "success"})
					wcancel()
					if err != nil {
						lost.Add(1)
					}
				}
			}(w)
		}
		time.Sleep(time.Second)
		if err := c.Kill(leader); err != nil {
			return res, err
		}
		killed := time.Now()
		// The next accepted write: a fresh write, retried by the sdk, until it succeeds.
		probe, _ := sdk.New(sdk.Config{Endpoints: c.HTTPAddrs, MaxAttempts: 1000, BackoffMax: 50 * time.Millisecond})
		for {
			pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
			err := probe.ReportPieces(pctx, taskID, strconv.Itoa(200000+k), api.PieceReport{PeerID: "fo-0", Status: "success"})
			pcancel()
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return res, fmt.Errorf("no write accepted after kill %d: %w", k+1, err)
			}
		}
		res.times = append(res.times, time.Since(killed))
		close(stopLoad)
		wg.Wait()
		res.lostWrites += lost.Load()
		if err := c.Restart(leader); err != nil {
			return res, err
		}
		if _, err := c.WaitLeader(ctx, c.All()); err != nil {
			return res, err
		}
	}
	if len(res.times) > 0 {
		sorted := append([]time.Duration(nil), res.times...)
		sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
		res.p50, res.worst = sorted[len(sorted)/2], sorted[len(sorted)-1]
	}
	return res, nil
}

// metricValue sums a Prometheus metric's samples (by name prefix match) on one member.
func metricValue(addr, name string) float64 {
	status, body, err := fasthttp.GetTimeout(nil, "http://"+addr+"/metrics", 5*time.Second)
	if err != nil || status != 200 {
		return 0
	}
	total := 0.0
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, name+" ") || strings.HasPrefix(line, name+"{") {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			total += v
		}
	}
	return total
}

func entryStats(addr string) (entries, commands float64) {
	return metricValue(addr, "dfha_raft_entry_commands_count"), metricValue(addr, "dfha_raft_entry_commands_sum")
}

func electionsTotal(c *procs.Cluster) int {
	n := 0.0
	for _, a := range c.HTTPAddrs {
		n += metricValue(a, "dfha_raft_elections_total")
	}
	return int(n)
}

// readCPU returns the busy and total jiffies of the host from /proc/stat.
func readCPU() [2]float64 {
	p, err := os.ReadFile("/proc/stat")
	if err != nil {
		return [2]float64{}
	}
	f := strings.Fields(strings.SplitN(string(p), "\n", 2)[0])
	var total, idle float64
	for i, s := range f[1:] {
		v, _ := strconv.ParseFloat(s, 64)
		total += v
		if i == 3 || i == 4 { // idle, iowait
			idle += v
		}
	}
	return [2]float64{total - idle, total}
}

func cpuBusySince(start [2]float64) float64 {
	now := readCPU()
	if now[1] <= start[1] {
		return 0
	}
	return (now[0] - start[0]) / (now[1] - start[1])
}

func cpuBound(busy []float64) string {
	for _, b := range busy {
		if b >= 0.9 {
			return "; **CPU-bound** (host CPU busy >= 90%)"
		}
	}
	return ""
}

func medianSpread(v []float64) (med, lo, hi float64) {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2], s[0], s[len(s)-1]
}

func spread(lo, hi float64, n int) string { return fmt.Sprintf("%d, %.0f..%.0f", n, lo, hi) }

func durations(ds []time.Duration) string {
	var parts []string
	for _, d := range ds {
		parts = append(parts, d.Round(time.Millisecond).String())
	}
	return strings.Join(parts, ", ")
}

func orNone(v []string) string {
	if len(v) == 0 {
		return "none"
	}
	return strings.Join(v, " ")
}
