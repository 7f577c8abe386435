package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/goleak"

	"github.com/movies-dev/movies/pkg/ghibli"
	"github.com/movies-dev/movies/pkg/ghibli/ghiblitest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// logSink collects the program's JSON log lines and reports the address it
// listens on.
type logSink struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	lines []map[string]any
	addr  chan string
}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	for {
		line, err := l.buf.ReadBytes('\n')
		if err != nil {
			l.buf.Write(line) // incomplete: keep for the next write
			break
		}
		var rec map[string]any
		if json.Unmarshal(line, &rec) == nil {
			l.lines = append(l.lines, rec)
			if rec["msg"] == "listening" {
				l.addr <- rec["addr"].(string)
			}
		}
	}
	return len(p), nil
}

// count returns how many log lines have the given message.
func (l *logSink) count(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.lines {
		if r["msg"] == msg {
			n++
		}
	}
	return n
}

// instance is the real program, started by run on a loopback port.
type instance struct {
	URL    string
	log    *logSink
	cancel context.CancelFunc
	done   chan struct{} // closed when run returns
	err    error         // what run returned; read after done
}

// stop sends the equivalent of SIGTERM and waits for run to return.
func (in *instance) stop(t testing.TB) error {
	t.Helper()
	in.cancel()
	select {
	case <-in.done:
		return in.err
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return 30s after its context ended")
		return nil
	}
}

// mustStart runs the program against upstream with extra flags.
func mustStart(tb testing.TB, upstream string, args ...string) *instance {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	in := &instance{log: &logSink{addr: make(chan string, 1)}, cancel: cancel, done: make(chan struct{})}
	args = append([]string{"-addr", "127.0.0.1:0", "-upstream", upstream, "-log-format", "json"}, args...)
	go func() {
		defer close(in.done)
		in.err = run(ctx, args, func(string) string { return "" }, in.log)
	}()
	select {
	case addr := <-in.log.addr:
		in.URL = "http://" + addr
	case <-in.done:
		cancel()
		tb.Fatalf("run() = %v before listening", in.err)
	case <-time.After(10 * time.Second):
		cancel()
		tb.Fatal("run did not start listening within 10s")
	}
	tb.Cleanup(func() {
		cancel()
		<-in.done
	})
	return in
}

// startFake starts a fake upstream over the bundled data.
func startFake(tb testing.TB) *ghiblitest.Server {
	tb.Helper()
	up := ghiblitest.NewServer(ghiblitest.Bundled())
	tb.Cleanup(up.Close)
	return up
}

type response struct {
	status int
	header http.Header
	body   string
}

var testClient = &http.Client{
	Timeout: 30 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

func mustDo(tb testing.TB, method, url string) response {
	tb.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		tb.Fatal(err)
	}
	resp, err := testClient.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return response{resp.StatusCode, resp.Header, string(b)}
}

func mustGet(tb testing.TB, url string) response { tb.Helper(); return mustDo(tb, http.MethodGet, url) }

func TestServer_Routes(t *testing.T) {
	up := startFake(t)
	in := mustStart(t, up.URL)
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
		{"GET", "/api/v1/movies", 200, "application/json", `"fetched_at"`, nil},
		{"GET", "/healthz", 200, "text/plain; charset=UTF-8", "ok", nil},
		{"GET", "/readyz", 200, "text/plain; charset=UTF-8", "ok", nil},
		{"GET", "/metrics", 200, "text/plain", "movies_cache_hits_total", nil},
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

// apiMovies is the JSON document of /api/v1/movies.
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
	up := startFake(t)
	in := mustStart(t, up.URL)
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
	if d := doc.FetchedAt.Sub(before); d < -time.Second || d > 10*time.Second {
		t.Errorf("fetched_at = %v, want about %v (the fetch this request caused)", doc.FetchedAt, before)
	}

	page := mustGet(t, in.URL+"/movies/").body
	for _, want := range []string{"<!doctype html>", "Grave of the Fireflies", "No people listed for this film.", "Pazu", "Hayao Miyazaki",
		doc.FetchedAt.UTC().Format(time.RFC3339)} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
}

func TestServer_CoalescesColdRequests(t *testing.T) {
	up := startFake(t)
	// A slow upstream keeps the flight open while all 64 requests arrive.
	up.SetBehavior("", ghiblitest.Behavior{Latency: 300 * time.Millisecond})
	in := mustStart(t, up.URL)
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

// TestServer_ServesChangedDataAfterTTL checks the freshness promise from the
// client's side: every page was fetched less than a TTL before it was served,
// and a change upstream shows once the TTL has passed.
func TestServer_ServesChangedDataAfterTTL(t *testing.T) {
	const ttl = 500 * time.Millisecond
	up := startFake(t)
	in := mustStart(t, up.URL, "-ttl", ttl.String(), "-upstream-timeout", "250ms")
	t.Cleanup(testClient.CloseIdleConnections)

	first := mustAPI(t, in.URL)
	changed := time.Now()
	up.Update(func(d *ghiblitest.Data) { d.Films[0]["title"] = "Castle in the Sky (restored)" })

	deadline := time.Now().Add(10 * time.Second)
	for {
		asked := time.Now()
		doc := mustAPI(t, in.URL)
		if age := asked.Sub(doc.FetchedAt); age >= ttl+time.Second {
			// fetched_at has second precision; anything beyond a TTL plus that is a broken promise.
			t.Fatalf("served data fetched at %v at %v: older than the TTL", doc.FetchedAt, asked)
		}
		// From the fake's side: the old data stopped being served upstream
		// at changed, so a request sent a TTL later must not see it.
		if doc.Movies[0].Title != "Castle in the Sky (restored)" && asked.Sub(changed) >= ttl {
			t.Fatalf("request sent %v after the upstream changed still got the old data", asked.Sub(changed))
		}
		if doc.Movies[0].Title == "Castle in the Sky (restored)" {
			if doc.FetchedAt.Before(first.FetchedAt) || doc.FetchedAt.Before(changed.Truncate(time.Second)) {
				t.Errorf("new data claims fetched_at %v, before the change at %v", doc.FetchedAt, changed)
			}
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
			in := mustStart(t, up.URL, "-upstream-timeout", timeout.String(), "-ttl", (2 * timeout).String())
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
	up := startFake(t)
	up.Update(func(d *ghiblitest.Data) {
		for _, p := range d.People {
			if p["name"] == "Pazu" {
				p["name"] = `<script>alert("pazu")</script>`
			}
		}
		d.Films[0]["title"] = `<img src=x onerror=alert(1)>`
	})
	in := mustStart(t, up.URL)
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

// mustMetrics scrapes /metrics into "name{labels}" -> value.
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
			key := name
			if len(m.GetLabel()) > 0 {
				var ls []string
				for _, l := range m.GetLabel() {
					ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
				}
				key += "{" + strings.Join(ls, ",") + "}"
			}
			switch {
			case m.GetCounter() != nil:
				out[key] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				out[key] = m.GetGauge().GetValue()
			}
		}
	}
	return out
}

func TestServer_MetricsMatchTraffic(t *testing.T) {
	up := startFake(t)
	in := mustStart(t, up.URL)
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

func TestRun_GracefulShutdown(t *testing.T) {
	up := startFake(t)
	up.SetBehavior("", ghiblitest.Behavior{Latency: 500 * time.Millisecond})
	in := mustStart(t, up.URL, "-drain-delay", "2s")
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
		t.Errorf("run() = %v, want nil after a graceful shutdown", err)
	}
}

func TestRun_Builtin(t *testing.T) {
	in := mustStart(t, "builtin")
	t.Cleanup(testClient.CloseIdleConnections)
	doc := mustAPI(t, in.URL)
	if len(doc.Movies) != 22 {
		t.Errorf("builtin upstream: %d movies, want 22", len(doc.Movies))
	}
	if err := in.stop(t); err != nil {
		t.Errorf("run() = %v", err)
	}
}

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string // substring; "" means valid
		check   func(t *testing.T, c config)
	}{
		{name: "defaults", check: func(t *testing.T, c config) {
			if c.addr != ":8000" || c.upstream != ghibli.DefaultBaseURL || c.ttl != time.Minute || c.upstreamTimeout != 10*time.Second || c.logFormat != "text" {
				t.Errorf("defaults = %+v", c)
			}
		}},
		{name: "env fallback", env: map[string]string{"MOVIES_ADDR": "127.0.0.1:9", "MOVIES_TTL": "30s", "MOVIES_UPSTREAM": "builtin", "MOVIES_LOG_FORMAT": "json"},
			check: func(t *testing.T, c config) {
				if c.addr != "127.0.0.1:9" || c.ttl != 30*time.Second || c.upstream != "builtin" || c.logFormat != "json" {
					t.Errorf("config = %+v, want the environment's values", c)
				}
			}},
		{name: "flag beats env", args: []string{"-ttl", "30s"}, env: map[string]string{"MOVIES_TTL": "45s"},
			check: func(t *testing.T, c config) {
				if c.ttl != 30*time.Second {
					t.Errorf("ttl = %v, want the flag's 30s", c.ttl)
				}
			}},
		{name: "ftp upstream", args: []string{"-upstream", "ftp://x"}, wantErr: `invalid -upstream "ftp://x"`},
		{name: "upstream without host", args: []string{"-upstream", "http://"}, wantErr: "invalid -upstream"},
		{name: "ttl above the promise", args: []string{"-ttl", "2m"}, wantErr: "invalid -ttl 2m0s"},
		{name: "zero ttl", args: []string{"-ttl", "0s"}, wantErr: "invalid -ttl"},
		{name: "timeout above ttl", args: []string{"-ttl", "5s", "-upstream-timeout", "10s"}, wantErr: "invalid -upstream-timeout"},
		{name: "bad duration", args: []string{"-ttl", "soon"}, wantErr: "-ttl"},
		{name: "bad env duration", env: map[string]string{"MOVIES_UPSTREAM_TIMEOUT": "x"}, wantErr: "MOVIES_UPSTREAM_TIMEOUT"},
		{name: "bad addr", args: []string{"-addr", "8000"}, wantErr: "invalid -addr"},
		{name: "bad log format", args: []string{"-log-format", "xml"}, wantErr: "invalid -log-format"},
		{name: "bad log level", args: []string{"-log-level", "loud"}, wantErr: "invalid -log-level"},
		{name: "unknown flag", args: []string{"-colour"}, wantErr: "colour"},
		{name: "stray argument", args: []string{"serve"}, wantErr: "unexpected argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseConfig(tt.args, func(k string) string { return tt.env[k] }, io.Discard)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("parseConfig() error = %v", err)
				}
				tt.check(t, c)
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("parseConfig() error = %v, want one naming %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
		})
	}
}

func TestRun_BadFlagFailsFast(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), []string{"-upstream", "ftp://x"}, func(string) string { return "" }, &out)
	if err == nil || !strings.Contains(err.Error(), "-upstream") {
		t.Errorf("run() = %v, want an error naming -upstream", err)
	}
}

func TestRun_Help(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), []string{"-h"}, func(string) string { return "" }, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("run(-h) = %v, want flag.ErrHelp", err)
	}
	sc := bufio.NewScanner(&out)
	var flags int
	for sc.Scan() {
		if strings.HasPrefix(strings.TrimSpace(sc.Text()), "-") {
			flags++
		}
	}
	if flags != 11 { // every flag in config.go
		t.Errorf("usage lists %d flags, want all of them:\n%s", flags, out.String())
	}
}

func TestRun_Healthcheck(t *testing.T) {
	in := mustStart(t, "builtin")
	t.Cleanup(testClient.CloseIdleConnections)
	addr := strings.TrimPrefix(in.URL, "http://")
	noEnv := func(string) string { return "" }
	if err := run(context.Background(), []string{"-healthcheck", "-addr", addr}, noEnv, io.Discard); err != nil {
		t.Errorf("healthcheck of a running server = %v, want nil", err)
	}
	if err := in.stop(t); err != nil {
		t.Fatal(err)
	}
	err := run(context.Background(), []string{"-healthcheck", "-addr", addr}, noEnv, io.Discard)
	if err == nil || exitCode(err) != 1 {
		t.Errorf("healthcheck of a stopped server = %v (exit %d), want an error and exit 1", err, exitCode(err))
	}
}

// TestRun_ShutdownEndsUnwantedFetch: an early refresh still running at
// shutdown serves nobody; it is cancelled rather than holding the exit for
// the upstream timeout.
func TestRun_ShutdownEndsUnwantedFetch(t *testing.T) {
	up := startFake(t)
	in := mustStart(t, up.URL, "-ttl", "4s", "-upstream-timeout", "2s")
	t.Cleanup(testClient.CloseIdleConnections)
	mustAPI(t, in.URL)
	up.SetBehavior("", ghiblitest.Behavior{Hang: true})
	// Hits until one falls in the refresh window and starts a refresh,
	// which then hangs upstream.
	before := up.Requests("")
	for deadline := time.Now().Add(10 * time.Second); up.Requests("") == before; time.Sleep(50 * time.Millisecond) {
		if r := mustGet(t, in.URL+"/movies/"); r.status != 200 {
			t.Fatalf("status %d inside the TTL", r.status)
		}
		if time.Now().After(deadline) {
			t.Fatal("no early refresh within 10s")
		}
	}
	if err := in.stop(t); err != nil {
		t.Fatalf("run() = %v", err)
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
