package httpapi

import (
	"encoding/json"
	"strconv"
	"strings"

	"github.com/dfly-ha/dfha/fsm"
	"github.com/dfly-ha/dfha/scheduler"
	"github.com/dfly-ha/dfha/sdk/api"
	"github.com/valyala/fasthttp"
)

// LoadsPath is the route on which members pass each other the heartbeats they received
// (a JSON list of scheduler.Update).
const LoadsPath = "/internal/v1/loads"

// maxLoadUpdates bounds one exchange request.
const maxLoadUpdates = 1 << 17

// schedule answers GET /tasks/{id}/pieces?peer_id=P&limit=N[&mode=stream&from=K][&exclude=..]:
// the next pieces for the peer and their sources, from this member's own state and load.
func (s *Server) schedule(ctx *fasthttp.RequestCtx) {
	id, ok := s.taskID(ctx)
	if !ok {
		return
	}
	req, msg := parseScheduleQuery(ctx.QueryArgs())
	if msg != "" {
		s.fail(ctx, fasthttp.StatusBadRequest, msg)
		return
	}
	if !s.readable(ctx) {
		return
	}
	if _, found := s.fsm.Peer(req.PeerID); !found {
		s.fail(ctx, fasthttp.StatusNotFound, "peer "+req.PeerID+" not found (register first)")
		return
	}
	var plan scheduler.Plan
	joined := false
	found := s.fsm.ReadTask(id, func(v fsm.TaskView) {
		if _, joined = v.HeldBy(req.PeerID); joined {
			plan = s.cfg.Scheduler.Schedule(v, s.cfg.Loads.Live(id, s.cfg.PeerTTL), req)
		}
	})
	switch {
	case !found:
		s.fail(ctx, fasthttp.StatusNotFound, "task "+id+" not found")
		return
	case !joined:
		s.fail(ctx, fasthttp.StatusNotFound, "peer "+req.PeerID+" has not registered task "+id+" (POST /tasks first)")
		return
	}
	for i, p := range plan.Schedule.Pieces {
		s.cfg.Loads.Assigned(id, req.PeerID, plan.First[i], p.N, plan.MemberOnly[i])
	}
	s.metrics.scheduled.Add(float64(len(plan.Schedule.Pieces)))
	s.reply(ctx, fasthttp.StatusOK, plan.Schedule)
}

// parseScheduleQuery reads and checks the scheduling parameters; msg says what is wrong.
func parseScheduleQuery(q *fasthttp.Args) (req scheduler.Request, msg string) {
	req.PeerID = string(q.Peek(api.QueryPeerID))
	if !api.ValidID(req.PeerID) {
		return req, "peer_id: " + api.ErrBadID.Error()
	}
	req.Limit = 16
	if raw := q.Peek(api.QueryLimit); len(raw) > 0 {
		n, err := strconv.Atoi(string(raw))
		if err != nil || n < 1 || n > api.MaxScheduleLimit {
			return req, "limit must be an integer in 1.." + strconv.Itoa(api.MaxScheduleLimit)
		}
		req.Limit = n
	}
	switch mode := string(q.Peek(api.QueryMode)); mode {
	case "", api.ModeRarest:
		req.Mode = api.ModeRarest
	case api.ModeStream:
		req.Mode = api.ModeStream
		n, err := strconv.ParseUint(string(q.Peek(api.QueryFrom)), 10, 32)
		if err != nil || n > api.MaxPieceIndex {
			return req, "from must be a piece number in 0.." + strconv.Itoa(api.MaxPieceIndex) + " in stream mode"
		}
		req.From = uint32(n)
	default:
		return req, "mode must be rarest or stream"
	}
	if raw := string(q.Peek(api.QueryExclude)); raw != "" {
		ids := strings.Split(raw, ",")
		if len(ids) > api.MaxExclude {
			return req, "exclude lists more than " + strconv.Itoa(api.MaxExclude) + " sources"
		}
		for _, id := range ids {
			if !api.ValidID(id) {
				return req, "exclude: " + api.ErrBadID.Error()
			}
		}
		req.Exclude = ids
	}
	return req, ""
}

// uploadSlots is the heartbeat's advice to a peer: how many uploads to serve at once.
func (s *Server) uploadSlots(peerID string, tasks []string) int {
	seeding := len(tasks) > 0
	for _, id := range tasks {
		s.fsm.ReadTask(id, func(v fsm.TaskView) {
			_, _, _, _, count := v.Info()
			held, _ := v.HeldBy(peerID)
			seeding = seeding && count >= 0 && int64(held) >= count
		})
	}
	load, _ := s.cfg.Loads.Live("", s.cfg.PeerTTL).PeerLoad(peerID, 0)
	return s.cfg.Scheduler.UploadSlots(load, seeding)
}

// loads takes the heartbeats another member received (member to member, token-guarded).
func (s *Server) loads(ctx *fasthttp.RequestCtx) {
	var updates []scheduler.Update
	if err := json.Unmarshal(ctx.PostBody(), &updates); err != nil {
		s.fail(ctx, fasthttp.StatusBadRequest, "malformed load updates: "+err.Error())
		return
	}
	if len(updates) > maxLoadUpdates {
		s.fail(ctx, fasthttp.StatusRequestEntityTooLarge, "too many load updates")
		return
	}
	for _, u := range updates {
		if !api.ValidID(u.Peer) || u.Uploads < 0 || u.AgeMS < 0 {
			s.fail(ctx, fasthttp.StatusBadRequest, "bad load update for peer "+strconv.Quote(u.Peer))
			return
		}
	}
	s.cfg.Loads.Merge(updates)
	ctx.SetStatusCode(fasthttp.StatusNoContent)
}
