package httpapi

import (
	"context"
	"encoding/hex"
	"errors"
	"strconv"
	"time"

	"github.com/dfly-ha/dfha/cdn"
	"github.com/dfly-ha/dfha/sdk/api"
	"github.com/valyala/fasthttp"
	"go.uber.org/zap"
)

// PieceSource opens pieces for GET /tasks/{id}/pieces/{n}/data and checks a peer's origin
// credentials before it joins a private task (cdn.CDN implements it).
type PieceSource interface {
	OpenPiece(ctx context.Context, taskID string, n uint32, generation uint64, localOnly bool) (cdn.Piece, error)
	CheckAccess(ctx context.Context, url string, headers map[string]string) error
}

// pieceData streams a piece: from this member's cache, or from a member that has it. A
// request another member sent (X-Dfha-Forwarded) is answered from the local cache only, so
// a piece is relayed at most once.
func (s *Server) pieceData(ctx *fasthttp.RequestCtx) {
	id, ok := s.taskID(ctx)
	if !ok {
		return
	}
	nStr, _ := ctx.UserValue("n").(string)
	n, err := strconv.ParseUint(nStr, 10, 32)
	if err != nil || n > api.MaxPieceIndex {
		s.fail(ctx, fasthttp.StatusBadRequest, "piece number must be an integer in 0.."+strconv.Itoa(api.MaxPieceIndex))
		return
	}
	var generation uint64
	if g := ctx.QueryArgs().Peek("generation"); len(g) > 0 {
		if generation, err = strconv.ParseUint(string(g), 10, 64); err != nil || generation == 0 {
			s.fail(ctx, fasthttp.StatusBadRequest, "generation must be a positive integer")
			return
		}
	}
	if !s.readable(ctx) {
		return
	}
	localOnly := len(ctx.Request.Header.Peek(api.HeaderForwarded)) > 0
	if !localOnly && !s.mayRead(ctx, id) {
		return
	}
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := s.cfg.Pieces.OpenPiece(c, id, uint32(n), generation, localOnly)
	switch {
	case err == nil:
	case errors.Is(err, cdn.ErrNoTask):
		s.fail(ctx, fasthttp.StatusNotFound, "task "+id+" not found")
		return
	case errors.Is(err, cdn.ErrNotCached):
		s.fail(ctx, fasthttp.StatusNotFound, "piece "+nStr+" of task "+id+" is not cached yet")
		return
	case errors.Is(err, cdn.ErrGeneration):
		s.fail(ctx, fasthttp.StatusConflict, err.Error())
		return
	default:
		s.log.Error("open piece", zap.String("task", id), zap.Uint64("piece", n), zap.Error(err))
		s.fail(ctx, fasthttp.StatusInternalServerError, "reading the piece failed")
		return
	}
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetContentType("application/octet-stream")
	ctx.Response.Header.Set(cdn.HeaderGeneration, strconv.FormatUint(p.Generation, 10))
	ctx.Response.Header.Set(cdn.HeaderPieceDigest, "sha256:"+hex.EncodeToString(p.Digest[:]))
	ctx.SetBodyStream(p.Body, int(p.Size)) // fasthttp closes p.Body once sent
	to := "peer"
	if localOnly {
		to = "member"
	}
	s.metrics.served.WithLabelValues(to).Add(float64(p.Size))
}

// mayRead answers 403 (and false) when the task is private and the request does not name,
// with ?peer_id=, a peer whose own credentials the origin accepted when it joined the task.
// Members asking each other (X-Dfha-Forwarded) are trusted: the member they serve checked.
func (s *Server) mayRead(ctx *fasthttp.RequestCtx, taskID string) bool {
	t, found := s.fsm.Task(taskID)
	if !found || !cdn.Credentialed(t.Headers) {
		return true
	}
	peer := string(ctx.QueryArgs().Peek("peer_id"))
	if api.ValidID(peer) && s.fsm.PeerJoined(taskID, peer) {
		return true
	}
	s.fail(ctx, fasthttp.StatusForbidden, "task "+taskID+" is private: pass ?peer_id= of a peer registered to it with credentials the origin accepted")
	return false
}
