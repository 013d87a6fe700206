package cluster

import (
	"strconv"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the Raft figures of one member.
type metrics struct {
	reg           prometheus.Registerer
	collectors    []prometheus.Collector
	applySeconds  prometheus.Histogram
	batchCommands prometheus.Histogram
	elections     prometheus.Counter
	leaderChanges prometheus.Counter
}

func newMetrics(n *Node, reg prometheus.Registerer) *metrics {
	m := &metrics{
		reg: reg,
		applySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "dfha_raft_apply_seconds",
			Help:    "Time from handing a log entry to Raft to its being applied on the leader.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		batchCommands: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "dfha_raft_entry_commands",
			Help:    "Commands merged into one log entry by the leader.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 8),
		}),
		elections: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dfha_raft_elections_total",
			Help: "Elections this member started (it became a candidate).",
		}),
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dfha_raft_leader_changes_total",
			Help: "Leader changes this member observed.",
		}),
	}
	stat := func(key string) func() float64 {
		return func() float64 {
			v, _ := strconv.ParseFloat(n.raft.Stats()[key], 64)
			return v
		}
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	m.collectors = []prometheus.Collector{
		m.applySeconds, m.batchCommands, m.elections, m.leaderChanges,
		gauge("dfha_raft_leader", "1 if this member is the leader.", func() float64 {
			if n.raft.State() == raft.Leader {
				return 1
			}
			return 0
		}),
		gauge("dfha_raft_state", "Raft state: 0 follower, 1 candidate, 2 leader, 3 shutdown.", func() float64 {
			return float64(n.raft.State())
		}),
		gauge("dfha_raft_term", "Current Raft term.", stat("term")),
		gauge("dfha_raft_commit_index", "Highest log index known committed.", stat("commit_index")),
		gauge("dfha_raft_last_log_index", "Last log index stored.", stat("last_log_index")),
		gauge("dfha_raft_applied_index", "Last log index applied to the FSM.", func() float64 {
			return float64(n.fsm.AppliedIndex())
		}),
	}
	if reg != nil {
		for _, c := range m.collectors {
			reg.MustRegister(c)
		}
	}
	return m
}

func (m *metrics) observeBatch(commands int) { m.batchCommands.Observe(float64(commands)) }

func (m *metrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.collectors {
		m.reg.Unregister(c)
	}
}
