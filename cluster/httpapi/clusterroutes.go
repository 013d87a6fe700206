package httpapi

import (
	"context"
	"errors"
	"net"
	"strconv"
	"time"

	"github.com/dfly-ha/dfha/cluster"
	"github.com/dfly-ha/dfha/fsm"
	"github.com/dfly-ha/dfha/sdk/api"
	"github.com/valyala/fasthttp"
)

func (s *Server) members(ctx *fasthttp.RequestCtx) {
	if !s.readable(ctx) {
		return
	}
	ms, err := s.cfg.Store.Members()
	if err != nil {
		s.fail(ctx, fasthttp.StatusServiceUnavailable, err.Error())
		return
	}
	s.reply(ctx, fasthttp.StatusOK, ms)
}

func (s *Server) join(ctx *fasthttp.RequestCtx) {
	var req api.JoinRequest
	if !s.decode(ctx, &req) {
		return
	}
	if !api.ValidID(req.ID) {
		s.fail(ctx, fasthttp.StatusBadRequest, "id: "+api.ErrBadID.Error())
		return
	}
	for name, addr := range map[string]string{"http_addr": req.HTTPAddr, "raft_addr": req.RaftAddr} {
		if !reachableAddr(addr) {
			s.fail(ctx, fasthttp.StatusBadRequest, name+" must be a reachable HOST:PORT (not 0.0.0.0, not port 0)")
			return
		}
	}
	s.membershipChange(ctx, func(c context.Context) error {
		return s.cfg.Store.AddMember(c, req.ID, req.HTTPAddr, req.RaftAddr)
	})
}

func (s *Server) removeMember(ctx *fasthttp.RequestCtx) {
	id, ok := s.entityID(ctx)
	if !ok {
		return
	}
	s.membershipChange(ctx, func(c context.Context) error { return s.cfg.Store.RemoveMember(c, id) })
}

// membershipChange runs change on the leader. A follower passes the request on to the
// leader as it came, once; a forwarded request that reaches a non-leader gets 503.
func (s *Server) membershipChange(ctx *fasthttp.RequestCtx, change func(context.Context) error) {
	if !s.cfg.Store.IsLeader() {
		s.proxyToLeader(ctx)
		return
	}
	c, cancel := context.WithTimeout(context.Background(), s.cfg.WriteTimeout)
	defer cancel()
	err := change(c)
	switch {
	case err == nil:
		ctx.SetStatusCode(fasthttp.StatusNoContent)
	case errors.Is(err, cluster.ErrUnknownMember), errors.Is(err, cluster.ErrMemberConflict), errors.Is(err, fsm.ErrNotFound):
		s.fail(ctx, statusOf(err), err.Error())
	default:
		s.writeFailed(ctx, err)
	}
}

func (s *Server) proxyToLeader(ctx *fasthttp.RequestCtx) {
	if len(ctx.Request.Header.Peek(api.HeaderForwarded)) > 0 {
		s.fail(ctx, fasthttp.StatusServiceUnavailable, "forwarded to a member that is not the leader")
		return
	}
	addr, _ := s.cfg.Store.LeaderHTTP()
	if addr == "" {
		s.fail(ctx, fasthttp.StatusServiceUnavailable, "no leader")
		return
	}
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethodBytes(ctx.Method())
	req.SetRequestURI("http://" + addr + string(ctx.Path()))
	req.Header.Set(api.HeaderForwarded, s.cfg.Store.ID())
	if auth := ctx.Request.Header.Peek("Authorization"); len(auth) > 0 {
		req.Header.SetBytesV("Authorization", auth)
	}
	req.Header.SetContentType("application/json")
	req.SetBody(ctx.PostBody())
	if err := s.proxy.DoTimeout(req, resp, s.cfg.WriteTimeout+5*time.Second); err != nil {
		s.fail(ctx, fasthttp.StatusServiceUnavailable, "leader "+addr+" unreachable: "+err.Error())
		return
	}
	ctx.SetStatusCode(resp.StatusCode())
	ctx.SetContentTypeBytes(resp.Header.ContentType())
	if v := resp.Header.Peek("Retry-After"); len(v) > 0 {
		ctx.Response.Header.SetBytesV("Retry-After", v)
	}
	if v := resp.Header.Peek(api.HeaderRaftIndex); len(v) > 0 {
		ctx.Response.Header.SetBytesV(api.HeaderRaftIndex, v)
	}
	ctx.SetBody(resp.Body())
}

func reachableAddr(addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return false
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return false
	}
	ip := net.ParseIP(host)
	return ip == nil || !ip.IsUnspecified()
}

func (s *Server) clusterState(ctx *fasthttp.RequestCtx) {
	if !s.readable(ctx) {
		return
	}
	index, hash := s.fsm.StateHash()
	s.reply(ctx, fasthttp.StatusOK, api.ClusterState{AppliedIndex: index, StateHash: hash})
}

func (s *Server) healthz(ctx *fasthttp.RequestCtx) {
	s.reply(ctx, fasthttp.StatusOK, map[string]string{"status": "alive", "id": s.cfg.Store.ID()})
}

func (s *Server) readyz(ctx *fasthttp.RequestCtx) {
	if !s.cfg.Store.Ready() {
		s.fail(ctx, fasthttp.StatusServiceUnavailable, "no leader seen")
		return
	}
	s.reply(ctx, fasthttp.StatusOK, map[string]string{"status": "ready", "id": s.cfg.Store.ID()})
}

// forwarded commits a batch of writes another member forwarded: only on the leader, so a
// write is forwarded at most once.
func (s *Server) forwarded(ctx *fasthttp.RequestCtx) {
	if len(ctx.Request.Header.Peek(api.HeaderForwarded)) == 0 {
		s.fail(ctx, fasthttp.StatusBadRequest, "member-to-member route")
		return
	}
	if _, member := s.fsm.Member(string(ctx.Request.Header.Peek(api.HeaderForwarded))); !member {
		s.fail(ctx, fasthttp.StatusForbidden, "forwarded writes are accepted from members only")
		return
	}
	b, err := fsm.DecodeBatch(ctx.PostBody())
	if err != nil || len(b.Commands) == 0 {
		s.fail(ctx, fasthttp.StatusBadRequest, "malformed forwarded batch")
		return
	}
	for _, c := range b.Commands {
		switch c.(type) {
		case fsm.MemberUpsert, fsm.MemberRemove, fsm.MemberAlive:
			// membership is changed by the leader itself (join, removal, liveness), never forwarded
			s.fail(ctx, fasthttp.StatusBadRequest, "membership commands cannot be forwarded")
			return
		}
	}
	c, cancel := context.WithTimeout(context.Background(), s.cfg.WriteTimeout)
	defer cancel()
	index, results, err := s.cfg.Store.ProposeLocal(c, b.Commands...)
	if err != nil {
		s.writeFailed(ctx, err)
		return
	}
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetContentType("application/octet-stream")
	ctx.SetBody(fsm.EncodeResults(index, results))
}
