package web

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/movies-dev/movies/pkg/ghibli"
	"github.com/movies-dev/movies/pkg/ghibli/ghiblitest"
	"github.com/movies-dev/movies/pkg/render"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func TestServer_Routes(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	in := mustStart(t, Config{Upstream: up.URL})
	t.Cleanup(testClient.CloseIdleConnections)

	tests := []struct {
		method, path string
		wantStatus   int
		wantType     string
		wantBody     string
		wantHeader   map[string]string
	}{
		{"GET", "/movies/", 200, "text/html; charset=utf-8", "Castle in the Sky", map[string]string{"Cache-Control": "must-revalidate"}},
		{"HEAD", "/movies/", 200, "text/html; charset=utf-8", "", nil},
		{"GET", "/movies", 308, "", "", map[string]string{"Location": "/movies/"}},
		{"GET", "/movies?x=1", 308, "", "", map[string]string{"Location": "/movies/?x=1"}},
		{"POST", "/movies/", 405, "text/html; charset=utf-8", "Method Not Allowed", map[string]string{"Allow": "GET, HEAD"}},
		{"OPTIONS", "/movies/", 405, "text/html; charset=utf-8", "Method Not Allowed", map[string]string{"Allow": "GET, HEAD"}},
		{"OPTIONS", "/nope", 404, "text/html; charset=utf-8", "Not Found", nil},
		{"PUT", "/healthz", 405, "text/html; charset=utf-8", "", map[string]string{"Allow": "GET, HEAD"}},
		{"DELETE", "/api/v1/movies", 405, "application/json", `"status":405`, nil},
		{"GET", "/nope", 404, "text/html; charset=utf-8", "Not Found", nil},
		{"GET", "/api/v1/movies", 200, "application/json", `{"movies":[`, nil},
		{"GET", "/healthz", 200, "text/plain; charset=UTF-8", "ok", nil},
		{"GET", "/readyz", 200, "text/plain; charset=UTF-8", "ok", nil},
		{"GET", "/metrics", 200, "text/plain", "movies_cache_hits_total", nil},
		{"GET", "/robots.txt", 200, "text/plain; charset=utf-8", "Allow: /movies/", map[string]string{"Cache-Control": "max-age=86400"}},
		{"HEAD", "/robots.txt", 200, "text/plain; charset=utf-8", "", nil},
		{"GET", "/favicon.ico", 200, "image/x-icon", "", map[string]string{"Cache-Control": "max-age=86400"}},
		{"POST", "/favicon.ico", 405, "", "", map[string]string{"Allow": "GET, HEAD"}},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			r := mustDo(t, tt.method, in.URL+tt.path)
			if r.status != tt.wantStatus {
				t.Errorf("status = %d, want %d; body %q", r.status, tt.wantStatus, r.body)
			}
			if got := r.header.Get("Content-Type"); tt.wantType != "" && !strings.HasPrefix(got, tt.wantType) {
				t.Errorf("Content-Type = %q, want %q", got, tt.wantType)
			}
			if !strings.Contains(r.body, tt.wantBody) {
				t.Errorf("body lacks %q:\n%.300s", tt.wantBody, r.body)
			}
			for k, v := range tt.wantHeader {
				if k == "Allow" && r.header.Get(k) != v || !strings.Contains(r.header.Get(k), v) {
					t.Errorf("%s = %q, want it to contain %q", k, r.header.Get(k), v)
				}
			}
			if tt.method == "HEAD" {
				get := mustGet(t, in.URL+tt.path)
				if r.body != "" || r.header.Get("Content-Length") != strconv.Itoa(len(get.body)) {
					t.Errorf("HEAD: body %d bytes, Content-Length %q; want no body and the GET's length %d", len(r.body), r.header.Get("Content-Length"), len(get.body))
				}
			}
		})
	}
}

type apiMovies struct {
	FetchedAt time.Time `json:"fetched_at"`
	Movies    []struct {
		ID, Title, ReleaseDate, Director string
		People                           []struct{ ID, Name string }
	} `json:"movies"`
}

func mustAPI(t *testing.T, base string) apiMovies {
	t.Helper()
	r := mustGet(t, base+"/api/v1/movies")
	if r.status != 200 {
		t.Fatalf("GET /api/v1/movies = %d %s", r.status, r.body)
	}
	var doc apiMovies
	if err := json.Unmarshal([]byte(r.body), &doc); err != nil {
		t.Fatalf("decode /api/v1/movies: %v", err)
	}
	return doc
}

func TestServer_ListsEveryFilmAndItsPeople(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	in := mustStart(t, Config{Upstream: up.URL})
	t.Cleanup(testClient.CloseIdleConnections)

	before := time.Now()
	doc := mustAPI(t, in.URL)
	if len(doc.Movies) != 22 {
		t.Fatalf("%d movies, want 22", len(doc.Movies))
	}
	counts := map[string]int{}
	for _, m := range doc.Movies {
		counts[m.Title] = len(m.People)
	}
	for title, want := range map[string]int{"Castle in the Sky": 14, "Earwig and the Witch": 6, "Grave of the Fireflies": 0} {
		if counts[title] != want {
			t.Errorf("%s has %d people, want %d", title, counts[title], want)
		}
	}
	r := mustGet(t, in.URL+"/movies/")
	// The data was first seen by the fetch this request caused.
	if lm, err := http.ParseTime(r.header.Get("Last-Modified")); err != nil || lm.Before(before.Truncate(time.Second)) || lm.After(before.Add(10*time.Second)) {
		t.Errorf("Last-Modified = %q, want about %v (the fetch this request caused)", r.header.Get("Last-Modified"), before)
	}
	page := r.body
	for _, want := range []string{"<!doctype html>", "Grave of the Fireflies", "No people listed for this film.", "Pazu", "Hayao Miyazaki",
		"Checked against the Ghibli API at most 1 minute ago."} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
}

func TestServer_CoalescesColdRequests(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	// A slow upstream keeps the flight open while all 64 requests arrive.
	up.SetBehavior("", ghiblitest.Behavior{Latency: 300 * time.Millisecond})
	in := mustStart(t, Config{Upstream: up.URL})
	t.Cleanup(testClient.CloseIdleConnections)

	const n = 64
	var wg sync.WaitGroup
	statuses := make(chan int, n)
	for range n {
		wg.Go(func() {
			resp, err := testClient.Get(in.URL + "/movies/")
			if err != nil {
				t.Errorf("GET: %v", err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			statuses <- resp.StatusCode
		})
	}
	wg.Wait()
	close(statuses)
	for s := range statuses {
		if s != 200 {
			t.Errorf("status = %d, want 200", s)
		}
	}
	if f, p := up.Requests(ghibli.EndpointFilms), up.Requests(ghibli.EndpointPeople); f != 1 || p != 1 {
		t.Errorf("upstream saw %d /films and %d /people requests, want exactly 1 each", f, p)
	}
	if got := in.log.count("upstream fetch"); got != 1 {
		t.Errorf("%d fetch log lines, want 1", got)
	}
	m := mustMetrics(t, in.URL)
	if m["movies_cache_misses_total"]+m["movies_cache_hits_total"] != n || m["movies_cache_coalesced_total"] != m["movies_cache_misses_total"]-1 {
		t.Errorf("metrics misses=%v hits=%v coalesced=%v; want hits+misses=%d and coalesced=misses-1",
			m["movies_cache_misses_total"], m["movies_cache_hits_total"], m["movies_cache_coalesced_total"], n)
	}
}

func TestServer_ServesChangedDataAfterTTL(t *testing.T) {
	// Generous for a short TTL: on a busy machine a fetch (and the
	// snapshot's compression) must not turn into a failure.
	const ttl = time.Second
	up := startFake(t)
	in := mustStart(t, Config{Upstream: up.URL, TTL: ttl, UpstreamTimeout: 500 * time.Millisecond})
	t.Cleanup(testClient.CloseIdleConnections)

	mustAPI(t, in.URL)
	changed := time.Now()
	up.Update(func(d *ghiblitest.Data) { d.Films[0]["title"] = "Castle in the Sky (restored)" })

	deadline := time.Now().Add(10 * time.Second)
	for {
		asked := time.Now()
		doc := mustAPI(t, in.URL)
		// From the fake's side: the old data stopped being served upstream
		// at changed, so a request sent a TTL later must not see it.
		if doc.Movies[0].Title != "Castle in the Sky (restored)" && asked.Sub(changed) >= ttl {
			t.Fatalf("request sent %v after the upstream changed still got the old data", asked.Sub(changed))
		}
		if doc.Movies[0].Title == "Castle in the Sky (restored)" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the upstream change never showed")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if up.Requests(ghibli.EndpointFilms) < 2 {
		t.Errorf("upstream /films requests = %d, want a refetch", up.Requests(ghibli.EndpointFilms))
	}
}

func TestServer_UpstreamFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		behavior ghiblitest.Behavior
		cause    string
		timeout  time.Duration
	}{
		{"500", ghiblitest.Behavior{Status: 500}, "status_5xx", time.Second},
		{"hang", ghiblitest.Behavior{Hang: true}, "timeout", 500 * time.Millisecond},
		{"malformed JSON", ghiblitest.Behavior{Malformed: true}, "malformed", time.Second},
		{"truncated JSON", ghiblitest.Behavior{Truncated: true}, "malformed", time.Second},
		// Streaming past the 4 MiB cap takes a while under -race on a busy
		// machine: give it time, so the cause is the size, not the clock.
		{"huge body", ghiblitest.Behavior{HugeBytes: 8 << 20}, "too_large", 20 * time.Second},
		{"connection reset", ghiblitest.Behavior{ResetConn: true}, "network", time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			up := startFake(t)
			timeout := tt.timeout
			in := mustStart(t, Config{Upstream: up.URL, UpstreamTimeout: timeout, TTL: 2 * timeout})
			t.Cleanup(testClient.CloseIdleConnections)
			up.SetBehavior(ghibli.EndpointPeople, tt.behavior)

			start := time.Now()
			r := mustGet(t, in.URL+"/movies/")
			elapsed := time.Since(start)
			if r.status != http.StatusServiceUnavailable {
				t.Fatalf("status = %d, want 503", r.status)
			}
			if elapsed > timeout+5*time.Second {
				t.Errorf("503 after %v, want it within the %v upstream timeout (plus slack)", elapsed, timeout)
			}
			if ct := r.header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
				t.Errorf("Content-Type = %q, want HTML", ct)
			}
			if !strings.Contains(r.body, "Ghibli API could not be reached") || !strings.Contains(r.body, "retry") {
				t.Errorf("503 page does not say what happened and to retry:\n%s", r.body)
			}
			if strings.Contains(r.body, "goroutine") || strings.Contains(r.body, ".go:") || strings.Contains(r.body, "ghibli:") {
				t.Errorf("503 page leaks internals:\n%s", r.body)
			}
			if r.header.Get("Retry-After") == "" {
				t.Error("503 without Retry-After")
			}
			if api := mustGet(t, in.URL+"/api/v1/movies"); api.status != 503 || !strings.Contains(api.body, `"error"`) {
				t.Errorf("API during outage = %d %s, want a 503 JSON error", api.status, api.body)
			}
			m := mustMetrics(t, in.URL)
			if got := m[`movies_upstream_requests_total{endpoint="/people",outcome="`+tt.cause+`"}`]; got < 1 {
				t.Errorf("no upstream request counted with outcome %q: %v", tt.cause, m)
			}

			// The upstream recovers: once the backoff the 503 announced has
			// passed, the next request fetches again. On a busy machine a
			// fetch may still time out, so allow a few rounds.
			up.SetBehavior("", ghiblitest.Behavior{})
			for round := 1; ; round++ {
				wait, err := strconv.Atoi(r.header.Get("Retry-After"))
				if err != nil || wait < 1 || wait > 5 {
					t.Fatalf("Retry-After = %q, want 1 to 5 seconds", r.header.Get("Retry-After"))
				}
				time.Sleep(time.Duration(wait) * time.Second)
				if r = mustGet(t, in.URL+"/movies/"); r.status == 200 {
					if !strings.Contains(r.body, "Castle in the Sky") {
						t.Errorf("after recovery: 200 without the films")
					}
					break
				}
				if round == 5 {
					t.Fatalf("after recovery: still %d after %d rounds, want 200 with the films", r.status, round)
				}
			}
		})
	}
}

func TestServer_EscapesUpstreamMarkup(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	up.Update(func(d *ghiblitest.Data) {
		for _, p := range d.People {
			if p["name"] == "Pazu" {
				p["name"] = `<script>alert("pazu")</script>`
			}
		}
		d.Films[0]["title"] = `<img src=x onerror=alert(1)>`
	})
	in := mustStart(t, Config{Upstream: up.URL})
	t.Cleanup(testClient.CloseIdleConnections)
	page := mustGet(t, in.URL+"/movies/").body
	for _, raw := range []string{`<script>alert("pazu")</script>`, `<img src=x`} {
		if strings.Contains(page, raw) {
			t.Errorf("page contains raw %q", raw)
		}
	}
	for _, escaped := range []string{`&lt;script&gt;alert(&#34;pazu&#34;)&lt;/script&gt;`, `&lt;img src=x onerror=alert(1)&gt;`} {
		if !strings.Contains(page, escaped) {
			t.Errorf("page lacks escaped %q", escaped)
		}
	}
}

func mustMetrics(t *testing.T, base string) map[string]float64 {
	t.Helper()
	r := mustGet(t, base+"/metrics")
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(strings.NewReader(r.body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	out := map[string]float64{}
	for name, f := range families {
		for _, m := range f.GetMetric() {
			labels := ""
			if len(m.GetLabel()) > 0 {
				var ls []string
				for _, l := range m.GetLabel() {
					ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
				}
				labels = "{" + strings.Join(ls, ",") + "}"
			}
			switch {
			case m.GetCounter() != nil:
				out[name+labels] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				out[name+labels] = m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				out[name+"_count"+labels] = float64(m.GetHistogram().GetSampleCount())
				out[name+"_sum"+labels] = m.GetHistogram().GetSampleSum()
			}
		}
	}
	return out
}

func TestServer_MetricsMatchTraffic(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	in := mustStart(t, Config{Upstream: up.URL})
	t.Cleanup(testClient.CloseIdleConnections)
	const n = 10
	for range n {
		if r := mustGet(t, in.URL+"/movies/"); r.status != 200 {
			t.Fatalf("status %d", r.status)
		}
	}
	mustGet(t, in.URL+"/nope")
	m := mustMetrics(t, in.URL)
	want := map[string]float64{
		"movies_cache_misses_total":                                       1,
		"movies_cache_hits_total":                                         n - 1,
		"movies_cache_coalesced_total":                                    0,
		"movies_cache_loads_total":                                        1,
		`movies_upstream_requests_total{endpoint="/films",outcome="ok"}`:  1,
		`movies_upstream_requests_total{endpoint="/people",outcome="ok"}`: 1,
		`movies_http_requests_total{code="200",handler="/movies/"}`:       n,
		`movies_http_requests_total{code="404",handler="other"}`:          1,
		"movies_cache_ttl_seconds":                                        60,
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %v, want %v", k, m[k], v)
		}
	}
	if age, ok := m["movies_snapshot_age_seconds"]; !ok || age < 0 || age >= 60 {
		t.Errorf("movies_snapshot_age_seconds = %v (present %v), want within [0, 60)", age, ok)
	}
	if _, ok := m["go_goroutines"]; !ok {
		t.Error("Go collector missing")
	}
}

func TestServe_GracefulShutdown(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	up.SetBehavior("", ghiblitest.Behavior{Latency: 500 * time.Millisecond})
	in := mustStart(t, Config{Upstream: up.URL, DrainDelay: time.Second})
	t.Cleanup(testClient.CloseIdleConnections)

	// A request in flight when shutdown begins must complete. Goroutines
	// report on channels: t.Fatal belongs to the test's own goroutine.
	type result struct {
		status int
		err    error
	}
	inflight := make(chan result, 1)
	go func() {
		resp, err := testClient.Get(in.URL + "/movies/")
		if err != nil {
			inflight <- result{err: err}
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		inflight <- result{status: resp.StatusCode}
	}()
	for up.Requests("") == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	in.cancel() // as SIGTERM does

	// During the drain delay the server still answers, but not ready.
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := mustGet(t, in.URL+"/readyz")
		if r.status == 503 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("/readyz never turned 503 during shutdown")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if r := <-inflight; r.err != nil || r.status != 200 {
		t.Errorf("in-flight request = %d, %v; want 200", r.status, r.err)
	}
	if err := in.stop(t); err != nil {
		t.Errorf("Serve() = %v, want nil after a graceful shutdown", err)
	}
}

func TestServe_ShutdownEndsUnwantedFetch(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	// The refresh window is the last 500ms of the TTL; an upstream timeout
	// longer than the test's wait shows the fetch ended by shutdown.
	in := mustStart(t, Config{Upstream: up.URL, TTL: 2 * time.Second, UpstreamTimeout: time.Second})
	t.Cleanup(testClient.CloseIdleConnections)
	mustAPI(t, in.URL)
	up.SetBehavior("", ghiblitest.Behavior{Hang: true})
	// Hits until one falls in the refresh window and starts a refresh,
	// which then hangs upstream.
	before := up.Requests("")
	waitUntil(t, 10*time.Second, "an early refresh", func() bool {
		if r := mustGet(t, in.URL+"/movies/"); r.status != 200 {
			t.Fatalf("status %d inside the TTL", r.status)
		}
		return up.Requests("") != before
	})
	if err := in.stop(t); err != nil {
		t.Fatalf("Serve() = %v", err)
	}
	in.log.mu.Lock()
	defer in.log.mu.Unlock()
	var outcome any
	for _, l := range in.log.lines {
		if l["msg"] == "upstream fetch failed" {
			outcome = l["outcome"]
		}
	}
	if outcome != "canceled" {
		t.Errorf("early refresh ended with outcome %v, want canceled by shutdown (not a timeout)", outcome)
	}
}

// TestServer_OutageEconomy: however many clients arrive during an outage,

// the upstream sees a bounded number of attempts, and clients get a 503

// with Retry-After at once.

func TestServer_OutageEconomy(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	up.SetBehavior("", ghiblitest.Behavior{Status: 500})
	in := mustStart(t, Config{Upstream: up.URL})
	t.Cleanup(testClient.CloseIdleConnections)

	const clients, period = 32, 2 * time.Second
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	start := time.Now()
	for range clients {
		wg.Go(func() {
			for time.Since(start) < period {
				r := mustGet(t, in.URL+"/movies/")
				mu.Lock()
				statuses[r.status]++
				mu.Unlock()
				if r.status == 503 && r.header.Get("Retry-After") == "" {
					t.Error("503 without Retry-After")
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	total := 0
	for code, n := range statuses {
		total += n
		if code != 503 {
			t.Errorf("%d responses with status %d during the outage, want only 503", n, code)
		}
	}
	// Each fetch is at most 2 attempts per endpoint (one retry); fetches are
	// at least half the minimum backoff (250ms) apart.
	attempts := up.Requests(ghibli.EndpointFilms)
	bound := 2 * (int64(elapsed/(125*time.Millisecond)) + 1)
	t.Logf("%d requests in %v, upstream /films attempts %d (bound %d)", total, elapsed.Round(time.Millisecond), attempts, bound)
	if attempts > bound {
		t.Errorf("upstream saw %d /films attempts for %d requests, want at most %d", attempts, total, bound)
	}
	if int64(total) < 4*attempts {
		t.Errorf("only %d requests for %d attempts: the test did not put the backoff under load", total, attempts)
	}
	if m := mustMetrics(t, in.URL); m["movies_cache_backoff_rejections_total"] < 1 {
		t.Errorf("movies_cache_backoff_rejections_total = %v, want > 0", m["movies_cache_backoff_rejections_total"])
	}
	// One log line per fetch attempt, not per request.
	if lines := in.log.count("upstream fetch failed"); int64(lines) > attempts || lines == 0 {
		t.Errorf("%d failure log lines for %d attempts and %d requests", lines, attempts, total)
	}
}

func TestServer_HonoursUpstreamRetryAfter(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	up.SetBehavior(ghibli.EndpointFilms, ghiblitest.Behavior{Status: 429, RetryAfter: "7"})
	in := mustStart(t, Config{Upstream: up.URL})
	t.Cleanup(testClient.CloseIdleConnections)
	r := mustGet(t, in.URL+"/movies/")
	if r.status != 503 {
		t.Fatalf("status = %d, want 503", r.status)
	}
	if ra, _ := strconv.Atoi(r.header.Get("Retry-After")); ra < 6 || ra > 7 {
		t.Errorf("Retry-After = %q, want the upstream's 7s", r.header.Get("Retry-After"))
	}
	before := up.Requests(ghibli.EndpointFilms)
	mustGet(t, in.URL+"/movies/")
	if got := up.Requests(ghibli.EndpointFilms); got != before {
		t.Errorf("a request within the upstream's Retry-After reached it")
	}
}

func TestServer_StaleIfError(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	in := mustStart(t, Config{Upstream: up.URL, TTL: time.Second, UpstreamTimeout: 500 * time.Millisecond, StaleIfError: 2 * time.Second})
	t.Cleanup(testClient.CloseIdleConnections)
	before := time.Now()
	mustAPI(t, in.URL)
	up.SetBehavior("", ghiblitest.Behavior{Status: 500})
	time.Sleep(1100 * time.Millisecond) // past the TTL

	page := mustGet(t, in.URL+"/movies/")
	if page.status != 200 || !strings.Contains(page.body, "the Ghibli API is unreachable") {
		t.Fatalf("stale page: status %d, banner present %v", page.status, strings.Contains(page.body, "unreachable"))
	}
	api := mustGet(t, in.URL+"/api/v1/movies")
	var doc struct {
		Stale     bool      `json:"stale"`
		FetchedAt time.Time `json:"fetched_at"`
		Age       *int64    `json:"age_seconds"`
	}
	if err := json.Unmarshal([]byte(api.body), &doc); err != nil || !doc.Stale || doc.Age == nil {
		t.Errorf("stale API = %s, want stale, fetched_at and age_seconds", api.body)
	}
	if d := doc.FetchedAt.Sub(before); d < -time.Second || d > 2*time.Second {
		t.Errorf("stale fetched_at = %v, want the first fetch's start, about %v", doc.FetchedAt, before)
	}
	if !strings.Contains(page.body, doc.FetchedAt.UTC().Format("15:04:05")) {
		t.Errorf("stale banner does not give the data's time %s", doc.FetchedAt.UTC().Format("15:04:05"))
	}
	// Uncacheable everywhere: no-store for browsers, Varnish and nginx;
	// no X-Accel-Expires, which nginx would obey over Cache-Control.
	if cc := page.header.Get("Cache-Control"); cc != "no-store" || page.header.Get("X-Accel-Expires") != "" {
		t.Errorf("stale Cache-Control = %q, X-Accel-Expires %q; want no-store and none", cc, page.header.Get("X-Accel-Expires"))
	}
	if m := mustMetrics(t, in.URL); m["movies_stale_served_total"] < 2 {
		t.Errorf("movies_stale_served_total = %v, want >= 2", m["movies_stale_served_total"])
	}

	// Past TTL + stale-if-error, nothing is served.
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := mustGet(t, in.URL+"/movies/")
		if r.status == 503 {
			break
		}
		if time.Since(before) > time.Second+2*time.Second+2*time.Second {
			t.Fatalf("still %d at %v past the fetch, want 503 past TTL+stale-if-error", r.status, time.Since(before))
		}
		if time.Now().After(deadline) {
			t.Fatal("never turned 503")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestServer_SecurityHeadersOnEveryResponse(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	in := mustStart(t, Config{Upstream: up.URL})
	t.Cleanup(testClient.CloseIdleConnections)
	wantCSP := "default-src 'none'; style-src " + render.StyleHash() + "; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
	for _, path := range []string{"/movies/", "/api/v1/movies", "/nope", "/healthz", "/movies"} {
		r := mustGet(t, in.URL+path)
		for k, want := range map[string]string{
			"Content-Security-Policy": wantCSP,
			"X-Content-Type-Options":  "nosniff",
			"Referrer-Policy":         "no-referrer",
			"X-Frame-Options":         "DENY",
			"Server":                  "",
			"X-Powered-By":            "",
		} {
			if got := r.header.Get(k); got != want {
				t.Errorf("%s: %s = %q, want %q", path, k, got, want)
			}
		}
	}
	// And on the 503 page.
	up.SetBehavior("", ghiblitest.Behavior{Status: 500})
	in2 := mustStart(t, Config{Upstream: up.URL})
	if r := mustGet(t, in2.URL+"/movies/"); r.status != 503 || r.header.Get("Content-Security-Policy") != wantCSP {
		t.Errorf("503: status %d, CSP %q", r.status, r.header.Get("Content-Security-Policy"))
	}
}

func TestServer_RequestID(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	in := mustStart(t, Config{Upstream: up.URL})
	t.Cleanup(testClient.CloseIdleConnections)
	do := func(id string) string {
		req, _ := http.NewRequest("GET", in.URL+"/movies/", nil)
		if id != "" {
			req.Header.Set("X-Request-ID", id)
		}
		resp, err := testClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.Header.Get("X-Request-ID")
	}
	if got := do("abc-123"); got != "abc-123" {
		t.Errorf("X-Request-ID = %q, want the client's abc-123 echoed", got)
	}
	generated := do("")
	if len(generated) < 16 {
		t.Errorf("generated X-Request-ID = %q, want a random id", generated)
	}
	if other := do(""); other == generated {
		t.Errorf("two generated ids are equal: %q", other)
	}
	for _, bad := range []string{"has space", strings.Repeat("a", 129), "x;y", `a"b`, "<script>"} {
		if got := do(bad); got == bad || got == "" {
			t.Errorf("X-Request-ID for %q = %q, want a fresh id instead", bad, got)
		}
	}
	// The fetch was led by the first request: its log line carries that id.
	in.log.mu.Lock()
	defer in.log.mu.Unlock()
	for _, l := range in.log.lines {
		if l["msg"] == "upstream fetch" && l["request_id"] != "abc-123" {
			t.Errorf("fetch log line request_id = %v, want abc-123", l["request_id"])
		}
	}
}

func TestServer_SeparateMetricsListener(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	in := mustStart(t, Config{Upstream: up.URL, SeparateMetrics: true})
	t.Cleanup(testClient.CloseIdleConnections)
	if r := mustGet(t, in.URL+"/metrics"); r.status != 404 {
		t.Errorf("/metrics on the main listener = %d, want 404", r.status)
	}
	mustGet(t, in.URL+"/movies/")
	if m := mustMetrics(t, in.MetricsURL); m["movies_cache_misses_total"] != 1 {
		t.Errorf("metrics listener: misses = %v, want 1", m["movies_cache_misses_total"])
	}
}

// TestServer_MetricsListenerAnswersLikeTheMain: /metrics on its own
// listener (-metrics-addr, which the Kubernetes manifests turn on) carries
// the same security headers and request id as every other response, and
// answers 405 with Allow to other methods and 404 to other paths, as the
// main listener does.
func TestServer_MetricsListenerAnswersLikeTheMain(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	in := mustStart(t, Config{Upstream: up.URL, SeparateMetrics: true})
	t.Cleanup(testClient.CloseIdleConnections)
	main := mustGet(t, in.URL+"/healthz")
	sameHeaders := func(what string, r response) {
		t.Helper()
		for _, k := range []string{"Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy",
			"X-Frame-Options", "Cross-Origin-Opener-Policy", "Cross-Origin-Resource-Policy"} {
			if got, want := r.header.Values(k), main.header.Values(k); len(want) != 1 || !slices.Equal(got, want) {
				t.Errorf("%s: %s = %q, want %q as on the main listener", what, k, got, want)
			}
		}
		if r.header.Get("X-Request-Id") == "" {
			t.Errorf("%s: no X-Request-Id", what)
		}
	}

	for _, tt := range []struct {
		method, path string
		wantStatus   int
		wantAllow    string
	}{
		{"GET", "/metrics", 200, ""},
		{"HEAD", "/metrics", 200, ""},
		{"POST", "/metrics", 405, "GET, HEAD"},
		{"PUT", "/metrics", 405, "GET, HEAD"},
		{"DELETE", "/metrics", 405, "GET, HEAD"},
		{"OPTIONS", "/metrics", 405, "GET, HEAD"},
		{"GET", "/movies/", 404, ""},
		{"GET", "/nope", 404, ""},
	} {
		what := tt.method + " " + tt.path + " on the metrics listener"
		r := mustDo(t, tt.method, in.MetricsURL+tt.path)
		if r.status != tt.wantStatus {
			t.Errorf("%s: status %d, want %d", what, r.status, tt.wantStatus)
		}
		if got := r.header.Get("Allow"); got != tt.wantAllow {
			t.Errorf("%s: Allow = %q, want %q", what, got, tt.wantAllow)
		}
		if got := r.header.Get("Cache-Control"); got != "no-store" {
			t.Errorf("%s: Cache-Control = %q, want no-store", what, got)
		}
		sameHeaders(what, r)
	}

	// A client's request id is echoed here too, so a scrape can be found
	// in the logs of both ends.
	req, _ := http.NewRequest(http.MethodGet, in.MetricsURL+"/metrics", nil)
	req.Header.Set("X-Request-ID", "scrape-42")
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if got := resp.Header.Get("X-Request-ID"); got != "scrape-42" {
		t.Errorf("X-Request-ID = %q, want the client's scrape-42 echoed", got)
	}

	// And the scrapes are counted like any request: the 405s by the
	// route, the unknown paths as other.
	m := mustMetrics(t, in.MetricsURL)
	if got := m[`movies_http_requests_total{code="405",handler="/metrics"}`]; got != 4 {
		t.Errorf(`requests_total{code="405",handler="/metrics"} = %v, want 4`, got)
	}
}

// TestServer_ExportsItsBuild: movies_build_info carries the build the
// Config names, and says "unknown" rather than an empty label (which
// Prometheus takes for no label) for what it does not name.
func TestServer_ExportsItsBuild(t *testing.T) {
	for _, tt := range []struct {
		build Build
		want  string
	}{
		{Build{Version: "v1.2.0", Revision: "ad591c9c", GoVersion: "go1.26.8"},
			`movies_build_info{goversion="go1.26.8",revision="ad591c9c",version="v1.2.0"} 1`},
		{Build{}, fmt.Sprintf(`movies_build_info{goversion=%q,revision="unknown",version="unknown"} 1`, runtime.Version())},
	} {
		s, err := New(Config{Upstream: "http://127.0.0.1:1", Build: tt.build})
		if err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		s.Close()
		if !strings.Contains(rec.Body.String(), tt.want+"\n") {
			t.Errorf("Build %+v: /metrics lacks %s", tt.build, tt.want)
		}
	}
}

func TestServer_RecoversHandlerPanic(t *testing.T) {
	var logs strings.Builder
	s, err := New(Config{Upstream: "http://127.0.0.1:1", Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	e := s.handler
	e.GET("/boom", func(echo.Context) error { panic("kaboom") })
	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, httptest.NewRequest("GET", "/boom", nil))
	if rec.Code != 500 || strings.Contains(rec.Body.String(), "kaboom") {
		t.Errorf("panic: status %d body %q; want a 500 that does not leak the panic", rec.Code, rec.Body.String())
	}
	if !strings.Contains(logs.String(), "kaboom") {
		t.Errorf("panic not logged: %q", logs.String())
	}
	if rec.Header().Get("X-Request-ID") == "" || rec.Header().Get("Content-Security-Policy") == "" {
		t.Errorf("panic response lacks request id or security headers: %v", rec.Header())
	}
}

// TestServer_SlowClientsDoNotBlockOthers: clients that trickle their

// headers (slowloris) or never read their responses hold only their own

// connections, and the slow-header ones are cut off.

func TestServer_SlowClientsDoNotBlockOthers(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out the 5s header timeout in real time")
	}
	t.Parallel()
	up := startFake(t)
	in := mustStart(t, Config{Upstream: up.URL})
	t.Cleanup(testClient.CloseIdleConnections)
	addr := strings.TrimPrefix(in.URL, "http://")

	// 20 slowloris connections: a request line, then a header byte now and then.
	var slow []net.Conn
	for range 20 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		fmt.Fprintf(c, "GET /movies/ HTTP/1.1\r\nHost: x\r\n")
		slow = append(slow, c)
	}
	// 5 connections that pipeline many requests and never read.
	for range 5 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		go func() {
			for range 2000 {
				if _, err := fmt.Fprintf(c, "GET /movies/ HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
					return
				}
			}
		}()
	}
	stopTrickle := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range slow {
		wg.Go(func() {
			tick := time.NewTicker(500 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stopTrickle:
					return
				case <-tick.C:
					if _, err := c.Write([]byte("X")); err != nil {
						return
					}
				}
			}
		})
	}
	// Meanwhile everyone else is served.
	for range 20 {
		if r := mustGet(t, in.URL+"/movies/"); r.status != 200 {
			t.Fatalf("normal client got %d while slow clients hold connections", r.status)
		}
	}
	// The slowloris connections are closed once the header timeout (5s) passes.
	for _, c := range slow {
		c.SetReadDeadline(time.Now().Add(15 * time.Second))
		_, err := bufio.NewReader(c).ReadString('\n')
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("slow-header connection still open 15s later")
			break
		}
	}
	close(stopTrickle)
	wg.Wait()
}

func doWith(t *testing.T, url string, header map[string]string) response {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	// A Transport that does not add or undo gzip on its own.
	tr := &http.Transport{DisableCompression: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{resp.StatusCode, resp.Header, string(b)}
}

func TestServer_HTTPCaching(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	in := mustStart(t, Config{Upstream: up.URL})
	for _, path := range []string{"/movies/", "/api/v1/movies"} {
		plain := doWith(t, in.URL+path, nil)
		gz := doWith(t, in.URL+path, map[string]string{"Accept-Encoding": "gzip"})
		if plain.status != 200 || gz.status != 200 {
			t.Fatalf("%s: status %d / %d", path, plain.status, gz.status)
		}
		if plain.header.Get("Content-Encoding") != "" || gz.header.Get("Content-Encoding") != "gzip" {
			t.Errorf("%s: Content-Encoding %q / %q, want none / gzip", path, plain.header.Get("Content-Encoding"), gz.header.Get("Content-Encoding"))
		}
		zr, err := gzip.NewReader(strings.NewReader(gz.body))
		if err != nil {
			t.Fatalf("%s: gzip body: %v", path, err)
		}
		unzipped, _ := io.ReadAll(zr)
		if !bytes.Equal(unzipped, []byte(plain.body)) || len(gz.body) >= len(plain.body)/2 {
			t.Errorf("%s: gzip body (%d bytes) is not the page (%d bytes) compressed", path, len(gz.body), len(plain.body))
		}
		if cl, _ := strconv.Atoi(gz.header.Get("Content-Length")); cl != len(gz.body) {
			t.Errorf("%s: gzip Content-Length %d for %d bytes", path, cl, len(gz.body))
		}
		for _, r := range []response{plain, gz} {
			if r.header.Get("Vary") != "Accept-Encoding" {
				t.Errorf("%s: Vary = %q", path, r.header.Get("Vary"))
			}
			etag := r.header.Get("ETag")
			if !strings.HasPrefix(etag, `"`) || !strings.HasSuffix(etag, `"`) {
				t.Errorf("%s: ETag %q is not a strong tag", path, etag)
			}
			// Browsers revalidate every time; shared caches keep it for
			// what is left of the TTL, with no grace; nginx gets the
			// absolute second before the snapshot's end.
			var sMaxAge int
			_, err := fmt.Sscanf(r.header.Get("Cache-Control"), "public, max-age=0, s-maxage=%d, must-revalidate, stale-while-revalidate=0, stale-if-error=0", &sMaxAge)
			if err != nil || sMaxAge < 0 || sMaxAge > 60 {
				t.Errorf("%s: Cache-Control %q: want max-age=0 and s-maxage within the 60s TTL, no grace", path, r.header.Get("Cache-Control"))
			}
			if r.header.Get("Age") != "" {
				t.Errorf("%s: Age %q from the origin; want none", path, r.header.Get("Age"))
			}
			var expires int64
			if _, err := fmt.Sscanf(r.header.Get("X-Accel-Expires"), "@%d", &expires); err != nil || expires > time.Now().Add(time.Minute).Unix() || expires < time.Now().Unix()-1 {
				t.Errorf("%s: X-Accel-Expires %q: want @<the second before the snapshot ends>", path, r.header.Get("X-Accel-Expires"))
			}
			// Revalidation answers 304 with no body.
			nm := doWith(t, in.URL+path, map[string]string{"If-None-Match": etag, "Accept-Encoding": map[bool]string{true: "gzip"}[r.header.Get("Content-Encoding") == "gzip"]})
			if nm.header.Get("X-Accel-Expires") == "" || !strings.Contains(nm.header.Get("Cache-Control"), "s-maxage=") {
				t.Errorf("%s: 304 without the lifetime headers (%v): nginx would re-apply its stored copy's", path, nm.header)
			}
			if nm.status != 304 || nm.body != "" || nm.header.Get("ETag") != etag {
				t.Errorf("%s: If-None-Match %s = %d (%d bytes, ETag %q), want 304 without a body", path, etag, nm.status, len(nm.body), nm.header.Get("ETag"))
			}
			ims := doWith(t, in.URL+path, map[string]string{"If-Modified-Since": r.header.Get("Last-Modified")})
			if ims.status != 304 {
				t.Errorf("%s: If-Modified-Since = %d, want 304", path, ims.status)
			}
		}
		if plain.header.Get("ETag") == gz.header.Get("ETag") {
			t.Errorf("%s: identity and gzip share ETag %s; each representation needs its own", path, plain.header.Get("ETag"))
		}
		if r := doWith(t, in.URL+path, map[string]string{"If-None-Match": `"something-else"`}); r.status != 200 {
			t.Errorf("%s: stale If-None-Match = %d, want 200", path, r.status)
		}
	}
}

// TestServer_ConstantAssets: robots.txt and the favicon are the exact bytes
// render prepared, not a 404 per browser visit.
func TestServer_ConstantAssets(t *testing.T) {
	t.Parallel()
	in := mustStart(t, Config{Upstream: "http://127.0.0.1:1"})
	t.Cleanup(testClient.CloseIdleConnections)
	for path, want := range map[string][]byte{"/robots.txt": render.RobotsTxt, "/favicon.ico": render.Favicon} {
		r := mustGet(t, in.URL+path)
		if r.status != 200 || r.body != string(want) {
			t.Errorf("GET %s = %d with %d bytes, want 200 with the %d prepared bytes", path, r.status, len(r.body), len(want))
		}
		if r.header.Get("Content-Security-Policy") == "" {
			t.Errorf("GET %s lacks the security headers", path)
		}
	}
}

// TestServer_RevalidatesAcrossSnapshots: when a new snapshot has the same
// data, a client or cache holding the old one's validators gets a 304 with
// the new snapshot's lifetime, and Last-Modified still says when the data
// changed; changed data gets a 200.
func TestServer_RevalidatesAcrossSnapshots(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	in := mustStart(t, Config{Upstream: up.URL, TTL: time.Second})
	t.Cleanup(testClient.CloseIdleConnections)
	first := doWith(t, in.URL+"/movies/", map[string]string{"Accept-Encoding": "br"})
	time.Sleep(1100 * time.Millisecond) // the next request starts a new snapshot
	cond := map[string]string{"Accept-Encoding": "br", "If-None-Match": first.header.Get("ETag")}
	again := doWith(t, in.URL+"/movies/", cond)
	if again.status != http.StatusNotModified {
		t.Fatalf("same data in a new snapshot: status %d, want 304", again.status)
	}
	if m := mustMetrics(t, in.URL); m["movies_cache_loads_total"] < 2 {
		t.Fatalf("loads = %v: the 304 did not come from a new snapshot", m["movies_cache_loads_total"])
	}
	if again.header.Get("X-Accel-Expires") == first.header.Get("X-Accel-Expires") {
		t.Errorf("304 carries the old snapshot's X-Accel-Expires %s", again.header.Get("X-Accel-Expires"))
	}
	if got := doWith(t, in.URL+"/movies/", map[string]string{"If-Modified-Since": first.header.Get("Last-Modified")}); got.status != http.StatusNotModified {
		t.Errorf("If-Modified-Since of unchanged data = %d, want 304", got.status)
	}

	up.Update(func(d *ghiblitest.Data) { d.Films[0]["title"] = "Castle in the Sky (restored)" })
	time.Sleep(1100 * time.Millisecond)
	changed := doWith(t, in.URL+"/movies/", cond)
	if changed.status != http.StatusOK || changed.header.Get("ETag") == first.header.Get("ETag") {
		t.Errorf("changed data: status %d, ETag %s; want 200 with a new ETag", changed.status, changed.header.Get("ETag"))
	}
	// Over two seconds apart: the new data's second is its own.
	if changed.header.Get("Last-Modified") == first.header.Get("Last-Modified") {
		t.Errorf("changed data kept Last-Modified %s", first.header.Get("Last-Modified"))
	}
}

// TestServer_CountsRequestsPerSnapshot: movies_snapshot_requests observes,
// when the next snapshot is first served, how many requests the one
// before served: here a cold burst of 8 that shared one fetch, and 4 hits.
func TestServer_CountsRequestsPerSnapshot(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	up.SetBehavior("", ghiblitest.Behavior{Latency: 200 * time.Millisecond})
	// A TTL long enough that the requests below end before its refresh
	// window opens (at half of it), even on a machine busy enough to
	// stretch them past half a second; then the early refresh would be
	// a third fetch.
	in := mustStart(t, Config{Upstream: up.URL, TTL: 3 * time.Second})
	t.Cleanup(testClient.CloseIdleConnections)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { mustGet(t, in.URL+"/api/v1/movies") })
	}
	wg.Wait()
	for range 4 {
		mustGet(t, in.URL+"/movies/")
	}
	if m := mustMetrics(t, in.URL); m[`movies_snapshot_requests_count{source="local"}`] != 0 {
		t.Fatalf("observed %v snapshots before the first was replaced", m[`movies_snapshot_requests_count{source="local"}`])
	}
	time.Sleep(3100 * time.Millisecond) // past the TTL
	mustGet(t, in.URL+"/movies/")
	m := mustMetrics(t, in.URL)
	if m[`movies_snapshot_requests_count{source="local"}`] != 1 || m[`movies_snapshot_requests_sum{source="local"}`] != 12 {
		t.Errorf("snapshot requests count=%v sum=%v, want 1 snapshot that served 12 requests",
			m[`movies_snapshot_requests_count{source="local"}`], m[`movies_snapshot_requests_sum{source="local"}`])
	}
	if f := up.Requests(ghibli.EndpointFilms); f != 2 {
		t.Errorf("%d fetches, want 2", f)
	}
}
