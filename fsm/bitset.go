package fsm

import "math/bits"

// bitset is a growable set of piece numbers. It is copy-on-write across snapshots: epoch is
// the state epoch it was created in, and a bitset from an older epoch is cloned before it is
// changed (see state.writableHolder).
type bitset struct {
	words []uint64
	count int
	epoch uint64
}

func (b *bitset) has(i uint32) bool {
	w := int(i / 64)
	return w < len(b.words) && b.words[w]&(1<<(i%64)) != 0
}

// set sets bit i and reports whether it was newly set.
func (b *bitset) set(i uint32) bool {
	w := int(i / 64)
	if w >= len(b.words) {
		b.grow(w + 1)
	}
	mask := uint64(1) << (i % 64)
	if b.words[w]&mask != 0 {
		return false
	}
	b.words[w] |= mask
	b.count++
	return true
}

// grow makes room for n words; spare capacity is used first (words past the length are
// always zero), else the slice doubles, so setting bits in order costs amortized O(1).
func (b *bitset) grow(n int) {
	if n <= cap(b.words) {
		b.words = b.words[:n]
		return
	}
	grown := make([]uint64, n, max(n, 2*cap(b.words)))
	copy(grown, b.words)
	b.words = grown
}

// setRange sets bits from..to (inclusive) and returns how many were newly set.
func (b *bitset) setRange(from, to uint32) int {
	if n := int(to/64) + 1; n > len(b.words) {
		b.grow(n)
	}
	added := 0
	for i := from; ; i++ {
		if b.set(i) {
			added++
		}
		if i == to {
			return added
		}
	}
}

func (b *bitset) clone(epoch uint64) *bitset {
	return &bitset{words: append([]uint64(nil), b.words...), count: b.count, epoch: epoch}
}

// trimmed returns the words without trailing zero words, so equal sets encode equally.
func (b *bitset) trimmed() []uint64 {
	n := len(b.words)
	for n > 0 && b.words[n-1] == 0 {
		n--
	}
	return b.words[:n]
}

func (b *bitset) encode(e *encoder) {
	ws := b.trimmed()
	e.uvarint(uint64(len(ws)))
	for _, w := range ws {
		e.uvarint(w)
	}
}

func decodeBitset(d *decoder, epoch uint64) *bitset {
	n := d.count(1)
	b := &bitset{words: make([]uint64, n), epoch: epoch}
	for i := range b.words {
		b.words[i] = d.uvarint()
		b.count += bits.OnesCount64(b.words[i])
	}
	return b
}
