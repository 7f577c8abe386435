package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Targets of the scale run at 20 replicas (issue 16).
const (
	targetReplicas         = 20
	targetReadsPerCommit   = 1.0
	targetRendersPerCommit = 1.0
	targetIdlePerReplica   = 1.0 // Redis commands per replica per second
	targetBackwardsGrace   = 50 * time.Millisecond
	designFetchesPerWindow = 2 // one per TTL plus at most one early refresh (docs/fleet.md)
	rendersMetric          = "movies_renders_total"
	fleetReadsMetric       = "movies_fleet_reads_total"
)

type scaleFlags struct {
	ns                             string
	duration, warmup, idle, settle time.Duration
	rate                           float64
	ttl, changeEvery, latency      time.Duration
}

func setupScale(fs *flag.FlagSet) func(context.Context, *env) error {
	f := &scaleFlags{}
	fs.StringVar(&f.ns, "n", "1,10,20", "replica counts, one row each")
	fs.DurationVar(&f.duration, "duration", 30*time.Second, "the measured load of each row")
	fs.DurationVar(&f.warmup, "warmup", 4*time.Second, "load before the measurement starts (start-up reads and fetches are not counted)")
	fs.DurationVar(&f.idle, "idle", 5*time.Second, "the idle measurement after the load: no client traffic")
	fs.DurationVar(&f.settle, "settle", time.Second, "pause between the load and the idle measurement")
	fs.Float64Var(&f.rate, "rate", 200, "client requests per second, round robin over the replicas")
	fs.DurationVar(&f.ttl, "ttl", 4*time.Second, "the replicas' -ttl")
	fs.DurationVar(&f.changeEvery, "change-every", 300*time.Millisecond, "how often the fake upstream's data changes")
	fs.DurationVar(&f.latency, "upstream-latency", 0, "how long the fake upstream takes to answer")
	return func(ctx context.Context, e *env) error { return runScale(ctx, e, f) }
}

// parseCounts reads "1,10,20".
func parseCounts(s string) ([]int, error) {
	var out []int
	for _, p := range splitList(s) {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%w: %q is not a replica count", errUsage, p)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no replica counts", errUsage)
	}
	return out, nil
}

// scaleRow is one replica count's figures.
type scaleRow struct {
	n                  int
	requests, failed   int
	failures           []string
	fetches, maxWindow int
	minGap             time.Duration
	perWindow          float64
	load, idle         redisDelta
	reads, renders     float64 // per replica per commit; renders < 0: n/a
	readHits           float64
	lags               []commitLag
	back0, back50      int
	resolution         time.Duration
}

func runScale(ctx context.Context, e *env, f *scaleFlags) error {
	ns, err := parseCounts(f.ns)
	if err != nil {
		return err
	}
	if f.rate <= 0 || f.duration <= 0 || f.ttl <= 0 || f.changeEvery <= 0 {
		return fmt.Errorf("%w: -rate, -duration, -ttl and -change-every must be positive", errUsage)
	}
	e.logf("building ./cmd/movies")
	if _, err := e.build("./cmd/movies"); err != nil {
		return err
	}
	r, err := e.startRedis()
	if err != nil {
		return err
	}
	defer r.close(e)
	fake, err := startMarkerFake(f.changeEvery, f.latency)
	if err != nil {
		return err
	}
	defer fake.close()

	e.header("movies scale benchmark: N replicas on one redis-server", "redis-server")
	e.printf("- each row: N `movies -ttl %s -redis` processes on one redis-server (--save '' --appendonly no), the fake upstream in the benchmark's process changing a film title every %s (upstream latency %s), %.0f req/s of GET /movies/ round robin over the replicas from the benchmark's own client: %s of load before %s measured, then %s idle after a %s pause\n",
		f.ttl, f.changeEvery, f.latency, f.rate, f.warmup, f.duration, f.idle, f.settle)
	e.printf("- fetches: /films requests the fake received; commits: the same count (each fetch commits once when nothing fails). Redis commands: client commands (EVALSHA, EVAL, PING, SUBSCRIBE) from INFO commandstats deltas; in brackets, every command Redis ran, those inside the scripts included\n")
	e.printf("- lag: from the fake's answer to a fetch to every replica serving its marker (or a newer one), seen in the load's own responses: an upper bound, by up to N/rate (one request per replica); it includes the wait the fleet makes on purpose (a snapshot fetched ahead is served from the served one's deadline less a second, on every replica at once), which the spread (first replica to last) leaves out; backwards: a page older than one the fleet had already served to a request sent more than the grace before\n\n")

	var rows []scaleRow
	for _, n := range ns {
		if err := ctx.Err(); err != nil {
			return err
		}
		e.logf("scale: %d replica(s)", n)
		row, err := scaleOnce(ctx, e, f, r, fake, n)
		if err != nil {
			return err
		}
		rows = append(rows, row)
	}

	e.printf("| replicas | requests (failed) | fetches per TTL window (design <= %d; closest two) | Redis commands/s under load | idle | idle per replica | snapshot reads per replica per commit | renders per replica per commit | commit to all: p50 / max (first to last replica, max) | backwards pages, 0 ms / 50 ms grace | Redis CPU under load |\n", designFetchesPerWindow)
	e.printf("|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, row := range rows {
		e.printf("| %d | %d (%d) | %.2f (%s) | %s | %s | %s | %.2f | %s | %s | %d / %d | %.1f %% |\n",
			row.n, row.requests, row.failed, row.perWindow, roundMs(row.minGap),
			callsPerSecond(row.load), callsPerSecond(row.idle), perReplica(row.idle, row.n),
			row.reads, rendersText(row.renders), lagText(row.lags), row.back0, row.back50, row.load.cpuPercent())
		if row.n == targetReplicas {
			e.printf("| target at %d | | %d | | | <= %.0f | %.0f | %.0f | | 0 with a 50 ms grace | |\n",
				targetReplicas, designFetchesPerWindow, targetIdlePerReplica, targetReadsPerCommit, targetRendersPerCommit)
		}
	}
	e.printf("\n")
	for _, row := range rows {
		e.printf("- %d replica(s): %d fetches in the measured %s; commands under load: %s; idle: %s", row.n, row.fetches, f.duration,
			formatCalls(row.load.calls), formatCalls(row.idle.calls))
		if unserved := countUnserved(row.lags); unserved > 0 {
			e.printf("; %d of %d commits not served by every replica before the load ended", unserved, len(row.lags))
		}
		e.printf("; snapshot read hits per replica per commit %.2f; lag resolution %s\n", row.readHits, row.resolution)
		for _, fl := range row.failures {
			e.printf("  - failed: %s\n", fl)
		}
	}
	for _, row := range rows {
		if row.n != targetReplicas {
			continue
		}
		idle := clientCalls(row.idle.calls)
		idlePer := float64(idle) / row.idle.span.Seconds() / float64(row.n)
		e.printf("\n## Targets at %d replicas\n\n", targetReplicas)
		if row.renders < 0 {
			e.printf("- n/a renders per replica per commit: the replicas export no %s\n", rendersMetric)
		} else {
			e.printf("- %s renders per replica per commit: %.2f (target %.0f)\n", verdict(row.renders <= targetRendersPerCommit+0.05), row.renders, targetRendersPerCommit)
		}
		e.printf("- %s snapshot reads per replica per commit: %.2f (target %.0f)\n", verdict(row.reads <= targetReadsPerCommit+0.05), row.reads, targetReadsPerCommit)
		e.printf("- %s idle Redis commands per replica per second: %.2f (target <= %.0f)\n", verdict(idlePer <= targetIdlePerReplica), idlePer, targetIdlePerReplica)
		e.printf("- %s backwards pages with a 50 ms grace: %d (target 0)\n", verdict(row.back50 == 0), row.back50)
		e.printf("- %s fetches per TTL window: %.2f (design <= %d: one per TTL and one early refresh, at least TTL/2 apart less a read's latency; the closest two were %s apart, and %d fell in the busiest %s)\n",
			verdict(row.perWindow <= designFetchesPerWindow+0.05), row.perWindow, designFetchesPerWindow, roundMs(row.minGap), row.maxWindow, f.ttl)
	}
	e.printf("\nLoad average at the end: %s\n", loadAvg())
	return nil
}

// clientCalls are the calls that are round trips from a client: the fleet
// sends only scripts, and its subscription's SUBSCRIBE and PINGs; every
// other command in commandstats ran inside a script.
func clientCalls(calls map[string]int64) int64 {
	var n int64
	for k, v := range calls {
		switch {
		case k == "evalsha", k == "eval", k == "evalsha_ro", k == "eval_ro", k == "ping", k == "subscribe", k == "unsubscribe", strings.HasPrefix(k, "script|"):
			n += v
		}
	}
	return n
}

func callsPerSecond(d redisDelta) string {
	if d.span <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1f [%.0f]", float64(clientCalls(d.calls))/d.span.Seconds(), d.perSecond())
}

func perReplica(d redisDelta, n int) string {
	if d.span <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", float64(clientCalls(d.calls))/d.span.Seconds()/float64(n))
}

func rendersText(r float64) string {
	if r < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", r)
}

func lagText(lags []commitLag) string {
	var d []time.Duration
	for _, l := range lags {
		if l.allServedIt {
			d = append(d, l.toAll)
		}
	}
	if len(d) == 0 {
		return "n/a"
	}
	var spread time.Duration
	for _, l := range lags {
		if l.allServedIt {
			spread = max(spread, l.spread)
		}
	}
	return fmt.Sprintf("%s / %s (%s)", roundMs(percentile(d, 50)), roundMs(slices.Max(d)), roundMs(spread))
}

func countUnserved(lags []commitLag) int {
	n := 0
	for _, l := range lags {
		if !l.allServedIt {
			n++
		}
	}
	return n
}

func roundMs(d time.Duration) string {
	if d >= time.Second {
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
	return fmt.Sprintf("%d ms", d.Milliseconds())
}

// scaleOnce runs one row: n replicas, the load, the idle stretch.
func scaleOnce(ctx context.Context, e *env, f *scaleFlags, r *benchRedis, fake *markerFake, n int) (scaleRow, error) {
	row := scaleRow{n: n, renders: -1}
	// Each row is a fleet of its own: nothing of the last one's in Redis.
	if err := r.client.FlushAll(ctx).Err(); err != nil {
		return row, err
	}
	procs := make([]*proc, n)
	urls := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			procs[i], urls[i], errs[i] = e.startMovies(fmt.Sprintf("r%d-of-%d", i+1, n), "-upstream", fake.URL, "-ttl", f.ttl.String(), "-redis", r.url)
		})
	}
	wg.Wait()
	defer func() {
		var stop sync.WaitGroup
		for _, p := range procs {
			if p != nil {
				stop.Go(func() { e.stopProc(p) })
			}
		}
		stop.Wait()
	}()
	for _, err := range errs {
		if err != nil {
			return row, err
		}
	}

	lg := newLoadGen(urls, f.rate)
	start := time.Now()
	measureFrom := start.Add(f.warmup)
	end := measureFrom.Add(f.duration)
	loadDone := make(chan struct{})
	go func() { defer close(loadDone); lg.run(ctx, start, end) }()

	if err := sleep(ctx, time.Until(measureFrom)); err != nil {
		<-loadDone
		return row, err
	}
	fetchIdx := fake.fetchCount()
	redisBefore, err := r.sample(ctx)
	if err != nil {
		<-loadDone
		return row, err
	}
	before := scrapeAll(urls)
	<-loadDone
	if err := ctx.Err(); err != nil {
		return row, err
	}
	redisAfter, err := r.sample(ctx)
	if err != nil {
		return row, err
	}
	after := scrapeAll(urls)
	row.load = deltaOf(redisBefore, redisAfter)

	// Idle: no client traffic at all.
	if row.idle, err = r.idle(ctx, f.settle, f.idle); err != nil {
		return row, err
	}

	var fetches []fetchRecord
	var times []time.Time
	for _, fr := range fake.fetchesSince(fetchIdx) {
		if fr.at.Before(end) {
			fetches = append(fetches, fr)
			times = append(times, fr.at)
		}
	}
	row.fetches = len(fetches)
	row.perWindow = perWindow(row.fetches, f.duration, f.ttl)
	row.maxWindow = maxInWindow(times, f.ttl)
	row.minGap = minGap(times)

	reads, hits, renders, rendersFound := 0.0, 0.0, 0.0, true
	for i := range urls {
		if before[i] == "" || after[i] == "" {
			return row, fmt.Errorf("could not scrape replica %d's /metrics", i+1)
		}
		a, _, _ := metricSum(after[i], fleetReadsMetric, nil)
		b, _, _ := metricSum(before[i], fleetReadsMetric, nil)
		reads += a - b
		a, _, _ = metricSum(after[i], fleetReadsMetric, map[string]string{"result": "hit"})
		b, _, _ = metricSum(before[i], fleetReadsMetric, map[string]string{"result": "hit"})
		hits += a - b
		a, found, _ := metricSum(after[i], rendersMetric, nil)
		b, _, _ = metricSum(before[i], rendersMetric, nil)
		rendersFound = rendersFound && found
		renders += a - b
	}
	if row.fetches > 0 {
		per := float64(n) * float64(row.fetches)
		row.reads, row.readHits = reads/per, hits/per
		if rendersFound {
			row.renders = renders / per
		}
	}

	obs, failures := lg.results(measureFrom)
	var measured []sighting
	for _, o := range obs {
		if !o.sent.Before(measureFrom) {
			measured = append(measured, o)
			if o.marker < 0 {
				row.failed++
			}
		}
	}
	row.requests = len(measured)
	row.failures = failures
	row.back0 = backwards(measured, 0)
	row.back50 = backwards(measured, targetBackwardsGrace)
	row.lags = commitLags(fetches, obs, n, end.Add(-f.ttl))
	row.resolution = time.Duration(float64(n) / f.rate * float64(time.Second))
	return row, nil
}

// scrapeAll fetches every replica's /metrics ("" for one that failed).
func scrapeAll(urls []string) []string {
	out := make([]string, len(urls))
	var wg sync.WaitGroup
	for i, u := range urls {
		wg.Go(func() { out[i], _ = scrape(u) })
	}
	wg.Wait()
	return out
}

// markerHTML finds the marker on a page.
var markerHTML = regexp.MustCompile(`<h2>Castle in the Sky #(\d+)</h2>`)

// pageMarker returns the one marker a page shows.
func pageMarker(body []byte) (int, error) {
	m := markerHTML.FindAllSubmatch(body, -1)
	if len(m) != 1 {
		return -1, fmt.Errorf("%d markers on the page, want 1", len(m))
	}
	return strconv.Atoi(string(m[0][1]))
}

// loadGen sends requests at a fixed rate, round robin over the replicas,
// each in a goroutine of its own so that a slow answer does not slow the
// rate (an open loop, as real clients are).
type loadGen struct {
	urls   []string
	rate   float64
	client *http.Client

	mu       sync.Mutex
	obs      []sighting
	failures []failure
}

// failure is one failed request, for the report.
type failure struct {
	sent time.Time
	what string
}

func newLoadGen(urls []string, rate float64) *loadGen {
	tr := &http.Transport{MaxIdleConnsPerHost: 16, DisableCompression: true, IdleConnTimeout: time.Minute}
	return &loadGen{urls: urls, rate: rate, client: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

// run sends requests from start until end (or ctx ends) and waits for the
// last answers.
func (l *loadGen) run(ctx context.Context, start, end time.Time) {
	var wg sync.WaitGroup
	every := time.Duration(float64(time.Second) / l.rate)
	for i := 0; ; i++ {
		at := start.Add(time.Duration(i) * every)
		if !at.Before(end) || sleep(ctx, time.Until(at)) != nil {
			break
		}
		replica := i % len(l.urls)
		wg.Go(func() { l.one(replica) })
	}
	wg.Wait()
	l.client.CloseIdleConnections()
}

func (l *loadGen) one(replica int) {
	o := sighting{replica: replica, sent: time.Now(), marker: -1}
	resp, err := l.client.Get(l.urls[replica] + "/movies/")
	if err == nil {
		var body []byte
		body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case err != nil:
		case resp.StatusCode != http.StatusOK:
			err = fmt.Errorf("status %d", resp.StatusCode)
		default:
			o.marker, err = pageMarker(body)
			if err != nil {
				o.marker = -1
			}
		}
	}
	o.got = time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.obs = append(l.obs, o)
	if err != nil && len(l.failures) < 100 {
		l.failures = append(l.failures, failure{o.sent, fmt.Sprintf("replica %d at %s: %v", replica+1, o.sent.Format("15:04:05.000"), err)})
	}
}

// results returns every request and the first few failures of those
// sent from from on.
func (l *loadGen) results(from time.Time) ([]sighting, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var fs []string
	for _, f := range l.failures {
		if !f.sent.Before(from) && len(fs) < 5 {
			fs = append(fs, f.what)
		}
	}
	return slices.Clone(l.obs), fs
}
