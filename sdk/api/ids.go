package api

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sort"
	"strings"
)

// Errors of the identifier rules.
var (
	ErrBadTaskID  = errors.New("task id must be 64 lowercase hex characters")
	ErrBadID      = errors.New("id must match ^[A-Za-z0-9._-]{1,128}$")
	ErrBadURL     = errors.New("url must be an absolute http or https URL with a host")
	ErrBadDigest  = errors.New("digest must be sha256:<64 hex> or md5:<32 hex>")
	ErrBadRange   = errors.New("bad piece range")
	ErrRangeLarge = errors.New("piece range too large")
)

// ValidTaskID reports whether id matches ^[0-9a-f]{64}$.
func ValidTaskID(id string) bool {
	if len(id) != 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// ValidID reports whether id is a valid peer or member ID: ^[A-Za-z0-9._-]{1,128}$.
func ValidID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// CanonicalURL returns the form of raw that identifies a task: scheme and host lowercased,
// the default port dropped, the fragment and the filter query parameters removed, and the
// remaining parameters sorted by name, then value.
func CanonicalURL(raw string, filter []string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrBadURL, err)
	}
	scheme := strings.ToLower(u.Scheme)
	if (scheme != "http" && scheme != "https") || u.Host == "" || u.Opaque != "" {
		return "", ErrBadURL
	}
	host := strings.ToLower(u.Hostname())
	if port := u.Port(); port != "" && !(scheme == "http" && port == "80") && !(scheme == "https" && port == "443") {
		host = net.JoinHostPort(host, port)
	} else if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	drop := make(map[string]bool, len(filter))
	for _, f := range filter {
		drop[f] = true
	}
	type kv struct{ k, v string }
	var params []kv
	for k, vs := range u.Query() {
		if drop[k] {
			continue
		}
		for _, v := range vs {
			params = append(params, kv{k, v})
		}
	}
	sort.Slice(params, func(i, j int) bool {
		if params[i].k != params[j].k {
			return params[i].k < params[j].k
		}
		return params[i].v < params[j].v
	})
	var b strings.Builder
	b.WriteString(scheme)
	b.WriteString("://")
	if u.User != nil {
		b.WriteString(u.User.String())
		b.WriteByte('@')
	}
	b.WriteString(host)
	b.WriteString(u.EscapedPath())
	for i, p := range params {
		if i == 0 {
			b.WriteByte('?')
		} else {
			b.WriteByte('&')
		}
		b.WriteString(url.QueryEscape(p.k))
		b.WriteByte('=')
		b.WriteString(url.QueryEscape(p.v))
	}
	return b.String(), nil
}

// NormalizeDigest checks an expected-digest string and returns it lowercased; "" stays "".
func NormalizeDigest(d string) (string, error) {
	if d == "" {
		return "", nil
	}
	d = strings.ToLower(d)
	algo, hexPart, ok := strings.Cut(d, ":")
	if !ok {
		return "", ErrBadDigest
	}
	want := map[string]int{"sha256": 64, "md5": 32}[algo]
	if want == 0 || len(hexPart) != want {
		return "", ErrBadDigest
	}
	if _, err := hex.DecodeString(hexPart); err != nil {
		return "", ErrBadDigest
	}
	return d, nil
}

// TaskID returns the task ID of a URL: lowercase hex SHA-256 of the canonical URL, followed
// by "\n" and the normalized expected digest when one is given.
func TaskID(rawURL string, filter []string, digest string) (string, error) {
	canon, err := CanonicalURL(rawURL, filter)
	if err != nil {
		return "", err
	}
	d, err := NormalizeDigest(digest)
	if err != nil {
		return "", err
	}
	s := canon
	if d != "" {
		s += "\n" + d
	}
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:]), nil
}
