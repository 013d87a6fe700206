package main

import (
	"io"
	"os"

	"github.com/mattn/go-isatty"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
)

// progress draws a progress bar on stderr when it is a terminal (and -q was not given);
// otherwise it does nothing.
type progress struct {
	out io.Writer
	p   *mpb.Progress
	bar *mpb.Bar
}

func newProgress(stderr io.Writer, quiet bool) *progress {
	f, ok := stderr.(*os.File)
	if quiet || !ok || !(isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd())) {
		return &progress{}
	}
	return &progress{out: stderr}
}

// update is the download's Progress callback: bytes verified so far, of total (-1 unknown).
func (p *progress) update(done, total int64) {
	if p.out == nil || total < 0 {
		return
	}
	if p.bar == nil {
		p.p = mpb.New(mpb.WithOutput(p.out), mpb.WithWidth(40))
		p.bar = p.p.AddBar(total,
			mpb.PrependDecorators(decor.Name("dfget "), decor.Counters(decor.SizeB1024(0), "% .1f / % .1f")),
			mpb.AppendDecorators(decor.AverageSpeed(decor.SizeB1024(0), "% .1f"), decor.Name(" "), decor.Percentage()))
	}
	p.bar.SetCurrent(done)
}

// finish completes the bar (or drops it after a failure) and waits until it is drawn.
func (p *progress) finish(ok bool) {
	if p.bar == nil {
		return
	}
	if ok {
		p.bar.SetTotal(-1, true)
	} else {
		p.bar.Abort(false)
	}
	p.p.Wait()
}
