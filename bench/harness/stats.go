package harness

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
)

// Run is one measured run: what each participant did, the run's wall clock and the host
// CPU during it.
type Run[T any] struct {
	Items      []T
	Start, End time.Time
	CPU        CPU
}

// Wall is the run's time: from the first start to the last finish.
func (r Run[T]) Wall() time.Duration { return r.End.Sub(r.Start) }

// Stat is a figure over several runs: the median and the spread.
type Stat struct {
	Median, Min, Max float64
	N                int
}

// Of returns the median and spread of vs (NaN values are left out).
func Of(vs ...float64) Stat {
	s := make([]float64, 0, len(vs))
	for _, v := range vs {
		if !math.IsNaN(v) {
			s = append(s, v)
		}
	}
	if len(s) == 0 {
		return Stat{Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	}
	sort.Float64s(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Stat{Median: med, Min: s[0], Max: s[len(s)-1], N: len(s)}
}

// Format writes the median with verb and the spread. A verb may carry a unit after a
// space: Format("%.2f s") gives "1.23 s (1.10–1.40, 3 runs)".
func (s Stat) Format(verb string) string {
	if s.N == 0 {
		return "-"
	}
	num, unit, _ := strings.Cut(verb, " ")
	if unit != "" {
		unit = " " + unit
	}
	med := fmt.Sprintf(num, s.Median) + unit
	if s.N == 1 {
		return med + " (1 run)"
	}
	return fmt.Sprintf("%s (%s–%s, %d runs)", med, fmt.Sprintf(num, s.Min), fmt.Sprintf(num, s.Max), s.N)
}

// Quantile returns the q-quantile (0..1, nearest rank) of vs; NaN when empty.
func Quantile(vs []float64, q float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), vs...)
	sort.Float64s(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// FormatMiB writes bytes as "12.5 MiB".
func FormatMiB(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/MiB) }
