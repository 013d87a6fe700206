package source

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// MaxRedirects is how many redirects the default client follows for one request.
const MaxRedirects = 10

// NewHTTPClient returns the default origin client: TLS verified with tlsConfig (nil: the
// system roots), proxies from the environment, HTTP/2 when the origin offers it, redirects
// followed up to MaxRedirects, a 10s dial timeout, a 30s response header timeout, no
// overall timeout (bodies are large) and no transparent decompression (offsets must count
// the origin's bytes). Give a tlsConfig to trust a private CA and keep the rest.
func NewHTTPClient(tlsConfig *tls.Config) *http.Client {
	t := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
	}
	if tlsConfig != nil {
		t.TLSClientConfig = tlsConfig.Clone()
	}
	return &http.Client{
		Transport: t,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) > MaxRedirects {
				return fmt.Errorf("%w: stopped after %d redirects", ErrOrigin, MaxRedirects)
			}
			return nil
		},
	}
}

// httpSource reads files from http and https origins.
type httpSource struct {
	client    *http.Client
	userAgent string
	idle      time.Duration
	log       *zap.Logger
}

// newRequest builds a request for req with the caller's headers and the source's own.
func (h *httpSource) newRequest(ctx context.Context, method string, req Request) (*http.Request, *url.URL, error) {
	u, err := url.Parse(req.URL)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadURL, stripURLError(err))
	}
	if s := strings.ToLower(u.Scheme); (s != "http" && s != "https") || u.Host == "" {
		return nil, nil, fmt.Errorf("%w: %s: want http(s)://host/path", ErrBadURL, safeURL(u))
	}
	hr, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %v", ErrBadURL, safeURL(u), stripURLError(err))
	}
	for k, v := range req.Headers {
		switch {
		case strings.EqualFold(k, "Host"):
			hr.Host = v
		case strings.EqualFold(k, "Range"), strings.EqualFold(k, "If-Range"):
		default:
			hr.Header.Set(k, v)
		}
	}
	if hr.Header.Get("User-Agent") == "" {
		hr.Header.Set("User-Agent", h.userAgent)
	}
	if hr.Header.Get("Accept-Encoding") == "" {
		hr.Header.Set("Accept-Encoding", "identity")
	}
	return hr, u, nil
}

// do sends hr; transport errors name the URL without its secrets.
func (h *httpSource) do(hr *http.Request, u *url.URL) (*http.Response, error) {
	resp, err := h.client.Do(hr)
	if err != nil {
		return nil, fmt.Errorf("source: %s %s: %w", hr.Method, safeURL(u), stripURLError(err))
	}
	return resp, nil
}

// Probe implements Source.
func (h *httpSource) Probe(ctx context.Context, req Request) (Info, error) {
	hr, u, err := h.newRequest(ctx, http.MethodHead, req)
	if err != nil {
		return unknownInfo, err
	}
	resp, err := h.do(hr, u)
	if err != nil {
		return unknownInfo, err
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		info := headerInfo(resp.Header)
		info.ContentLength = resp.ContentLength
		return info, nil
	case http.StatusMethodNotAllowed, http.StatusNotImplemented, http.StatusForbidden:
		// HEAD refused (a presigned URL is signed for GET only): ask for one byte instead.
		return h.probeByGet(ctx, req)
	}
	return unknownInfo, &StatusError{Code: resp.StatusCode, URL: safeURL(u)}
}

// probeByGet probes with GET Range: bytes=0-0 and does not read the body.
func (h *httpSource) probeByGet(ctx context.Context, req Request) (Info, error) {
	hr, u, err := h.newRequest(ctx, http.MethodGet, req)
	if err != nil {
		return unknownInfo, err
	}
	hr.Header.Set("Range", "bytes=0-0")
	resp, err := h.do(hr, u)
	if err != nil {
		return unknownInfo, err
	}
	resp.Body.Close() // unread: a 200's body is not downloaded, its connection is dropped
	info := headerInfo(resp.Header)
	switch resp.StatusCode {
	case http.StatusPartialContent:
		cr, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil || cr.start != 0 {
			return unknownInfo, fmt.Errorf("%w: %s: Content-Range %q for bytes=0-0", ErrOrigin, safeURL(u), resp.Header.Get("Content-Range"))
		}
		info.ContentLength = cr.total
		info.AcceptRanges = true
		return info, nil
	case http.StatusOK:
		info.ContentLength = resp.ContentLength
		info.AcceptRanges = false // it just ignored a Range
		return info, nil
	case http.StatusRequestedRangeNotSatisfiable:
		// Byte 0 does not exist: an empty file ("bytes */0").
		if cr, err := parseContentRange(resp.Header.Get("Content-Range")); err == nil && cr.start < 0 && cr.total == 0 {
			info.ContentLength = 0
			info.AcceptRanges = true
			return info, nil
		}
	}
	return unknownInfo, &StatusError{Code: resp.StatusCode, URL: safeURL(u)}
}

// Open implements Source.
func (h *httpSource) Open(ctx context.Context, req Request, offset int64) (io.ReadCloser, Info, error) {
	if offset < 0 {
		return nil, unknownInfo, fmt.Errorf("source: negative offset %d", offset)
	}
	// The request's context is cancelled with a cause when the body stalls.
	rctx, cancel := context.WithCancelCause(ctx)
	hr, u, err := h.newRequest(rctx, http.MethodGet, req)
	if err != nil {
		cancel(nil)
		return nil, unknownInfo, err
	}
	if offset > 0 {
		hr.Header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	}
	resp, err := h.do(hr, u)
	if err != nil {
		cancel(nil)
		return nil, unknownInfo, err
	}
	body, info, err := h.checkOpen(resp, u, offset)
	h.log.Debug("origin GET", zap.String("url", safeURL(u)), zap.Int64("offset", offset),
		zap.Int("status", resp.StatusCode), zap.Int64("length", info.ContentLength), zap.Error(err))
	if err != nil {
		resp.Body.Close()
		cancel(nil)
		return nil, info, err
	}
	if body == nil {
		resp.Body.Close()
		cancel(nil)
		return io.NopCloser(strings.NewReader("")), info, nil
	}
	b := &httpBody{body: body, ctx: rctx, cancel: cancel, idle: h.idle}
	b.timer = time.AfterFunc(h.idle, func() { cancel(errIdle) })
	b.timer.Stop()
	return b, info, nil
}

// checkOpen checks a GET's answer for offset. A nil body with a nil error means the offset
// is the file's end.
func (h *httpSource) checkOpen(resp *http.Response, u *url.URL, offset int64) (io.ReadCloser, Info, error) {
	info := headerInfo(resp.Header)
	switch resp.StatusCode {
	case http.StatusOK:
		info.ContentLength = resp.ContentLength
		if offset > 0 {
			return nil, info, fmt.Errorf("%w: %s answered 200 to a Range request from byte %d", ErrNoRange, safeURL(u), offset)
		}
		return resp.Body, info, nil
	case http.StatusPartialContent:
		raw := resp.Header.Get("Content-Range")
		cr, err := parseContentRange(raw)
		if err != nil || cr.start < 0 {
			return nil, unknownInfo, fmt.Errorf("%w: %s: malformed Content-Range %q", ErrOrigin, safeURL(u), raw)
		}
		info.ContentLength = cr.total
		info.AcceptRanges = true
		if cr.start != offset {
			return nil, info, fmt.Errorf("%w: %s: asked from byte %d, got Content-Range %q", ErrNoRange, safeURL(u), offset, raw)
		}
		if resp.ContentLength >= 0 && resp.ContentLength != cr.end-cr.start+1 {
			return nil, unknownInfo, fmt.Errorf("%w: %s: Content-Range %q with Content-Length %d", ErrOrigin, safeURL(u), raw, resp.ContentLength)
		}
		return resp.Body, info, nil
	case http.StatusRequestedRangeNotSatisfiable:
		raw := resp.Header.Get("Content-Range")
		if cr, err := parseContentRange(raw); err == nil && cr.start < 0 && offset > 0 {
			info.ContentLength = cr.total
			info.AcceptRanges = true
			if cr.total == offset {
				return nil, info, nil
			}
			return nil, info, fmt.Errorf("%w: %s is %d bytes, shorter than offset %d", ErrChanged, safeURL(u), cr.total, offset)
		}
	}
	return nil, unknownInfo, &StatusError{Code: resp.StatusCode, URL: safeURL(u)}
}

// headerInfo reads the validators of a response.
func headerInfo(h http.Header) Info {
	info := Info{ContentLength: -1, ETag: h.Get("ETag"), LastModified: h.Get("Last-Modified")}
	for _, v := range h.Values("Accept-Ranges") {
		for _, unit := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(unit), "bytes") {
				info.AcceptRanges = true
			}
		}
	}
	return info
}

// contentRange is a parsed Content-Range: start and end are -1 for "bytes */total",
// total is -1 for "bytes start-end/*".
type contentRange struct{ start, end, total int64 }

func parseContentRange(s string) (contentRange, error) {
	bad := fmt.Errorf("malformed Content-Range %q", s)
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), "bytes ")
	if !ok {
		return contentRange{}, bad
	}
	rng, size, ok := strings.Cut(strings.TrimSpace(rest), "/")
	if !ok {
		return contentRange{}, bad
	}
	cr := contentRange{start: -1, end: -1, total: -1}
	if size != "*" {
		n, err := strconv.ParseInt(size, 10, 64)
		if err != nil || n < 0 {
			return contentRange{}, bad
		}
		cr.total = n
	}
	if rng == "*" {
		if cr.total < 0 {
			return contentRange{}, bad
		}
		return cr, nil
	}
	first, last, ok := strings.Cut(rng, "-")
	if !ok {
		return contentRange{}, bad
	}
	var err1, err2 error
	cr.start, err1 = strconv.ParseInt(first, 10, 64)
	cr.end, err2 = strconv.ParseInt(last, 10, 64)
	if err1 != nil || err2 != nil || cr.start < 0 || cr.end < cr.start || (cr.total >= 0 && cr.end >= cr.total) {
		return contentRange{}, bad
	}
	return cr, nil
}

// errIdle is the cause given to a request whose body stalled.
var errIdle = errors.New("origin sent nothing within the read idle timeout")

// httpBody is a response body whose reads are aborted when one receives nothing for idle.
type httpBody struct {
	body   io.ReadCloser
	ctx    context.Context
	cancel context.CancelCauseFunc
	idle   time.Duration
	timer  *time.Timer
	once   sync.Once
}

func (b *httpBody) Read(p []byte) (int, error) {
	b.timer.Reset(b.idle)
	n, err := b.body.Read(p)
	b.timer.Stop()
	if err != nil && err != io.EOF && errors.Is(context.Cause(b.ctx), errIdle) {
		err = fmt.Errorf("source: %w (%v)", errIdle, b.idle)
	}
	return n, err
}

func (b *httpBody) Close() error {
	var err error
	b.once.Do(func() {
		b.timer.Stop()
		err = b.body.Close()
		b.cancel(nil)
	})
	return err
}
