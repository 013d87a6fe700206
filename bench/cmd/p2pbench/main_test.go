package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dfly-ha/dfha/bench/harness"
)

// TestScaleRowsAndPlot feeds made-up runs through the results table and the plot.
func TestScaleRowsAndPlot(t *testing.T) {
	o := options{fileMiB: 16, pieceKiB: 1024, rateMiB: 4, p2pN: []int{1, 5, 10}, nativeN: []int{1, 5}, egressN: []int{1, 10}}
	t0 := time.Now()
	dist := func(n int, secs float64) harness.Distribution {
		d := harness.Distribution{Pieces: int64(16 * n), Copies: 1}
		d.Start, d.End = t0, t0.Add(time.Duration(secs*float64(time.Second)))
		for i := 0; i < n; i++ {
			fromPeers := int64(16 * (n - 1) / n)
			d.Items = append(d.Items, harness.Peer{Index: i, Start: d.Start, End: d.End,
				Summary: &harness.Summary{PiecesFromPeers: fromPeers, PiecesFromSupernodes: 16 - fromPeers}})
		}
		return d
	}
	native := func(n int) harness.Run[harness.Fetch] {
		return harness.Run[harness.Fetch]{Start: t0, End: t0.Add(time.Duration(n*4) * time.Second)}
	}
	sc := &scaleResult{t1: 4,
		p2p:    map[int][]harness.Distribution{1: {dist(1, 4.2), dist(1, 4.4)}, 5: {dist(5, 4.6)}, 10: {dist(10, 5), dist(10, 5.5)}},
		native: map[int][]harness.Run[harness.Fetch]{1: {native(1)}, 5: {native(5)}}}
	rep := newReport(o)
	sc.addRows(o, rep)
	text := rep.markdown(nil)
	for _, want := range []string{
		"| origin-egress, N=10: origin bytes / file size | 1.000 (1.000–1.000, 2 runs) |",
		"| scale, N=5: time for all to finish | 4.60 s (1 run) | native 20.00 s (1 run) |",
		"native 40.00 s (1 run) (N x T_native(1), not run)",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("results lack %q:\n%s", want, text)
		}
	}
	png := filepath.Join(t.TempDir(), "scale.png")
	if p := os.Getenv("P2PBENCH_PLOT"); p != "" {
		png = p
	}
	if err := plotScale(o, sc, png); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(png); err != nil || st.Size() < 1000 {
		t.Fatalf("plot: %v", err)
	}
}
