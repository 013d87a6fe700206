package source

import (
	"errors"
	"fmt"
	"net/http"
)

// Errors of the source package. Check them with errors.Is; causes are wrapped with %w.
var (
	// ErrUnsupported: no Source is registered for the URL's scheme.
	ErrUnsupported = errors.New("unsupported origin scheme")
	// ErrBadURL: the URL cannot name a file here (unparsable, no host, a relative or
	// non-local file:// path, a directory or another non-regular file).
	ErrBadURL = errors.New("bad origin url")
	// ErrNotFound: the origin has no such file (HTTP 404 or 410, a missing local file).
	ErrNotFound = errors.New("origin file not found")
	// ErrUnauthorized: the origin refused the request's credentials (HTTP 401 or 403, a
	// local file that cannot be read). The CDN probes with a peer's own headers to check them.
	ErrUnauthorized = errors.New("origin refused the credentials")
	// ErrChanged: the origin's file is not the one expected (its length, ETag or
	// Last-Modified differ, or it is shorter than the requested offset).
	ErrChanged = errors.New("origin file changed")
	// ErrNoRange: the origin cannot resume: it ignored a Range request (answered 200) or
	// answered a Content-Range that does not start at the requested offset.
	ErrNoRange = errors.New("origin cannot resume at an offset")
	// ErrOrigin: the origin answered another unexpected status (the error is a *StatusError
	// carrying it) or misbehaved (too many redirects, a malformed Content-Range).
	ErrOrigin = errors.New("origin error")
)

// StatusError is an unexpected HTTP status from an origin. It unwraps to ErrNotFound
// (404, 410), ErrUnauthorized (401, 403) or ErrOrigin (any other status).
type StatusError struct {
	Code int    // the HTTP status code
	URL  string // the URL asked for, without user info or query
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%v: %s answered %d %s", e.Unwrap(), e.URL, e.Code, http.StatusText(e.Code))
}

// Unwrap returns the sentinel that the status maps to.
func (e *StatusError) Unwrap() error {
	switch e.Code {
	case http.StatusNotFound, http.StatusGone:
		return ErrNotFound
	case http.StatusUnauthorized, http.StatusForbidden:
		return ErrUnauthorized
	}
	return ErrOrigin
}

// temporary reports whether the status may go away by itself (a retry can help).
func (e *StatusError) temporary() bool {
	return e.Code == http.StatusRequestTimeout || e.Code == http.StatusTooManyRequests || e.Code >= 500
}
