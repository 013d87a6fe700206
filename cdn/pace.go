package cdn

import (
	"context"
	"io"

	"golang.org/x/time/rate"
)

// pacedBody limits a piece body to a member-wide upload rate: it reads at most the
// limiter's burst at a time and waits for as many tokens as bytes were read (WaitN refuses
// more than the burst).
type pacedBody struct {
	body io.ReadCloser
	lim  *rate.Limiter
}

func (b *pacedBody) Read(p []byte) (int, error) {
	if burst := b.lim.Burst(); len(p) > burst {
		p = p[:burst]
	}
	n, err := b.body.Read(p)
	if n > 0 {
		if werr := b.lim.WaitN(context.Background(), n); werr != nil {
			return n, werr
		}
	}
	return n, err
}

func (b *pacedBody) Close() error { return b.body.Close() }

// NewLimiter returns a limiter of bytesPerSecond with a burst of at most 256 KiB (so that
// uploads of several peers interleave), or nil for no limit.
func NewLimiter(bytesPerSecond float64) *rate.Limiter {
	if bytesPerSecond <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(bytesPerSecond), int(max(1, min(bytesPerSecond, 256<<10))))
}
