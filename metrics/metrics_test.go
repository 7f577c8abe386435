package metrics_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/movies-dev/movies/metrics"
)

func TestNew_ExposesCacheStatsAndObservations(t *testing.T) {
	reg := prometheus.NewRegistry()
	stats := metrics.CacheStats{Hits: 5, Misses: 3, Coalesced: 2, Loads: 1, LoadErrors: 0,
		HasSnapshot: true, SnapshotAge: 1500 * time.Millisecond, TTL: time.Minute}
	m, err := metrics.New(reg, func() metrics.CacheStats { return stats })
	if err != nil {
		t.Fatalf("New() error = %v", err)
	}
	m.ObserveUpstream("/films", "ok", 20*time.Millisecond)
	m.ObserveUpstream("/films", "timeout", 3*time.Second)
	m.ObserveHTTP("/movies/", 200, time.Millisecond)

	want := `
# HELP movies_cache_coalesced_total Misses that joined a fetch another request had already started and received its result.
# TYPE movies_cache_coalesced_total counter
movies_cache_coalesced_total 2
# HELP movies_cache_hits_total Requests served from a fresh cached snapshot.
# TYPE movies_cache_hits_total counter
movies_cache_hits_total 5
# HELP movies_cache_misses_total Requests that had to wait for an upstream fetch, as leader or joiner.
# TYPE movies_cache_misses_total counter
movies_cache_misses_total 3
# HELP movies_cache_ttl_seconds The age at which a snapshot stops being served.
# TYPE movies_cache_ttl_seconds gauge
movies_cache_ttl_seconds 60
# HELP movies_snapshot_age_seconds Age of the newest snapshot, from the start of its fetch; absent before the first.
# TYPE movies_snapshot_age_seconds gauge
movies_snapshot_age_seconds 1.5
# HELP movies_upstream_requests_total Requests to the Ghibli API by endpoint and outcome (ok, or the failure's cause).
# TYPE movies_upstream_requests_total counter
movies_upstream_requests_total{endpoint="/films",outcome="ok"} 1
movies_upstream_requests_total{endpoint="/films",outcome="timeout"} 1
# HELP movies_http_requests_total HTTP requests served, by route and status code.
# TYPE movies_http_requests_total counter
movies_http_requests_total{code="200",handler="/movies/"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"movies_cache_hits_total", "movies_cache_misses_total", "movies_cache_coalesced_total",
		"movies_cache_ttl_seconds", "movies_snapshot_age_seconds",
		"movies_upstream_requests_total", "movies_http_requests_total"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(reg, "movies_upstream_request_duration_seconds"); err != nil || n != 1 {
		t.Errorf("upstream histogram series = %d, %v; want 1", n, err)
	}
	if n, err := testutil.GatherAndCount(reg, "go_goroutines", "process_resident_memory_bytes"); err != nil || n < 1 {
		t.Errorf("Go/process collectors series = %d, %v; want them registered", n, err)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("GatherAndLint() = %v, %v; want metrics named by convention", problems, err)
	}
}

func TestNew_NoAgeBeforeFirstSnapshot(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := metrics.New(reg, func() metrics.CacheStats { return metrics.CacheStats{TTL: time.Minute} }); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg, "movies_snapshot_age_seconds"); err != nil || n != 0 {
		t.Errorf("age series before any snapshot = %d, %v; want 0 (no made-up age)", n, err)
	}
}

func TestNew_RefusesDoubleRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	stats := func() metrics.CacheStats { return metrics.CacheStats{} }
	if _, err := metrics.New(reg, stats); err != nil {
		t.Fatal(err)
	}
	if _, err := metrics.New(reg, stats); err == nil {
		t.Error("second New() on the same registry succeeded, want an error")
	}
}
