package source

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"
)

// ResumeOptions tune NewResumingReader.
type ResumeOptions struct {
	// MaxRetries is how many attempts in a row may fail to deliver a single byte (an Open
	// that fails with a temporary error, a body that breaks or ends before its first byte)
	// before the reader gives up; any byte received resets the count. Default 5; negative:
	// no retry at all.
	MaxRetries int
	// MinBackoff and MaxBackoff bound the wait before a retry: it starts at MinBackoff,
	// doubles with each failed attempt in a row up to MaxBackoff, and is jittered to between
	// half and all of that. The first reopen after progress does not wait. Defaults 250ms
	// and 15s.
	MinBackoff, MaxBackoff time.Duration
	// Logger receives one line per resume (default: none).
	Logger *zap.Logger
}

func (o *ResumeOptions) applyDefaults() {
	switch {
	case o.MaxRetries == 0:
		o.MaxRetries = 5
	case o.MaxRetries < 0:
		o.MaxRetries = 0
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 250 * time.Millisecond
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(15*time.Second, o.MinBackoff)
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
}

// errReaderClosed is what Read returns after Close.
var errReaderClosed = errors.New("source: read from a closed resuming reader")

// NewResumingReader returns a reader of req's file from offset to its end. When the
// connection breaks (or an Open fails with a temporary error: network, 408, 429, 5xx) it
// reopens the file at the current offset, with exponential backoff and jitter, and gives
// up after opts.MaxRetries attempts in a row that deliver nothing.
//
// want is what the caller knows of the file (usually from Probe); pass
// Info{ContentLength: -1} when nothing is known. Every Open's Info is checked against it
// and what was unknown is learnt from the first Open. A file that differs (Info.Changed), or
// sends more bytes than its length, fails the read with ErrChanged; an origin that cannot
// resume fails it with ErrNoRange. In both cases no byte of another version is delivered,
// but the bytes delivered before the error must be thrown away by the caller as the read is
// incomplete. ErrNotFound, ErrUnauthorized and other permanent errors are not retried.
//
// Cancelling ctx or calling Close (also from another goroutine) stops a blocked Read
// promptly. Read is not safe for concurrent use with itself.
func NewResumingReader(ctx context.Context, src Source, req Request, offset int64, want Info, opts ResumeOptions) io.ReadCloser {
	opts.applyDefaults()
	rctx, cancel := context.WithCancelCause(ctx)
	r := &resumingReader{
		ctx: rctx, cancel: cancel, src: src, req: req, opts: opts,
		url:  safeRawURL(req.URL),
		want: want, offset: offset,
	}
	if offset < 0 {
		r.err = fmt.Errorf("source: negative offset %d", offset)
	}
	return r
}

type resumingReader struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	src    Source
	req    Request
	opts   ResumeOptions
	url    string // for logs and errors

	// Touched only by Read.
	want       Info
	offset     int64
	opened     bool  // an Open succeeded: want has been checked against the origin
	progressed bool  // the current body delivered a byte
	failures   int   // attempts in a row that delivered nothing
	lastErr    error // the latest of those failures
	err        error // sticky: the read is over

	mu   sync.Mutex // guards body, which Close may take from another goroutine
	body io.ReadCloser
}

func (r *resumingReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if r.ctx.Err() != nil {
			return 0, r.fail(context.Cause(r.ctx))
		}
		known := r.want.ContentLength >= 0
		r.mu.Lock()
		body := r.body
		r.mu.Unlock()
		if body == nil {
			if r.opened && known && r.offset == r.want.ContentLength {
				return 0, r.fail(io.EOF)
			}
			if err := r.open(); err != nil {
				return 0, r.fail(err)
			}
			continue
		}

		n, err := body.Read(p)
		if n > 0 {
			if known && r.offset+int64(n) > r.want.ContentLength {
				return 0, r.fail(fmt.Errorf("%w: %s sent more than its %d bytes", ErrChanged, r.url, r.want.ContentLength))
			}
			r.offset += int64(n)
			r.progressed = true
			r.failures = 0
		}
		if err == nil {
			return n, nil
		}
		r.closeBody()
		switch {
		case r.ctx.Err() != nil:
			return n, r.fail(context.Cause(r.ctx))
		case err == io.EOF && (!known || r.offset == r.want.ContentLength):
			return n, r.fail(io.EOF)
		case err == io.EOF:
			// The origin sent a shorter range than asked: continue from where it stopped.
			if !r.progressed {
				r.failures++
				r.lastErr = fmt.Errorf("%w: %s: empty body at byte %d of %d", ErrOrigin, r.url, r.offset, r.want.ContentLength)
			}
		case !retryable(err):
			return n, r.fail(err)
		case known && r.offset == r.want.ContentLength:
			// Every byte arrived; only the end of the response was lost (a chunked body's
			// last chunk). The next Read reports EOF.
		default:
			r.opts.Logger.Info("origin read broken; resuming",
				zap.String("url", r.url), zap.Int64("offset", r.offset), zap.Error(err))
			if !r.progressed {
				r.failures++
				r.lastErr = err
			}
		}
		if n > 0 {
			return n, nil
		}
	}
}

// open opens the file at the current offset, retrying temporary failures.
func (r *resumingReader) open() error {
	for {
		if r.failures > 0 {
			if r.failures > r.opts.MaxRetries {
				return fmt.Errorf("source: %s: gave up at byte %d after %d attempts without progress: %w",
					r.url, r.offset, r.failures, r.lastErr)
			}
			t := time.NewTimer(r.backoff())
			select {
			case <-r.ctx.Done():
				t.Stop()
				return context.Cause(r.ctx)
			case <-t.C:
			}
		}
		body, info, err := r.src.Open(r.ctx, r.req, r.offset)
		if (err == nil || errors.Is(err, ErrNoRange)) && r.want.Changed(info) {
			if body != nil {
				body.Close()
			}
			return fmt.Errorf("%w: %s: expected %s, the origin now has %s", ErrChanged, r.url, describe(r.want), describe(info))
		}
		if err != nil {
			if r.ctx.Err() != nil {
				return context.Cause(r.ctx)
			}
			if !retryable(err) {
				return err
			}
			r.failures++
			r.lastErr = err
			r.opts.Logger.Info("origin open failed; retrying",
				zap.String("url", r.url), zap.Int64("offset", r.offset), zap.Int("attempt", r.failures), zap.Error(err))
			continue
		}
		r.want = r.want.merge(info)
		r.opened = true
		r.progressed = false
		r.mu.Lock()
		r.body = body
		r.mu.Unlock()
		if r.ctx.Err() != nil { // Close raced with the open
			r.closeBody()
		}
		return nil
	}
}

// backoff is the jittered wait before the next attempt.
func (r *resumingReader) backoff() time.Duration {
	d := r.opts.MinBackoff
	for i := 1; i < r.failures && d < r.opts.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, r.opts.MaxBackoff)
	return d/2 + rand.N(d/2+1)
}

// fail ends the read with err (io.EOF for success).
func (r *resumingReader) fail(err error) error {
	r.err = err
	r.closeBody()
	return err
}

func (r *resumingReader) closeBody() {
	r.mu.Lock()
	b := r.body
	r.body = nil
	r.mu.Unlock()
	if b != nil {
		b.Close()
	}
}

// Close stops the read; a Read blocked in another goroutine returns promptly.
func (r *resumingReader) Close() error {
	r.cancel(errReaderClosed)
	r.closeBody()
	return nil
}

// retryable tells whether another attempt may succeed where err failed.
func retryable(err error) bool {
	var se *StatusError
	if errors.As(err, &se) {
		return se.temporary()
	}
	var le *limitError
	var ce *tls.CertificateVerificationError
	switch {
	case errors.Is(err, ErrUnsupported), errors.Is(err, ErrBadURL), errors.Is(err, ErrNotFound),
		errors.Is(err, ErrUnauthorized), errors.Is(err, ErrChanged), errors.Is(err, ErrNoRange),
		errors.Is(err, ErrOrigin), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &le), errors.As(err, &ce):
		return false
	}
	return true // the network: resets, unexpected EOFs, timeouts, refused connections
}

// describe is an Info for logs and errors.
func describe(i Info) string {
	s := "length "
	if i.ContentLength < 0 {
		s += "unknown"
	} else {
		s += strconv.FormatInt(i.ContentLength, 10)
	}
	if i.ETag != "" {
		s += ", ETag " + i.ETag
	}
	if i.LastModified != "" {
		s += ", Last-Modified " + i.LastModified
	}
	return s
}
