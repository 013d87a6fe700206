package cdn

import "golang.org/x/time/rate"

// NewLimiter returns a limiter of bytesPerSecond with a burst of at most 256 KiB (so that
// uploads of several peers interleave), or nil for no limit.
func NewLimiter(bytesPerSecond float64) *rate.Limiter {
	if bytesPerSecond <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(bytesPerSecond), int(max(1, min(bytesPerSecond, 256<<10))))
}
