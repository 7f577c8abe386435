// Package metrics defines the server's Prometheus metrics on a registry the
// caller passes in. It holds no state of its own about the cache: the cache
// keeps plain counters and this package reads them at scrape time, so the
// numbers cannot drift from what the cache did.
package metrics

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

const namespace = "movies"

// CacheStats is what the collector reads from the cache on each scrape.
type CacheStats struct {
	Hits, Misses, Coalesced, Loads, LoadErrors uint64
	Rejected, Stale, Early                     uint64
	// HasSnapshot says whether any snapshot was ever loaded; SnapshotAge is
	// then the age of the newest one, counted from its fetch start.
	HasSnapshot bool
	SnapshotAge time.Duration
	TTL         time.Duration
}

// Metrics records what the server does. It is safe for concurrent use.
type Metrics struct {
	upstreamRequests *prometheus.CounterVec
	upstreamDuration *prometheus.HistogramVec
	httpRequests     *prometheus.CounterVec
	httpDuration     *prometheus.HistogramVec
}

// New registers the server's metrics, the Go runtime's and the process's on
// reg. stats is called once per scrape.
func New(reg prometheus.Registerer, stats func() CacheStats) (*Metrics, error) {
	m := &Metrics{
		upstreamRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "upstream", Name: "requests_total",
			Help: "Requests to the Ghibli API by endpoint and outcome (ok, or the failure's cause).",
		}, []string{"endpoint", "outcome"}),
		upstreamDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "upstream", Name: "request_duration_seconds",
			Help:    "Latency of requests to the Ghibli API, whatever their outcome.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"endpoint"}),
		httpRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "http", Name: "requests_total",
			Help: "HTTP requests served, by route and status code.",
		}, []string{"handler", "code"}),
		httpDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "http", Name: "request_duration_seconds",
			Help:    "Time to serve HTTP requests, by route.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"handler"}),
	}
	for _, c := range []prometheus.Collector{
		m.upstreamRequests, m.upstreamDuration, m.httpRequests, m.httpDuration,
		&cacheCollector{stats: stats},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// ObserveUpstream records one request to the upstream.
func (m *Metrics) ObserveUpstream(endpoint, outcome string, d time.Duration) {
	m.upstreamRequests.WithLabelValues(endpoint, outcome).Inc()
	m.upstreamDuration.WithLabelValues(endpoint).Observe(d.Seconds())
}

// ObserveHTTP records one served request. handler must come from a fixed
// set (the route pattern, never the raw path) to bound label cardinality.
func (m *Metrics) ObserveHTTP(handler string, code int, d time.Duration) {
	m.httpRequests.WithLabelValues(handler, statusText(code)).Inc()
	m.httpDuration.WithLabelValues(handler).Observe(d.Seconds())
}

// statusCodes are the label values of every status code, formatted once:
// ObserveHTTP runs on every request and should not allocate.
var statusCodes = func() (t [600]string) {
	for i := range t {
		t[i] = strconv.Itoa(i)
	}
	return t
}()

func statusText(code int) string {
	if code >= 0 && code < len(statusCodes) {
		return statusCodes[code]
	}
	return strconv.Itoa(code)
}

var (
	hitsDesc = prometheus.NewDesc("movies_cache_hits_total",
		"Requests served from a fresh cached snapshot.", nil, nil)
	missesDesc = prometheus.NewDesc("movies_cache_misses_total",
		"Requests that had to wait for an upstream fetch, as leader or joiner.", nil, nil)
	coalescedDesc = prometheus.NewDesc("movies_cache_coalesced_total",
		"Misses that joined a fetch another request had already started and received its result.", nil, nil)
	loadsDesc = prometheus.NewDesc("movies_cache_loads_total",
		"Snapshot fetches started (each makes one or two requests per upstream endpoint).", nil, nil)
	loadErrorsDesc = prometheus.NewDesc("movies_cache_load_errors_total",
		"Snapshot fetches that failed.", nil, nil)
	rejectedDesc = prometheus.NewDesc("movies_cache_backoff_rejections_total",
		"Requests failed at once, without a fetch, because an earlier fetch failed and its backoff had not passed.", nil, nil)
	staleDesc = prometheus.NewDesc("movies_stale_served_total",
		"Requests served a snapshot past its TTL because the upstream failed (-stale-if-error).", nil, nil)
	earlyDesc = prometheus.NewDesc("movies_cache_early_refreshes_total",
		"Fetches started ahead of expiry by a request that was itself served the still-fresh snapshot.", nil, nil)
	ageDesc = prometheus.NewDesc("movies_snapshot_age_seconds",
		"Age of the newest snapshot, from the start of its fetch; absent before the first.", nil, nil)
	ttlDesc = prometheus.NewDesc("movies_cache_ttl_seconds",
		"The age at which a snapshot stops being served.", nil, nil)
)

// cacheCollector turns the cache's counters into metrics at scrape time.
type cacheCollector struct{ stats func() CacheStats }

func (c *cacheCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{hitsDesc, missesDesc, coalescedDesc, loadsDesc, loadErrorsDesc, rejectedDesc, staleDesc, earlyDesc, ageDesc, ttlDesc} {
		ch <- d
	}
}

func (c *cacheCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	counter := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	counter(hitsDesc, s.Hits)
	counter(missesDesc, s.Misses)
	counter(coalescedDesc, s.Coalesced)
	counter(loadsDesc, s.Loads)
	counter(loadErrorsDesc, s.LoadErrors)
	counter(rejectedDesc, s.Rejected)
	counter(staleDesc, s.Stale)
	counter(earlyDesc, s.Early)
	ch <- prometheus.MustNewConstMetric(ttlDesc, prometheus.GaugeValue, s.TTL.Seconds())
	if s.HasSnapshot {
		ch <- prometheus.MustNewConstMetric(ageDesc, prometheus.GaugeValue, s.SnapshotAge.Seconds())
	}
}
