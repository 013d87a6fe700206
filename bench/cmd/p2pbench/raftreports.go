package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/dfly-ha/dfha/bench/harness"
)

// raftReportsAtBatch runs corebench's raft-reports load (it owns that figure) against a
// fresh cluster twice: with the contract's 4 pieces per request, and with the pieces per
// report request dfget really sent in the largest scale run.
func raftReportsAtBatch(ctx context.Context, o options, rep *report, sc *scaleResult) error {
	if sc == nil {
		return errors.New("needs the scale figure (dfget's batch size comes from its runs)")
	}
	batch := over(sc.p2p[maxKey(sc.p2p)], func(d harness.Distribution) float64 { return d.PiecesPerReport() }).Median
	if math.IsNaN(batch) {
		return errors.New("no pieces per report request measured")
	}
	k := max(1, int(math.Round(batch)))
	c, err := harness.StartCluster(ctx, harness.ClusterConfig{Bin: o.supernode})
	if err != nil {
		return err
	}
	defer c.Close()
	args := func(per int) []string {
		return []string{"--endpoints", strings.Join(c.HTTPAddrs, ","), "--runs", "1", "--duration", o.rrDuration.String(),
			"--pieces-per-request", strconv.Itoa(per)}
	}
	base, baseLine, err := corebench(ctx, o, args(4))
	if err != nil {
		return err
	}
	ours, oursLine, err := corebench(ctx, o, args(k))
	if err != nil {
		return err
	}
	rep.flagsUsed("raft-reports at dfget's batch", "corebench", args(k))
	rep.add(fmt.Sprintf("raft-reports at dfget's batch (%d pieces/request): new pairs/s", k), fmt.Sprintf("%.0f", ours),
		fmt.Sprintf("%.0f at 4 pieces/request", base), fmt.Sprintf("%.2f", ours/base), ">= 200,000",
		fmt.Sprintf("1 run each of %s, 200 peers; dfget sent %.1f pieces per report request in the largest scale run", o.rrDuration, batch))
	rep.detail("### raft-reports (corebench on one fresh cluster)\n\n- 4 pieces/request: %s\n- %d pieces/request: %s\n", baseLine, k, oursLine)
	return nil
}

func maxKey[V any](m map[int]V) int {
	k := math.MinInt
	for n := range m {
		k = max(k, n)
	}
	return k
}

var pairsRE = regexp.MustCompile(`(?m)^([0-9.]+) pairs/s.*$`)

// corebench runs the corebench binary and returns its pairs/s and result line.
func corebench(ctx context.Context, o options, args []string) (float64, string, error) {
	ctx, cancel := context.WithTimeout(ctx, o.rrDuration+3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, o.corebench, args...).CombinedOutput()
	if err != nil {
		return 0, "", fmt.Errorf("corebench %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	m := pairsRE.FindSubmatch(out)
	if m == nil {
		return 0, "", fmt.Errorf("corebench printed no pairs/s line:\n%s", out)
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v, string(m[0]), nil
}
