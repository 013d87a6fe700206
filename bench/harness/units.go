package harness

import (
	"fmt"
	"math"
)

// Binary units.
const (
	KiB = 1 << 10
	MiB = 1 << 20
)

// SizeArg writes a byte count the way the binaries' SIZE flags read it: "1MiB", "64KiB"
// or plain bytes.
func SizeArg(b int64) string {
	switch {
	case b > 0 && b%MiB == 0:
		return fmt.Sprintf("%dMiB", b/MiB)
	case b > 0 && b%KiB == 0:
		return fmt.Sprintf("%dKiB", b/KiB)
	}
	return fmt.Sprint(b)
}

// RateArg writes bytes per second the way the binaries' RATE flags read it: "4MiB/s" or
// plain bytes per second.
func RateArg(bps float64) string {
	if bps >= MiB && math.Mod(bps, MiB) == 0 {
		return fmt.Sprintf("%dMiB/s", int64(bps)/MiB)
	}
	return fmt.Sprint(int64(bps))
}
