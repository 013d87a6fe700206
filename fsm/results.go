package fsm

// EncodeResults is the wire form of a write's outcome, used when a follower forwarded the
// write: the index the commands were applied at and one Result per command.
func EncodeResults(index uint64, results []Result) []byte {
	e := encoder{b: make([]byte, 0, 16+4*len(results))}
	e.uvarint(index)
	e.uvarint(uint64(len(results)))
	for _, r := range results {
		e.u8(uint8(r.Code))
		e.uvarint(r.N)
		e.str(r.Msg)
	}
	return e.b
}

// DecodeResults reads what EncodeResults wrote.
func DecodeResults(p []byte) (uint64, []Result, error) {
	d := decoder{b: p}
	index := d.uvarint()
	n := d.count(3)
	results := make([]Result, n)
	for i := range results {
		results[i] = Result{Code: Code(d.u8()), N: d.uvarint(), Msg: d.str()}
	}
	return index, results, d.err
}
