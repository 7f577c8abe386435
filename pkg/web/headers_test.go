package web

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/movies-dev/movies/pkg/ghibli/ghiblitest"
)

// TestHeaders_ProbesAndMetricsAreNeverStored pins Cache-Control: no-store
// on what describes this replica now: without it a cache assigns its own
// lifetime (Varnish's builtin VCL kept /readyz for 120 s), and a probe
// through it reads "ready" during a drain.
func TestHeaders_ProbesAndMetricsAreNeverStored(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	in := mustStart(t, Config{Upstream: up.URL})
	sep := mustStart(t, Config{Upstream: up.URL, SeparateMetrics: true})
	t.Cleanup(testClient.CloseIdleConnections)

	for _, url := range []string{
		in.URL + "/healthz", in.URL + "/readyz", in.URL + "/metrics",
		sep.URL + "/healthz", sep.URL + "/readyz", sep.MetricsURL + "/metrics",
	} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			r := mustDo(t, method, url)
			if r.status != http.StatusOK {
				t.Errorf("%s %s: status %d, want 200", method, url, r.status)
			}
			if got := r.header.Values("Cache-Control"); len(got) != 1 || got[0] != "no-store" {
				t.Errorf("%s %s: Cache-Control = %q, want exactly no-store", method, url, got)
			}
		}
	}

	// The catalogue keeps its own caching headers: no-store there would
	// switch off every downstream cache and the back-forward cache.
	if cc := mustGet(t, in.URL+"/movies/").header.Get("Cache-Control"); !strings.Contains(cc, "s-maxage=") {
		t.Errorf("/movies/: Cache-Control = %q, want the snapshot's s-maxage", cc)
	}
}

// TestHeaders_ReadyzDrainingIsNeverStored checks the answer that matters
// most: the 503 of a draining replica.
func TestHeaders_ReadyzDrainingIsNeverStored(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	in := mustStart(t, Config{Upstream: up.URL, DrainDelay: 3 * time.Second})
	t.Cleanup(testClient.CloseIdleConnections)
	in.cancel() // what SIGTERM does: /readyz turns 503 for the drain delay
	var r response
	waitUntil(t, 2*time.Second, "/readyz turns 503 on shutdown", func() bool {
		r = mustGet(t, in.URL+"/readyz")
		return r.status == http.StatusServiceUnavailable
	})
	if got := r.header.Get("Cache-Control"); got != "no-store" {
		t.Errorf("draining /readyz: Cache-Control = %q, want no-store", got)
	}
}

// TestHeaders_CrossOriginPolicies pins COOP and CORP on every response the
// server writes: the page opens no windows and nothing of it is meant to
// be embedded by another origin (Lighthouse listed COOP's absence).
func TestHeaders_CrossOriginPolicies(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	in := mustStart(t, Config{Upstream: up.URL})
	t.Cleanup(testClient.CloseIdleConnections)
	check := func(what string, r response) {
		t.Helper()
		for _, k := range []string{"Cross-Origin-Opener-Policy", "Cross-Origin-Resource-Policy"} {
			if got := r.header.Values(k); len(got) != 1 || got[0] != "same-origin" {
				t.Errorf("%s: %s = %q, want exactly same-origin", what, k, got)
			}
		}
	}
	for _, path := range []string{"/movies/", "/api/v1/movies", "/robots.txt", "/favicon.ico", "/healthz", "/nope"} {
		check("GET "+path, mustGet(t, in.URL+path))
	}
	check("POST /movies/ (405)", mustDo(t, http.MethodPost, in.URL+"/movies/"))

	// And on the 503 page, which a reader sees when the upstream is down.
	up.SetBehavior("", ghiblitest.Behavior{Status: 500})
	down := mustStart(t, Config{Upstream: up.URL})
	r := mustGet(t, down.URL+"/movies/")
	if r.status != http.StatusServiceUnavailable {
		t.Fatalf("upstream failing: status %d, want 503", r.status)
	}
	check("503 page", r)
}
