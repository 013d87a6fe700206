package cluster

import (
	"context"
	"time"

	"github.com/dfly-ha/dfha/fsm"
	"github.com/hashicorp/raft"
	"go.uber.org/zap"
)

// failure is what the leader knows of a follower whose heartbeats fail: since when it has
// not been reached, and when the last failed heartbeat was observed.
type failure struct{ since, last time.Time }

// staleFailure: a failure not repeated for this long is forgotten. Raft retries a failing
// heartbeat at least every HeartbeatTimeout/2, or after a transport timeout for a silent
// host, so a live failure is never this old; an old one means its Resumed observation was
// lost (dropped, or the replication goroutine stopped when the member was removed).
func (n *Node) staleFailure() time.Duration { return transportTimeout + 2*n.cfg.HeartbeatTimeout }

func (n *Node) forgetFailures(id string) {
	n.mu.Lock()
	delete(n.failing, raft.ServerID(id))
	n.mu.Unlock()
}

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
				n.mu.Lock() // a new term of leadership judges from its own heartbeats
				clear(n.failing)
				n.mu.Unlock()
			case raft.LeaderObservation:
				n.metrics.leaderChanges.Inc()
			case raft.FailedHeartbeatObservation:
				now := n.cfg.Now()
				n.mu.Lock()
				f, seen := n.failing[d.PeerID]
				if !seen {
					f.since = now
					if !d.LastContact.IsZero() && d.LastContact.Before(now) {
						f.since = d.LastContact
					}
				}
				f.last = now
				n.failing[d.PeerID] = f
				n.mu.Unlock()
			case raft.ResumedHeartbeatObservation:
				n.forgetFailures(string(d.PeerID))
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
		if n.leaving.Load() {
			// removing itself: neither re-add nor judge anyone
		} else if !ok || self.HTTPAddr != n.cfg.HTTPAdvertise || self.RaftAddr != n.cfg.RaftAdvertise {
			cmds = append(cmds, fsm.MemberUpsert{ID: n.cfg.ID, HTTPAddr: n.cfg.HTTPAdvertise, RaftAddr: n.cfg.RaftAdvertise})
		}
		if ok && !self.Alive && !n.leaving.Load() {
			cmds = append(cmds, fsm.MemberAlive{ID: n.cfg.ID, Alive: true})
		}
		if now.Sub(leaderSince) >= n.cfg.MemberDeadAfter && !n.leaving.Load() {
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

// livenessChanges returns the commands that bring the replicated members in line with
// the leader's view: MemberAlive where heartbeats say otherwise, and MemberRemove for a
// member record whose server is no longer in the Raft configuration (a removal that was
// interrupted half-way).
func (n *Node) livenessChanges(now time.Time) []fsm.Command {
	cf := n.raft.GetConfiguration()
	if cf.Error() != nil {
		return nil
	}
	inConfig := map[string]bool{}
	n.mu.Lock()
	defer n.mu.Unlock()
	var cmds []fsm.Command
	for _, s := range cf.Configuration().Servers {
		inConfig[string(s.ID)] = true
		if string(s.ID) == n.cfg.ID {
			continue
		}
		m, ok := n.fsm.Member(string(s.ID))
		if !ok {
			continue
		}
		f, failing := n.failing[s.ID]
		if failing && now.Sub(f.last) > n.staleFailure() {
			delete(n.failing, s.ID)
			failing = false
		}
		dead := failing && now.Sub(f.since) >= n.cfg.MemberDeadAfter
		if m.Alive == dead {
			cmds = append(cmds, fsm.MemberAlive{ID: m.ID, Alive: !dead})
		}
	}
	for _, m := range n.fsm.Members() {
		if !inConfig[m.ID] {
			cmds = append(cmds, fsm.MemberRemove{ID: m.ID})
		}
	}
	return cmds
}
