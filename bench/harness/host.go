package harness

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/procfs"
)

// CPUBoundAt is the host CPU busy fraction from which a run is marked CPU-bound.
const CPUBoundAt = 0.90

// CPU is the host CPU use over a run.
type CPU struct {
	Busy float64 // busy fraction of all cores over the run, 0..1
	Peak float64 // busiest sample (250 ms)
}

// Bound reports whether the run was CPU-bound (busy at least 90% of it).
func (c CPU) Bound() bool { return c.Busy >= CPUBoundAt }

// String is "busy 63% (peak 88%)", with a CPU-bound mark when it was.
func (c CPU) String() string {
	s := fmt.Sprintf("busy %.0f%% (peak %.0f%%)", 100*c.Busy, 100*c.Peak)
	if c.Bound() {
		s += " CPU-bound"
	}
	return s
}

// CPUSampler samples /proc/stat while a run goes on.
type CPUSampler struct {
	first    procfs.CPUStat
	stop     chan struct{}
	done     chan struct{}
	mu       sync.Mutex
	peak     float64
	firstErr error
}

// StartCPU starts sampling the host's CPU every 250 ms until Stop.
func StartCPU() *CPUSampler {
	s := &CPUSampler{stop: make(chan struct{}), done: make(chan struct{})}
	s.first, s.firstErr = hostCPU()
	go func() {
		defer close(s.done)
		prev := s.first
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
			now, err := hostCPU()
			if err != nil {
				continue
			}
			b := busyBetween(prev, now)
			s.mu.Lock()
			s.peak = max(s.peak, b)
			s.mu.Unlock()
			prev = now
		}
	}()
	return s
}

// Stop ends the sampling and returns the run's CPU use.
func (s *CPUSampler) Stop() CPU {
	close(s.stop)
	<-s.done
	now, err := hostCPU()
	if err != nil || s.firstErr != nil {
		return CPU{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	busy := busyBetween(s.first, now)
	return CPU{Busy: busy, Peak: max(s.peak, busy)}
}

func hostCPU() (procfs.CPUStat, error) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return procfs.CPUStat{}, err
	}
	st, err := fs.Stat()
	if err != nil {
		return procfs.CPUStat{}, err
	}
	return st.CPUTotal, nil
}

// busyBetween is the busy fraction between two samples of the host's CPU times.
func busyBetween(a, b procfs.CPUStat) float64 {
	idle := (b.Idle + b.Iowait) - (a.Idle + a.Iowait)
	total := (b.User + b.Nice + b.System + b.Idle + b.Iowait + b.IRQ + b.SoftIRQ + b.Steal) -
		(a.User + a.Nice + a.System + a.Idle + a.Iowait + a.IRQ + a.SoftIRQ + a.Steal)
	if total <= 0 {
		return 0
	}
	return min(1, max(0, (total-idle)/total))
}

// PeakRSS returns the peak resident set size (VmHWM) of a running process in bytes.
func PeakRSS(pid int) (int64, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, err
	}
	st, err := p.NewStatus()
	if err != nil {
		return 0, err
	}
	return int64(st.VmHWM), nil
}

// Machine describes the host: CPU model and cores, e.g. "AMD EPYC, 2 cores".
func Machine() string {
	model := runtime.GOARCH
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	return fmt.Sprintf("%s, %d cores, %s/%s", model, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH)
}

// LoadAvg returns the host's 1, 5 and 15 minute load averages as /proc/loadavg has them,
// e.g. "0.52 0.61 0.40": a busy host skews every figure, so results show it.
func LoadAvg() string {
	p, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(p))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
