package harness

import (
	"context"
	"math"
	"os"
	"time"
)

// Distribution is one distribution of a file to N dfget peers through a cluster, with what
// the origin and the members saw meanwhile.
type Distribution struct {
	Run[Peer]
	File   *File
	Pieces int64   // pieces the peers had to get: N x the file's pieces
	Copies float64 // origin bytes sent during the distribution / file size
	// Metrics is the change of the members' metrics over the distribution (zero when
	// MetricsErr is set: a member was down at either end).
	Metrics    Metrics
	MetricsErr error
}

// Distribute runs n dfget peers for f on c (peer i registers with member i mod 3 first),
// pieceSize being the members' --piece-size.
func Distribute(ctx context.Context, c *Cluster, d Dfget, f *File, pieceSize int64, n int) (Distribution, error) {
	dir, err := os.MkdirTemp("", "dfha-bench-peers")
	if err != nil {
		return Distribution{}, err
	}
	defer os.RemoveAll(dir)
	before, errBefore := c.Scrape(ctx)
	sent := f.Sent()
	run := d.Run(ctx, f, dir, n, c.Endpoints)
	dist := Distribution{Run: run, File: f, Pieces: int64(n) * ((f.Size + pieceSize - 1) / pieceSize)}
	dist.Copies = float64(f.Sent()-sent) / float64(f.Size)
	// Reports and heartbeats in flight when the last peer exits land a moment later.
	time.Sleep(200 * time.Millisecond)
	after, errAfter := c.Scrape(ctx)
	switch {
	case errBefore != nil:
		dist.MetricsErr = errBefore
	case errAfter != nil:
		dist.MetricsErr = errAfter
	default:
		dist.Metrics = after.Sub(before)
	}
	return dist, nil
}

// FromPeers is the share of pieces the peers got from other peers, by their summaries.
func (d Distribution) FromPeers() float64 {
	p, m := Pieces(d.Run)
	if p+m == 0 {
		return math.NaN()
	}
	return float64(p) / float64(p+m)
}

// FromPeersByMetrics is the same share as the members count it: 1 - pieces the members
// served / pieces the peers needed.
func (d Distribution) FromPeersByMetrics() float64 {
	if d.MetricsErr != nil || d.Pieces == 0 {
		return math.NaN()
	}
	return 1 - d.Metrics.PiecesServed()/float64(d.Pieces)
}

// APIPerPiece is the peers' control requests (not piece data) per piece downloaded.
func (d Distribution) APIPerPiece() float64 {
	if d.MetricsErr != nil || d.Pieces == 0 {
		return math.NaN()
	}
	return d.Metrics.APIRequests() / float64(d.Pieces)
}

// PiecesPerReport is the pieces reported (those the peers got, by their summaries) per
// accepted report request.
func (d Distribution) PiecesPerReport() float64 {
	p, m := Pieces(d.Run)
	r := d.Metrics.ReportRequests()
	if d.MetricsErr != nil || r == 0 {
		return math.NaN()
	}
	return float64(p+m) / r
}

// Elections is the number of elections the members counted during the distribution.
func (d Distribution) Elections() float64 {
	return d.Metrics.Values["dfha_raft_elections_total"]
}

// PeerDurations returns each peer's own time in seconds.
func (d Distribution) PeerDurations() []float64 {
	out := make([]float64, 0, len(d.Items))
	for _, p := range d.Items {
		if !p.End.IsZero() {
			out = append(out, p.Duration().Seconds())
		}
	}
	return out
}
