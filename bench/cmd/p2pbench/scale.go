package main

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/dfly-ha/dfha/bench/harness"
	"github.com/dfly-ha/dfha/sdk"
)

// scaleResult holds every scale run, by N.
type scaleResult struct {
	p2p    map[int][]harness.Distribution
	native map[int][]harness.Run[harness.Fetch]
	t1     float64 // T(1) = size / B, the lower bound, in seconds
}

// env is what the figures that distribute files share: an origin and a cluster.
type env struct {
	origin  *harness.Origin
	cluster *harness.Cluster
	client  *sdk.Client
}

func startEnv(ctx context.Context, o options, flags ...string) (*env, error) {
	origin, err := harness.StartOrigin()
	if err != nil {
		return nil, err
	}
	c, err := harness.StartCluster(ctx, harness.ClusterConfig{Bin: o.supernode, Flags: flags, KeepDir: o.keepLogs})
	if err != nil {
		origin.Close()
		return nil, err
	}
	cl, err := sdk.New(sdk.Config{Endpoints: c.HTTPAddrs})
	if err != nil {
		c.Close()
		origin.Close()
		return nil, err
	}
	return &env{origin: origin, cluster: c, client: cl}, nil
}

func (e *env) close() {
	e.client.Close()
	e.cluster.Close()
	e.origin.Close()
}

// distribute runs one distribution of a new file and then deletes the task and the file,
// so that runs do not pile up caches.
func (e *env) distribute(ctx context.Context, o options, d harness.Dfget, name string, size int64, n int) (harness.Distribution, error) {
	f, err := e.origin.AddFile(name, size)
	if err != nil {
		return harness.Distribution{}, err
	}
	defer e.origin.Remove(name)
	dist, err := harness.Distribute(ctx, e.cluster, d, f, o.pieceSize(), n)
	if err != nil {
		return dist, err
	}
	for _, p := range dist.Items {
		if p.Summary != nil && p.Summary.TaskID != "" {
			dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			if err := e.client.DeleteTask(dctx, p.Summary.TaskID); err != nil {
				logf("deleting task %s: %v", p.Summary.TaskID, err)
			}
			cancel()
			break
		}
	}
	return dist, nil
}

func (o options) peerFlags() harness.Dfget {
	return harness.Dfget{Bin: o.dfget, DownloadLimit: harness.RateArg(o.rate()), UploadLimit: harness.RateArg(o.rate()), Timeout: o.peerTimeout}
}

func (o options) supernodeFlags(pieceSize int64) []string {
	return []string{"--piece-size", harness.SizeArg(pieceSize)}
}

// cappedFlags are the members' flags in the runs where peers and origin are capped at B.
func (o options) cappedFlags() []string {
	f := o.supernodeFlags(o.pieceSize())
	if o.memberRateMiB > 0 {
		f = append(f, "--upload-limit", harness.RateArg(o.memberRateMiB*harness.MiB))
	}
	return f
}

func scale(ctx context.Context, o options, rep *report) (*scaleResult, error) {
	e, err := startEnv(ctx, o, o.cappedFlags()...)
	if err != nil {
		return nil, err
	}
	defer e.close()
	d := o.peerFlags()
	rep.flagsUsed("scale, origin-egress", "supernode", e.cluster.Flags)
	rep.flagsUsed("scale, origin-egress", "dfget", append([]string{"-u URL -o PATH --supernodes LIST"}, d.Args()...))
	rep.flags = append(rep.flags, fmt.Sprintf("- scale, origin-egress: origin capped at %s in all; each native client capped at %s; file %s", harness.RateArg(o.rate()), harness.RateArg(o.rate()), harness.FormatMiB(o.fileSize())))
	e.origin.SetRate(o.rate(), 0)

	ns := slices.Clone(o.p2pN)
	for _, n := range o.egressN {
		if !slices.Contains(ns, n) {
			ns = append(ns, n)
		}
	}
	slices.Sort(ns)
	res := &scaleResult{p2p: map[int][]harness.Distribution{}, native: map[int][]harness.Run[harness.Fetch]{},
		t1: float64(o.fileSize()) / o.rate()}
	for r := 0; r < o.runs; r++ {
		for _, n := range ns {
			dist, err := e.distribute(ctx, o, d, fmt.Sprintf("scale-n%d-r%d.bin", n, r), o.fileSize(), n)
			if err != nil {
				return nil, err
			}
			res.p2p[n] = append(res.p2p[n], dist)
			durs := dist.PeerDurations()
			logf("p2p N=%d run %d/%d: all done in %.2fs, peer median %.2fs slowest %.2fs, %.0f%% from peers (members' count %.0f%%), origin %.2f copies, %.2f API requests/piece, %.1f pieces/report, failed %d, CPU %s",
				n, r+1, o.runs, dist.Wall().Seconds(), harness.Quantile(durs, 0.5), harness.Quantile(durs, 1),
				100*dist.FromPeers(), 100*dist.FromPeersByMetrics(), dist.Copies, dist.APIPerPiece(), dist.PiecesPerReport(), harness.Failed(dist.Run), dist.CPU)
			checkDistribution(o, rep, fmt.Sprintf("scale N=%d run %d", n, r+1), dist, true)
		}
	}
	for r := 0; r < o.nativeRuns; r++ {
		for _, n := range o.nativeN {
			name := fmt.Sprintf("native-n%d-r%d.bin", n, r)
			f, err := e.origin.AddFile(name, o.fileSize())
			if err != nil {
				return nil, err
			}
			run := harness.Native(ctx, f.URL, n, o.rate())
			e.origin.Remove(name)
			bad := 0
			for i, x := range run.Items {
				if x.Err != nil || x.SHA256 != f.SHA256 {
					bad++
					rep.fail("native N=%d run %d client %d: %v (sha256 %s)", n, r+1, i, x.Err, x.SHA256)
				}
			}
			res.native[n] = append(res.native[n], run)
			logf("native N=%d run %d/%d: all done in %.2fs, failed %d, CPU %s", n, r+1, o.nativeRuns, run.Wall().Seconds(), bad, run.CPU)
		}
	}
	res.addRows(o, rep)
	return res, nil
}

// checkDistribution records wrong downloads and, with --max-egress and egress set, too
// many origin copies.
func checkDistribution(o options, rep *report, what string, dist harness.Distribution, egress bool) {
	for _, msg := range harness.Errors(dist.Run, 5) {
		rep.fail("%s: %s", what, msg)
	}
	if n := harness.Failed(dist.Run); n > 5 {
		rep.fail("%s: %d downloads failed in all", what, n)
	}
	if egress && o.maxEgress > 0 && dist.Copies > o.maxEgress {
		rep.fail("%s: the origin sent %.3f copies of the file (limit %.2f)", what, dist.Copies, o.maxEgress)
	}
}

// over applies f to each run and returns the median and spread.
func over[T any](runs []T, f func(T) float64) harness.Stat {
	vs := make([]float64, len(runs))
	for i, r := range runs {
		vs[i] = f(r)
	}
	return harness.Of(vs...)
}

// ratio is a/b with the widest spread the two spreads allow.
func ratio(a, b harness.Stat) harness.Stat {
	return harness.Stat{Median: a.Median / b.Median, Min: a.Min / b.Max, Max: a.Max / b.Min, N: min(a.N, b.N)}
}

func cpuNote[T any](runs []harness.Run[T]) string {
	bound, worst := 0, 0.0
	for _, r := range runs {
		if r.CPU.Bound() {
			bound++
		}
		worst = max(worst, r.CPU.Busy)
	}
	if bound > 0 {
		return fmt.Sprintf("**CPU-bound** in %d of %d runs (host busy up to %.0f%%)", bound, len(runs), 100*worst)
	}
	return fmt.Sprintf("host CPU busy up to %.0f%%", 100*worst)
}

func dists(runs []harness.Distribution) []harness.Run[harness.Peer] {
	out := make([]harness.Run[harness.Peer], len(runs))
	for i, r := range runs {
		out[i] = r.Run
	}
	return out
}

func (res *scaleResult) addRows(o options, rep *report) {
	wall := func(d harness.Distribution) float64 { return d.Wall().Seconds() }
	nativeWall := func(r harness.Run[harness.Fetch]) float64 { return r.Wall().Seconds() }
	// T_p2p(1): the single peer's own time.
	t1 := over(res.p2p[1], func(d harness.Distribution) float64 { return harness.Quantile(d.PeerDurations(), 0.5) })
	nat1 := over(res.native[1], nativeWall)

	for _, n := range o.egressN {
		runs := res.p2p[n]
		if len(runs) == 0 {
			continue
		}
		copies := over(runs, func(d harness.Distribution) float64 { return d.Copies })
		rep.add(fmt.Sprintf("origin-egress, N=%d: origin bytes / file size", n), copies.Format("%.3f"),
			fmt.Sprintf("%d (native: N copies)", n), fmt.Sprintf("%.3f", copies.Median/float64(n)), "1.00 (the limit)",
			fmt.Sprintf("from the scale runs; registrations spread over the 3 members; %s", cpuNote(dists(runs))))
	}
	var table []string
	table = append(table, "| N | all done, P2P (s) | native (s) | native / P2P | median peer / T_p2p(1) | slowest peer / T_p2p(1) | from peers (summaries) | (members' count) | bound (N-1)/N | API requests / piece | pieces / report request | origin copies | elections | host CPU |",
		"| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
	for _, n := range o.p2pN {
		runs := res.p2p[n]
		if len(runs) == 0 {
			continue
		}
		tp := over(runs, wall)
		var tn harness.Stat
		nativeNote := ""
		if nr := res.native[n]; len(nr) > 0 {
			tn = over(nr, nativeWall)
		} else if nat1.N > 0 {
			k := float64(n)
			tn = harness.Stat{Median: k * nat1.Median, Min: k * nat1.Min, Max: k * nat1.Max, N: nat1.N}
			nativeNote = " (N x T_native(1), not run)"
		}
		medPeer := over(runs, func(d harness.Distribution) float64 { return harness.Quantile(d.PeerDurations(), 0.5) / t1.Median })
		slowPeer := over(runs, func(d harness.Distribution) float64 { return harness.Quantile(d.PeerDurations(), 1) / t1.Median })
		share := over(runs, func(d harness.Distribution) float64 { return d.FromPeers() })
		shareM := over(runs, func(d harness.Distribution) float64 { return d.FromPeersByMetrics() })
		api := over(runs, func(d harness.Distribution) float64 { return d.APIPerPiece() })
		perReport := over(runs, func(d harness.Distribution) float64 { return d.PiecesPerReport() })
		copies := over(runs, func(d harness.Distribution) float64 { return d.Copies })
		elections := over(runs, func(d harness.Distribution) float64 { return d.Elections() })
		bound := float64(n-1) / float64(n)
		cpu := cpuNote(dists(runs))

		ratioText := "-"
		if tn.N > 0 {
			ratioText = ratio(tn, tp).Format("%.2f")
		}
		rep.add(fmt.Sprintf("scale, N=%d: time for all to finish", n), tp.Format("%.2f s"),
			fmt.Sprintf("native %s%s", fmtStat(tn, "%.2f s"), nativeNote), ratioText+" (T_native / T_p2p)",
			fmt.Sprintf("lower bound T(1) = size/B = %.2f s", res.t1),
			fmt.Sprintf("T_p2p(N)/T_p2p(1): median peer %s, slowest %s; %s", medPeer.Format("%.2f"), slowPeer.Format("%.2f"), cpu))
		rep.add(fmt.Sprintf("scale, N=%d: share of pieces from peers", n), share.Format("%.3f"),
			fmt.Sprintf("bound (N-1)/N = %.3f", bound), ratioOrDash(share.Median, bound), "at most (N-1)/N",
			fmt.Sprintf("members' count: %s; API requests per piece %s; pieces per report request %s",
				shareM.Format("%.3f"), api.Format("%.2f"), perReport.Format("%.1f")))
		table = append(table, fmt.Sprintf("| %d | %s | %s%s | %s | %s | %s | %s | %s | %.3f | %s | %s | %s | %s | %s |",
			n, tp.Format("%.2f"), fmtStat(tn, "%.2f"), nativeNote, ratioText, medPeer.Format("%.2f"), slowPeer.Format("%.2f"),
			share.Format("%.3f"), shareM.Format("%.3f"), bound, api.Format("%.2f"), perReport.Format("%.1f"),
			copies.Format("%.3f"), elections.Format("%.0f"), cpu))
	}
	rep.detail("### scale (file %s, pieces %s, B = %s; T(1) = size/B = %.2f s; T_p2p(1) measured %s)\n",
		harness.FormatMiB(o.fileSize()), harness.SizeArg(o.pieceSize()), harness.RateArg(o.rate()), res.t1, t1.Format("%.2f s"))
	rep.detail("%s\n", strings.Join(table, "\n"))
	rep.detail("Every run: all done = from the first dfget started to the last one exited; a peer's time = its own start to exit. " +
		"Shares from peers: the dfget summaries, and 1 - the pieces the members served (their /metrics) / the pieces needed. " +
		"API requests: every route but piece data, /metrics and the members' internal forwarding, summed over the members. " +
		"Elections: counted by the members during the P2P runs (no member was killed; must be 0).\n")
	for _, n := range o.p2pN {
		for i, d := range res.p2p[n] {
			if i == 0 && d.MetricsErr == nil && len(d.Metrics.ByRoute()) > 0 {
				rep.detail("- requests by route, N=%d run 1: %s", n, strings.Join(sorted(d.Metrics.ByRoute()), "; "))
				if v, name, ok := d.Metrics.PieceBytesServed(); ok {
					rep.detail("  - %s: %.0f bytes (%.2f copies)", name, v, v/float64(o.fileSize()))
				}
			}
		}
	}
	rep.detail("")
}

func fmtStat(s harness.Stat, verb string) string {
	if s.N == 0 {
		return "-"
	}
	return s.Format(verb)
}

func ratioOrDash(a, b float64) string {
	if math.IsNaN(a) || b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", a/b)
}

func sorted(s []string) []string { slices.Sort(s); return s }
