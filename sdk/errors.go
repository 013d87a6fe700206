package sdk

import (
	"errors"
	"fmt"
	"net/http"
)

// Errors of the sdk. Every error a Client method returns wraps at most one of them, so callers
// test with errors.Is. Answers of the cluster come as *APIError, which unwraps to the sentinel
// that matches its status; local failures (an invalid ID, an unreachable cluster) wrap the
// sentinel and their cause with %w.
var (
	// ErrNotFound: the task, peer or member does not exist (404).
	ErrNotFound = errors.New("not found")
	// ErrConflict: the request conflicts with the replicated state (409), for example a
	// piece report for an older task generation.
	ErrConflict = errors.New("conflict")
	// ErrNoLeader: members kept answering 503 (no leader, member behind, overloaded) until
	// the attempts ran out.
	ErrNoLeader = errors.New("no leader: cluster unavailable")
	// ErrUnauthorized: the cluster wants a valid bearer token (401 or 403).
	ErrUnauthorized = errors.New("unauthorized")
	// ErrBadRequest: the request is invalid (400, 413 or any other 4xx), or was found
	// invalid locally before anything was sent.
	ErrBadRequest = errors.New("bad request")
	// ErrUnavailable: no member could be reached (dial, timeout or connection errors, or a
	// 502/504 from a member that could not reach the leader) until the attempts ran out.
	ErrUnavailable = errors.New("cluster unreachable")
)

// APIError is an error answer of a member: its HTTP status, the server's {"error": ...}
// message (or the start of the body when it was not JSON) and the member that answered.
type APIError struct {
	Status   int
	Message  string
	Endpoint string
}

// Error implements error.
func (e *APIError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	return fmt.Sprintf("member %s answered %d: %s", e.Endpoint, e.Status, msg)
}

// Unwrap returns the sentinel error of the status, so that errors.Is(err, ErrNotFound) and
// the like work; nil for statuses that have none (500, for instance).
func (e *APIError) Unwrap() error { return sentinelFor(e.Status) }

// sentinelFor maps an HTTP status to the sdk's sentinel error.
func sentinelFor(status int) error {
	switch {
	case status == http.StatusNotFound:
		return ErrNotFound
	case status == http.StatusConflict:
		return ErrConflict
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return ErrUnauthorized
	case status == http.StatusServiceUnavailable:
		return ErrNoLeader
	case status == http.StatusBadGateway || status == http.StatusGatewayTimeout:
		// A follower could not reach the leader it forwarded to.
		return ErrUnavailable
	case status >= 400 && status < 500:
		return ErrBadRequest
	}
	return nil
}

// badRequest is a request found invalid before anything was sent.
func badRequest(format string, args ...any) error {
	return fmt.Errorf("sdk: %w: %w", ErrBadRequest, fmt.Errorf(format, args...))
}
