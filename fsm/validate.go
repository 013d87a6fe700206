package fsm

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/dfly-ha/dfha/sdk/api"
)

// Limits of what one command may carry. The API checks requests against them; Apply
// checks every command again, whatever its source, so a malformed command is refused the
// same way on every member instead of reaching the state.
const (
	MaxURLBytes     = 8 << 10  // a task's or preheat's URL
	MaxHeaders      = 64       // origin headers of a task or preheat
	MaxHeaderBytes  = 16 << 10 // all origin headers of a task or preheat together
	MaxFilter       = 64       // filtered query parameter names
	MaxFilterName   = 256      // bytes of one filtered name
	MaxHostnameLen  = 255
	MaxAddrLen      = 256   // a member's host:port
	MaxPeersRemoved = 10000 // peers in one PeerRemove
	MaxErrorBytes   = 4 << 10
)

func validID(what, id string) error {
	if !api.ValidID(id) {
		return fmt.Errorf("%s %q: %w", what, id, api.ErrBadID)
	}
	return nil
}

func validTaskID(id string) error {
	if !api.ValidTaskID(id) {
		return api.ErrBadTaskID
	}
	return nil
}

func validAddr(what, addr string) error {
	if len(addr) > MaxAddrLen {
		return fmt.Errorf("%s address too long", what)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" || !printable(host) {
		return fmt.Errorf("%s address %q is not HOST:PORT", what, addr)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("%s address %q: port must be in 1..65535", what, addr)
	}
	return nil
}

// printable reports whether s is valid UTF-8 made of printable characters only.
func printable(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) })
}

// ValidHeaders checks origin headers: at most MaxHeaders, MaxHeaderBytes in all, names
// that are HTTP tokens, values without line breaks or NUL.
func ValidHeaders(h map[string]string) error {
	if len(h) > MaxHeaders {
		return fmt.Errorf("at most %d headers", MaxHeaders)
	}
	total := 0
	for k, v := range h {
		total += len(k) + len(v)
		if k == "" || strings.ContainsFunc(k, func(r rune) bool { return r <= ' ' || r >= 0x7f || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, r) }) {
			return fmt.Errorf("header name %q is not a valid HTTP header name", k)
		}
		if strings.ContainsFunc(v, func(r rune) bool { return (r < ' ' && r != '\t') || r == 0x7f }) {
			return fmt.Errorf("header %q has a control character in its value", k)
		}
	}
	if total > MaxHeaderBytes {
		return fmt.Errorf("headers larger than %d bytes in all", MaxHeaderBytes)
	}
	return nil
}

// ValidFilter checks the query parameter names left out of a task's identity: at most
// MaxFilter, each 1..MaxFilterName printable bytes.
func ValidFilter(names []string) error {
	if len(names) > MaxFilter {
		return fmt.Errorf("at most %d filter names", MaxFilter)
	}
	for _, n := range names {
		if n == "" || len(n) > MaxFilterName || !printable(n) {
			return fmt.Errorf("filter name %q must be 1..%d printable bytes", n, MaxFilterName)
		}
	}
	return nil
}

// ValidSpans checks piece spans as api.ParseRange makes them: sorted, disjoint, in bounds.
func ValidSpans(spans []api.Span) error {
	if len(spans) == 0 {
		return fmt.Errorf("%w: no pieces", api.ErrBadRange)
	}
	for i, sp := range spans {
		if sp.From > sp.To || sp.To > api.MaxPieceIndex || (i > 0 && sp.From <= spans[i-1].To) {
			return fmt.Errorf("%w: spans must be sorted, disjoint and at most %d", api.ErrBadRange, api.MaxPieceIndex)
		}
	}
	return nil
}

func validURL(u string) error {
	if u == "" || len(u) > MaxURLBytes {
		return fmt.Errorf("url must be 1..%d bytes", MaxURLBytes)
	}
	return nil
}

func (c MemberUpsert) validate() error {
	if err := validID("member", c.ID); err != nil {
		return err
	}
	if err := validAddr("http", c.HTTPAddr); err != nil {
		return err
	}
	return validAddr("raft", c.RaftAddr)
}
func (c MemberRemove) validate() error { return validID("member", c.ID) }
func (c MemberAlive) validate() error  { return validID("member", c.ID) }
func (c PeerRegister) validate() error {
	if err := validID("peer", c.ID); err != nil {
		return err
	}
	if ip := net.ParseIP(c.IP); ip == nil || ip.IsUnspecified() {
		return fmt.Errorf("peer ip %q is not a usable IP address", c.IP)
	}
	if c.Port == 0 {
		return fmt.Errorf("peer port must be in 1..65535")
	}
	if c.Hostname == "" || len(c.Hostname) > MaxHostnameLen || !printable(c.Hostname) {
		return fmt.Errorf("hostname must be 1..%d printable characters", MaxHostnameLen)
	}
	return nil
}
func (c PeerRemove) validate() error {
	if len(c.IDs) == 0 || len(c.IDs) > MaxPeersRemoved {
		return fmt.Errorf("1..%d peers per removal", MaxPeersRemoved)
	}
	for _, id := range c.IDs {
		if err := validID("peer", id); err != nil {
			return err
		}
	}
	return nil
}
func (c TaskRegister) validate() error {
	if err := validTaskID(c.TaskID); err != nil {
		return err
	}
	if err := validURL(c.URL); err != nil {
		return err
	}
	if d, err := api.NormalizeDigest(c.Digest); err != nil || d != c.Digest {
		return fmt.Errorf("digest %q: %w", c.Digest, api.ErrBadDigest)
	}
	if c.PeerID != "" {
		if err := validID("peer", c.PeerID); err != nil {
			return err
		}
	}
	if err := ValidFilter(c.Filter); err != nil {
		return err
	}
	return ValidHeaders(c.Headers)
}
func (c TaskPeerState) validate() error {
	if err := validTaskID(c.TaskID); err != nil {
		return err
	}
	if c.State > PeerTaskFailed {
		return fmt.Errorf("unknown peer task state %d", c.State)
	}
	return validID("peer", c.PeerID)
}
func (c TaskDelete) validate() error { return validTaskID(c.TaskID) }
func (c PieceReport) validate() error {
	if err := validTaskID(c.TaskID); err != nil {
		return err
	}
	if err := validID("peer", c.PeerID); err != nil {
		return err
	}
	if c.Source != "" {
		if err := validID("source", c.Source); err != nil {
			return err
		}
	}
	return ValidSpans(c.Spans)
}
func (c TaskMeta) validate() error {
	if err := validTaskID(c.TaskID); err != nil {
		return err
	}
	if c.MemberID != "" {
		if err := validID("member", c.MemberID); err != nil {
			return err
		}
	}
	if c.Generation == 0 || c.Status > TaskFailed {
		return fmt.Errorf("generation must be 1 or more and status known")
	}
	if c.PieceSize < -1 || c.ContentLength < -1 || c.PieceCount < -1 || c.PieceCount > api.MaxPieceIndex+1 {
		return fmt.Errorf("sizes must be -1 (unknown) or more, and at most %d pieces", api.MaxPieceIndex+1)
	}
	return nil
}
func (c PiecesCached) validate() error {
	if err := validTaskID(c.TaskID); err != nil {
		return err
	}
	if err := validID("member", c.MemberID); err != nil {
		return err
	}
	if len(c.Digests) == 0 || int64(c.First)+int64(len(c.Digests))-1 > api.MaxPieceIndex {
		return fmt.Errorf("%w: cached pieces must be 1 or more and at most %d", api.ErrBadRange, api.MaxPieceIndex)
	}
	return nil
}
func (c PreheatCreate) validate() error {
	if err := validID("preheat", c.ID); err != nil {
		return err
	}
	if c.Kind != "file" && c.Kind != "image" {
		return fmt.Errorf("preheat type must be file or image")
	}
	if err := validURL(c.URL); err != nil {
		return err
	}
	return ValidHeaders(c.Headers)
}
func (c PreheatUpdate) validate() error {
	if err := validID("preheat", c.ID); err != nil {
		return err
	}
	if len(c.Status) == 0 || len(c.Status) > 32 || len(c.Error) > MaxErrorBytes {
		return fmt.Errorf("preheat status must be 1..32 bytes and error at most %d", MaxErrorBytes)
	}
	return nil
}
func (c TaskClaim) validate() error {
	if err := validTaskID(c.TaskID); err != nil {
		return err
	}
	return validID("member", c.MemberID)
}
func (rawCommand) validate() error { return nil }
