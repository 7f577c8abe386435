// Package metrics defines the server's Prometheus metrics on a registry the
// caller passes in. It holds no state of its own about the cache: the cache
// keeps plain counters and this package reads them at scrape time, so the
// numbers cannot drift from what the cache did. It imports only Prometheus:
// the cache's counters arrive as a struct whose field tags name them.
package metrics

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

const namespace = "movies"

// Metrics records what the server does. It is safe for concurrent use.
type Metrics struct {
	upstreamRequests *prometheus.CounterVec
	upstreamDuration *prometheus.HistogramVec
	httpRequests     *prometheus.CounterVec
	httpDuration     *prometheus.HistogramVec
	redisDuration    *prometheus.HistogramVec
	snapshotRequests *prometheus.HistogramVec
}

// New registers the server's request metrics, the Go runtime's and the
// process's on reg.
func New(reg prometheus.Registerer) (*Metrics, error) {
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
		redisDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "fleet", Name: "redis_call_duration_seconds",
			Help:    "Latency of calls to Redis by the shared tier, by operation and result (ok or error).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25},
		}, []string{"op", "result"}),
		snapshotRequests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "snapshot", Name: "requests",
			Help:    "Catalogue requests this replica served from one snapshot (the misses that waited for its fetch, then the hits), observed when the next snapshot is served, by where the snapshot came from (local without -redis).",
			Buckets: []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000},
		}, []string{"source"}),
	}
	for _, c := range []prometheus.Collector{
		m.upstreamRequests, m.upstreamDuration, m.httpRequests, m.httpDuration, m.redisDuration, m.snapshotRequests,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// RegisterBuildInfo registers on reg movies_build_info, a gauge of 1
// whose labels name the running build, as Prometheus exporters do: a
// query joins on it to tell the replicas of two builds apart in a rollout,
// and a dashboard shows which revision serves.
func RegisterBuildInfo(reg prometheus.Registerer, version, revision, goVersion string) error {
	return reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info",
		Help:        "A metric with a constant '1' value labelled by the version, VCS revision and Go version movies was built from.",
		ConstLabels: prometheus.Labels{"version": version, "revision": revision, "goversion": goVersion},
	}, func() float64 { return 1 }))
}

// ObserveRedis records one call to Redis by the shared tier.
func (m *Metrics) ObserveRedis(op string, d time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.redisDuration.WithLabelValues(op, result).Observe(d.Seconds())
}

// ExpectSnapshotSources creates the movies_snapshot_requests series of
// each source this replica can serve from, empty, so that the histogram
// is exported (and a query over it finds it) before a snapshot is first
// replaced.
func (m *Metrics) ExpectSnapshotSources(sources ...string) {
	for _, s := range sources {
		if s == "" {
			s = "local"
		}
		m.snapshotRequests.WithLabelValues(s)
	}
}

// ObserveSnapshot records how many requests one snapshot served, and where
// it came from ("" for a replica without -redis: local).
func (m *Metrics) ObserveSnapshot(source string, requests uint64) {
	if source == "" {
		source = "local"
	}
	m.snapshotRequests.WithLabelValues(source).Observe(float64(requests))
}

// ObserveUpstream records one request to the upstream.
func (m *Metrics) ObserveUpstream(endpoint, outcome string, d time.Duration) {
	m.upstreamRequests.WithLabelValues(endpoint, outcome).Inc()
	m.upstreamDuration.WithLabelValues(endpoint).Observe(d.Seconds())
}

// ObserveHTTP records one served request. handler must come from a fixed
// set (the route pattern, never the raw path) to bound label cardinality.
// A server that knows its routes up front records through HTTPRoute
// instead, which finds each series once rather than on every request.
func (m *Metrics) ObserveHTTP(handler string, code int, d time.Duration) {
	m.httpRequests.WithLabelValues(handler, statusText(code)).Inc()
	m.httpDuration.WithLabelValues(handler).Observe(d.Seconds())
}

// HTTPRoute records the requests served by one route. Finding a series by
// its label values hashes them and looks them up under a lock, which on a
// cache hit costs more than the rest of the metric; a route keeps each of
// its series once found, so recording is an atomic load and the
// observation itself. Series are still created on first use, so the
// exposition lists only codes that were served, as with ObserveHTTP. It
// is safe for concurrent use.
type HTTPRoute struct {
	m        *Metrics
	handler  string
	duration atomic.Pointer[prometheus.Observer]
	requests [len(statusCodes)]atomic.Pointer[prometheus.Counter] // by status code
}

// HTTPRoute returns the recorder of the route handler, which must come
// from a fixed set as for ObserveHTTP. Call it once per route: each call
// returns a new recorder (of the same series).
func (m *Metrics) HTTPRoute(handler string) *HTTPRoute {
	return &HTTPRoute{m: m, handler: handler}
}

// Observe records one request to the route, answered with code after d.
func (r *HTTPRoute) Observe(code int, d time.Duration) {
	if code < 0 || code >= len(r.requests) {
		r.m.ObserveHTTP(r.handler, code, d)
		return
	}
	c := r.requests[code].Load()
	if c == nil {
		// Two first requests may both get here; they find the same series.
		v := r.m.httpRequests.WithLabelValues(r.handler, statusCodes[code])
		c = &v
		r.requests[code].Store(c)
	}
	(*c).Inc()
	o := r.duration.Load()
	if o == nil {
		v := r.m.httpDuration.WithLabelValues(r.handler)
		o = &v
		r.duration.Store(o)
	}
	(*o).Observe(d.Seconds())
}

// ObserveTraced is Observe for a request traced as traceID: its duration
// carries the trace id as an exemplar (OpenMetrics), so a dashboard can
// jump from a slow bucket to the trace of a request in it.
func (r *HTTPRoute) ObserveTraced(code int, d time.Duration, traceID string) {
	if code < 0 || code >= len(r.requests) {
		r.m.ObserveHTTP(r.handler, code, d)
		return
	}
	r.m.httpRequests.WithLabelValues(r.handler, statusCodes[code]).Inc()
	o := r.m.httpDuration.WithLabelValues(r.handler)
	if eo, ok := o.(prometheus.ExemplarObserver); ok {
		eo.ObserveWithExemplar(d.Seconds(), prometheus.Labels{"trace_id": traceID})
		return
	}
	o.Observe(d.Seconds())
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
	ageDesc = prometheus.NewDesc(prometheus.BuildFQName(namespace, "", "snapshot_age_seconds"),
		"Age of the newest snapshot, from the start of its fetch; absent before the first.", nil, nil)
	ttlDesc = prometheus.NewDesc(prometheus.BuildFQName(namespace, "cache", "ttl_seconds"),
		"The age at which a snapshot stops being served.", nil, nil)
)

// RegisterCache registers on reg the cache's counters, read at scrape time
// from stats (see RegisterCounters), and its snapshot's age against the
// TTL. age reports the newest snapshot's age, or false before there is one.
func RegisterCache[S any](reg prometheus.Registerer, stats func() S, ttl time.Duration, age func() (time.Duration, bool)) error {
	if err := RegisterCounters(reg, stats); err != nil {
		return err
	}
	return reg.Register(&snapshotCollector{ttl: ttl, age: age})
}

// RegisterCounters registers on reg one counter per field of S, read at
// scrape time from stats. S must be a struct whose fields are all uint64
// counters, each tagged with its metric name (without the namespace), its
// help and optionally constant labels, as in
//
//	Hits uint64 `metric:"cache_hits_total" help:"Requests served from a fresh snapshot."`
//	Won  uint64 `metric:"fleet_locks_total" labels:"result=won" help:"..."`
//	Lost uint64 `metric:"fleet_locks_total" labels:"result=lost"`
//
// so a counter is defined once, where it is counted. The help is given on
// a metric's first field; later fields of the same metric (other label
// values) take it from there.
func RegisterCounters[S any](reg prometheus.Registerer, stats func() S) error {
	t := reflect.TypeFor[S]()
	if t.Kind() != reflect.Struct {
		return fmt.Errorf("metrics: stats %s is not a struct", t)
	}
	c := &counterCollector[S]{stats: stats}
	helps := map[string]string{}
	for f := range t.Fields() {
		name, help := f.Tag.Get("metric"), f.Tag.Get("help")
		if help == "" {
			help = helps[name]
		}
		if f.Type.Kind() != reflect.Uint64 || name == "" || help == "" {
			return fmt.Errorf("metrics: stats field %s.%s: want a uint64 with metric and help tags (help on the metric's first field)", t.Name(), f.Name)
		}
		if prev, ok := helps[name]; ok && prev != help {
			return fmt.Errorf("metrics: stats field %s.%s: a second help for %s", t.Name(), f.Name, name)
		}
		helps[name] = help
		labels := prometheus.Labels{}
		if l := f.Tag.Get("labels"); l != "" {
			for kv := range strings.SplitSeq(l, ",") {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return fmt.Errorf("metrics: stats field %s.%s: labels %q: want k=v,k=v", t.Name(), f.Name, l)
				}
				labels[k] = v
			}
		}
		c.descs = append(c.descs, prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, nil, labels))
	}
	return reg.Register(c)
}

// counterCollector turns a stats struct into counters at scrape time.
type counterCollector[S any] struct {
	stats func() S
	descs []*prometheus.Desc // one per field of S, in order
}

func (c *counterCollector[S]) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *counterCollector[S]) Collect(ch chan<- prometheus.Metric) {
	v := reflect.ValueOf(c.stats())
	for i, d := range c.descs {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v.Field(i).Uint()))
	}
}

// snapshotCollector reports the snapshot's age against the TTL.
type snapshotCollector struct {
	ttl time.Duration
	age func() (time.Duration, bool)
}

func (c *snapshotCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- ageDesc
	ch <- ttlDesc
}

func (c *snapshotCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(ttlDesc, prometheus.GaugeValue, c.ttl.Seconds())
	if age, ok := c.age(); ok {
		ch <- prometheus.MustNewConstMetric(ageDesc, prometheus.GaugeValue, age.Seconds())
	}
}

// RegisterFleet registers on reg the shared tier's counters (see
// RegisterCounters) and whether its circuit breaker is open.
func RegisterFleet[S any](reg prometheus.Registerer, stats func() S, breakerOpen func() bool) error {
	if err := RegisterCounters(reg, stats); err != nil {
		return err
	}
	return reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Subsystem: "fleet", Name: "breaker_open",
		Help: "1 while the circuit breaker keeps calls away from a failing Redis (the replica serves alone), else 0.",
	}, func() float64 {
		if breakerOpen() {
			return 1
		}
		return 0
	}))
}
