package scheduler

import (
	"encoding/binary"
	"encoding/hex"
	"slices"

	"github.com/cespare/xxhash/v2"
	"github.com/dfly-ha/dfha/fsm"
	"github.com/dfly-ha/dfha/sdk/api"
)

// View is the replicated state of one task as the scheduler reads it. fsm.TaskView
// implements it, inside FSM.ReadTask.
type View interface {
	Info() (generation uint64, status fsm.TaskStatus, pieceSize, contentLength, pieceCount int64)
	Digest(n uint32) ([32]byte, bool)
	KnownPieces() uint32
	Holds(peerID string, n uint32) bool
	HeldBy(peerID string) (count int, joined bool)
	SampleHolders(max, budget int, skip string) []fsm.Holder
	CachedBy(n uint32) []fsm.MemberInfo
	BadReports(sourceID string) uint32
}

// Live is the live load a member knows (not replicated): heartbeats, and the work it
// handed out in the last seconds.
type Live interface {
	// PeerLoad returns a peer's current load (uploads it reported running plus uploads
	// this member sent its way since) and whether it is present (its heartbeat is fresh,
	// or it registered too recently to have sent one).
	PeerLoad(peerID string, registeredAt int64) (load int, present bool)
	// MemberFetchBy returns the peer this member recently sent to the members for piece n
	// of the task, because no peer held it ("" when none).
	MemberFetchBy(n uint32) string
}

// Request is a peer asking for work on one task.
type Request struct {
	PeerID  string
	Limit   int
	Mode    string // api.ModeRarest (default) or api.ModeStream
	From    uint32 // stream mode: the first piece the peer still needs
	Exclude []string
}

// Plan is the scheduler's answer: the task's state and the pieces to fetch, each with its
// sources. First and MemberOnly say, per planned piece, which source the peer will try
// first and whether only members can serve it (for the caller's load accounting).
type Plan struct {
	Schedule   api.Schedule
	First      []string // per piece: the ID of its first source
	MemberOnly []bool   // per piece: no peer could serve it
}

// Scheduler is a scheduling policy: a pure function of the replicated state (View) and the
// live load (Live). The default is Policy; another can replace it.
type Scheduler interface {
	Schedule(v View, live Live, req Request) Plan
	// UploadSlots returns how many uploads a peer should serve at once, given its load.
	UploadSlots(load int, seeding bool) int
}

// Policy is the default scheduler: rarest pieces first (among a sample of the swarm), or
// a window in order for a streaming peer; sources least loaded first, peers before members.
type Policy struct {
	// Sample is how many holders of the task one call looks at (default 32): it bounds the
	// work per call however large the swarm, and Go's map order varies the sample.
	Sample int
	// Budget bounds the piece-map entries visited to find the sample (default 8 x Sample).
	Budget int
	// ScanPieces bounds the pieces one call considers (default 4096), from a starting point
	// that depends on the peer, so that huge tasks cost no more than 4096-piece ones.
	ScanPieces int
	// PeerSources and MemberSources bound the sources listed per piece (defaults 4 and 2).
	PeerSources, MemberSources int
	// MinSlots, MaxSlots bound the upload slots advised to a peer (defaults 4 and 16).
	// A downloader fetches a few pieces at once (dfget: 4 workers) sharing its own rate, so
	// one transfer gets about a quarter of it: an uploader capped like its downloaders needs
	// about 4 transfers at once to send at its full rate.
	MinSlots, MaxSlots int
}

var _ Scheduler = Policy{}

func (p Policy) withDefaults() Policy {
	if p.Sample <= 0 {
		p.Sample = 32
	}
	if p.Budget <= 0 {
		p.Budget = 8 * p.Sample
	}
	if p.ScanPieces <= 0 {
		p.ScanPieces = 4096
	}
	if p.PeerSources <= 0 {
		p.PeerSources = 4
	}
	if p.MemberSources <= 0 {
		p.MemberSources = 2
	}
	if p.MinSlots <= 0 {
		p.MinSlots = 4
	}
	if p.MaxSlots < p.MinSlots {
		p.MaxSlots = max(16, p.MinSlots)
	}
	return p
}

// candidate is a piece the asking peer lacks, with what ranks it.
type candidate struct {
	n       uint32
	holders []int // indexes into the sample of the peers that hold it
	rarity  int   // holders in the sample
	tie     uint64
}

// Schedule plans the next pieces for req.PeerID.
func (p Policy) Schedule(v View, live Live, req Request) Plan {
	p = p.withDefaults()
	gen, status, pieceSize, length, count := v.Info()
	out := Plan{Schedule: api.Schedule{Status: status.String(), Generation: gen, PieceSize: pieceSize,
		ContentLength: length, PieceCount: count, Pieces: []api.ScheduledPiece{}}}
	if count < 0 || status == fsm.TaskFailed {
		return out // not probed yet, or nothing will come
	}
	held, _ := v.HeldBy(req.PeerID)
	if int64(held) >= count {
		out.Schedule.Done = true
		return out
	}
	limit := min(max(req.Limit, 1), api.MaxScheduleLimit)

	excluded := make(map[string]bool, len(req.Exclude))
	for _, id := range req.Exclude {
		excluded[id] = true
	}
	// The sample of peers that may serve: present, not blacklisted, with their load.
	var sample []fsm.Holder
	var loads []int
	for _, h := range v.SampleHolders(p.Sample, p.Budget, req.PeerID) {
		if excluded[h.ID] || v.BadReports(h.ID) > 0 {
			continue
		}
		load, present := live.PeerLoad(h.ID, h.RegisteredAt)
		if !present {
			continue
		}
		sample = append(sample, h)
		loads = append(loads, load)
	}

	known := min(uint32(count), v.KnownPieces()) // pieces past it have no digest yet
	if known == 0 {
		return out
	}
	scan := min(uint32(p.ScanPieces), known)
	var start uint32
	stream := req.Mode == api.ModeStream
	if stream {
		start = min(req.From, known)
	} else if known > scan {
		start = uint32(tieBreak(req.PeerID, 0) % uint64(known)) // spread huge tasks over peers
	}

	var cands []candidate
	for i := uint32(0); i < scan; i++ {
		n := start + i
		if stream {
			if n >= known {
				break
			}
		} else if n >= known {
			n -= known
		}
		if _, ok := v.Digest(n); !ok || v.Holds(req.PeerID, n) {
			continue
		}
		c := candidate{n: n}
		for j, h := range sample {
			if h.Pieces.Has(n) {
				c.holders = append(c.holders, j)
			}
		}
		if by := live.MemberFetchBy(n); by != "" && !stream && len(c.holders) == 0 {
			if by == req.PeerID {
				continue // the asker is fetching it already
			}
			if _, joined := v.HeldBy(by); joined { // a peer that left fetches nothing
				// Another peer is fetching it from a member: fetch something else, and
				// get this one from that peer once it has it.
				continue
			}
		}
		c.rarity = len(c.holders)
		c.tie = tieBreak(req.PeerID, n)
		cands = append(cands, c)
		if stream && len(cands) >= limit {
			break
		}
	}
	if !stream {
		slices.SortFunc(cands, func(a, b candidate) int {
			if a.rarity != b.rarity {
				return a.rarity - b.rarity
			}
			switch {
			case a.tie < b.tie:
				return -1
			case a.tie > b.tie:
				return 1
			}
			return 0
		})
	}
	// Pieces only members have go to many peers a few at a time, so that they enter the
	// swarm in parallel and spread from there, rather than all through the first asker.
	// Once a swarm exists (other peers hold pieces), one such piece per answer: each asker
	// then brings a different piece in and serves it, rather than one peer holding many
	// pieces nobody else has and every other peer queueing at its upload slots.
	memberOnly, maxMemberOnly := 0, max(2, limit/4)
	if len(sample) > 0 {
		maxMemberOnly = 1
	}
	if !stream {
		cands = slices.DeleteFunc(cands, func(c candidate) bool {
			if len(c.holders) > 0 {
				return false
			}
			memberOnly++
			return memberOnly > maxMemberOnly
		})
	}
	if len(cands) > limit {
		cands = cands[:limit]
	}

	for _, c := range cands {
		digest, _ := v.Digest(c.n)
		size := pieceSize
		if last := int64(c.n+1) * pieceSize; length >= 0 && last > length {
			size = length - int64(c.n)*pieceSize
		}
		piece := api.ScheduledPiece{N: c.n, Size: size, Digest: "sha256:" + hex.EncodeToString(digest[:])}
		// Peers: least loaded first; what this plan already gave them counts as load.
		hs := slices.Clone(c.holders)
		slices.SortStableFunc(hs, func(a, b int) int { return loads[a] - loads[b] })
		for _, j := range hs[:min(len(hs), p.PeerSources)] {
			piece.Sources = append(piece.Sources, api.PieceSource{Kind: api.SourcePeer, ID: sample[j].ID, Addr: sample[j].Addr})
		}
		if len(hs) > 0 {
			loads[hs[0]]++
		}
		members := 0
		for _, m := range v.CachedBy(c.n) {
			if members >= p.MemberSources {
				break
			}
			if excluded[m.ID] {
				continue
			}
			piece.Sources = append(piece.Sources, api.PieceSource{Kind: api.SourceMember, ID: m.ID, Addr: m.HTTPAddr})
			members++
		}
		if len(piece.Sources) == 0 {
			continue // every source of it is excluded
		}
		out.Schedule.Pieces = append(out.Schedule.Pieces, piece)
		out.First = append(out.First, piece.Sources[0].ID)
		out.MemberOnly = append(out.MemberOnly, len(hs) == 0)
	}
	return out
}

// UploadSlots follows demand: as many slots as uploads are running or were just sent its
// way, within MinSlots..MaxSlots; a peer still downloading keeps at most half the maximum
// for itself, a seeder (holding every piece) may use all of it.
func (p Policy) UploadSlots(load int, seeding bool) int {
	p = p.withDefaults()
	limit := p.MaxSlots
	if !seeding {
		limit = max(p.MinSlots, p.MaxSlots/2)
	}
	return min(max(load+1, p.MinSlots), limit)
}

// tieBreak orders pieces of equal rarity differently for every peer, deterministically.
func tieBreak(peerID string, n uint32) uint64 {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], n)
	d := xxhash.New()
	_, _ = d.WriteString(peerID)
	_, _ = d.Write(b[:])
	return d.Sum64()
}
