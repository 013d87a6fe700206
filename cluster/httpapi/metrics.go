package httpapi

import (
	"strconv"
	"time"

	"github.com/dfly-ha/dfha/fsm"
	"github.com/dfly-ha/dfha/scheduler"
	"github.com/prometheus/client_golang/prometheus"
)

// apiMetrics: requests and latency by route, and the sizes of the replicated state.
type apiMetrics struct {
	requests  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	scheduled prometheus.Counter
	served    *prometheus.CounterVec
}

func newAPIMetrics(reg *prometheus.Registry, f *fsm.FSM, loads *scheduler.LoadTable) *apiMetrics {
	m := &apiMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dfha_api_requests_total", Help: "API requests by route and status code.",
		}, []string{"method", "route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "dfha_api_request_seconds", Help: "API request latency by route.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 3, 12),
		}, []string{"method", "route"}),
	}
	m.scheduled = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "dfha_scheduled_pieces_total", Help: "Pieces handed to peers by the scheduler of this member.",
	})
	m.served = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dfha_piece_bytes_served_total", Help: "Piece bytes this member answered GET /tasks/{id}/pieces/{n}/data with, by who asked: a peer, or a member relaying for one.",
	}, []string{"to"})
	count := func(pick func(members, peers, tasks, preheats int) int) func() float64 {
		return func() float64 { return float64(pick(f.Counts())) }
	}
	reg.MustRegister(m.requests, m.latency, m.scheduled, m.served,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "dfha_peers", Help: "Peers in the replicated state."},
			count(func(_, p, _, _ int) int { return p })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "dfha_tasks", Help: "Tasks in the replicated state."},
			count(func(_, _, t, _ int) int { return t })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "dfha_members", Help: "Members in the replicated state."},
			count(func(m, _, _, _ int) int { return m })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "dfha_live_peers", Help: "Peers whose heartbeats this member holds."},
			func() float64 { return float64(loads.Len()) }),
	)
	return m
}

// route returns the observer of one route (label values resolved once).
func (m *apiMetrics) route(method, path string) func(code int, d time.Duration) {
	lat := m.latency.WithLabelValues(method, path)
	return func(code int, d time.Duration) {
		lat.Observe(d.Seconds())
		m.requests.WithLabelValues(method, path, strconv.Itoa(code)).Inc()
	}
}
