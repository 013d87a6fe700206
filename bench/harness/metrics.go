package harness

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/dfly-ha/dfha/cluster"
)

// Route is one label set of dfha_api_requests_total.
type Route struct {
	Method, Path, Code string
}

// Metrics is what the members' /metrics say, summed over the members scraped.
type Metrics struct {
	Requests map[Route]float64  // dfha_api_requests_total
	Values   map[string]float64 // every other counter, gauge and untyped sample, summed by name
}

// Routes of the API that count apart from the peers' control requests.
const (
	routePieceData = "/tasks/{id}/pieces/{n}/data"
	routeMetrics   = "/metrics"
)

// Sub returns m - base, for counters.
func (m Metrics) Sub(base Metrics) Metrics {
	out := Metrics{Requests: map[Route]float64{}, Values: map[string]float64{}}
	for k, v := range m.Requests {
		out.Requests[k] = v - base.Requests[k]
	}
	for k, v := range m.Values {
		out.Values[k] = v - base.Values[k]
	}
	return out
}

// APIRequests counts the clients' control requests: every route but piece data, /metrics
// and the members' internal ones (a forwarded write counts once, where it arrived).
func (m Metrics) APIRequests() float64 {
	n := 0.0
	for r, v := range m.Requests {
		if r.Path != routePieceData && r.Path != routeMetrics && !internal(r.Path) {
			n += v
		}
	}
	return n
}

// internal reports whether a route is between members only: forwarded writes
// (cluster.ForwardPath) and the others under the same prefix.
func internal(path string) bool {
	return path == cluster.ForwardPath || strings.HasPrefix(path, internalPrefix)
}

var internalPrefix = cluster.ForwardPath[:strings.Index(cluster.ForwardPath[1:], "/")+2]

// ReportRequests counts the accepted piece reports (both forms).
func (m Metrics) ReportRequests() float64 {
	n := 0.0
	for r, v := range m.Requests {
		if r.Method == http.MethodPut && strings.HasPrefix(r.Path, "/tasks/{id}/pieces") && r.Code == "204" {
			n += v
		}
	}
	return n
}

// PiecesServed counts the pieces the members served (GET .../data answered 200).
func (m Metrics) PiecesServed() float64 {
	n := 0.0
	for r, v := range m.Requests {
		if r.Path == routePieceData && r.Code == "200" {
			n += v
		}
	}
	return n
}

// ByRoute lists the request counts that are not zero, "METHOD PATH CODE: N", for results.
func (m Metrics) ByRoute() []string {
	var out []string
	for r, v := range m.Requests {
		if v != 0 && r.Path != routeMetrics {
			out = append(out, fmt.Sprintf("%s %s %s: %.0f", r.Method, r.Path, r.Code, v))
		}
	}
	return out
}

// PieceBytesServed sums the counters whose name speaks of piece bytes sent, if the members
// export one (ok false otherwise).
func (m Metrics) PieceBytesServed() (v float64, name string, ok bool) {
	for k, x := range m.Values {
		if strings.Contains(k, "piece") && strings.Contains(k, "bytes") &&
			(strings.Contains(k, "served") || strings.Contains(k, "sent") || strings.Contains(k, "upload")) {
			v, ok = v+x, true
			name = k
		}
	}
	return v, name, ok
}

// Scrape reads /metrics of every given member and sums them.
func Scrape(ctx context.Context, addrs ...string) (Metrics, error) {
	out := Metrics{Requests: map[Route]float64{}, Values: map[string]float64{}}
	client := &http.Client{Timeout: 5 * time.Second}
	for _, a := range addrs {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a+"/metrics", nil)
		if err != nil {
			return out, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return out, fmt.Errorf("scrape %s: %w", a, err)
		}
		err = parseMetrics(resp.Body, &out)
		resp.Body.Close()
		if err != nil {
			return out, fmt.Errorf("scrape %s: %w", a, err)
		}
	}
	return out, nil
}

func parseMetrics(r io.Reader, into *Metrics) error {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return err
	}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			var v float64
			switch {
			case m.GetCounter() != nil:
				v = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				v = m.GetGauge().GetValue()
			case m.GetUntyped() != nil:
				v = m.GetUntyped().GetValue()
			case m.GetHistogram() != nil:
				into.Values[name+"_count"] += float64(m.GetHistogram().GetSampleCount())
				into.Values[name+"_sum"] += m.GetHistogram().GetSampleSum()
				continue
			default:
				continue
			}
			if name == "dfha_api_requests_total" {
				var r Route
				for _, l := range m.GetLabel() {
					switch l.GetName() {
					case "method":
						r.Method = l.GetValue()
					case "route":
						r.Path = l.GetValue()
					case "code":
						r.Code = l.GetValue()
					}
				}
				into.Requests[r] += v
				continue
			}
			into.Values[name] += v
		}
	}
	return nil
}

// Scrape reads and sums every running member's /metrics.
func (c *Cluster) Scrape(ctx context.Context) (Metrics, error) {
	var addrs []string
	for i, a := range c.HTTPAddrs {
		if c.Pid(i) != 0 {
			addrs = append(addrs, a)
		}
	}
	return Scrape(ctx, addrs...)
}
