package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/movies-dev/movies/metrics"
	"github.com/movies-dev/movies/pkg/ghibli"
	"github.com/movies-dev/movies/pkg/ghibli/ghiblitest"
	"github.com/movies-dev/movies/pkg/render"
)

// TestServer_OutageEconomy: however many clients arrive during an outage,
// the upstream sees a bounded number of attempts, and clients get a 503
// with Retry-After at once.
func TestServer_OutageEconomy(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	up.SetBehavior("", ghiblitest.Behavior{Status: 500})
	in := mustStart(t, up.URL)
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
	in := mustStart(t, up.URL)
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
	in := mustStart(t, up.URL, "-ttl", "300ms", "-upstream-timeout", "150ms", "-stale-if-error", "3s")
	t.Cleanup(testClient.CloseIdleConnections)
	first := mustAPI(t, in.URL)
	up.SetBehavior("", ghiblitest.Behavior{Status: 500})
	time.Sleep(400 * time.Millisecond) // past the TTL

	page := mustGet(t, in.URL+"/movies/")
	if page.status != 200 || !strings.Contains(page.body, "the Ghibli API is unreachable") {
		t.Fatalf("stale page: status %d, banner present %v", page.status, strings.Contains(page.body, "unreachable"))
	}
	if !strings.Contains(page.body, first.FetchedAt.UTC().Format("15:04:05")) {
		t.Errorf("stale banner does not give the data's time %s", first.FetchedAt.UTC().Format("15:04:05"))
	}
	if cc := page.header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("stale Cache-Control = %q, want no-store", cc)
	}
	api := mustGet(t, in.URL+"/api/v1/movies")
	var doc struct {
		Stale bool   `json:"stale"`
		Age   *int64 `json:"age_seconds"`
	}
	if err := json.Unmarshal([]byte(api.body), &doc); err != nil || !doc.Stale || doc.Age == nil {
		t.Errorf("stale API = %s, want stale and age_seconds", api.body)
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
		if time.Since(first.FetchedAt) > 300*time.Millisecond+3*time.Second+2*time.Second {
			t.Fatalf("still %d at %v past the fetch, want 503 past TTL+stale-if-error", r.status, time.Since(first.FetchedAt))
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
	in := mustStart(t, up.URL)
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
	in2 := mustStart(t, up.URL)
	if r := mustGet(t, in2.URL+"/movies/"); r.status != 503 || r.header.Get("Content-Security-Policy") != wantCSP {
		t.Errorf("503: status %d, CSP %q", r.status, r.header.Get("Content-Security-Policy"))
	}
}

func TestServer_RequestID(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	in := mustStart(t, up.URL)
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
	in := mustStart(t, up.URL, "-metrics-addr", "127.0.0.1:0")
	t.Cleanup(testClient.CloseIdleConnections)
	if r := mustGet(t, in.URL+"/metrics"); r.status != 404 {
		t.Errorf("/metrics on the main listener = %d, want 404", r.status)
	}
	var maddr string
	in.log.mu.Lock()
	for _, l := range in.log.lines {
		if l["msg"] == "listening" {
			maddr, _ = l["metrics_addr"].(string)
		}
	}
	in.log.mu.Unlock()
	if maddr == "" {
		t.Fatal("no metrics_addr logged")
	}
	mustGet(t, in.URL+"/movies/")
	if m := mustMetrics(t, "http://"+maddr); m["movies_cache_misses_total"] != 1 {
		t.Errorf("metrics listener: misses = %v, want 1", m["movies_cache_misses_total"])
	}
}

func TestServer_RecoversHandlerPanic(t *testing.T) {
	var logs strings.Builder
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg, func() metrics.CacheStats { return metrics.CacheStats{} })
	if err != nil {
		t.Fatal(err)
	}
	s := &server{log: slog.New(slog.NewTextHandler(&logs, nil)), metrics: m, ids: newIDSource(), securityHeaders: newSecurityHeaders()}
	e := s.routes(nil)
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
	t.Parallel()
	up := startFake(t)
	in := mustStart(t, up.URL)
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
