package cluster

import (
	"context"
	"time"

	"github.com/dfly-ha/dfha/fsm"
	"github.com/hashicorp/raft"
	"go.uber.org/zap"
)

// watch consumes Raft's observations: elections and leader changes for the metrics, and
// the leader's failed and resumed heartbeats, which decide member liveness.
func (n *Node) watch() {
	defer n.wg.Done()
	for {
		select {
		case <-n.stop:
			return
		case o := <-n.observations:
			switch d := o.Data.(type) {
			case raft.RaftState:
				if d == raft.Candidate {
					n.metrics.elections.Inc()
				}
			case raft.LeaderObservation:
				n.metrics.leaderChanges.Inc()
			case raft.FailedHeartbeatObservation:
				n.mu.Lock()
				if _, seen := n.failing[d.PeerID]; !seen {
					since := n.cfg.Now()
					if !d.LastContact.IsZero() && d.LastContact.Before(since) {
						since = d.LastContact
					}
					n.failing[d.PeerID] = since
				}
				n.mu.Unlock()
			case raft.ResumedHeartbeatObservation:
				n.mu.Lock()
				delete(n.failing, d.PeerID)
				n.mu.Unlock()
			}
		}
	}
}

// leaderDuties runs the leader's periodic work: keep its own member record current, and
// commit member liveness. A member is committed dead once its heartbeats have failed for
// MemberDeadAfter, and alive again once they succeed. A new leader first waits
// MemberDeadAfter, so that it judges from its own heartbeats, not from silence.
func (n *Node) leaderDuties() {
	defer n.wg.Done()
	tick := min(250*time.Millisecond, n.cfg.MemberDeadAfter/4)
	t := time.NewTicker(tick)
	defer t.Stop()
	var leaderSince time.Time
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		if !n.IsLeader() {
			if !leaderSince.IsZero() {
				leaderSince = time.Time{}
				n.mu.Lock()
				clear(n.failing)
				n.mu.Unlock()
			}
			continue
		}
		now := n.cfg.Now()
		if leaderSince.IsZero() {
			leaderSince = now
		}
		var cmds []fsm.Command
		self, ok := n.fsm.Member(n.cfg.ID)
		if !ok || self.HTTPAddr != n.cfg.HTTPAdvertise || self.RaftAddr != n.cfg.RaftAdvertise {
			cmds = append(cmds, fsm.MemberUpsert{ID: n.cfg.ID, HTTPAddr: n.cfg.HTTPAdvertise, RaftAddr: n.cfg.RaftAdvertise})
		}
		if ok && !self.Alive {
			cmds = append(cmds, fsm.MemberAlive{ID: n.cfg.ID, Alive: true})
		}
		if now.Sub(leaderSince) >= n.cfg.MemberDeadAfter {
			cmds = append(cmds, n.livenessChanges(now)...)
		}
		if len(cmds) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), n.cfg.ApplyTimeout)
		_, res, err := n.ProposeLocal(ctx, cmds...)
		cancel()
		if err != nil {
			n.log.Debug("leader duties: write failed", zap.Error(err))
			continue
		}
		for i, c := range cmds {
			if a, isAlive := c.(fsm.MemberAlive); isAlive && res[i].Err() == nil {
				n.log.Info("member liveness committed", zap.String("member", a.ID), zap.Bool("alive", a.Alive))
			}
		}
	}
}

// livenessChanges returns the MemberAlive commands that bring the replicated liveness in
// line with the leader's heartbeats.
func (n *Node) livenessChanges(now time.Time) []fsm.Command {
	cf := n.raft.GetConfiguration()
	if cf.Error() != nil {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	var cmds []fsm.Command
	for _, s := range cf.Configuration().Servers {
		if string(s.ID) == n.cfg.ID {
			continue
		}
		m, ok := n.fsm.Member(string(s.ID))
		if !ok {
			continue
		}
		since, failing := n.failing[s.ID]
		dead := failing && now.Sub(since) >= n.cfg.MemberDeadAfter
		if m.Alive == dead {
			cmds = append(cmds, fsm.MemberAlive{ID: m.ID, Alive: !dead})
		}
	}
	return cmds
}
