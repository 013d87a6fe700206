package api

import (
	"regexp"
	"strings"
	"testing"
)

func TestValidIDsMatchTheContractPatterns(t *testing.T) {
	taskRe := regexp.MustCompile(`^[0-9a-f]{64}$`)
	idRe := regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)
	cases := []string{"", "a", "A-b_c.9", "..", "a/b", "a b", "é", strings.Repeat("a", 128), strings.Repeat("a", 129),
		strings.Repeat("0", 64), strings.Repeat("f", 64), strings.Repeat("F", 64), strings.Repeat("0", 63), strings.Repeat("g", 64),
		"a\x00", "a:b", "%2e"}
	for _, c := range cases {
		if got, want := ValidID(c), idRe.MatchString(c); got != want {
			t.Errorf("ValidID(%q) = %v, want %v", c, got, want)
		}
		if got, want := ValidTaskID(c), taskRe.MatchString(c); got != want {
			t.Errorf("ValidTaskID(%q) = %v, want %v", c, got, want)
		}
	}
}

func TestTaskIDCanonicalURL(t *testing.T) {
	base, err := TaskID("http://example.com/a/b?x=1&y=2", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	same := []struct {
		url    string
		filter []string
	}{
		{"HTTP://EXAMPLE.com:80/a/b?y=2&x=1", nil},
		{"http://example.com/a/b?x=1&y=2#frag", nil},
		{"http://example.com/a/b?x=1&y=2&token=abc", []string{"token"}},
	}
	for _, s := range same {
		id, err := TaskID(s.url, s.filter, "")
		if err != nil || id != base {
			t.Errorf("TaskID(%q, %v) = %s, %v; want the same task as the canonical URL", s.url, s.filter, id, err)
		}
	}
	for _, other := range []string{"http://example.com/a/B?x=1&y=2", "https://example.com/a/b?x=1&y=2", "http://example.com:8080/a/b?x=1&y=2", "http://example.com/a/b?x=2&y=2"} {
		if id, _ := TaskID(other, nil, ""); id == base {
			t.Errorf("%q maps to the same task", other)
		}
	}
	withDigest, err := TaskID("http://example.com/a/b?x=1&y=2", nil, "SHA256:"+strings.Repeat("AB", 32))
	if err != nil || withDigest == base || !ValidTaskID(withDigest) {
		t.Errorf("digest must change the task ID: %s %v", withDigest, err)
	}
	for _, bad := range []string{"ftp://x/y", "/relative", "http://", "mailto:a@b", "http://[::1"} {
		if _, err := TaskID(bad, nil, ""); err == nil {
			t.Errorf("TaskID(%q) accepted", bad)
		}
	}
	if _, err := TaskID("http://x/y", nil, "sha256:12"); err == nil {
		t.Error("short digest accepted")
	}
}

func TestParseRange(t *testing.T) {
	good := map[string]string{"7": "7", "0-15": "0-15", "0-3,9,12-14": "0-3,9,12-14", "9,0-3": "0-3,9", "0-3,2-5": "0-5", "1,2,3": "1-3"}
	for in, want := range good {
		spans, err := ParseRange(in)
		if err != nil || FormatRange(spans) != want {
			t.Errorf("ParseRange(%q) = %v, %v; want %s", in, FormatRange(spans), err, want)
		}
	}
	for _, bad := range []string{"", "-", "5-2", "a", "1,,2", "-1", "1-", "99999999", "1048576", " 1", "0x1"} {
		if _, err := ParseRange(bad); err == nil {
			t.Errorf("ParseRange(%q) accepted", bad)
		}
	}
	if _, err := ParseRange(strings.Repeat("1,", MaxRangeSpans) + "1"); err == nil {
		t.Error("too many parts accepted")
	}
}
