package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/dfly-ha/dfha/bench/harness"
	"github.com/dfly-ha/dfha/sdk"
	"github.com/dfly-ha/dfha/sdk/api"
)

// failover: the leader is killed (SIGKILL) once during each of o.kills distributions to
// o.foPeers peers. Measured as corebench measures it: from the kill to the next write the
// cluster accepts (a fresh sdk client retrying one write); and the downloads that failed.
// The count of elections in a loaded run without kills is corebench's.
func failover(ctx context.Context, o options, rep *report) error {
	e, err := startEnv(ctx, o, o.cappedFlags()...)
	if err != nil {
		return err
	}
	defer e.close()
	e.origin.SetRate(o.rate(), 0)
	d := o.peerFlags()
	dir, err := os.MkdirTemp("", "dfha-bench-peers")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	rep.flagsUsed("failover", "supernode", e.cluster.Flags)
	rep.flagsUsed("failover", "dfget", append([]string{"-u URL -o PATH --supernodes LIST"}, d.Args()...))
	killAfter := o.killAfter
	if killAfter == 0 {
		killAfter = time.Duration(float64(o.fileSize()) / o.rate() / 3 * float64(time.Second))
	}
	var times, allCopies []float64
	failed, failovers := 0, uint64(0)
	var runs []harness.Run[harness.Peer]
	for k := 0; k < o.kills; k++ {
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		leader, err := e.cluster.WaitLeader(wctx, e.cluster.All())
		cancel()
		if err != nil {
			return err
		}
		// The peers run apart from the cluster's bookkeeping: members are killed meanwhile.
		name := fmt.Sprintf("failover-%d.bin", k)
		f, err := e.origin.AddFile(name, o.fileSize())
		if err != nil {
			return err
		}
		endpoints := make([][]string, o.foPeers)
		for i := range endpoints {
			endpoints[i] = e.cluster.Endpoints(i)
		}
		done := make(chan harness.Run[harness.Peer], 1)
		go func() {
			done <- d.Run(ctx, f, dir, o.foPeers, func(i int) []string { return endpoints[i] })
		}()
		time.Sleep(killAfter)
		if err := e.cluster.Kill(leader); err != nil {
			<-done
			return err
		}
		t, err := nextWrite(ctx, e.cluster.HTTPAddrs, fmt.Sprintf("failover-probe-%d", k))
		run := <-done
		if err != nil {
			return fmt.Errorf("kill %d: %w", k+1, err)
		}
		copies := f.Copies()
		allCopies = append(allCopies, copies)
		e.origin.Remove(name)
		times = append(times, t.Seconds())
		runs = append(runs, run)
		failed += harness.Failed(run)
		for _, p := range run.Items {
			if p.Summary != nil {
				failovers += p.Summary.SupernodeFailovers
			}
		}
		for _, msg := range harness.Errors(run, 5) {
			rep.fail("failover distribution %d: %s", k+1, msg)
		}
		logf("failover %d/%d: killed %s %.1fs into the distribution; next write accepted after %.3fs; distribution done in %.2fs, failed %d, origin %.2f copies, CPU %s",
			k+1, o.kills, e.cluster.IDs[leader], killAfter.Seconds(), t.Seconds(), run.Wall().Seconds(), harness.Failed(run), copies, run.CPU)
		if err := e.cluster.Restart(leader); err != nil {
			return err
		}
	}
	st := harness.Of(times...)
	rep.add("failover: leader killed during a distribution -> next accepted write, p50", fmt.Sprintf("%.2f s", st.Median), "-", "-", "p50 < 1.5 s",
		fmt.Sprintf("%d kills, one per distribution to %d peers (%s file, B = %s), %s in; all: %s", len(times), o.foPeers,
			harness.FormatMiB(o.fileSize()), harness.RateArg(o.rate()), killAfter.Round(time.Millisecond), secs(times)))
	rep.add("failover: worst", fmt.Sprintf("%.2f s", st.Max), "-", "-", "-", cpuNote(runs))
	rep.add("failover: failed downloads", fmt.Sprint(failed), "-", "-", "0",
		fmt.Sprintf("of %d; supernode failovers the peers counted: %d; origin copies per distribution: %s", len(times)*o.foPeers, failovers, secs(allCopies)))
	return nil
}

// nextWrite retries one write (a peer registration) through a fresh client until the
// cluster accepts it, and returns how long that took.
func nextWrite(ctx context.Context, endpoints []string, probeID string) (time.Duration, error) {
	start := time.Now()
	probe, err := sdk.New(sdk.Config{Endpoints: endpoints, MaxAttempts: 1000, BackoffMax: 50 * time.Millisecond, RetryFor: time.Minute})
	if err != nil {
		return 0, err
	}
	defer probe.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		_, err := probe.RegisterPeer(ctx, api.RegisterPeerRequest{ID: probeID, IP: "127.0.0.1", Port: 9, Hostname: "probe"})
		if err == nil {
			return time.Since(start), nil
		}
		if ctx.Err() != nil {
			return 0, fmt.Errorf("no write accepted within a minute: %w", err)
		}
	}
}

func secs(v []float64) string {
	s := ""
	for i, x := range v {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%.2f", x)
	}
	return s
}
