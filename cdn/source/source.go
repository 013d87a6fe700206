package source

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// Request names a file on an origin.
type Request struct {
	// URL is the file's absolute URL (http, https, file, or a registered scheme).
	URL string
	// Headers are sent to the origin with every request for the file (Host sets the
	// request's host; Range and If-Range are the source's own and are ignored here). They
	// may hold credentials (Authorization, Cookie): they are never logged nor put in errors.
	// Go's client drops Authorization and Cookie on a redirect to another host.
	Headers map[string]string
}

// Info describes an origin's file, as far as the origin tells.
type Info struct {
	// ContentLength is the file's size in bytes, -1 when unknown (a chunked response).
	ContentLength int64
	// ETag and LastModified are the origin's validators, "" when it sent none. For file://
	// sources ETag is "" and LastModified is the modification time (RFC 3339, nanoseconds).
	ETag, LastModified string
	// AcceptRanges tells whether the origin says it serves byte ranges.
	AcceptRanges bool
}

// unknownInfo is the Info of a file nothing is known of.
var unknownInfo = Info{ContentLength: -1}

// Changed reports whether a and b describe different files: their lengths, ETags or
// Last-Modified differ where both are known. AcceptRanges is not compared.
func (a Info) Changed(b Info) bool {
	return (a.ContentLength >= 0 && b.ContentLength >= 0 && a.ContentLength != b.ContentLength) ||
		(a.ETag != "" && b.ETag != "" && a.ETag != b.ETag) ||
		(a.LastModified != "" && b.LastModified != "" && a.LastModified != b.LastModified)
}

// merge fills what a does not know from b.
func (a Info) merge(b Info) Info {
	if a.ContentLength < 0 {
		a.ContentLength = b.ContentLength
	}
	if a.ETag == "" {
		a.ETag = b.ETag
	}
	if a.LastModified == "" {
		a.LastModified = b.LastModified
	}
	a.AcceptRanges = b.AcceptRanges
	return a
}

// Source reads files from one kind of origin. Implementations are safe for concurrent use.
type Source interface {
	// Probe tells what the origin knows of the file without reading it: HTTP sends HEAD, or
	// GET with Range: bytes=0-0 when the origin refuses HEAD (405, 501, or 403 as presigned
	// URLs do). The CDN also uses it to check a peer's own credentials (ErrUnauthorized).
	Probe(ctx context.Context, req Request) (Info, error)
	// Open reads the file from offset to its end. For offset > 0 HTTP sends
	// Range: bytes=offset- and requires a 206 whose Content-Range starts at offset
	// (else ErrNoRange); for offset 0 it requires a 200. The Info describes the whole file
	// (ContentLength is the total size, not the body's). The body may end before the file
	// does when an origin sends a shorter range; NewResumingReader continues from there.
	// An offset equal to the file's size gives an empty body; a larger one, ErrChanged.
	// With an error the Info is meaningful only for ErrNoRange and ErrChanged. Cancelling
	// ctx aborts the body's reads.
	Open(ctx context.Context, req Request, offset int64) (io.ReadCloser, Info, error)
}

// Config configures the sources of a member.
type Config struct {
	// Client reaches http and https origins (default NewHTTPClient(nil): TLS verified,
	// redirects followed up to 10, dial timeout 10s, response header timeout 30s, no
	// overall timeout since bodies are large). A custom client should disable compression.
	Client *http.Client
	// UserAgent is sent unless the request's headers set one (default "dfha-supernode").
	UserAgent string
	// ReadIdleTimeout aborts an http body read that receives nothing for this long, so
	// that a stalled origin is resumed instead of hanging the task (default 60s).
	ReadIdleTimeout time.Duration
	// Logger receives the component's logs (named "source"; default: none).
	Logger *zap.Logger
	// Limiter, when set, paces all origin body reads of the member together, every
	// source included (nil: unlimited). Its burst must be at least 1 unless its limit is
	// rate.Inf; see Validate.
	Limiter *rate.Limiter
}

func (c *Config) applyDefaults() {
	if c.Client == nil {
		c.Client = NewHTTPClient(nil)
	}
	if c.UserAgent == "" {
		c.UserAgent = "dfha-supernode"
	}
	if c.ReadIdleTimeout <= 0 {
		c.ReadIdleTimeout = 60 * time.Second
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
}

// Validate checks the fields that have no default: a Limiter must be able to grant tokens.
func (c *Config) Validate() error {
	if l := c.Limiter; l != nil && l.Limit() != rate.Inf && (l.Limit() <= 0 || l.Burst() < 1) {
		return fmt.Errorf("source: origin rate limiter grants nothing (limit %v, burst %d)", l.Limit(), l.Burst())
	}
	return nil
}

// Sources is the registry of sources by URL scheme. Safe for concurrent use.
type Sources struct {
	limiter *rate.Limiter

	mu       sync.RWMutex
	byScheme map[string]Source
}

// NewSources returns a registry with "http", "https" and "file" registered. A Limiter that
// Validate rejects makes every read fail (rather than hang).
func NewSources(cfg Config) *Sources {
	cfg.applyDefaults()
	log := cfg.Logger.Named("source")
	h := &httpSource{client: cfg.Client, userAgent: cfg.UserAgent, idle: cfg.ReadIdleTimeout, log: log}
	s := &Sources{limiter: cfg.Limiter, byScheme: map[string]Source{}}
	s.Register("http", h)
	s.Register("https", h)
	s.Register("file", fileSource{})
	return s
}

// Register makes src serve URLs of scheme (case-insensitive), replacing any earlier one;
// a nil src removes the scheme. Sources returned by For are paced by the Config's Limiter.
func (s *Sources) Register(scheme string, src Source) {
	scheme = strings.ToLower(scheme)
	s.mu.Lock()
	defer s.mu.Unlock()
	if src == nil {
		delete(s.byScheme, scheme)
		return
	}
	s.byScheme[scheme] = src
}

// For returns the source for rawURL's scheme: ErrBadURL when rawURL does not parse,
// ErrUnsupported when no source serves its scheme.
func (s *Sources) For(rawURL string) (Source, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadURL, stripURLError(err))
	}
	scheme := strings.ToLower(u.Scheme)
	s.mu.RLock()
	src, ok := s.byScheme[scheme]
	s.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnsupported, scheme)
	}
	if s.limiter != nil {
		return limitedSource{src: src, lim: s.limiter}, nil
	}
	return src, nil
}

// safeURL is u for logs and errors: no user info, and the query (which may carry a
// signature or a token) reduced to "?...".
func safeURL(u *url.URL) string {
	c := *u
	c.User = nil
	c.Fragment, c.RawFragment = "", ""
	q := c.RawQuery != "" || c.ForceQuery
	c.RawQuery, c.ForceQuery = "", false
	if q {
		return c.String() + "?..."
	}
	return c.String()
}

// safeRawURL is safeURL for a string that may not parse.
func safeRawURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable url)"
	}
	return safeURL(u)
}

// stripURLError drops the URL that url.Parse puts in its errors.
func stripURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}
