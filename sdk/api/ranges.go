package api

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Limits of a piece range, so that one request cannot describe unbounded work.
const (
	// MaxPieceIndex is the largest piece number the cluster accepts.
	MaxPieceIndex = 1<<20 - 1
	// MaxRangeSpans is the largest number of comma-separated parts in one range.
	MaxRangeSpans = 4096
)

// Span is an inclusive run of piece numbers.
type Span struct{ From, To uint32 }

// Len is the number of pieces in the span.
func (s Span) Len() int { return int(s.To-s.From) + 1 }

// ParseRange parses "7", "0-15" or "0-3,9,12-14" into sorted, merged spans.
func ParseRange(s string) ([]Span, error) {
	if s == "" {
		return nil, fmt.Errorf("%w: empty", ErrBadRange)
	}
	parts := strings.Split(s, ",")
	if len(parts) > MaxRangeSpans {
		return nil, fmt.Errorf("%w: more than %d parts", ErrRangeLarge, MaxRangeSpans)
	}
	spans := make([]Span, 0, len(parts))
	for _, p := range parts {
		lo, hi, isSpan := strings.Cut(p, "-")
		from, err := parsePiece(lo)
		if err != nil {
			return nil, err
		}
		to := from
		if isSpan {
			if to, err = parsePiece(hi); err != nil {
				return nil, err
			}
			if to < from {
				return nil, fmt.Errorf("%w: %q ends before it starts", ErrBadRange, p)
			}
		}
		spans = append(spans, Span{from, to})
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].From < spans[j].From })
	merged := spans[:1]
	for _, sp := range spans[1:] {
		last := &merged[len(merged)-1]
		if sp.From <= last.To+1 {
			if sp.To > last.To {
				last.To = sp.To
			}
			continue
		}
		merged = append(merged, sp)
	}
	return merged, nil
}

func parsePiece(s string) (uint32, error) {
	if s == "" || len(s) > 7 {
		return 0, fmt.Errorf("%w: piece number %q", ErrBadRange, s)
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%w: piece number %q", ErrBadRange, s)
		}
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n > MaxPieceIndex {
		return 0, fmt.Errorf("%w: piece number %q (at most %d)", ErrBadRange, s, MaxPieceIndex)
	}
	return uint32(n), nil
}

// FormatRange writes spans in the form ParseRange reads.
func FormatRange(spans []Span) string {
	var b strings.Builder
	for i, sp := range spans {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatUint(uint64(sp.From), 10))
		if sp.To != sp.From {
			b.WriteByte('-')
			b.WriteString(strconv.FormatUint(uint64(sp.To), 10))
		}
	}
	return b.String()
}

// RangeOf turns a list of piece numbers into spans (sorted and merged).
func RangeOf(pieces []uint32) []Span {
	if len(pieces) == 0 {
		return nil
	}
	ps := append([]uint32(nil), pieces...)
	sort.Slice(ps, func(i, j int) bool { return ps[i] < ps[j] })
	spans := []Span{{ps[0], ps[0]}}
	for _, p := range ps[1:] {
		last := &spans[len(spans)-1]
		if p <= last.To+1 {
			if p > last.To {
				last.To = p
			}
			continue
		}
		spans = append(spans, Span{p, p})
	}
	return spans
}
