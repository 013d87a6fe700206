// Package units parses the sizes and rates of the command lines: SIZE is 512MiB, 20GB or
// plain bytes; RATE is 100MiB/s, 50MB/s or plain bytes per second.
package units

import (
	"fmt"
	"strconv"
	"strings"
)

var multipliers = []struct {
	suffix string
	factor float64
}{ // longest first, so "MiB" is not read as "B"
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"B", 1}, {"", 1},
}

// ParseSize reads a SIZE into bytes.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	for _, m := range multipliers {
		num, ok := strings.CutSuffix(t, m.suffix)
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil || v < 0 || v*m.factor > 1<<62 {
			break
		}
		return int64(v * m.factor), nil
	}
	return 0, fmt.Errorf("size %q: want bytes or a number with KiB, MiB, GiB, KB, MB or GB", s)
}

// ParseRate reads a RATE into bytes per second.
func ParseRate(s string) (float64, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(t, "/s")
	n, err := ParseSize(t)
	if err != nil {
		return 0, fmt.Errorf("rate %q: want bytes per second or a number with KiB/s, MiB/s, MB/s...", s)
	}
	return float64(n), nil
}
