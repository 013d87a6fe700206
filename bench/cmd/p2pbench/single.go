package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"time"

	"github.com/dfly-ha/dfha/bench/harness"
)

// single: one dfget through the cluster against curl straight from the origin, uncapped;
// cold (the cluster has never seen the file) and warm (it has).
func single(ctx context.Context, o options, rep *report) error {
	curl, err := exec.LookPath("curl")
	if err != nil {
		return fmt.Errorf("the single figure needs curl: %w", err)
	}
	pieceSize := int64(o.singlePieceKiB) * harness.KiB
	e, err := startEnv(ctx, o, o.supernodeFlags(pieceSize)...)
	if err != nil {
		return err
	}
	defer e.close()
	d := harness.Dfget{Bin: o.dfget, Timeout: o.peerTimeout}
	rep.flagsUsed("single", "supernode", e.cluster.Flags)
	rep.flagsUsed("single", "dfget", append([]string{"-u URL -o PATH --supernodes LIST"}, d.Args()...))
	rep.flagsUsed("single", "curl", []string{"-s -f -o FILE URL, then fsync(FILE)"})
	size := int64(o.singleMiB * harness.MiB)
	mibps := func(t time.Duration) float64 { return float64(size) / harness.MiB / t.Seconds() }
	var curls, colds, warms, ratioCold, ratioWarm []float64
	var cpus []harness.Run[harness.Peer]
	for r := 0; r < o.singleRuns; r++ {
		name := fmt.Sprintf("single-r%d.bin", r)
		f, err := e.origin.AddFile(name, size)
		if err != nil {
			return err
		}
		tc1, err := timeCurl(ctx, curl, f.URL)
		if err != nil {
			return err
		}
		cold, err := harness.Distribute(ctx, e.cluster, d, f, pieceSize, 1)
		if err != nil {
			return err
		}
		checkDistribution(o, rep, fmt.Sprintf("single cold run %d", r+1), cold, true)
		warm, err := harness.Distribute(ctx, e.cluster, d, f, pieceSize, 1)
		if err != nil {
			return err
		}
		checkDistribution(o, rep, fmt.Sprintf("single warm run %d", r+1), warm, true)
		tc2, err := timeCurl(ctx, curl, f.URL)
		if err != nil {
			return err
		}
		e.origin.Remove(name)
		if s := cold.Items[0].Summary; s != nil {
			dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			_ = e.client.DeleteTask(dctx, s.TaskID)
			cancel()
		}
		tcurl := (tc1 + tc2) / 2
		tcold, twarm := cold.Items[0].Duration(), warm.Items[0].Duration()
		curls, colds, warms = append(curls, mibps(tcurl)), append(colds, mibps(tcold)), append(warms, mibps(twarm))
		ratioCold, ratioWarm = append(ratioCold, tcurl.Seconds()/tcold.Seconds()), append(ratioWarm, tcurl.Seconds()/twarm.Seconds())
		cpus = append(cpus, cold.Run, warm.Run)
		logf("single run %d/%d: curl %.0f / %.0f MiB/s, dfget cold %.0f MiB/s (warm %s), warm %.0f MiB/s, origin copies cold %.2f warm %.2f",
			r+1, o.singleRuns, mibps(tc1), mibps(tc2), mibps(tcold), cold.CPU, mibps(twarm), cold.Copies, warm.Copies)
	}
	c := harness.Of(curls...)
	rep.add("single, cold: one dfget, uncapped (MiB/s)", harness.Of(colds...).Format("%.0f"), "curl "+c.Format("%.0f"),
		harness.Of(ratioCold...).Format("%.2f"), "-", fmt.Sprintf("file %s, the cluster has never seen it; %s", harness.FormatMiB(size), cpuNote(cpus)))
	rep.add("single, warm: one dfget, uncapped (MiB/s)", harness.Of(warms...).Format("%.0f"), "curl "+c.Format("%.0f"),
		harness.Of(ratioWarm...).Format("%.2f"), ">= 0.9", "the same file again, a new dfget; times are the processes' wall clock")
	return nil
}

// timeCurl runs curl -s -o FILE URL, then fsync(FILE), and returns the wall-clock time:
// the file on disk, as dfget leaves it.
func timeCurl(ctx context.Context, curl, url string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	f, err := os.CreateTemp("", "p2pbench-curl-*")
	if err != nil {
		return 0, err
	}
	f.Close()
	defer os.Remove(f.Name())
	start := time.Now()
	out, err := exec.CommandContext(ctx, curl, "-s", "-f", "-o", f.Name(), url).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("curl %s: %v %s", url, err, out)
	}
	// dfget syncs its output before it renames it: so does the baseline.
	if f, err = os.Open(f.Name()); err != nil {
		return 0, err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}
