// Command p2pbench measures the figures of the benchmark contract that involve dfget, on a
// 3-member cluster of real supernode processes, real dfget processes and a real HTTP origin,
// all on 127.0.0.1:
//
//	origin-egress: origin bytes / file size for N peers (taken from the scale runs).
//	scale: time for N peers to finish through P2P against N plain fetches from the origin
//	  ("native"), every peer and the origin capped at the same rate B; the share of pieces
//	  from peers, API requests per piece, pieces per report request.
//	single: one dfget against curl from the origin, uncapped, cold and warm.
//	raft-reports at dfget's batch size: corebench's load with the pieces per report request
//	  dfget really sent in the scale runs.
//	failover: the leader killed during a distribution to 20 peers, once per distribution.
//	memory: members' peak RSS with 10,000 simulated peers on one task of 4,096 pieces.
//
// Results go to stdout and, with --out, to a Markdown file; --plot draws scale.png. The run
// fails (exit 1, after writing the results) when a download was wrong, or, with
// --max-egress, when the origin sent more copies than that in a run.
package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/dfly-ha/dfha/bench/harness"
)

type options struct {
	supernode, dfget, corebench string
	figures                     []string

	fileMiB, rateMiB float64
	memberRateMiB    float64
	pieceKiB         int
	p2pN, nativeN    []int
	egressN          []int
	runs, nativeRuns int
	peerTimeout      time.Duration

	singleMiB      float64
	singleRuns     int
	singlePieceKiB int

	rrDuration time.Duration

	foPeers, kills int
	killAfter      time.Duration

	memPeers, memPieces int

	maxEgress float64
	keepLogs  bool
	out, plot string
}

func (o options) fileSize() int64  { return int64(o.fileMiB * harness.MiB) }
func (o options) pieceSize() int64 { return int64(o.pieceKiB) * harness.KiB }
func (o options) rate() float64    { return o.rateMiB * harness.MiB }
func (o options) wants(f string) bool {
	return slices.Contains(o.figures, f) || slices.Contains(o.figures, "all")
}

func main() {
	var o options
	fs := pflag.NewFlagSet("p2pbench", pflag.ContinueOnError)
	fs.StringVar(&o.supernode, "supernode", "./bin/supernode", "supernode binary")
	fs.StringVar(&o.dfget, "dfget", "./bin/dfget", "dfget binary")
	fs.StringVar(&o.corebench, "corebench", "./bin/corebench", "corebench binary (raft-reports at dfget's batch size)")
	fs.StringSliceVar(&o.figures, "figures", []string{"all"}, "figures to measure: scale (with origin-egress), single, raft-reports, failover, memory, or all")
	fs.Float64Var(&o.fileMiB, "file-mib", 16, "file size in MiB (scale, origin-egress, failover)")
	fs.IntVar(&o.pieceKiB, "piece-kib", 1024, "members' --piece-size in KiB")
	fs.Float64Var(&o.rateMiB, "rate-mibps", 2, "B in MiB/s: each peer's -s and --upload-limit, the origin's cap and each native client's cap")
	fs.Float64Var(&o.memberRateMiB, "member-upload-mibps", 0, "members' --upload-limit in MiB/s in the runs capped at B (0: the default, none)")
	fs.IntSliceVar(&o.p2pN, "p2p-n", []int{1, 5, 10, 25, 50, 100}, "peer counts of the P2P scale runs")
	fs.IntSliceVar(&o.nativeN, "native-n", []int{1, 5, 10, 25}, "client counts of the native scale runs")
	fs.IntSliceVar(&o.egressN, "egress-n", []int{1, 10, 50, 100}, "peer counts reported for origin-egress (run with the scale runs)")
	fs.IntVar(&o.runs, "runs", 3, "runs of each P2P peer count (and of single)")
	fs.IntVar(&o.nativeRuns, "native-runs", 1, "runs of each native client count (the capped origin makes them long and steady)")
	fs.DurationVar(&o.peerTimeout, "peer-timeout", 5*time.Minute, "a dfget still running after this long is killed and counted as failed")
	fs.Float64Var(&o.singleMiB, "single-mib", 256, "file size in MiB of the single figure (uncapped)")
	fs.IntVar(&o.singlePieceKiB, "single-piece-kib", 4096, "members' --piece-size in KiB for the single figure (4 MiB: the supernode's own rule for such files)")
	fs.IntVar(&o.singleRuns, "single-runs", 3, "runs of the single figure")
	fs.DurationVar(&o.rrDuration, "raft-reports-duration", 10*time.Second, "length of each raft-reports run at dfget's batch size")
	fs.IntVar(&o.foPeers, "failover-peers", 20, "peers of each failover distribution")
	fs.IntVar(&o.kills, "kills", 5, "leader kills, one per distribution")
	fs.DurationVar(&o.killAfter, "kill-after", 0, "time from the start of a distribution to the kill (default: a third of file/B)")
	fs.IntVar(&o.memPeers, "memory-peers", 10000, "simulated peers of the memory figure")
	fs.IntVar(&o.memPieces, "memory-pieces", 4096, "pieces of the memory figure's task")
	fs.Float64Var(&o.maxEgress, "max-egress", 0, "fail when the origin sent more copies than this in a P2P run (0: report only)")
	fs.BoolVar(&o.keepLogs, "keep-logs", false, "keep the members' data and logs (their paths are printed)")
	fs.StringVar(&o.out, "out", "", "also write the results as Markdown to this file")
	fs.StringVar(&o.plot, "plot", "", "draw distribution time against N (scale) to this PNG")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	harness.HandleSignals()
	code := run(o)
	harness.Cleanup()
	os.Exit(code)
}

func run(o options) int {
	ctx := context.Background()
	rep := newReport(o)
	var errs []error
	step := func(name string, f func() error) {
		if !o.wants(name) {
			return
		}
		start := time.Now()
		logf("== %s", name)
		if err := f(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			logf("%s: %v", name, err)
		}
		logf("== %s done in %s", name, time.Since(start).Round(time.Second))
	}
	var sc *scaleResult
	step("scale", func() (err error) { sc, err = scale(ctx, o, rep); return err })
	step("single", func() error { return single(ctx, o, rep) })
	step("raft-reports", func() error { return raftReportsAtBatch(ctx, o, rep, sc) })
	step("failover", func() error { return failover(ctx, o, rep) })
	step("memory", func() error { return memory(ctx, o, rep) })

	if sc != nil && o.plot != "" {
		if err := plotScale(o, sc, o.plot); err != nil {
			errs = append(errs, fmt.Errorf("plot: %w", err))
		}
	}
	text := rep.markdown(errs)
	fmt.Print(text)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(text), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "p2pbench:", err)
			return 1
		}
	}
	if len(errs) > 0 || len(rep.failures) > 0 {
		for _, f := range rep.failures {
			fmt.Fprintln(os.Stderr, "p2pbench: FAILED:", f)
		}
		for _, e := range errs {
			fmt.Fprintln(os.Stderr, "p2pbench: error:", e)
		}
		return 1
	}
	return 0
}

func logf(f string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(f, a...))
}

// report collects the results table, the details and the failures.
type report struct {
	o        options
	rows     []row
	details  []string
	failures []string
	flags    []string // every flag set on the binaries, by figure
	load     string   // the host's load averages when the run started
}

type row struct{ figure, ours, baseline, ratio, target, notes string }

func newReport(o options) *report { return &report{o: o, load: harness.LoadAvg()} }

func (r *report) add(figure, ours, baseline, ratio, target, notes string) {
	r.rows = append(r.rows, row{figure, ours, baseline, ratio, target, notes})
}

func (r *report) detail(f string, a ...any) {
	line := fmt.Sprintf(f, a...)
	r.details = append(r.details, line)
}

func (r *report) fail(f string, a ...any) {
	r.failures = append(r.failures, fmt.Sprintf(f, a...))
}

func (r *report) flagsUsed(figure string, bin string, flags []string) {
	r.flags = append(r.flags, fmt.Sprintf("- %s: `%s %s`", figure, bin, strings.Join(flags, " ")))
}

func (r *report) markdown(errs []error) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# p2pbench: dfget through a 3-member cluster, on 127.0.0.1\n\n")
	fmt.Fprintf(&b, "machine: %s; date: %s; host load average (1, 5, 15 min) at the start: %s\n\n",
		harness.Machine(), time.Now().UTC().Format(time.RFC3339), r.load)
	fmt.Fprintf(&b, "| figure | ours | baseline | ratio | target | notes |\n| --- | --- | --- | --- | --- | --- |\n")
	for _, x := range r.rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", x.figure, dash(x.ours), dash(x.baseline), dash(x.ratio), dash(x.target), x.notes)
	}
	if len(r.failures) > 0 || len(errs) > 0 {
		fmt.Fprintf(&b, "\n**Failures:**\n\n")
		for _, f := range r.failures {
			fmt.Fprintf(&b, "- %s\n", f)
		}
		for _, e := range errs {
			fmt.Fprintf(&b, "- error: %v\n", e)
		}
	}
	fmt.Fprintf(&b, "\nFlags set (everything else is the binaries' default):\n\n")
	for _, f := range r.flags {
		fmt.Fprintf(&b, "%s\n", f)
	}
	if len(r.details) > 0 {
		fmt.Fprintf(&b, "\n## Details\n\n")
		for _, d := range r.details {
			fmt.Fprintf(&b, "%s\n", d)
		}
	}
	return b.String()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
