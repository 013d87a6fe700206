// Command demo is `make demo`: an origin, a 3-member supernode cluster and ten dfget peers,
// all on 127.0.0.1, distribute one file; it prints what happened and exits non-zero unless
// every peer got the origin's exact bytes. It builds nothing (make demo builds first) and
// leaves nothing running.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/dfly-ha/dfha/bench/harness"
)

func main() {
	var (
		supernode, dfget string
		peers            int
		fileMiB, rateMiB float64
		pieceKiB         int
	)
	fs := pflag.NewFlagSet("demo", pflag.ContinueOnError)
	fs.StringVar(&supernode, "supernode", "./bin/supernode", "supernode binary")
	fs.StringVar(&dfget, "dfget", "./bin/dfget", "dfget binary")
	fs.IntVar(&peers, "peers", 10, "dfget peers")
	fs.Float64Var(&fileMiB, "file-mib", 64, "file size in MiB")
	fs.IntVar(&pieceKiB, "piece-kib", 1024, "members' --piece-size in KiB")
	fs.Float64Var(&rateMiB, "rate-mibps", 16, "each peer's download and upload cap and the origin's, in MiB/s (0: none)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	harness.HandleSignals()
	err := run(supernode, dfget, peers, int64(fileMiB*harness.MiB), int64(pieceKiB)*harness.KiB, rateMiB*harness.MiB)
	harness.Cleanup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo: FAILED:", err)
		os.Exit(1)
	}
}

func run(supernode, dfget string, peers int, size, pieceSize int64, rate float64) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	origin, err := harness.StartOrigin()
	if err != nil {
		return err
	}
	defer origin.Close()
	origin.SetRate(rate, 0)
	f, err := origin.AddFile("demo.bin", size)
	if err != nil {
		return err
	}
	fmt.Printf("origin   %s, %s, sha256 %s\n", f.URL, harness.FormatMiB(size), f.SHA256)

	c, err := harness.StartCluster(ctx, harness.ClusterConfig{Bin: supernode, Flags: []string{"--piece-size", harness.SizeArg(pieceSize)}})
	if err != nil {
		return err
	}
	defer c.Close()
	leader, _ := c.WaitLeader(ctx, c.All())
	fmt.Printf("cluster  3 members %v on %v, leader %s (started in %.1fs)\n", c.IDs, c.HTTPAddrs, c.IDs[leader], time.Since(start).Seconds())

	d := harness.Dfget{Bin: dfget, Timeout: 2 * time.Minute}
	if rate > 0 {
		d.DownloadLimit, d.UploadLimit = harness.RateArg(rate), harness.RateArg(rate)
	}
	fmt.Printf("peers    %d x dfget %v, each with its own upload port, registering with the members in turn\n", peers, d.Args())
	dist, err := harness.Distribute(ctx, c, d, f, pieceSize, peers)
	if err != nil {
		return err
	}
	durs := dist.PeerDurations()
	fromPeers, fromMembers := harness.Pieces(dist.Run)
	fmt.Printf("time     all %d done in %.2fs (fastest peer %.2fs, median %.2fs, slowest %.2fs)\n", peers, dist.Wall().Seconds(),
		harness.Quantile(durs, 0), harness.Quantile(durs, 0.5), harness.Quantile(durs, 1))
	fmt.Printf("origin   sent %s = %.2f copies of the file (%d peers without P2P: %d copies)\n",
		harness.FormatMiB(f.Sent()), f.Copies(), peers, peers)
	fmt.Printf("pieces   %d from peers, %d from supernodes (%.0f%% from peers; at most %.0f%%)\n", fromPeers, fromMembers,
		100*dist.FromPeers(), 100*float64(peers-1)/float64(peers))
	if dist.MetricsErr == nil {
		fmt.Printf("cluster  %.0f API requests (%.2f per piece), %.0f piece reports, %.0f pieces served by members\n",
			dist.Metrics.APIRequests(), dist.APIPerPiece(), dist.Metrics.ReportRequests(), dist.Metrics.PiecesServed())
	}
	fmt.Printf("host     CPU %s\n", dist.CPU)
	if bad := harness.Failed(dist.Run); bad > 0 {
		for _, e := range harness.Errors(dist.Run, 10) {
			fmt.Println("  ", e)
		}
		return fmt.Errorf("%d of %d downloads are wrong", bad, peers)
	}
	fmt.Printf("digests  all %d outputs have the origin's sha256 %s\n", peers, f.SHA256)
	fmt.Printf("done in %.1fs; stopping everything\n", time.Since(start).Seconds())
	return nil
}
