package httpapi

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/dfly-ha/dfha/fsm"
	"github.com/dfly-ha/dfha/sdk/api"
	"github.com/valyala/fasthttp"
)

func (s *Server) registerPeer(ctx *fasthttp.RequestCtx) {
	var req api.RegisterPeerRequest
	if !s.decode(ctx, &req) {
		return
	}
	if req.ID != "" && !api.ValidID(req.ID) {
		s.fail(ctx, fasthttp.StatusBadRequest, "id: "+api.ErrBadID.Error())
		return
	}
	ip := net.ParseIP(req.IP)
	if ip == nil || ip.IsUnspecified() {
		s.fail(ctx, fasthttp.StatusBadRequest, "ip must be the peer's IP address (not 0.0.0.0)")
		return
	}
	if req.Port < 1 || req.Port > 65535 {
		s.fail(ctx, fasthttp.StatusBadRequest, "port must be in 1..65535")
		return
	}
	if req.Hostname == "" || len(req.Hostname) > fsm.MaxHostnameLen || !utf8.ValidString(req.Hostname) || !printable(req.Hostname) {
		s.fail(ctx, fasthttp.StatusBadRequest, "hostname must be 1..255 printable characters")
		return
	}
	if req.ID == "" {
		req.ID = newPeerID(req.Hostname)
	}
	// Registering the same ID again (a retry, a restarted peer) answers 201 as well: the
	// result is the same registered peer.
	if _, _, ok := s.propose(ctx, fsm.PeerRegister{ID: req.ID, IP: ip.String(), Port: uint16(req.Port), Hostname: req.Hostname}); ok {
		s.reply(ctx, fasthttp.StatusCreated, api.RegisterPeerResponse{ID: req.ID})
	}
}

// newPeerID makes an ID from the hostname and 64 random bits.
func newPeerID(hostname string) string {
	var b strings.Builder
	for _, c := range hostname {
		if b.Len() >= 64 {
			break
		}
		if c == '.' || c == '_' || c == '-' || ('0' <= c && c <= '9') || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') {
			b.WriteRune(c)
		} else {
			b.WriteByte('-')
		}
	}
	var r [8]byte
	_, _ = rand.Read(r[:])
	if b.Len() > 0 {
		b.WriteByte('-')
	}
	b.WriteString(hex.EncodeToString(r[:]))
	return b.String()
}

func printable(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) })
}

func (s *Server) getPeer(ctx *fasthttp.RequestCtx) {
	id, ok := s.entityID(ctx)
	if !ok || !s.readable(ctx) {
		return
	}
	p, found := s.fsm.Peer(id)
	if !found {
		s.fail(ctx, fasthttp.StatusNotFound, "peer "+id+" not found")
		return
	}
	tasks := p.Tasks
	if tasks == nil {
		tasks = []string{}
	}
	s.reply(ctx, fasthttp.StatusOK, api.Peer{ID: p.ID, IP: p.IP, Port: int(p.Port), Hostname: p.Hostname, Tasks: tasks})
}

func (s *Server) heartbeat(ctx *fasthttp.RequestCtx) {
	id, ok := s.entityID(ctx)
	if !ok {
		return
	}
	var hb api.Heartbeat
	if !s.decode(ctx, &hb) {
		return
	}
	if hb.UploadsRunning < 0 || hb.UploadsRunning > 1<<16 {
		s.fail(ctx, fasthttp.StatusBadRequest, "uploads_running must be in 0..65536")
		return
	}
	if !s.readable(ctx) { // a peer that registered elsewhere passes min_index
		return
	}
	p, found := s.fsm.Peer(id)
	if !found {
		s.fail(ctx, fasthttp.StatusNotFound, "peer "+id+" not found (register first)")
		return
	}
	s.cfg.Loads.Heartbeat(id, hb.UploadsRunning)
	ctx.Response.Header.Set(api.HeaderUploadSlots, strconv.Itoa(s.uploadSlots(id, p.Tasks)))
	ctx.SetStatusCode(fasthttp.StatusNoContent)
}

func (s *Server) deletePeer(ctx *fasthttp.RequestCtx) {
	id, ok := s.entityID(ctx)
	if !ok {
		return
	}
	if _, _, ok := s.propose(ctx, fsm.PeerRemove{IDs: []string{id}}); !ok {
		return
	}
	s.cfg.Loads.Forget(id)
	ctx.SetStatusCode(fasthttp.StatusNoContent)
}
