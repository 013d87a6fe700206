package httpapi

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dfly-ha/dfha/cdn"
	"github.com/dfly-ha/dfha/fsm"
	"github.com/dfly-ha/dfha/sdk/api"
	"github.com/valyala/fasthttp"
	"go.uber.org/zap"
)

// Bounds of requests beyond those of the commands (fsm.Max*).
const (
	maxReasonLen  = 1 << 10
	maxReportsReq = 1024
)

func (s *Server) registerTask(ctx *fasthttp.RequestCtx) {
	var req api.RegisterTaskRequest
	if !s.decode(ctx, &req) {
		return
	}
	if len(req.URL) > fsm.MaxURLBytes {
		s.fail(ctx, fasthttp.StatusBadRequest, fmt.Sprintf("url longer than %d bytes", fsm.MaxURLBytes))
		return
	}
	if err := fsm.ValidHeaders(req.Headers); err != nil {
		s.fail(ctx, fasthttp.StatusBadRequest, err.Error())
		return
	}
	if err := fsm.ValidFilter(req.Filter); err != nil {
		s.fail(ctx, fasthttp.StatusBadRequest, err.Error())
		return
	}
	if !api.ValidID(req.PeerID) {
		s.fail(ctx, fasthttp.StatusBadRequest, "peer_id: "+api.ErrBadID.Error())
		return
	}
	digest, err := api.NormalizeDigest(req.Digest)
	if err != nil {
		s.fail(ctx, fasthttp.StatusBadRequest, err.Error())
		return
	}
	id, err := api.TaskID(req.URL, req.Filter, digest)
	if err != nil {
		s.fail(ctx, fasthttp.StatusBadRequest, err.Error())
		return
	}
	if !s.credentialsAccepted(ctx, id, req) {
		return
	}
	index, res, ok := s.propose(ctx, fsm.TaskRegister{TaskID: id, URL: req.URL, Digest: digest,
		PeerID: req.PeerID, Headers: req.Headers, Filter: req.Filter})
	if !ok {
		return
	}
	status := fasthttp.StatusOK
	if res[0].Code == fsm.CodeCreated {
		status = fasthttp.StatusCreated
	}
	s.replyTask(ctx, status, id, index, false)
}

// credentialsAccepted checks, for a private task (one registered with credentials, or
// registered now with credentials), that the origin accepts this peer's own headers; it
// answers 403 (and false) when it does not. Without a CDN (tests of the core) nothing is
// checked.
func (s *Server) credentialsAccepted(ctx *fasthttp.RequestCtx, id string, req api.RegisterTaskRequest) bool {
	if s.cfg.Pieces == nil {
		return true
	}
	existing, found := s.fsm.Task(id)
	if !cdn.Credentialed(req.Headers) && !(found && cdn.Credentialed(existing.Headers)) {
		return true
	}
	if found && s.fsm.PeerJoined(id, req.PeerID) {
		return true
	}
	c, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	err := s.cfg.Pieces.CheckAccess(c, req.URL, req.Headers)
	switch {
	case err == nil:
		return true
	case errors.Is(err, cdn.ErrForbidden):
		s.fail(ctx, fasthttp.StatusForbidden, "the origin refused this peer's credentials for "+id)
	default:
		s.fail(ctx, fasthttp.StatusBadGateway, "the origin could not be asked about this peer's credentials: "+err.Error())
	}
	return false
}

// replyTask answers with the task as this member sees it once it has applied index.
func (s *Server) replyTask(ctx *fasthttp.RequestCtx, status int, id string, index uint64, details bool) {
	c, cancel := context.WithTimeout(context.Background(), s.cfg.MinIndexWait)
	defer cancel()
	if err := s.fsm.WaitApplied(c, index); err != nil {
		s.fail(ctx, fasthttp.StatusServiceUnavailable, "member has not caught up, retry")
		return
	}
	t, found := s.fsm.Task(id)
	if !found {
		s.fail(ctx, fasthttp.StatusNotFound, "task "+id+" not found")
		return
	}
	owners := s.fsm.RingOwners(id, s.cfg.Replicas) // the members the ring of live members assigns it to
	if owners == nil {
		owners = []string{}
	}
	out := api.Task{TaskID: t.ID, Generation: t.Generation, Status: t.Status.String(),
		PieceSize: t.PieceSize, ContentLength: t.ContentLength, PieceCount: t.PieceCount, Owners: owners}
	if details {
		out.PiecesCached, out.Peers = &t.PiecesCached, &t.Peers
	}
	s.reply(ctx, status, out)
}

func (s *Server) getTask(ctx *fasthttp.RequestCtx) {
	id, ok := s.taskID(ctx)
	if !ok || !s.readable(ctx) {
		return
	}
	s.replyTask(ctx, fasthttp.StatusOK, id, 0, true)
}

func (s *Server) updateTask(ctx *fasthttp.RequestCtx) {
	id, ok := s.taskID(ctx)
	if !ok {
		return
	}
	var req api.UpdateTaskRequest
	if !s.decode(ctx, &req) {
		return
	}
	if !api.ValidID(req.PeerID) {
		s.fail(ctx, fasthttp.StatusBadRequest, "peer_id: "+api.ErrBadID.Error())
		return
	}
	state, valid := fsm.ParsePeerTaskState(req.Status)
	if !valid {
		s.fail(ctx, fasthttp.StatusBadRequest, "status must be running, success or failed")
		return
	}
	if len(req.Reason) > maxReasonLen {
		s.fail(ctx, fasthttp.StatusBadRequest, "reason too long")
		return
	}
	if _, _, ok := s.propose(ctx, fsm.TaskPeerState{TaskID: id, PeerID: req.PeerID, State: state}); ok {
		ctx.SetStatusCode(fasthttp.StatusNoContent)
	}
}

func (s *Server) deleteTask(ctx *fasthttp.RequestCtx) {
	id, ok := s.taskID(ctx)
	if !ok {
		return
	}
	if _, _, ok := s.propose(ctx, fsm.TaskDelete{TaskID: id}); ok {
		ctx.SetStatusCode(fasthttp.StatusNoContent)
	}
}

// pieceReport validates one report and turns it into a command.
func (s *Server) pieceReport(taskID, peerID string, generation uint64, pieces, status, source, reason string) (fsm.PieceReport, error) {
	if !api.ValidID(peerID) {
		return fsm.PieceReport{}, fmt.Errorf("peer_id: %w", api.ErrBadID)
	}
	if status != api.StatusSuccess && status != api.StatusFailed {
		return fsm.PieceReport{}, fmt.Errorf("status must be success or failed, not %q", status)
	}
	if source != "" && !api.ValidID(source) {
		return fsm.PieceReport{}, fmt.Errorf("source: %w", api.ErrBadID)
	}
	if len(reason) > maxReasonLen {
		return fsm.PieceReport{}, fmt.Errorf("reason too long")
	}
	spans, err := api.ParseRange(pieces)
	if err != nil {
		return fsm.PieceReport{}, err
	}
	return fsm.PieceReport{TaskID: taskID, PeerID: peerID, Source: source, Generation: generation,
		Success: status == api.StatusSuccess, Spans: spans}, nil
}

func (s *Server) reportRange(ctx *fasthttp.RequestCtx) {
	id, ok := s.taskID(ctx)
	if !ok {
		return
	}
	var req api.PieceReport
	if !s.decode(ctx, &req) {
		return
	}
	rng, _ := ctx.UserValue("range").(string)
	cmd, err := s.pieceReport(id, req.PeerID, req.Generation, rng, req.Status, req.Source, req.Reason)
	if err != nil {
		s.fail(ctx, fasthttp.StatusBadRequest, err.Error())
		return
	}
	if req.Status == api.StatusFailed {
		s.log.Debug("pieces reported failed", zap.String("task", id), zap.String("peer", req.PeerID),
			zap.String("pieces", rng), zap.String("source", req.Source), zap.String("reason", req.Reason))
	}
	if _, _, ok := s.propose(ctx, cmd); ok {
		ctx.SetStatusCode(fasthttp.StatusNoContent)
	}
}

func (s *Server) reportBatch(ctx *fasthttp.RequestCtx) {
	id, ok := s.taskID(ctx)
	if !ok {
		return
	}
	var req api.PieceReportBatch
	if !s.decode(ctx, &req) {
		return
	}
	if len(req.Reports) == 0 || len(req.Reports) > maxReportsReq {
		s.fail(ctx, fasthttp.StatusBadRequest, fmt.Sprintf("reports must hold 1..%d entries", maxReportsReq))
		return
	}
	cmds := make([]fsm.Command, len(req.Reports))
	for i, r := range req.Reports {
		cmd, err := s.pieceReport(id, req.PeerID, req.Generation, r.Pieces, r.Status, r.Source, r.Reason)
		if err != nil {
			s.fail(ctx, fasthttp.StatusBadRequest, fmt.Sprintf("reports[%d]: %v", i, err))
			return
		}
		cmds[i] = cmd
		if r.Status == api.StatusFailed {
			s.log.Debug("pieces reported failed", zap.String("task", id), zap.String("peer", req.PeerID),
				zap.String("pieces", r.Pieces), zap.String("source", r.Source), zap.String("reason", r.Reason))
		}
	}
	if _, _, ok := s.propose(ctx, cmds...); ok {
		ctx.SetStatusCode(fasthttp.StatusNoContent)
	}
}
