package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dfly-ha/dfha/bench/harness"
	"github.com/dfly-ha/dfha/sdk"
	"github.com/dfly-ha/dfha/sdk/api"
)

// memory: members' peak RSS (VmHWM) once o.memPeers simulated peers have registered, joined
// one task of o.memPieces pieces and reported every piece, through the sdk. The baseline is
// the same members' peak before the peers came.
func memory(ctx context.Context, o options, rep *report) error {
	const pieceSize = 4 * harness.KiB
	e, err := startEnv(ctx, o, o.supernodeFlags(pieceSize)...)
	if err != nil {
		return err
	}
	defer e.close()
	rep.flagsUsed("memory", "supernode", e.cluster.Flags)
	f, err := e.origin.AddFile("memory.bin", int64(o.memPieces)*pieceSize)
	if err != nil {
		return err
	}
	cl := e.client
	peerID := func(i int) string { return fmt.Sprintf("mem-%05d", i) }
	if _, err := cl.RegisterPeer(ctx, api.RegisterPeerRequest{ID: peerID(0), IP: "127.0.0.1", Port: 20000, Hostname: "bench"}); err != nil {
		return err
	}
	task, _, err := cl.RegisterTask(ctx, api.RegisterTaskRequest{URL: f.URL, PeerID: peerID(0)})
	if err != nil {
		return err
	}
	if err := waitCached(ctx, cl, task.TaskID, int64(o.memPieces)); err != nil {
		return err
	}
	base, err := e.cluster.PeakRSS()
	if err != nil {
		return err
	}
	start := time.Now()
	all := fmt.Sprintf("0-%d", o.memPieces-1)
	var failed atomic.Int64
	var firstErr atomic.Value
	work := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				id := peerID(i)
				wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				_, err := cl.RegisterPeer(wctx, api.RegisterPeerRequest{ID: id, IP: "127.0.0.1", Port: 20000 + i%40000, Hostname: "bench"})
				if err == nil {
					_, _, err = cl.RegisterTask(wctx, api.RegisterTaskRequest{URL: f.URL, PeerID: id})
				}
				if err == nil {
					err = cl.ReportPieces(wctx, task.TaskID, all, api.PieceReport{PeerID: id, Status: api.StatusSuccess, Source: "m0"})
				}
				cancel()
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	for i := 1; i < o.memPeers; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	loaded := time.Since(start)
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d of %d peers failed to register or report: %v", n, o.memPeers, firstErr.Load())
	}
	// Scheduling answers with 10,000 holders per piece, from every member.
	scheduled := 0
	for i := 0; i < 300; i++ {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := cl.Schedule(sctx, task.TaskID, api.ScheduleQuery{PeerID: peerID(i), Limit: 16})
		cancel()
		if err != nil {
			logf("memory: scheduling is not answered (%v); measured without it", err)
			break
		}
		scheduled++
	}
	peak, err := e.cluster.PeakRSS()
	if err != nil {
		return err
	}
	m, err := e.cluster.Scrape(ctx)
	if err != nil {
		return err
	}
	peersSeen := m.Values["dfha_peers"] / float64(len(e.cluster.IDs))
	var maxPeak, maxBase int64
	for i := range peak {
		maxPeak, maxBase = max(maxPeak, peak[i]), max(maxBase, base[i])
	}
	leader, _ := e.cluster.WaitLeader(ctx, e.cluster.All())
	perMember := ""
	for i := range peak {
		role := ""
		if i == leader {
			role = " (leader)"
		}
		perMember += fmt.Sprintf("%s%s %s (before %s); ", e.cluster.IDs[i], role, harness.FormatMiB(peak[i]), harness.FormatMiB(base[i]))
	}
	logf("memory: %d peers x %d pieces loaded in %s; %d scheduling answers; %s peers in the state: %.0f",
		o.memPeers, o.memPieces, loaded.Round(time.Millisecond), scheduled, perMember, peersSeen)
	rep.add(fmt.Sprintf("memory: supernode peak RSS, %d peers on one task of %d pieces", o.memPeers, o.memPieces),
		harness.FormatMiB(maxPeak), "before the peers: "+harness.FormatMiB(maxBase), fmt.Sprintf("%.2f", float64(maxPeak)/float64(maxBase)), "< 100 MiB",
		fmt.Sprintf("the largest member's VmHWM; %s1 run; each peer registered, joined the task and reported all pieces through the sdk (%s); %d scheduling answers; peers in the state at the end: %.0f",
			perMember, loaded.Round(time.Millisecond), scheduled, peersSeen))
	return nil
}

// waitCached waits until the task's owner has cached all its pieces.
func waitCached(ctx context.Context, cl *sdk.Client, taskID string, pieces int64) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		t, err := cl.GetTask(ctx, taskID)
		if err == nil && t.Status == api.TaskSuccess {
			if t.PieceCount != pieces {
				return fmt.Errorf("task has %d pieces, want %d", t.PieceCount, pieces)
			}
			return nil
		}
		if err == nil && t.Status == api.TaskFailed {
			return errors.New("the origin fetch failed")
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("task not cached in a minute (last: %v)", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
