package metrics_test

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/movies-dev/movies/metrics"
	"github.com/movies-dev/movies/pkg/cache"
	"github.com/movies-dev/movies/pkg/fleet"
)

func TestRegisterCache_ExposesCacheStatsAndObservations(t *testing.T) {
	reg := prometheus.NewRegistry()
	stats := cache.Stats{Hits: 5, Misses: 3, Coalesced: 2, Loads: 1, LoadErrors: 0}
	m, err := metrics.New(reg)
	if err != nil {
		t.Fatalf("New() error = %v", err)
	}
	age := func() (time.Duration, bool) { return 1500 * time.Millisecond, true }
	if err := metrics.RegisterCache(reg, func() cache.Stats { return stats }, time.Minute, age); err != nil {
		t.Fatalf("RegisterCache() error = %v", err)
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

func TestRegisterCache_NoAgeBeforeFirstSnapshot(t *testing.T) {
	reg := prometheus.NewRegistry()
	noAge := func() (time.Duration, bool) { return 0, false }
	if err := metrics.RegisterCache(reg, func() cache.Stats { return cache.Stats{} }, time.Minute, noAge); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg, "movies_snapshot_age_seconds"); err != nil || n != 0 {
		t.Errorf("age series before any snapshot = %d, %v; want 0 (no made-up age)", n, err)
	}
}

// TestRegisterCache_EveryCacheCounterIsExported: a counter added to
// cache.Stats is exported without another edit, and a field without its
// tags is refused rather than silently dropped.
func TestRegisterCache_EveryCacheCounterIsExported(t *testing.T) {
	reg := prometheus.NewRegistry()
	noAge := func() (time.Duration, bool) { return 0, false }
	if err := metrics.RegisterCache(reg, func() cache.Stats { return cache.Stats{} }, time.Minute, noAge); err != nil {
		t.Fatal(err)
	}
	fields := reflect.TypeFor[cache.Stats]().NumField()
	// Every counter, plus the TTL gauge (the age is absent here).
	if n, err := testutil.GatherAndCount(reg); err != nil || n != fields+1 {
		t.Errorf("series = %d, %v; want %d counters and the TTL", n, err, fields)
	}

	type untagged struct {
		Hits   uint64 `metric:"x_total" help:"x"`
		Misses uint64
	}
	if err := metrics.RegisterCache(prometheus.NewRegistry(), func() untagged { return untagged{} }, time.Minute, noAge); err == nil {
		t.Error("RegisterCache() of a field without tags succeeded, want an error")
	}
}

func TestNew_RefusesDoubleRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := metrics.New(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := metrics.New(reg); err == nil {
		t.Error("second New() on the same registry succeeded, want an error")
	}
}

// TestRegisterFleet_LabelledCounters: the shared tier's counters share
// metric names and differ by a constant label, as Prometheus expects.
func TestRegisterFleet_LabelledCounters(t *testing.T) {
	reg := prometheus.NewRegistry()
	stats := fleet.Stats{LockWon: 2, LockLost: 5, CommitFenced: 1}
	if err := metrics.RegisterFleet(reg, func() fleet.Stats { return stats }, func() bool { return true }); err != nil {
		t.Fatalf("RegisterFleet() error = %v", err)
	}
	want := `
# HELP movies_fleet_breaker_open 1 while the circuit breaker keeps calls away from a failing Redis (the replica serves alone), else 0.
# TYPE movies_fleet_breaker_open gauge
movies_fleet_breaker_open 1
# HELP movies_fleet_locks_total Attempts to take the fetch lock, by result: won (this replica fetches for the fleet), lost (another holds it: wait).
# TYPE movies_fleet_locks_total counter
movies_fleet_locks_total{result="lost"} 5
movies_fleet_locks_total{result="won"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "movies_fleet_locks_total", "movies_fleet_breaker_open"); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("GatherAndLint() = %v, %v", problems, err)
	}
}

func TestRegisterBuildInfo_LabelsTheBuild(t *testing.T) {
	reg := prometheus.NewRegistry()
	if err := metrics.RegisterBuildInfo(reg, "v1.2.0", "ad591c9c", "go1.26.8"); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP movies_build_info A metric with a constant '1' value labelled by the version, VCS revision and Go version movies was built from.
# TYPE movies_build_info gauge
movies_build_info{goversion="go1.26.8",revision="ad591c9c",version="v1.2.0"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "movies_build_info"); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("GatherAndLint() = %v, %v; want a metric named by convention", problems, err)
	}
}
