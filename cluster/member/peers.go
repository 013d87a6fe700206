package member

import (
	"context"
	"encoding/json"
	"time"

	"github.com/dfly-ha/dfha/cluster/httpapi"
	"github.com/dfly-ha/dfha/fsm"
	"github.com/dfly-ha/dfha/scheduler"
	"github.com/valyala/fasthttp"
	"go.uber.org/zap"
)

// maxExpiryBatch bounds the peers one expiry command removes.
const maxExpiryBatch = 512

// peerDuties runs, every second until ctx ends, what keeps the live load right on every
// member: it passes the heartbeats this member received to the other members, and, on the
// leader, commits the removal of peers that stopped sending them (scheduler/DESIGN.md).
func (m *Member) peerDuties(ctx context.Context, loads *scheduler.LoadTable, ttl time.Duration) {
	client := &fasthttp.Client{Name: "dfha-member", ReadTimeout: time.Second, WriteTimeout: time.Second, MaxConnsPerHost: 4}
	defer client.CloseIdleConnections()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var lastRound, leaderSince time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := time.Now()
		if updates := loads.Updates(lastRound.Add(-100 * time.Millisecond)); len(updates) > 0 {
			m.sendLoads(client, updates)
		}
		lastRound = now
		loads.Prune(10 * ttl)

		if !m.node.IsLeader() {
			leaderSince = time.Time{}
			continue
		}
		if leaderSince.IsZero() {
			leaderSince = now
		}
		if now.Sub(leaderSince) < ttl {
			continue // a new leader first hears heartbeats for one TTL
		}
		m.expirePeers(ctx, loads, ttl)
	}
}

// sendLoads passes updates to every other live member (best effort: a member that misses a
// round gets the next one, and heartbeats repeat every few seconds anyway).
func (m *Member) sendLoads(client *fasthttp.Client, updates []scheduler.Update) {
	body, err := json.Marshal(updates)
	if err != nil {
		return
	}
	for _, info := range m.node.FSM().Members() {
		if info.ID == m.ident.ID || !info.Alive {
			continue
		}
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		req.Header.SetMethod(fasthttp.MethodPost)
		req.SetRequestURI("http://" + info.HTTPAddr + httpapi.LoadsPath)
		req.Header.SetContentType("application/json")
		if m.cfg.Token != "" {
			req.Header.Set("Authorization", "Bearer "+m.cfg.Token)
		}
		req.SetBodyRaw(body)
		if err := client.DoTimeout(req, resp, time.Second); err != nil || resp.StatusCode() != fasthttp.StatusNoContent {
			m.log.Debug("load updates not passed on", zap.String("member", info.ID), zap.Int("status", resp.StatusCode()), zap.Error(err))
		}
		fasthttp.ReleaseRequest(req)
		fasthttp.ReleaseResponse(resp)
	}
}

// expirePeers commits the removal of peers with no heartbeat for ttl, in batches.
func (m *Member) expirePeers(ctx context.Context, loads *scheduler.LoadTable, ttl time.Duration) {
	regs := m.node.FSM().PeerRegistrations()
	registered := make(map[string]time.Time, len(regs))
	for _, r := range regs {
		registered[r.ID] = time.Unix(0, r.RegisteredAt)
	}
	stale := loads.Stale(registered, ttl)
	for len(stale) > 0 {
		batch := stale[:min(len(stale), maxExpiryBatch)]
		stale = stale[len(batch):]
		c, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, _, err := m.node.Propose(c, fsm.PeerRemove{IDs: batch})
		cancel()
		if err != nil {
			m.log.Warn("peer expiry not committed", zap.Int("peers", len(batch)), zap.Error(err))
			return
		}
		for _, id := range batch {
			loads.Forget(id)
		}
		m.log.Info("peers expired: no heartbeat", zap.Int("peers", len(batch)), zap.Duration("ttl", ttl))
	}
}
