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
	}
	for _, c := range []prometheus.Collector{
		m.upstreamRequests, m.upstreamDuration, m.httpRequests, m.httpDuration,
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
	ageDesc = prometheus.NewDesc(prometheus.BuildFQName(namespace, "", "snapshot_age_seconds"),
		"Age of the newest snapshot, from the start of its fetch; absent before the first.", nil, nil)
	ttlDesc = prometheus.NewDesc(prometheus.BuildFQName(namespace, "cache", "ttl_seconds"),
		"The age at which a snapshot stops being served.", nil, nil)
)

// RegisterCache registers on reg the cache's counters, read at scrape time
// from stats, and its snapshot's age against the TTL. S must be a struct
// whose fields are all uint64 counters, each tagged with its metric name
// (without the namespace) and help, as in
//
//	Hits uint64 `metric:"cache_hits_total" help:"Requests served from a fresh snapshot."`
//
// so a counter is defined once, where it is counted. age reports the
// newest snapshot's age, or false before there is one.
func RegisterCache[S any](reg prometheus.Registerer, stats func() S, ttl time.Duration, age func() (time.Duration, bool)) error {
	t := reflect.TypeFor[S]()
	if t.Kind() != reflect.Struct {
		return fmt.Errorf("metrics: cache stats %s is not a struct", t)
	}
	c := &cacheCollector[S]{stats: stats, ttl: ttl, age: age}
	for f := range t.Fields() {
		name, help := f.Tag.Get("metric"), f.Tag.Get("help")
		if f.Type.Kind() != reflect.Uint64 || name == "" || help == "" {
			return fmt.Errorf("metrics: cache stats field %s: want a uint64 with metric and help tags", f.Name)
		}
		c.counters = append(c.counters, prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, nil, nil))
	}
	return reg.Register(c)
}

// cacheCollector turns the cache's counters into metrics at scrape time.
type cacheCollector[S any] struct {
	stats    func() S
	counters []*prometheus.Desc // one per field of S, in order
	ttl      time.Duration
	age      func() (time.Duration, bool)
}

func (c *cacheCollector[S]) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.counters {
		ch <- d
	}
	ch <- ageDesc
	ch <- ttlDesc
}

func (c *cacheCollector[S]) Collect(ch chan<- prometheus.Metric) {
	v := reflect.ValueOf(c.stats())
	for i, d := range c.counters {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v.Field(i).Uint()))
	}
	ch <- prometheus.MustNewConstMetric(ttlDesc, prometheus.GaugeValue, c.ttl.Seconds())
	if age, ok := c.age(); ok {
		ch <- prometheus.MustNewConstMetric(ageDesc, prometheus.GaugeValue, age.Seconds())
	}
}
