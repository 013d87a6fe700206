package source

import (
	"context"
	"fmt"
	"io"

	"golang.org/x/time/rate"
)

// limitedSource paces the bodies of a source with a limiter shared by all sources.
type limitedSource struct {
	src Source
	lim *rate.Limiter
}

func (l limitedSource) Probe(ctx context.Context, req Request) (Info, error) {
	return l.src.Probe(ctx, req)
}

func (l limitedSource) Open(ctx context.Context, req Request, offset int64) (io.ReadCloser, Info, error) {
	body, info, err := l.src.Open(ctx, req, offset)
	if err != nil {
		return nil, info, err
	}
	return &limitedBody{ctx: ctx, body: body, lim: l.lim}, info, nil
}

// limitError is a limiter that cannot grant the tokens asked for: a configuration error,
// not worth retrying.
type limitError struct{ err error }

func (e *limitError) Error() string { return "source: origin rate limit: " + e.err.Error() }
func (e *limitError) Unwrap() error { return e.err }

// Paced returns body read through lim: at most the limiter's burst at a time, waiting for
// as many tokens as bytes were read. The CDN paces the pieces it serves with it too.
func Paced(ctx context.Context, body io.ReadCloser, lim *rate.Limiter) io.ReadCloser {
	return &limitedBody{ctx: ctx, body: body, lim: lim}
}

// limitedBody reads at most the limiter's burst at a time and then waits for as many
// tokens as bytes were read (WaitN refuses more than the burst).
type limitedBody struct {
	ctx  context.Context
	body io.ReadCloser
	lim  *rate.Limiter
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return b.body.Read(p)
	}
	limit, burst := b.lim.Limit(), b.lim.Burst()
	if limit != rate.Inf {
		if limit <= 0 || burst < 1 {
			return 0, &limitError{fmt.Errorf("limiter grants nothing (limit %v, burst %d)", limit, burst)}
		}
		if len(p) > burst {
			p = p[:burst]
		}
	}
	n, err := b.body.Read(p)
	if n > 0 {
		if werr := b.lim.WaitN(b.ctx, n); werr != nil {
			if err := b.ctx.Err(); err != nil {
				return n, err
			}
			if _, ok := b.ctx.Deadline(); ok {
				// The wait would outlast the deadline: fail now rather than at the deadline.
				return n, fmt.Errorf("source: origin rate limit: %w: %v", context.DeadlineExceeded, werr)
			}
			return n, &limitError{werr}
		}
	}
	return n, err
}

func (b *limitedBody) Close() error { return b.body.Close() }
