package main

import (
	"context"
	"flag"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// maxChurnRatio bounds churn p99 over steady p99 (and churn p99 must stay
// below the upstream's latency): refresh-ahead must hide expiry.
const maxChurnRatio = 1.5

type churnFlags struct {
	duration, warmup, latency, ttl time.Duration
	conns, rounds, threads         int
}

func setupChurn(fs *flag.FlagSet) func(context.Context, *env) error {
	f := &churnFlags{}
	fs.DurationVar(&f.duration, "duration", 10*time.Second, "each churn round (five 2s TTLs)")
	fs.IntVar(&f.conns, "connections", 64, "wrk connections")
	fs.IntVar(&f.rounds, "rounds", 3, "interleaved rounds; medians are reported")
	fs.IntVar(&f.threads, "threads", 2, "wrk threads")
	fs.DurationVar(&f.warmup, "warmup", 2*time.Second, "a wrk run of each server before the rounds")
	fs.DurationVar(&f.latency, "upstream-latency", 200*time.Millisecond, "how long the fake upstream (cmd/ghiblifake) takes to answer")
	fs.DurationVar(&f.ttl, "ttl", 2*time.Second, "the churning server's -ttl (the steady one runs at 1m)")
	return func(ctx context.Context, e *env) error { return runChurn(ctx, e, f) }
}

func runChurn(ctx context.Context, e *env, f *churnFlags) error {
	if f.rounds < 1 || f.conns < 1 || f.threads < 1 || f.conns < f.threads {
		return fmt.Errorf("%w: -rounds, -connections and -threads must be positive, connections at least threads", errUsage)
	}
	if err := need("wrk"); err != nil {
		return err
	}
	w, err := newWrk(e, f.threads)
	if err != nil {
		return err
	}
	e.logf("building ./cmd/movies and ./cmd/ghiblifake")
	for _, pkg := range []string{"./cmd/movies", "./cmd/ghiblifake"} {
		if _, err := e.build(pkg); err != nil {
			return err
		}
	}
	e.header("movies load benchmark: expiry churn", "wrk")
	fake, fakeURL, err := e.startFakeUpstream("-latency", f.latency.String())
	if err != nil {
		return err
	}
	defer e.stopProc(fake)

	// Both servers run side by side, the steady one with -ttl 1m and the
	// churning one with -ttl 2s, and take turns under wrk round by round,
	// so that a change in the machine's load hits both alike.
	names := []string{"steady", "churn"}
	label := map[string]string{"steady": "steady, -ttl 1m", "churn": "churn, -ttl " + f.ttl.String()}
	urls := map[string]string{}
	for _, n := range names {
		ttl := time.Minute
		if n == "churn" {
			ttl = f.ttl
		}
		p, base, err := e.startMovies("slow-"+n, "-upstream", fakeURL, "-ttl", ttl.String(), "-upstream-timeout", "1s")
		if err != nil {
			return err
		}
		defer e.stopProc(p)
		urls[n] = base
		if _, err := get(base+"/movies/", "identity"); err != nil {
			return err
		}
		if _, err := w.run("warmup-"+n, f.conns, f.warmup, base+"/movies/", "identity"); err != nil {
			return err
		}
	}
	e.printf("\n## Expiry churn: upstream answering in %s (cmd/ghiblifake)\n\n", f.latency)
	e.printf("wrk -t%d -c%d -d%s --latency, identity, %d interleaved rounds after a %s warm-up of each; medians of the rounds below, max of their maxima.\n\n",
		f.threads, f.conns, wrkDuration(f.duration), f.rounds, wrkDuration(f.warmup))
	reps := map[string][]wrkReport{}
	deltas := map[string]map[string]float64{"steady": {}, "churn": {}}
	upstream := map[string]float64{}
	counters := []string{"movies_cache_misses_total", "movies_cache_hits_total", "movies_cache_loads_total", "movies_cache_early_refreshes_total"}
	for r := 1; r <= f.rounds; r++ {
		for _, n := range names {
			base := urls[n]
			// After idling through the other's turn the churning
			// snapshot has expired: wrk should measure churn under load,
			// not that cold start.
			if _, err := get(base+"/movies/", "identity"); err != nil {
				return err
			}
			before, err := scrape(base)
			if err != nil {
				return err
			}
			rep, err := w.run(fmt.Sprintf("%s-%d", n, r), f.conns, f.duration, base+"/movies/", "identity")
			if err != nil {
				return err
			}
			after, err := scrape(base)
			if err != nil {
				return err
			}
			reps[n] = append(reps[n], rep)
			for _, c := range counters {
				a, _, _ := metricSum(after, c, nil)
				b, _, _ := metricSum(before, c, nil)
				deltas[n][c] += a - b
			}
			if n == "churn" {
				for k, v := range seriesDeltas(before, after, "movies_upstream_requests_total") {
					upstream[k] += v
				}
			}
			e.printf("- round %d %-7s %9.0f req/s  p99 %7.2f ms  max %7.2f ms\n", r, n, rep.RPS, rep.P99ms, rep.Maxms)
		}
	}

	pick := func(rs []wrkReport, f func(wrkReport) float64) []float64 {
		var out []float64
		for _, r := range rs {
			out = append(out, f(r))
		}
		return out
	}
	e.printf("\n| run | req/s | p50 | p99 | max |\n|---|---|---|---|---|\n")
	for _, n := range names {
		rs := reps[n]
		e.printf("| %s | %.0f | %.2f ms | %.2f ms | %.2f ms |\n", label[n],
			median(pick(rs, func(r wrkReport) float64 { return r.RPS })),
			median(pick(rs, func(r wrkReport) float64 { return r.P50ms })),
			median(pick(rs, func(r wrkReport) float64 { return r.P99ms })),
			slices.Max(pick(rs, func(r wrkReport) float64 { return r.Maxms })))
	}
	sP99 := median(pick(reps["steady"], func(r wrkReport) float64 { return r.P99ms }))
	cP99 := median(pick(reps["churn"], func(r wrkReport) float64 { return r.P99ms }))
	ratio := 0.0
	if sP99 > 0 {
		ratio = cP99 / sP99
	}
	e.printf("\n- churn p99 / steady p99 = %.2fx\n", ratio)
	for _, n := range names {
		non2xx := 0.0
		for _, r := range reps[n] {
			non2xx += float64(r.Non2xx)
		}
		d := deltas[n]
		e.printf("- %s runs: cache misses %.0f, hits %.0f, loads %.0f, early refreshes %.0f, non-2xx answers %.0f\n", n,
			d["movies_cache_misses_total"], d["movies_cache_hits_total"], d["movies_cache_loads_total"], d["movies_cache_early_refreshes_total"], non2xx)
	}
	e.printf("- churn runs, movies_upstream_requests_total (a load still in flight when a run ended shows in loads, not here):\n")
	keys := make([]string, 0, len(upstream))
	for k := range upstream {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		e.printf("  - %s %.0f\n", k, upstream[k])
	}

	e.printf("\n## Targets\n\n")
	e.printf("- %s expiry churn p99 within %.1fx of steady: %.2fx\n", verdict(ratio <= maxChurnRatio), maxChurnRatio, ratio)
	e.printf("- %s expiry churn p99 below the upstream latency: %.2f ms (target < %d ms)\n", verdict(cP99 < float64(f.latency.Milliseconds())), cP99, f.latency.Milliseconds())
	e.printf("\nLoad average at the end: %s\n", loadAvg())
	return nil
}

// seriesDeltas is, for each series of name (its name and labels as the
// exposition writes them), its growth between two scrapes.
func seriesDeltas(before, after, name string) map[string]float64 {
	read := func(text string) map[string]float64 {
		out := map[string]float64{}
		for line := range strings.Lines(text) {
			line = strings.TrimSpace(line)
			if line == "" || line[0] == '#' {
				continue
			}
			series, value, ok := cutSeries(line)
			if n, _, _ := strings.Cut(series, "{"); !ok || n != name {
				continue
			}
			var v float64
			if _, err := fmt.Sscan(value, &v); err == nil {
				out[series] = v
			}
		}
		return out
	}
	b, a := read(before), read(after)
	out := map[string]float64{}
	for k, v := range a {
		out[k] = v - b[k]
	}
	return out
}
