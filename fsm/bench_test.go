package fsm_test

import (
	"bytes"
	"fmt"
	"io"
	"math/rand"
	"sync"
	"testing"
	"time"

	"github.com/dfly-ha/dfha/fsm"
	"github.com/dfly-ha/dfha/sdk/api"
	"github.com/hashicorp/raft"
)

const (
	benchPeers  = 10_000
	benchPieces = 4096
	benchSpare  = 256 // missing pieces remembered per peer: each adds one round of new reports
)

var benchTask = tidBig

// bigState is 10,000 peers on one task of 4,096 pieces, each peer holding a different
// random half of the pieces. It is built once and shared by the benchmarks; missing[i]
// lists some pieces peer i did not hold, next how many of them were reported since.
type bigState struct {
	h       *harness
	missing [][]uint16
	next    int
	build   time.Duration
}

var (
	bigOnce sync.Once
	big     *bigState
)

func benchPeer(i int) string { return fmt.Sprintf("peer-%05d", i) }

// benchPeerRegister registers peer i.
func benchPeerRegister(i int) fsm.PeerRegister {
	return fsm.PeerRegister{ID: benchPeer(i), IP: "10.1.2.3", Hostname: benchPeer(i), Port: 65000}
}

func bigFSM(b *testing.B) *bigState {
	b.Helper()
	bigOnce.Do(func() {
		start := time.Now()
		h := newHarness(b)
		s := &bigState{h: h, missing: make([][]uint16, benchPeers)}
		h.must(m1, fsm.TaskRegister{TaskID: benchTask, URL: "http://origin/big"},
			fsm.TaskMeta{TaskID: benchTask, Generation: 1, Status: fsm.TaskRunning, PieceSize: 4 << 20,
				ContentLength: benchPieces * (4 << 20), PieceCount: benchPieces})
		var regs []fsm.Command
		for i := 0; i < benchPeers; i++ {
			regs = append(regs, benchPeerRegister(i))
		}
		h.must(regs...)
		rng := rand.New(rand.NewSource(1))
		var reports []fsm.Command
		for i := 0; i < benchPeers; i++ {
			perm := rng.Perm(benchPieces)
			held := make([]uint32, benchPieces/2)
			for j := range held {
				held[j] = uint32(perm[j])
			}
			for _, p := range perm[benchPieces/2 : benchPieces/2+benchSpare] {
				s.missing[i] = append(s.missing[i], uint16(p))
			}
			reports = append(reports, fsm.PieceReport{TaskID: benchTask, PeerID: benchPeer(i), Success: true, Spans: api.RangeOf(held)})
			if len(reports) == 256 || i == benchPeers-1 {
				h.must(reports...)
				reports = reports[:0]
			}
		}
		if got := h.f.HeldCount(benchTask); got != benchPeers*benchPieces/2 {
			b.Fatalf("HeldCount = %d, want %d", got, benchPeers*benchPieces/2)
		}
		s.build = time.Since(start)
		big = s
	})
	if big == nil {
		b.Fatalf("building the 10k-peer state failed")
	}
	return big
}

// newPieceEntries returns log entries with one PieceReport per peer, each of a piece the
// peer did not hold, 256 commands an entry.
func (s *bigState) newPieceEntries() []*raft.Log {
	if s.next >= benchSpare {
		panic("out of remembered missing pieces: raise benchSpare")
	}
	var logs []*raft.Log
	var cmds []fsm.Command
	for i := 0; i < benchPeers; i++ {
		p := uint32(s.missing[i][s.next])
		cmds = append(cmds, fsm.PieceReport{TaskID: benchTask, PeerID: benchPeer(i), Success: true, Spans: []api.Span{{From: p, To: p}}})
		if len(cmds) == 256 || i == benchPeers-1 {
			logs = append(logs, s.h.entry(cmds...))
			cmds = nil
		}
	}
	s.next++
	return logs
}

func applyAll(b *testing.B, f *fsm.FSM, logs []*raft.Log) {
	for i, r := range f.ApplyBatch(logs) {
		for j, res := range r.(*fsm.BatchResult).Results {
			if res.Code != fsm.CodeOK || res.N != 1 {
				b.Fatalf("entry %d command %d: %+v", i, j, res)
			}
		}
	}
}

// BenchmarkSnapshot10kPeers4096Pieces measures Snapshot alone. It also reports the time of
// a Snapshot followed by one new piece per peer (every peer's bitset and the task are
// cloned: the copy-on-write cost), and of the same applies without a snapshot before them.
func BenchmarkSnapshot10kPeers4096Pieces(b *testing.B) {
	s := bigFSM(b)
	f := s.h.f
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		snap, err := f.Snapshot()
		if err != nil {
			b.Fatal(err)
		}
		snap.Release()
	}
	b.StopTimer()

	const rounds = 3
	var cow, plain time.Duration
	for r := 0; r < rounds; r++ {
		first, second := s.newPieceEntries(), s.newPieceEntries()
		start := time.Now()
		snap, err := f.Snapshot()
		if err != nil {
			b.Fatal(err)
		}
		applyAll(b, f, first)
		cow += time.Since(start)
		snap.Release()

		start = time.Now()
		applyAll(b, f, second)
		plain += time.Since(start)
	}
	b.ReportMetric(float64(cow.Microseconds())/1000/rounds, "snap+10k-reports-ms")
	b.ReportMetric(float64(plain.Microseconds())/1000/rounds, "10k-reports-ms")
	b.ReportMetric(s.build.Seconds(), "setup-s")
}

type discardSink struct{ n int64 }

func (d *discardSink) Write(p []byte) (int, error) { d.n += int64(len(p)); return len(p), nil }
func (d *discardSink) Close() error                { return nil }
func (d *discardSink) Cancel() error               { return nil }
func (d *discardSink) ID() string                  { return "discard" }

// BenchmarkPersist10kPeers measures Persist of the 10k-peer state's snapshot.
func BenchmarkPersist10kPeers(b *testing.B) {
	f := bigFSM(b).h.f
	snap, err := f.Snapshot()
	if err != nil {
		b.Fatal(err)
	}
	defer snap.Release()
	b.ReportAllocs()
	b.ResetTimer()
	var sink discardSink
	for i := 0; i < b.N; i++ {
		sink.n = 0
		if err := snap.Persist(&sink); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.SetBytes(sink.n)
	b.ReportMetric(float64(sink.n)/(1<<20), "snapshot-MiB")
}

// BenchmarkRestore10kPeers measures Restore of the 10k-peer state.
func BenchmarkRestore10kPeers(b *testing.B) {
	f := bigFSM(b).h.f
	snap, err := f.Snapshot()
	if err != nil {
		b.Fatal(err)
	}
	p := persist(b, snap)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := fsm.New(nil).Restore(io.NopCloser(bytes.NewReader(p))); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkApplyPieceReports applies entries of 256 PieceReports of 4 new pieces each,
// from 1,024 peers on one task, and reports (peer, piece) pairs recorded per second.
func BenchmarkApplyPieceReports(b *testing.B) {
	const (
		perEntry = 256
		perSpan  = 4
		peers    = 1024
	)
	h := newHarness(b)
	h.must(fsm.TaskRegister{TaskID: tid1, URL: "u"},
		fsm.TaskMeta{TaskID: tid1, Generation: 1, PieceCount: api.MaxPieceIndex + 1})
	var regs []fsm.Command
	for i := 0; i < peers; i++ {
		regs = append(regs, benchPeerRegister(i))
	}
	h.must(regs...)
	logs := make([]*raft.Log, b.N)
	const blocks = (api.MaxPieceIndex + 1) / perSpan
	for i := range logs {
		cmds := make([]fsm.Command, perEntry)
		for j := range cmds {
			k := i*perEntry + j
			from := uint32(k/peers%blocks) * perSpan
			cmds[j] = fsm.PieceReport{TaskID: tid1, PeerID: benchPeer(k % peers), Success: true,
				Spans: []api.Span{{From: from, To: from + perSpan - 1}}}
		}
		logs[i] = h.entry(cmds...)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range logs {
		h.f.ApplyBatch(logs[i : i+1])
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N*perEntry*perSpan)/b.Elapsed().Seconds(), "pairs/s")
	if got, want := h.f.HeldCount(tid1), b.N*perEntry*perSpan; b.N*perEntry <= peers*blocks && got != want {
		b.Fatalf("HeldCount = %d, want %d", got, want)
	}
}

// BenchmarkPieceReportFullRange applies one PieceReport of every possible piece.
func BenchmarkPieceReportFullRange(b *testing.B) {
	h := newHarness(b)
	h.must(fsm.TaskRegister{TaskID: tid1, URL: "u"})
	logs := make([]*raft.Log, b.N)
	for i := range logs {
		h.must(benchPeerRegister(i))
	}
	for i := range logs {
		logs[i] = h.entry(fsm.PieceReport{TaskID: tid1, PeerID: benchPeer(i), Success: true, Spans: []api.Span{{From: 0, To: api.MaxPieceIndex}}})
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range logs {
		h.f.ApplyBatch(logs[i : i+1])
	}
	b.StopTimer()
	if got, want := h.f.HeldCount(tid1), b.N*(api.MaxPieceIndex+1); got != want {
		b.Fatalf("HeldCount = %d, want %d", got, want)
	}
}
