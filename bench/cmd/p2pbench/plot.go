package main

import (
	"fmt"
	"image/color"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/dfly-ha/dfha/bench/harness"
)

// plotScale draws the time for all N peers to finish against N: P2P (median, min-max
// bars), native (measured, and N x T_native(1) beyond), and the lower bound size/B.
func plotScale(o options, sc *scaleResult, path string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Distribution of %s to N peers, every peer and the origin at %s", harness.FormatMiB(o.fileSize()), harness.RateArg(o.rate()))
	p.X.Label.Text = "N (peers)"
	p.Y.Label.Text = "time for all N to finish (s)"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = nTicks(o.p2pN)
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = secondTicks{}
	p.Legend.Top, p.Legend.Left = true, true

	type pt struct{ x, y, lo, hi float64 }
	series := func(ns []int, f func(n int) (harness.Stat, bool)) []pt {
		var out []pt
		for _, n := range ns {
			if s, ok := f(n); ok && s.N > 0 {
				out = append(out, pt{float64(n), s.Median, s.Min, s.Max})
			}
		}
		return out
	}
	p2p := series(o.p2pN, func(n int) (harness.Stat, bool) {
		r := sc.p2p[n]
		return over(r, func(d harness.Distribution) float64 { return d.Wall().Seconds() }), len(r) > 0
	})
	native := series(o.nativeN, func(n int) (harness.Stat, bool) {
		r := sc.native[n]
		return over(r, func(x harness.Run[harness.Fetch]) float64 { return x.Wall().Seconds() }), len(r) > 0
	})
	add := func(name string, pts []pt, c color.Color, dashed bool, bars bool) error {
		if len(pts) == 0 {
			return nil
		}
		xys := make(plotter.XYs, len(pts))
		errs := make(plotter.YErrors, len(pts))
		for i, q := range pts {
			xys[i] = plotter.XY{X: q.x, Y: q.y}
			errs[i] = struct{ Low, High float64 }{q.y - q.lo, q.hi - q.y}
		}
		l, s, err := plotter.NewLinePoints(xys)
		if err != nil {
			return err
		}
		l.Color, s.Color = c, c
		l.Width = vg.Points(1.5)
		if dashed {
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			s.Shape = nil
		} else {
			s.Shape = draw.CircleGlyph{}
		}
		p.Add(l)
		if s.Shape != nil {
			p.Add(s)
		}
		p.Legend.Add(name, l, s)
		if bars {
			eb, err := plotter.NewYErrorBars(struct {
				plotter.XYer
				plotter.YErrorer
			}{xys, errs})
			if err != nil {
				return err
			}
			eb.Color = c
			p.Add(eb)
		}
		return nil
	}
	blue, red, grey := color.RGBA{B: 200, A: 255}, color.RGBA{R: 200, A: 255}, color.RGBA{R: 120, G: 120, B: 120, A: 255}
	if err := add("P2P (dfget), median and min-max", p2p, blue, false, true); err != nil {
		return err
	}
	if err := add("native (plain HTTP from the origin)", native, red, false, true); err != nil {
		return err
	}
	if len(native) > 0 && native[0].x == 1 {
		var est []pt
		for _, n := range o.p2pN {
			est = append(est, pt{float64(n), float64(n) * native[0].y, float64(n) * native[0].y, float64(n) * native[0].y})
		}
		if err := add("N x T_native(1)", est, red, true, false); err != nil {
			return err
		}
	}
	lo, hi := slices.Min(o.p2pN), slices.Max(o.p2pN)
	if err := add("lower bound size/B", []pt{{float64(lo), sc.t1, sc.t1, sc.t1}, {float64(hi), sc.t1, sc.t1, sc.t1}}, grey, true, false); err != nil {
		return err
	}
	return p.Save(8*vg.Inch, 5*vg.Inch, path)
}

// nTicks marks exactly the N values that were run.
type nTicks []int

func (t nTicks) Ticks(min, max float64) []plot.Tick {
	var out []plot.Tick
	for _, n := range t {
		if float64(n) >= min && float64(n) <= max {
			out = append(out, plot.Tick{Value: float64(n), Label: fmt.Sprint(n)})
		}
	}
	return out
}

// secondTicks marks 1, 2, 5 times the powers of ten.
type secondTicks struct{}

func (secondTicks) Ticks(min, max float64) []plot.Tick {
	var out []plot.Tick
	for p := 0.01; p <= max*10; p *= 10 {
		for _, m := range []float64{1, 2, 5} {
			if v := p * m; v >= min && v <= max {
				out = append(out, plot.Tick{Value: v, Label: fmt.Sprintf("%g", v)})
			}
		}
	}
	return out
}
