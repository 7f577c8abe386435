//go:build linux

// The soak and shutdown tests run the real binary as a separate process,
// so what they prove holds for what ships: its flags, its signal handling,
// its memory. They are Linux-only because they read /proc for the
// process's peak RSS and ask the kernel to kill the binary if the test
// process dies first (Pdeathsig), so a timed-out test leaves nothing behind.

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/movies-dev/movies/pkg/ghibli"
	"github.com/movies-dev/movies/pkg/ghibli/ghiblitest"
)

var soakFor = flag.Duration("soak", 10*time.Second, "how long TestSoak's clients run")

// startFake starts the in-process fake upstream over the bundled data.
func startFake(tb testing.TB) *ghiblitest.Server {
	tb.Helper()
	up := ghiblitest.NewServer(ghiblitest.Bundled())
	tb.Cleanup(up.Close)
	return up
}

// logCount counts the JSON log lines in out whose msg is msg.
func logCount(out, msg string) int {
	n := 0
	for line := range strings.Lines(out) {
		var rec struct{ Msg string }
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == msg {
			n++
		}
	}
	return n
}

// peakRSS is the process's peak resident set size (VmHWM), in bytes.
func (p *process) peakRSS() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmHWM in /proc status")
}

// scrapeGauge reads one unlabelled gauge from base's /metrics.
func scrapeGauge(c *http.Client, base, name string) (float64, error) {
	resp, err := c.Get(base + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("parse /metrics: %w", err)
	}
	f, ok := families[name]
	if !ok || len(f.GetMetric()) != 1 || f.GetMetric()[0].GetGauge() == nil {
		return 0, fmt.Errorf("/metrics has no gauge %s", name)
	}
	return f.GetMetric()[0].GetGauge().GetValue(), nil
}

// loopbackClient returns a client whose pool keeps a connection per
// concurrent caller, so load does not churn connections.
func loopbackClient(conns int) (*http.Client, *http.Transport) {
	tr := &http.Transport{MaxIdleConns: conns, MaxIdleConnsPerHost: conns, IdleConnTimeout: time.Minute}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}, tr
}

// soakPhase is one state of the flapping upstream.
type soakPhase struct {
	name          string
	films, people ghiblitest.Behavior
}

// soakPhases cycle with a healthy phase every few faults, so fresh data is
// served between outages. A 503 carries no Retry-After: the upstream's would
// stretch the server's backoff past the phase.
var soakPhases = []soakPhase{
	{name: "healthy"},
	{"latency300ms", ghiblitest.Behavior{Latency: 300 * time.Millisecond}, ghiblitest.Behavior{Latency: 300 * time.Millisecond}},
	{"latency700ms", ghiblitest.Behavior{Latency: 700 * time.Millisecond}, ghiblitest.Behavior{}},
	{"status500", ghiblitest.Behavior{Status: 500}, ghiblitest.Behavior{Status: 500}},
	{name: "healthy"},
	{"status503", ghiblitest.Behavior{}, ghiblitest.Behavior{Status: 503}},
	{"hang", ghiblitest.Behavior{Hang: true}, ghiblitest.Behavior{}},
	{name: "healthy"},
	{"malformed", ghiblitest.Behavior{Malformed: true}, ghiblitest.Behavior{}},
	{"truncated", ghiblitest.Behavior{}, ghiblitest.Behavior{Truncated: true}},
	{name: "healthy"},
	{"reset", ghiblitest.Behavior{ResetConn: true}, ghiblitest.Behavior{ResetConn: true}},
	{"huge", ghiblitest.Behavior{}, ghiblitest.Behavior{HugeBytes: 8 << 20}},
}

// markerTimeline is the fake's own record of its data: marker n was
// installed by the nth update, and ends[n] is a moment just after marker
// n+1 replaced it, so no upstream response carries n after ends[n].
type markerTimeline struct {
	mu   sync.Mutex
	ends []time.Time
}

// changeEvery installs a new marker every period until ctx ends: the
// upstream's data changing, as each freshness test needs it.
func (tl *markerTimeline) changeEvery(ctx context.Context, up *ghiblitest.Server, filmIndex int, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			tl.installNext(up, filmIndex)
		}
	}
}

// installNext writes the next marker into the first film's title.
func (tl *markerTimeline) installNext(up *ghiblitest.Server, filmIndex int) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	n := len(tl.ends) + 1
	up.Update(func(d *ghiblitest.Data) { d.Films[filmIndex]["title"] = fmt.Sprintf("Castle in the Sky #%d", n) })
	tl.ends = append(tl.ends, time.Now()) // after Update returned: n-1 is no longer served
}

// stale says what is wrong with a sighting, or "" if nothing is: a 200
// showing marker n for a request sent at t is stale if t - ends[n] >= ttl.
// It is sound: the fetch that brought n started before ends[n], the server
// may serve it only until that start plus the TTL, and t precedes the
// serving; a cache in between may only shorten that.
func (tl *markerTimeline) stale(s sighting, ttl time.Duration) string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return tl.staleLocked(s, ttl)
}

func (tl *markerTimeline) staleLocked(s sighting, ttl time.Duration) string {
	switch {
	case s.marker > len(tl.ends):
		return fmt.Sprintf("marker #%d was never installed (last #%d)", s.marker, len(tl.ends))
	case s.marker < len(tl.ends):
		if late := s.sent.Sub(tl.ends[s.marker]); late >= ttl {
			return fmt.Sprintf("marker #%d served to a request sent %v after the upstream replaced it (TTL %v)", s.marker, late.Round(time.Millisecond), ttl)
		}
	}
	return ""
}

// sighting is a 200 response showing marker, for a request sent at sent.
type sighting struct {
	marker int
	sent   time.Time
}

// castleID is the first film's id; its title carries the marker.
const castleID = "2baf70d1-42bb-4437-b551-e5fed5a87abe"

var (
	markerHTML      = regexp.MustCompile(`<h2>Castle in the Sky #(\d+)</h2>`)
	unavailableText = "Ghibli API could not be reached"
)

// soakTally is what the clients saw.
type soakTally struct {
	mu          sync.Mutex
	requests    int
	ok          int
	unavailable map[string]int // 503s by the fake's phase when sent
	sightings   []sighting
	violations  []string
}

func (s *soakTally) violate(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.violations = append(s.violations, fmt.Sprintf(format, args...))
}

// checkSoakResponse returns the marker a 200 response shows, or an error
// saying what is wrong with the response.
func checkSoakResponse(api bool, status int, h http.Header, body []byte) (marker int, err error) {
	switch {
	case status == http.StatusServiceUnavailable:
		if ra, err := strconv.Atoi(h.Get("Retry-After")); err != nil || ra < 1 {
			return 0, fmt.Errorf("503 with Retry-After %q", h.Get("Retry-After"))
		}
		if api {
			var doc struct {
				Error  string
				Status int
			}
			if h.Get("Content-Type") != "application/json" || json.Unmarshal(body, &doc) != nil ||
				doc.Status != 503 || !strings.Contains(doc.Error, unavailableText) {
				return 0, fmt.Errorf("unclean API 503 (%s): %.200s", h.Get("Content-Type"), body)
			}
			return -1, nil
		}
		if h.Get("Content-Type") != "text/html; charset=utf-8" || !bytes.Contains(body, []byte(unavailableText)) {
			return 0, fmt.Errorf("unclean 503 page (%s): %.200s", h.Get("Content-Type"), body)
		}
		return -1, nil
	case status != http.StatusOK:
		return 0, fmt.Errorf("status %d: %.200s", status, body)
	case api:
		var doc struct{ Movies []apiMovie }
		if err := json.Unmarshal(body, &doc); err != nil || len(doc.Movies) != 22 {
			return 0, fmt.Errorf("API 200 with %d movies (decode error %v)", len(doc.Movies), err)
		}
		for _, m := range doc.Movies {
			if m.ID == castleID {
				n, ok := strings.CutPrefix(m.Title, "Castle in the Sky #")
				if marker, err := strconv.Atoi(n); ok && err == nil {
					return marker, nil
				}
			}
		}
		return 0, errors.New("API 200 without a marker")
	default:
		if h.Get("Content-Type") != "text/html; charset=utf-8" {
			return 0, fmt.Errorf("200 page with Content-Type %q", h.Get("Content-Type"))
		}
		if n := bytes.Count(body, []byte("<article ")); n != 22 {
			return 0, fmt.Errorf("200 page with %d films, want 22", n)
		}
		if bytes.Contains(body, []byte("the Ghibli API is unreachable")) {
			return 0, errors.New("stale page with -stale-if-error off")
		}
		m := markerHTML.FindAllSubmatch(body, -1)
		if len(m) != 1 {
			return 0, fmt.Errorf("200 page with %d markers, want 1", len(m))
		}
		return strconv.Atoi(string(m[0][1]))
	}
}

// TestSoak runs many clients against the real binary while the fake
// upstream flaps through every fault it has and changes its data every
// 300ms, and proves from the fake's own timeline, not from anything the
// server says, that no page was older than the TTL. -soak sets how long.
func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("soak test in -short mode")
	}
	const (
		ttl             = time.Second
		upstreamTimeout = 500 * time.Millisecond
		clients         = 32
		thinkTime       = 10 * time.Millisecond // to 2x, between a client's requests
		markerEvery     = 300 * time.Millisecond
		maxGoroutines   = 1000
		maxRSS          = 200 << 20
		// Goroutines may stay this far above the baseline after the load
		// (the server's idle upstream connections).
		goroutineSlack = 10
		// Fetches are at least half the 250ms minimum backoff apart after a
		// failure, and further apart when healthy (one per refresh, ahead
		// of each TTL); each makes at most two attempts per endpoint (one
		// retry).
		maxAttemptsPerSecond = 2*(1000/125) + 2
	)
	up := startFake(t)
	filmIndex := slices.IndexFunc(ghiblitest.Bundled().Films, func(f map[string]any) bool { return f["id"] == castleID })
	var timeline markerTimeline
	up.Update(func(d *ghiblitest.Data) { d.Films[filmIndex]["title"] = "Castle in the Sky #0" })

	var attemptsMu sync.Mutex
	attempts := map[string][]time.Time{}
	up.OnRequest(func(r *http.Request) {
		now := time.Now()
		attemptsMu.Lock()
		attempts[r.URL.Path] = append(attempts[r.URL.Path], now)
		attemptsMu.Unlock()
	})

	p, url := startMovies(t, "movies", "-upstream", up.URL, "-ttl", ttl.String(), "-upstream-timeout", upstreamTimeout.String())
	client, tr := loopbackClient(clients)
	t.Cleanup(tr.CloseIdleConnections)
	metricsClient, mtr := loopbackClient(1)
	t.Cleanup(mtr.CloseIdleConnections)

	if r, err := client.Get(url + "/movies/"); err != nil {
		t.Fatal(err)
	} else {
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
		if r.StatusCode != http.StatusOK {
			t.Fatalf("first GET /movies/ = %d, want 200", r.StatusCode)
		}
	}
	baseline, err := scrapeGauge(metricsClient, url, "go_goroutines")
	if err != nil {
		t.Fatal(err)
	}

	tally := &soakTally{unavailable: map[string]int{}}
	var phase atomic.Int64 // index into soakPhases
	var maxG atomic.Int64
	maxG.Store(int64(baseline))
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), *soakFor)
	defer cancel()
	var wg sync.WaitGroup

	wg.Go(func() { // the flapping upstream
		for i := 0; ; i++ {
			ph := soakPhases[i%len(soakPhases)]
			up.SetBehavior(ghibli.EndpointFilms, ph.films)
			up.SetBehavior(ghibli.EndpointPeople, ph.people)
			phase.Store(int64(i % len(soakPhases)))
			timer := time.NewTimer(time.Second + rand.N(time.Second))
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case <-timer.C:
			}
		}
	})
	wg.Go(func() { // the changing data
		timeline.changeEvery(ctx, up, filmIndex, markerEvery)
	})
	wg.Go(func() { // the goroutine sampler
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				g, err := scrapeGauge(metricsClient, url, "go_goroutines")
				if err != nil {
					tally.violate("scrape /metrics: %v", err)
					continue
				}
				if int64(g) > maxG.Load() {
					maxG.Store(int64(g))
				}
			}
		}
	})
	for i := range clients {
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				path := "/movies/"
				if i%4 == 0 && n%2 == 1 { // a quarter of the clients alternate with the API
					path = "/api/v1/movies"
				}
				ph := soakPhases[phase.Load()].name
				sent := time.Now()
				resp, err := client.Get(url + path)
				var marker int
				if err == nil {
					var body []byte
					body, err = io.ReadAll(resp.Body)
					resp.Body.Close()
					if err == nil {
						marker, err = checkSoakResponse(path != "/movies/", resp.StatusCode, resp.Header, body)
					}
				}
				tally.mu.Lock()
				tally.requests++
				switch {
				case err != nil:
					tally.violations = append(tally.violations, fmt.Sprintf("GET %s in phase %s: %v", path, ph, err))
				case marker < 0:
					tally.unavailable[ph]++
				default:
					tally.ok++
					tally.sightings = append(tally.sightings, sighting{marker, sent})
				}
				tally.mu.Unlock()
				// A pause keeps the clients from starving the machine the
				// binary, the fake and the checker share: about 2000
				// requests a second still leave no millisecond unprobed.
				time.Sleep(thinkTime + rand.N(thinkTime))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	up.SetBehavior("", ghiblitest.Behavior{})

	tally.mu.Lock()
	timeline.mu.Lock()
	seen := map[int]bool{}
	for _, s := range tally.sightings {
		seen[s.marker] = true
		if v := timeline.staleLocked(s, ttl); v != "" {
			tally.violations = append(tally.violations, v)
		}
	}
	installed := len(timeline.ends) + 1
	timeline.mu.Unlock()
	tally.mu.Unlock()

	// Goroutines return to about the baseline once clients hang up.
	tr.CloseIdleConnections()
	var settled float64
	for deadline := time.Now().Add(10 * time.Second); ; {
		if settled, err = scrapeGauge(metricsClient, url, "go_goroutines"); err != nil {
			t.Fatal(err)
		}
		if settled <= baseline+goroutineSlack || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	rss, err := p.peakRSS()
	if err != nil {
		t.Fatal(err)
	}

	attemptsMu.Lock()
	films, people := attempts[ghibli.EndpointFilms], attempts[ghibli.EndpointPeople]
	slices.SortFunc(films, time.Time.Compare) // stamped before the lock: nearly sorted
	slices.SortFunc(people, time.Time.Compare)
	maxPerSecond := max(maxInWindow(films, time.Second), maxInWindow(people, time.Second))
	attemptsMu.Unlock()

	var phases []string
	unavailable := 0
	for _, ph := range soakPhases {
		if n, ok := tally.unavailable[ph.name]; ok {
			phases = append(phases, fmt.Sprintf("%s:%d", ph.name, n))
			unavailable += n
			delete(tally.unavailable, ph.name) // healthy comes more than once
		}
	}
	summary := fmt.Sprintf("soak: duration=%v requests=%d ok=%d 503=%d (by fake phase: %s) violations=%d upstream_attempts=films:%d people:%d max_per_s=%d peak_rss=%dMB max_goroutines=%d",
		elapsed.Round(time.Millisecond), tally.requests, tally.ok, unavailable, strings.Join(phases, " "), len(tally.violations),
		len(films), len(people), maxPerSecond, rss>>20, maxG.Load())
	t.Log(summary)
	fmt.Println(summary)
	t.Logf("markers installed %d, distinct markers served %d; goroutines baseline %v, after load %v", installed, len(seen), baseline, settled)

	if n := len(tally.violations); n > 0 {
		t.Errorf("%d violations, the first:\n%s", n, strings.Join(tally.violations[:min(n, 10)], "\n"))
	}
	if tally.ok == 0 || len(seen) < 2 {
		t.Errorf("%d pages showing %d distinct markers: the checker had nothing to check", tally.ok, len(seen))
	}
	if maxG.Load() >= maxGoroutines {
		t.Errorf("up to %d goroutines, want under %d", maxG.Load(), maxGoroutines)
	}
	if settled > baseline+goroutineSlack {
		t.Errorf("%v goroutines after the load, want about the %v before it", settled, baseline)
	}
	if rss >= maxRSS {
		t.Errorf("peak RSS %d MB, want under %d MB", rss>>20, maxRSS>>20)
	}
	if maxPerSecond > maxAttemptsPerSecond {
		t.Errorf("upstream saw up to %d attempts per second on one endpoint, want at most %d", maxPerSecond, maxAttemptsPerSecond)
	}
}

// maxInWindow is the most of the sorted times that fall in any window of
// length w.
func maxInWindow(times []time.Time, w time.Duration) int {
	best, j := 0, 0
	for i := range times {
		for times[i].Sub(times[j]) >= w {
			j++
		}
		best = max(best, i-j+1)
	}
	return best
}

// tracedRequest records, for one client request, each connection the
// transport used for it: the transport retries an idempotent request on
// another connection when a reused one fails, and the trace is the only
// place that shows the failed attempt.
type tracedRequest struct {
	mu       sync.Mutex
	attempts []connAttempt
}

type connAttempt struct {
	got, wrote time.Time
}

func (r *tracedRequest) trace() *httptrace.ClientTrace {
	return &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.attempts = append(r.attempts, connAttempt{got: time.Now()})
		},
		WroteRequest: func(httptrace.WroteRequestInfo) {
			r.mu.Lock()
			defer r.mu.Unlock()
			if n := len(r.attempts); n > 0 && r.attempts[n-1].wrote.IsZero() {
				r.attempts[n-1].wrote = time.Now()
			}
		},
	}
}

// sent is when the attempt's request was on the wire.
func (a connAttempt) sent() time.Time {
	if a.wrote.IsZero() {
		return a.got
	}
	return a.wrote
}

// shutdownResult is one client request of TestShutdownUnderLoad.
type shutdownResult struct {
	start, end time.Time
	status     int
	err        error
	attempts   []connAttempt
}

// readyzPoll is one probe of /readyz on a new connection.
type readyzPoll struct {
	sent   time.Time
	end    time.Time
	status int
	err    error
}

func isRefused(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial" && errors.Is(err, syscall.ECONNREFUSED)
}

// TestShutdownUnderLoad sends SIGTERM to the real binary while 64 clients
// hammer it: /readyz turns 503 while the listener still accepts, every
// request the server had taken completes with 200, and the process exits 0
// in time.
//
// Under steady load the cache refreshes ahead of expiry and nobody waits on
// the upstream, so the clients pause for longer than the TTL around the
// SIGTERM and resume during the drain delay: the snapshot has expired, they
// all wait on one slow fetch, and shutdown begins in the middle of it.
//
// A keep-alive connection the server closes as idle may carry a request it
// never read; the transport retries that request, and once the listener is
// closed the retry is refused. HTTP allows this, so it does not count
// against the server, but a request cut in flight looks the same on the
// wire. What tells them apart is time: the server reads a request within
// moments of its arrival, so one that was on the wire cutMargin before the
// listener closed had been taken, and any failure of it is a cut. The
// waiters were sent about intoFetch before shutdown, well past the margin.
func TestShutdownUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("shutdown load test in -short mode")
	}
	const (
		clients = 64
		// The TTL leaves the fetch a 1s timeout: on a busy machine a 300ms
		// fetch must not time out into a 503 that has nothing to do with
		// shutdown.
		ttl             = 2 * time.Second
		latency         = 300 * time.Millisecond
		drainDelay      = 500 * time.Millisecond
		shutdownTimeout = 5 * time.Second
		cutMargin       = 100 * time.Millisecond
		// How far into the waiters' fetch shutdown should begin.
		intoFetch = 200 * time.Millisecond
	)
	up := startFake(t)
	up.SetBehavior("", ghiblitest.Behavior{Latency: latency})
	p, url := startMovies(t, "movies", "-upstream", up.URL, "-ttl", ttl.String(), "-upstream-timeout", (ttl / 2).String(),
		"-drain-delay", drainDelay.String(), "-shutdown-timeout", shutdownTimeout.String())
	client, tr := loopbackClient(clients)
	t.Cleanup(tr.CloseIdleConnections)
	pollTransport := &http.Transport{DisableKeepAlives: true}
	t.Cleanup(pollTransport.CloseIdleConnections)
	poller := &http.Client{Transport: pollTransport, Timeout: 10 * time.Second}

	var (
		paused atomic.Bool
		resume = make(chan struct{})
		stop   = make(chan struct{})
		mu     sync.Mutex
		reqs   []shutdownResult
		polls  []readyzPoll
		wg     sync.WaitGroup
	)
	for range clients {
		wg.Go(func() {
			for {
				if paused.Load() {
					select {
					case <-resume:
					case <-stop:
						return
					}
				}
				select {
				case <-stop:
					return
				default:
				}
				rec := &tracedRequest{}
				req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), rec.trace()), "GET", url+"/movies/", nil)
				res := shutdownResult{start: time.Now()}
				resp, err := client.Do(req)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					res.status = resp.StatusCode
				}
				res.end, res.err = time.Now(), err
				rec.mu.Lock()
				res.attempts = slices.Clone(rec.attempts)
				rec.mu.Unlock()
				mu.Lock()
				reqs = append(reqs, res)
				mu.Unlock()
				if isRefused(err) {
					time.Sleep(5 * time.Millisecond) // no busy loop on a closed port
				}
			}
		})
	}
	wg.Go(func() { // the load balancer's view: /readyz on new connections
		for {
			select {
			case <-stop:
				return
			default:
			}
			poll := readyzPoll{sent: time.Now()}
			resp, err := poller.Get(url + "/readyz")
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				poll.status = resp.StatusCode
			}
			poll.end, poll.err = time.Now(), err
			mu.Lock()
			polls = append(polls, poll)
			mu.Unlock()
			if isRefused(err) {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	})

	// A second of load; a pause a little over the TTL, with the SIGTERM in
	// it; load again, into a fetch that is still running when the drain
	// delay ends.
	time.Sleep(time.Second)
	paused.Store(true)
	resumeAt := time.Now().Add(ttl + 200*time.Millisecond)
	time.Sleep(time.Until(resumeAt.Add(intoFetch - drainDelay)))
	sigterm := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(resumeAt))
	paused.Store(false)
	close(resume)
	exitWithin := drainDelay + shutdownTimeout + 3*time.Second
	select {
	case <-p.done:
	case <-time.After(exitWithin):
		t.Errorf("still running %v after SIGTERM", exitWithin)
	}
	exitAfter := time.Since(sigterm)
	close(stop)
	wg.Wait()
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit status %d after SIGTERM, want 0\n%s", code, tail(p.out.String(), 4000))
	}
	if logCount(p.out.String(), "stopped") != 1 {
		t.Errorf("no %q log line", "stopped")
	}

	// The readiness timeline: 200, then 503 while still accepting for the
	// drain delay, then refused.
	var first503, lastAnswered, firstRefused time.Time
	for _, poll := range polls {
		switch {
		case poll.err == nil && poll.status == http.StatusOK:
			if !first503.IsZero() {
				t.Errorf("/readyz 200 at %v, after it had turned 503", poll.sent.Sub(sigterm))
			}
			lastAnswered = poll.sent
		case poll.err == nil && poll.status == http.StatusServiceUnavailable:
			if poll.end.Before(sigterm) {
				t.Errorf("/readyz 503 before SIGTERM")
			}
			if first503.IsZero() {
				first503 = poll.sent
			}
			lastAnswered = poll.sent
		case poll.err == nil:
			t.Errorf("/readyz answered %d", poll.status)
		case isRefused(poll.err):
			firstRefused = poll.sent
		case first503.IsZero():
			t.Errorf("/readyz before shutdown: %v", poll.err)
		}
	}
	if first503.IsZero() || firstRefused.IsZero() {
		t.Fatalf("/readyz never turned 503 (%v) or was never refused (%v) in %d polls", !first503.IsZero(), !firstRefused.IsZero(), len(polls))
	}
	if d := lastAnswered.Sub(sigterm); d < drainDelay/2 {
		t.Errorf("listener answered only %v after SIGTERM, want about the %v drain delay", d, drainDelay)
	}

	// Every request the server had taken completed with 200.
	var ok, afterSIGTERM, refused, raced, inFlight int
	var cuts []string
	takenBy := lastAnswered.Add(-cutMargin) // the listener was open until at least lastAnswered
	for _, r := range reqs {
		failed := r.attempts
		if r.err == nil && len(failed) > 0 {
			failed = failed[:len(failed)-1] // the last attempt was answered
		}
		for _, a := range failed {
			if a.sent().Before(takenBy) {
				cuts = append(cuts, fmt.Sprintf("request sent %v before the listener closed failed on its connection (final error, after %d connections: %v)",
					lastAnswered.Sub(a.sent()).Round(time.Millisecond), len(r.attempts), r.err))
			} else {
				raced++
			}
		}
		switch {
		case r.err == nil && r.status == http.StatusOK:
			ok++
			if r.start.After(sigterm) {
				afterSIGTERM++
			}
			if n := len(r.attempts); n > 0 && r.attempts[n-1].sent().Before(takenBy) && r.end.After(firstRefused) {
				inFlight++
			}
		case r.err == nil:
			cuts = append(cuts, fmt.Sprintf("request sent %v after SIGTERM answered %d", r.start.Sub(sigterm).Round(time.Millisecond), r.status))
		case isRefused(r.err):
			refused++
			if r.start.Before(first503) {
				cuts = append(cuts, fmt.Sprintf("connection refused before /readyz turned 503: %v", r.err))
			}
		case len(r.attempts) == 0:
			cuts = append(cuts, fmt.Sprintf("request failed without a connection: %v", r.err))
		}
	}
	summary := fmt.Sprintf("shutdown: requests=%d ok=%d ok_after_sigterm=%d in_flight_at_close=%d refused=%d raced_idle_close=%d cut=%d readyz_503_for=%v exit=%d after=%v",
		len(reqs), ok, afterSIGTERM, inFlight, refused, raced, len(cuts),
		firstRefused.Sub(first503).Round(time.Millisecond), p.cmd.ProcessState.ExitCode(), exitAfter.Round(time.Millisecond))
	t.Log(summary)
	fmt.Println(summary)
	if len(cuts) > 0 {
		t.Errorf("%d requests the server had taken did not complete with 200, the first:\n%s", len(cuts), strings.Join(cuts[:min(len(cuts), 10)], "\n"))
	}
	if inFlight == 0 {
		t.Errorf("no request was in flight when the listener closed: the test proved nothing")
	}
}
