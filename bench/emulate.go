package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/movies-dev/movies/pkg/fleet"
	"github.com/movies-dev/movies/pkg/ghibli"
	"github.com/movies-dev/movies/pkg/ghibli/builtin"
)

type emulateFlags struct {
	ns                  string
	commits             int
	ttl, idle, fetch    time.Duration
	callTimeout, settle time.Duration
}

func setupEmulate(fs *flag.FlagSet) func(context.Context, *env) error {
	f := &emulateFlags{}
	fs.StringVar(&f.ns, "n", "100,250,500,1000", "emulated replica counts, one row each, in increasing order (the budget is judged across them)")
	fs.IntVar(&f.commits, "commits", 3, "TTL windows measured per row (each ends in one expiry and one commit)")
	fs.DurationVar(&f.ttl, "ttl", 4*time.Second, "the tiers' TTL")
	fs.DurationVar(&f.idle, "idle", 5*time.Second, "the idle measurement after the load: no loads, only the tiers' own polling")
	fs.DurationVar(&f.settle, "settle", time.Second, "pause between the load and the idle measurement")
	fs.DurationVar(&f.fetch, "fetch-latency", 20*time.Millisecond, "how long the leader's emulated upstream fetch takes")
	fs.DurationVar(&f.callTimeout, "call-timeout", 100*time.Millisecond, "the tiers' CallTimeout: the budget a read must fit")
	return func(ctx context.Context, e *env) error { return runEmulate(ctx, e, f) }
}

// emuValue is the emulation's trivial value: the tiers move the real
// catalogue's bytes, but nothing is decoded, rendered or compressed.
type emuValue struct{ n int }

// catalogue is the shared snapshot as pkg/web writes it: the bundled data
// fetched through the real client and marshalled as the loader does.
func catalogue(ctx context.Context) ([]byte, error) {
	srv, err := builtin.Start("127.0.0.1:0", builtin.NewHandler(builtin.Bundled()))
	if err != nil {
		return nil, err
	}
	defer srv.Shutdown(context.Background())
	c := &ghibli.Client{BaseURL: srv.URL, HTTPClient: ghibli.NewHTTPClient(5 * time.Second)}
	movies, err := c.Movies(ctx)
	if err != nil {
		return nil, err
	}
	return json.Marshal(movies)
}

// emuRow is one replica count's figures.
type emuRow struct {
	n            int
	skipped      string
	commits      int
	load, idle   redisDelta
	reads        []time.Duration
	readErrors   int
	toAll        []time.Duration
	notAll       int
	fallbacks    uint64
	breakerOpens uint64
	fds          int
}

func runEmulate(ctx context.Context, e *env, f *emulateFlags) error {
	ns, err := parseCounts(f.ns)
	if err != nil {
		return err
	}
	if f.commits < 1 || f.ttl <= 0 || f.callTimeout <= 0 {
		return fmt.Errorf("%w: -commits, -ttl and -call-timeout must be positive", errUsage)
	}
	cat, err := catalogue(ctx)
	if err != nil {
		return fmt.Errorf("the catalogue: %w", err)
	}
	r, err := e.startRedis()
	if err != nil {
		return err
	}
	defer r.close(e)
	maxClients := "unknown"
	if m, err := r.client.ConfigGet(ctx, "maxclients").Result(); err == nil && m["maxclients"] != "" {
		maxClients = m["maxclients"]
	}

	cal, err := calibrateRead(ctx, r, cat, f.callTimeout)
	if err != nil {
		return fmt.Errorf("timing one read: %w", err)
	}

	e.header("movies fleet emulation: N in-process tiers on one redis-server", "redis-server")
	e.printf("- each row: N `fleet.Tier`s (pkg/fleet, CallTimeout %s, TTL %s) in this process on one redis-server, each emulating a replica without rendering: Load when its snapshot's TTL ends (the leader's fetch takes %s and returns the real catalogue, %d B of JSON as pkg/web marshals it), Read on news of a newer one; %d TTL windows measured after the first commit, then %s idle after a %s pause\n",
		f.callTimeout, f.ttl, f.fetch, len(cat), f.commits, f.idle, f.settle)
	e.printf("- open files: limit %d (raised to the hard limit at start); Redis maxclients %s. Each tier holds two connections (its pool's idle one and its subscription), more while a burst is in flight\n", fileLimit(), maxClients)
	e.printf("- Redis commands: client commands (EVALSHA, EVAL, PING, SUBSCRIBE) from INFO commandstats; per commit: those under load less the idle rate; bytes: total_net_output_bytes, likewise\n\n")

	var rows []emuRow
	for _, n := range ns {
		if err := ctx.Err(); err != nil {
			return err
		}
		e.logf("emulate: %d tiers", n)
		row, err := emulateOnce(ctx, e, f, r, cat, n)
		if err != nil {
			return err
		}
		rows = append(rows, row)
	}

	e.printf("| tiers | commits | Redis commands/s idle (per tier) | commands per commit | bytes sent by Redis per commit | all tiers hold a commit, after it: p50 / max | reads | read p50 / p99 / max | reads over the %s budget | fallbacks (breaker opens) | Redis CPU under load |\n", f.callTimeout)
	e.printf("|---|---|---|---|---|---|---|---|---|---|---|\n")
	firstOver := 0
	for _, row := range rows {
		if row.skipped != "" {
			e.printf("| %d | skipped: %s |\n", row.n, row.skipped)
			continue
		}
		idleRate := float64(clientCalls(row.idle.calls)) / row.idle.span.Seconds()
		idleBytes := float64(row.idle.netOut) / row.idle.span.Seconds()
		perCommit, bytesPerCommit := 0.0, 0.0
		if row.commits > 0 {
			perCommit = (float64(clientCalls(row.load.calls)) - idleRate*row.load.span.Seconds()) / float64(row.commits)
			bytesPerCommit = (float64(row.load.netOut) - idleBytes*row.load.span.Seconds()) / float64(row.commits)
		}
		all := "n/a"
		if len(row.toAll) > 0 {
			all = fmt.Sprintf("%s / %s", roundMs(percentile(row.toAll, 50)), roundMs(slices.Max(row.toAll)))
			if row.notAll > 0 {
				all += fmt.Sprintf(" (%d commits not reached by all)", row.notAll)
			}
		}
		p99 := percentile(row.reads, 99)
		if firstOver == 0 && p99 >= f.callTimeout {
			firstOver = row.n
		}
		over := 0
		for _, d := range row.reads {
			if d >= f.callTimeout {
				over++
			}
		}
		e.printf("| %d | %d | %.0f (%.2f) | %.0f | %s | %s | %d | %s / %s / %s | %d (%.1f %%; %d errors) | %d (%d) | %.1f %% |\n",
			row.n, row.commits, idleRate, idleRate/float64(row.n), perCommit, bytesText(bytesPerCommit), all,
			len(row.reads), durText(percentile(row.reads, 50)), durText(p99), durText(maxOr0(row.reads)),
			over, pct(over, len(row.reads)), row.readErrors, row.fallbacks, row.breakerOpens, row.load.cpuPercent())
	}
	e.printf("\n")
	for _, row := range rows {
		if row.skipped == "" {
			e.printf("- %d tiers: commands under load: %s; idle: %s; open files in this process at the peak: %d\n", row.n, formatCalls(row.load.calls), formatCalls(row.idle.calls), row.fds)
		}
	}
	largest := 0
	for _, row := range rows {
		if row.skipped == "" {
			largest = max(largest, row.n)
		}
	}
	e.printf("\n## The call budget\n\n")
	if firstOver > 0 {
		e.printf("- measured: the first tier count whose p99 read did not fit the %s budget: %d (the tiers' own scheduling on this machine's cores included)\n", f.callTimeout, firstOver)
	} else {
		e.printf("- measured: every tier count run (up to %d) read within the %s budget at p99\n", largest, f.callTimeout)
	}
	e.printf("- Redis alone: one tier reading the snapshot %d times in a row cost Redis %.0f µs of CPU a read (INFO cpu; %.0f µs inside EVALSHA, commandstats), round trip p50 %s. A commit's reads queue on Redis's one thread, so the last of N waits about N × %.0f µs: %d reads fill the %s budget on Redis's side, however many cores the replicas have\n",
		cal.reads, cal.cpuPerRead, cal.usecPerRead, durText(cal.p50), cal.cpuPerRead, cal.budgetN, f.callTimeout)
	e.printf("\nLoad average at the end: %s (the tiers, Redis and the emulation share the machine's cores: on a real fleet each replica has its own)\n", loadAvg())
	return nil
}

func bytesText(b float64) string {
	switch {
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", b/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.0f KiB", b/(1<<10))
	}
	return fmt.Sprintf("%.0f B", b)
}

func durText(d time.Duration) string {
	if d < time.Millisecond {
		return fmt.Sprintf("%d µs", d.Microseconds())
	}
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

func maxOr0(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	return slices.Max(ds)
}

func pct(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}

// readCost is what one read of the shared snapshot costs Redis, timed
// with nothing else running: the emulation's burst figures include the
// emulating process's own scheduling, this does not.
type readCost struct {
	reads                   int
	cpuPerRead, usecPerRead float64 // µs
	p50                     time.Duration
	budgetN                 int // reads that fill the call budget, one after another
}

// calibrateRead commits one snapshot with a single tier, then reads it
// 2,000 times in a row.
func calibrateRead(ctx context.Context, r *benchRedis, cat []byte, budget time.Duration) (readCost, error) {
	const reads = 2000
	c := readCost{reads: reads}
	t, err := fleet.New(fleet.Options[emuValue]{
		Redis:     fleet.Redis{URL: r.url},
		Namespace: "bench-calibrate",
		TTL:       time.Minute,
		Decode:    func(b []byte) (emuValue, error) { return emuValue{n: len(b)}, nil },
	})
	if err != nil {
		return c, err
	}
	defer t.Close()
	if _, err := t.Load(ctx, fleet.Entry[emuValue]{}, func(context.Context) (emuValue, []byte, error) { return emuValue{n: len(cat)}, cat, nil }); err != nil {
		return c, err
	}
	before, err := r.sample(ctx)
	if err != nil {
		return c, err
	}
	var lat []time.Duration
	for range reads {
		start := time.Now()
		if _, ok, err := t.Read(ctx, 0); err != nil || !ok {
			return c, fmt.Errorf("read: found %v, %v", ok, err)
		}
		lat = append(lat, time.Since(start))
	}
	after, err := r.sample(ctx)
	if err != nil {
		return c, err
	}
	d := deltaOf(before, after)
	c.cpuPerRead = d.cpu * 1e6 / reads
	c.usecPerRead = float64(d.usec["evalsha"]) / reads
	c.p50 = percentile(lat, 50)
	if c.cpuPerRead > 0 {
		c.budgetN = int(float64(budget.Microseconds()) / c.cpuPerRead)
	}
	return c, nil
}

// emuReplica is one emulated replica: what it holds, and when it first
// held each generation.
type emuReplica struct {
	tier *fleet.Tier[emuValue]
	news chan uint64

	mu   sync.Mutex
	held map[uint64]time.Time
}

// emuCommit is one fetch the emulated fleet made and committed.
type emuCommit struct {
	gen uint64
	at  time.Time
}

func emulateOnce(ctx context.Context, e *env, f *emulateFlags, r *benchRedis, cat []byte, n int) (emuRow, error) {
	row := emuRow{n: n}
	// Two connections a tier here and two in Redis (which has the same
	// limit), and a margin for the bursts.
	if need := uint64(3*n + 64); fileLimit() < need {
		row.skipped = fmt.Sprintf("needs about %d open files, the limit is %d", need, fileLimit())
		return row, nil
	}
	if err := r.client.FlushAll(ctx).Err(); err != nil {
		return row, err
	}
	var (
		readsMu  sync.Mutex
		reads    []time.Duration
		readErrs int
		counting atomic.Bool
		commitMu sync.Mutex
		commits  []emuCommit
		fetching atomic.Bool
		alone    atomic.Int64 // loads that fetched without the shared tier
	)
	observe := func(op string, d time.Duration, err error) {
		if op != "read" || !counting.Load() {
			return
		}
		readsMu.Lock()
		reads = append(reads, d)
		if err != nil {
			readErrs++
		}
		readsMu.Unlock()
	}
	reps := make([]*emuReplica, n)
	for i := range reps {
		rep := &emuReplica{news: make(chan uint64, 1), held: map[uint64]time.Time{}}
		t, err := fleet.New(fleet.Options[emuValue]{
			Redis:       fleet.Redis{URL: r.url},
			Namespace:   "bench-emulate",
			TTL:         f.ttl,
			CallTimeout: f.callTimeout,
			Decode:      func(b []byte) (emuValue, error) { return emuValue{n: len(b)}, nil },
			OnNews: func(gen uint64) {
				// Cheap and never blocking, as OnNews must be: the newest
				// news replaces any not yet taken.
				select {
				case rep.news <- gen:
				default:
					select {
					case <-rep.news:
					default:
					}
					select {
					case rep.news <- gen:
					default:
					}
				}
			},
			Observe: observe,
		})
		if err != nil {
			return row, err
		}
		rep.tier = t
		reps[i] = rep
	}
	defer func() {
		var wg sync.WaitGroup
		for _, rep := range reps {
			wg.Go(func() { rep.tier.Close() })
		}
		wg.Wait()
	}()
	// The subscriptions connect in the background.
	if err := sleep(ctx, 500*time.Millisecond); err != nil {
		return row, err
	}

	fetch := func(ctx context.Context) (emuValue, []byte, error) {
		fetching.Store(true)
		defer fetching.Store(false)
		if err := sleep(ctx, f.fetch); err != nil {
			return emuValue{}, nil, err
		}
		return emuValue{n: len(cat)}, cat, nil
	}
	loadCtx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, rep := range reps {
		wg.Go(func() {
			var have uint64
			deadline := time.Now()
			hold := func(en fleet.Entry[emuValue]) {
				if en.Version == 0 { // fetched alone: Redis failed
					if counting.Load() {
						alone.Add(1)
					}
					deadline = en.Deadline
					return
				}
				if en.Version <= have {
					return
				}
				have, deadline = en.Version, en.Deadline
				rep.mu.Lock()
				rep.held[en.Version] = time.Now()
				rep.mu.Unlock()
				if en.Source == fleet.FromLead {
					commitMu.Lock()
					commits = append(commits, emuCommit{gen: en.Version, at: time.Now()})
					commitMu.Unlock()
				}
			}
			for {
				timer := time.NewTimer(time.Until(deadline))
				select {
				case <-loadCtx.Done():
					timer.Stop()
					return
				case g := <-rep.news:
					timer.Stop()
					if g > have {
						if en, ok, err := rep.tier.Read(loadCtx, have); err == nil && ok {
							hold(en)
						}
					}
				case <-timer.C:
					en, err := rep.tier.Load(loadCtx, fleet.Entry[emuValue]{Version: have, Deadline: deadline}, fetch)
					if err != nil {
						if loadCtx.Err() != nil {
							return
						}
						// As a replica backs off after a failed load.
						deadline = time.Now().Add(250 * time.Millisecond)
						continue
					}
					hold(en)
				}
			}
		})
	}

	// The first commit is the cold start: measure from the next expiry.
	for {
		commitMu.Lock()
		k := len(commits)
		commitMu.Unlock()
		if k > 0 {
			break
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			stopLoad()
			wg.Wait()
			return row, err
		}
	}
	if err := sleep(ctx, f.ttl/2); err != nil {
		stopLoad()
		wg.Wait()
		return row, err
	}
	statsBefore := sumStats(reps)
	before, err := r.sample(ctx)
	if err != nil {
		stopLoad()
		wg.Wait()
		return row, err
	}
	commitMu.Lock()
	firstIdx := len(commits)
	commitMu.Unlock()
	counting.Store(true)
	measureErr := sleep(ctx, time.Duration(f.commits)*f.ttl)
	// Let a fetch in flight at the end commit, so no burst is cut in half.
	for i := 0; measureErr == nil && fetching.Load() && i < 100; i++ {
		measureErr = sleep(ctx, 10*time.Millisecond)
	}
	if measureErr == nil {
		measureErr = sleep(ctx, 2*f.callTimeout)
	}
	counting.Store(false)
	after, err := r.sample(ctx)
	row.fds = openFiles()
	stopLoad()
	wg.Wait()
	if measureErr != nil {
		return row, measureErr
	}
	if err != nil {
		return row, err
	}
	statsAfter := sumStats(reps)
	row.load = deltaOf(before, after)
	row.fallbacks = uint64(alone.Load())
	row.breakerOpens = statsAfter.BreakerOpened - statsBefore.BreakerOpened

	if row.idle, err = r.idle(ctx, f.settle, f.idle); err != nil {
		return row, err
	}

	commitMu.Lock()
	measured := slices.Clone(commits[firstIdx:])
	commitMu.Unlock()
	row.commits = len(measured)
	for _, c := range measured {
		var last time.Time
		all := true
		for _, rep := range reps {
			rep.mu.Lock()
			var first time.Time
			for g, at := range rep.held {
				if g >= c.gen && (first.IsZero() || at.Before(first)) {
					first = at
				}
			}
			rep.mu.Unlock()
			if first.IsZero() {
				all = false
				break
			}
			if first.After(last) {
				last = first
			}
		}
		if !all {
			row.notAll++
			continue
		}
		row.toAll = append(row.toAll, max(0, last.Sub(c.at)))
	}
	readsMu.Lock()
	row.reads, row.readErrors = reads, readErrs
	readsMu.Unlock()
	return row, nil
}

// sumStats adds up the tiers' counters that the table reports.
func sumStats(reps []*emuReplica) fleet.Stats {
	var s fleet.Stats
	for _, rep := range reps {
		st := rep.tier.Stats()
		s.BreakerOpened += st.BreakerOpened
	}
	return s
}

// openFiles counts this process's open file descriptors.
func openFiles() int {
	entries, err := readDirNames("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(entries)
}
