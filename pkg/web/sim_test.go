package web

// The fleet simulator: several replicas' real cache, loader and fleet code
// in one process, in virtual time (testing/synctest), on a miniredis that
// runs the very Lua scripts production runs, in front of a fake upstream,
// under a seeded schedule of faults. Every page a reader gets and every
// request the upstream receives is judged against the four promises
// (fresh, economical, monotonic, never worse than lone replicas), from the
// fake's own record, never from the servers' metrics.
//
//	go test ./pkg/web -run '^TestSimulate$' -sim.seeds 20000   # explore more
//	go test ./pkg/web -run '^TestSimulate$' -sim.seed 1234 -v  # replay one

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/movies-dev/movies/pkg/ghibli/builtin"
	"github.com/movies-dev/movies/pkg/render"
	"github.com/movies-dev/movies/pkg/snapshot"
)

var (
	simSeeds = flag.Int("sim.seeds", 0, "how many seeds TestSimulate explores (0: 2000; 100 with -short, 30 with -race)")
	simFirst = flag.Uint64("sim.first", 1, "the first seed TestSimulate explores")
	simSeed  = flag.Uint64("sim.seed", 0, "replay this one seed, with its trace")
)

// warmOutsideBubbles makes, outside any synctest bubble, what every
// snapshot shares (the zstd encoder, with its channels): made inside one
// bubble, another could not use it.
func warmOutsideBubbles(t *testing.T) {
	if _, err := snapshot.New(render.View{Movies: []render.Movie{{ID: "1", Title: "x"}}}, time.Now(), time.Time{}); err != nil {
		t.Fatal(err)
	}
}

// TestSimulate explores seeds; each is one scenario, judged whole.
func TestSimulate(t *testing.T) {
	warmOutsideBubbles(t)
	if *simSeed != 0 {
		runSeed(t, *simSeed, true)
		return
	}
	n := *simSeeds
	if n == 0 {
		// The race detector checks the concurrency, not the schedules:
		// a few seeds under it, the full count without (scripts/test.sh).
		switch n = 2000; {
		case raceEnabled:
			n = 30
		case testing.Short():
			n = 100
		}
	}
	var failed []uint64
	var mu sync.Mutex
	t.Run("seeds", func(t *testing.T) {
		for i := range uint64(n) {
			seed := *simFirst + i
			t.Run(strconv.FormatUint(seed, 10), func(t *testing.T) {
				t.Parallel()
				if !runSeed(t, seed, false) {
					mu.Lock()
					failed = append(failed, seed)
					mu.Unlock()
				}
			})
		}
	})
	slices.Sort(failed)
	t.Logf("simulated %d seeds from %d: %d failed %v", n, *simFirst, len(failed), failed)
}

// A scenario is what one seed makes: the fleet, the upstream and the
// faults, all drawn before the run starts.
type scenario struct {
	seed          uint64
	replicas      int
	readers       int
	ttl, timeout  time.Duration
	duration      time.Duration
	usual         time.Duration // an upstream request's latency
	faults        []fault
	callTimeout   time.Duration
	redisLatency  time.Duration // the most a reply is delayed, healthy
	clockStepped  bool
	redisTrouble  bool // any fault of Redis's beyond healthy latency
	refuses       bool // Redis answering every command with an error
	upstreamFault bool
	joins         int
	// recoverTogether holds the fleet to recovering from an outage as one:
	// once any replica serves again, every replica does within a second.
	recoverTogether bool
}

// A fault happens to the fleet from at until until (from the start).
type fault struct {
	kind      string
	at, until time.Duration
	replica   int
	d         time.Duration
}

func (f fault) String() string {
	return fmt.Sprintf("%s@%v-%v r%d %v", f.kind, f.at, f.until, f.replica, f.d)
}

var faultKinds = []string{
	"slow-upstream", "hung-upstream", "outage", "outage-retry-after",
	"redis-stall", "redis-down", "redis-restart", "evict", "redis-clock",
	"replica-clock", "kill", "shutdown", "join", "none", "none",
}

func newScenario(seed uint64) scenario {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	sc := scenario{
		seed:        seed,
		replicas:    2 + rng.IntN(3),
		readers:     2 + rng.IntN(2),
		ttl:         []time.Duration{4 * time.Second, 6 * time.Second}[rng.IntN(2)],
		duration:    15 * time.Second,
		callTimeout: 100 * time.Millisecond,
	}
	sc.timeout = sc.ttl / 2
	sc.usual = time.Duration(5+rng.IntN(300)) * time.Millisecond
	sc.redisLatency = time.Duration(rng.IntN(30)) * time.Millisecond
	for range rng.IntN(3) {
		f := fault{kind: faultKinds[rng.IntN(len(faultKinds))], replica: rng.IntN(sc.replicas)}
		f.at = time.Duration(rng.Int64N(int64(sc.duration - 4*time.Second)))
		f.until = f.at + time.Duration(rng.Int64N(int64(4*time.Second)))
		switch f.kind {
		case "slow-upstream": // slower than a lease, within the timeout
			f.d = time.Second + time.Duration(rng.Int64N(int64(sc.timeout-time.Second-200*time.Millisecond)))
		case "outage-retry-after":
			f.d = time.Duration(1+rng.IntN(4)) * time.Second
		case "redis-stall": // replies later than the call timeout: the scripts ran
			f.d = sc.callTimeout + time.Duration(rng.Int64N(int64(300*time.Millisecond)))
		case "redis-clock", "replica-clock":
			f.d = time.Duration(rng.IntN(9)-4) * time.Second
		}
		sc.faults = append(sc.faults, f)
	}
	return sc.classify()
}

// classify sets what the faults excuse: the judge holds a fleet to a
// promise only where the promise holds (monotonic and economical with
// Redis healthy and the clocks agreeing, and so on).
func (sc scenario) classify() scenario {
	for _, f := range sc.faults {
		switch f.kind {
		case "redis-stall", "redis-down", "redis-restart", "evict", "redis-clock", "gen-ahead":
			sc.redisTrouble = true
		case "hung-upstream", "outage", "outage-retry-after":
			sc.upstreamFault = true
		case "join":
			sc.joins++
		case "redis-refuses":
			sc.refuses = true
		}
		if (f.kind == "redis-clock" || f.kind == "replica-clock") && f.d != 0 {
			sc.clockStepped = true
		}
	}
	return sc
}

// simScenarios are the cases issue 15 found by hand (each failed on the
// first edition), and the seeds the simulator found bugs with while the
// second was built (each failed on the code of that moment), as named
// scenarios: they run on every test run, and keep their meaning whatever
// newScenario comes to draw from a seed.
var simScenarios = map[string]scenario{
	// #1: a healthy upstream slower than a lease: nobody takes a live
	// leader's fetch over, both replicas answer 200.
	"slow upstream, 2.9s at a 4s timeout": {replicas: 2, readers: 3, ttl: 8 * time.Second, timeout: 4 * time.Second, usual: 10 * time.Millisecond,
		faults: []fault{{kind: "slow-upstream", at: 0, until: 20 * time.Second, d: 2900 * time.Millisecond}}},
	// #2: the replica leading a fetch nobody on it waits for shuts down
	// while another waits for that fetch: the waiter takes over at once.
	"graceful shutdown of the leader": {replicas: 2, readers: 2, ttl: 6 * time.Second, timeout: 3 * time.Second, usual: 10 * time.Millisecond,
		faults: []fault{{kind: "slow-upstream", at: 0, until: 20 * time.Second, d: 1500 * time.Millisecond}, {kind: "shutdown-leader", at: 5 * time.Second, until: 15 * time.Second}}},
	// #3: the end of an outage with Retry-After: 4, replicas backed off at
	// different times: the second recovers within a second of the first.
	"the end of an outage": {replicas: 3, readers: 3, ttl: 6 * time.Second, timeout: 3 * time.Second, usual: 50 * time.Millisecond, recoverTogether: true,
		faults: []fault{{kind: "outage-retry-after", at: 2 * time.Second, until: 9 * time.Second, d: 4 * time.Second}}},
	// #4: Retry-After: 6 under load: one fetch per Retry-After for the fleet.
	"Retry-After 6s, 3 replicas": {replicas: 3, readers: 3, ttl: 6 * time.Second, timeout: 3 * time.Second, usual: 50 * time.Millisecond,
		faults: []fault{{kind: "outage-retry-after", at: 3 * time.Second, until: 15 * time.Second, d: 6 * time.Second}}},
	// #5: Redis's clock steps back 4s after a commit: no page more than a
	// second past the TTL (judged with that second).
	"Redis's clock steps back 4s": {replicas: 3, readers: 3, ttl: 6 * time.Second, timeout: 3 * time.Second, usual: 50 * time.Millisecond,
		faults: []fault{{kind: "redis-clock", at: 6100 * time.Millisecond, until: 6200 * time.Millisecond, d: -4 * time.Second}}},
	// #6: the snapshot's generation far ahead of the counter: it heals,
	// nobody waits out a lease.
	"a generation far ahead": {replicas: 3, readers: 3, ttl: 4 * time.Second, timeout: 2 * time.Second, usual: 50 * time.Millisecond,
		faults: []fault{{kind: "gen-ahead", at: 2 * time.Second, until: 3 * time.Second}}},
	// A lock whose reply comes after the call timeout: the script ran and
	// took the lock; it is released, nobody waits out a lease for it.
	"a lock taken by a call that timed out": {replicas: 3, readers: 3, ttl: 4 * time.Second, timeout: 2 * time.Second, usual: 100 * time.Millisecond,
		faults: []fault{{kind: "redis-stall", at: 3 * time.Second, until: 3300 * time.Millisecond, d: 150 * time.Millisecond}}},
	// Found by seed 5: a leader slower than twice the usual fetch was
	// taken for stuck, and its waiters fetched alone (the first cut's
	// stuck rule, removed).
	"seed 5: a slow leader is not stuck": {replicas: 4, readers: 2, ttl: 4 * time.Second, timeout: 2 * time.Second, usual: 21 * time.Millisecond,
		faults: []fault{{kind: "hung-upstream", at: 10766 * time.Millisecond, until: 12360 * time.Millisecond}, {kind: "slow-upstream", at: 14025 * time.Millisecond, until: 15775 * time.Millisecond, d: 1293 * time.Millisecond}}},
	// Found by seed 144: Redis stalled while a replica waited on a slow
	// leader; its fetch alone had only what the wait left, and failed
	// (fixed: a fetch alone gets a budget of its own).
	"seed 144: Redis stalls mid-wait": {replicas: 2, readers: 3, ttl: 4 * time.Second, timeout: 2 * time.Second, usual: 156 * time.Millisecond, redisLatency: 2400 * time.Microsecond,
		faults: []fault{{kind: "redis-stall", at: 9996 * time.Millisecond, until: 11710 * time.Millisecond, d: 343 * time.Millisecond}, {kind: "slow-upstream", at: 7977 * time.Millisecond, until: 11808 * time.Millisecond, d: 1534 * time.Millisecond}}},
	// Redis refuses everything for 7s (issue 16: READONLY, OOM, NOPERM
	// left the fleet alone for good): never worse than lone replicas, and
	// sharing resumes within a TTL after (judged by the fetch count).
	"Redis refuses for 7s": {replicas: 3, readers: 3, ttl: 4 * time.Second, timeout: 2 * time.Second, usual: 50 * time.Millisecond,
		faults: []fault{{kind: "redis-refuses", at: 2 * time.Second, until: 9 * time.Second}}},
	// Two replicas leave and one dies during an upstream slower than a
	// lease: every waiter takes over, none fails.
	"deaths and departures": {replicas: 4, readers: 3, ttl: 6 * time.Second, timeout: 3 * time.Second, usual: 40 * time.Millisecond,
		faults: []fault{{kind: "slow-upstream", at: 0, until: 20 * time.Second, d: 1200 * time.Millisecond}, {kind: "kill-leader", at: 4 * time.Second, until: 10 * time.Second}, {kind: "shutdown-leader", at: 8 * time.Second, until: 14 * time.Second}, {kind: "shutdown", at: 15 * time.Second, until: 16 * time.Second, replica: 3}}},
}

// simRegressionSeeds are seeds that failed with today's newScenario before
// their bug was fixed (see docs/fleet.md): 15901 and 20443 (a takeover
// left only what the wait had not used), 18028 (a waiter kept waiting on a
// lock a commit had freed), 1772 (a replica that joined between an early
// commit and the switch served the newer snapshot at once, behind a
// reader's back, once joins were judged for monotonic reads), 3611, 5209
// and 6892 (a backoff with under a ms left was taken for news of a newer
// snapshot: three reads found none, and the replica fetched alone, inside
// the fleet's Retry-After or out of its order). A change to newScenario
// changes what they draw: then make them named scenarios.
var simRegressionSeeds = []uint64{15901, 18028, 20443, 1772, 3611, 5209, 6892}

func TestSimulate_RegressionSeeds(t *testing.T) {
	warmOutsideBubbles(t)
	for _, seed := range simRegressionSeeds {
		t.Run(strconv.FormatUint(seed, 10), func(t *testing.T) {
			t.Parallel()
			runSeed(t, seed, false)
		})
	}
}

func TestSimulate_Scenarios(t *testing.T) {
	warmOutsideBubbles(t)
	for name, sc := range simScenarios {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			sc.duration = 20 * time.Second
			sc.callTimeout = 100 * time.Millisecond
			runScenario(t, sc.classify(), *simSeed != 0)
		})
	}
}

// sim is one run of a scenario.
type sim struct {
	sc    scenario
	t     *testing.T
	start time.Time
	redis *miniredis.Miniredis
	data  *builtin.Handler

	serveMu  sync.Mutex // orders the fake's markers with its bodies
	mu       sync.Mutex
	arrivals []simArrival   // /films requests at the fake, in order
	prepared map[[2]int]int // snapshots prepared, by replica and marker
	inflight map[int]int    // /films requests in flight, by replica
	pages    []simPage
	replicas []*simReplica
	conns    []*simConn
	trace    []string
}

type simArrival struct {
	at         time.Duration
	marker     int
	status     int
	retryAfter time.Duration
	by         int
}

type simPage struct {
	reader, replica int
	start, end      time.Duration
	status          int
	marker          int
}

type simReplica struct {
	id    int
	srv   *Server
	wall  time.Duration // the replica's wall clock offset
	dead  bool          // killed: every call it makes hangs or fails
	gone  bool          // out of the readers' rotation
	close sync.Once
	busy  sync.WaitGroup // requests in flight on it
}

func (s *sim) now() time.Duration { return time.Since(s.start) }

func (s *sim) logf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.trace = append(s.trace, fmt.Sprintf("%8v ", s.now().Round(time.Microsecond))+fmt.Sprintf(format, args...))
}

// rand draws a number in [0, n) for the drawer named by salt (a reader,
// a replica's upstream path, a replica's Redis): from the seed, the salt
// and the virtual instant, not from a stream shared by goroutines, so the
// draws do not depend on the order goroutines happened to run in.
func (s *sim) rand(salt string, n int64) int64 {
	h := fnv.New64a()
	fmt.Fprintf(h, "%d/%s/%d", s.sc.seed, salt, s.now())
	return rand.New(rand.NewPCG(h.Sum64(), s.sc.seed)).Int64N(n)
}

// active returns the fault of kind in force at now, if any.
func (s *sim) active(kind string, replica int) (fault, bool) {
	now := s.now()
	for _, f := range s.sc.faults {
		if f.kind == kind && now >= f.at && now < f.until && (replica < 0 || f.replica == replica) {
			return f, true
		}
	}
	return fault{}, false
}

// runSeed runs and judges one seed; it reports whether all held.
func runSeed(t *testing.T, seed uint64, verbose bool) bool {
	return runScenario(t, newScenario(seed), verbose)
}

// runScenario runs and judges sc; it reports whether all held.
func runScenario(t *testing.T, sc scenario, verbose bool) bool {
	seed := sc.seed
	var problems []string
	var trace []string
	synctest.Test(t, func(t *testing.T) {
		s := &sim{sc: sc, t: t, start: time.Now(), prepared: map[[2]int]int{}, inflight: map[int]int{}}
		problems = s.run()
		trace = s.trace
	})
	if len(problems) == 0 && !verbose {
		return true
	}
	if verbose || len(problems) > 0 {
		t.Logf("scenario: %+v", sc)
		for _, l := range trace {
			t.Log(l)
		}
	}
	if len(problems) > 0 {
		replay := fmt.Sprintf("go test ./pkg/web -run '^TestSimulate$' -sim.seed %d -v", seed)
		if seed == 0 {
			replay = fmt.Sprintf("go test ./pkg/web -run '^%s$' -v", strings.ReplaceAll(regexp.QuoteMeta(t.Name()), " ", "_"))
		}
		t.Errorf("seed %d (%d replicas, TTL %v, upstream %v, faults %v): %d broken promises, the first:\n  %s\nreplay: %s",
			seed, sc.replicas, sc.ttl, sc.usual, sc.faults, len(problems), strings.Join(problems[:min(len(problems), 5)], "\n  "), replay)
		return false
	}
	return true
}

// simData is a small catalogue (rendering the whole one thousands of times
// would be the simulator's whole cost) whose first film carries a marker.
func simData() builtin.Data {
	d := builtin.Bundled()
	d.Films = d.Films[:3]
	d.People = d.People[:6]
	return d
}

var markerRe = regexp.MustCompile(`Castle in the Sky #(\d+)`)

func (s *sim) run() []string {
	sc := s.sc
	s.redis = miniredis.NewMiniRedis()
	s.redis.ClockTTL(true)
	s.data = builtin.NewHandler(simData())
	for i := range sc.replicas {
		s.addReplica(i)
	}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for r := range sc.readers {
		wg.Go(func() { s.reader(ctx, r) })
	}
	for _, f := range sc.faults {
		wg.Go(func() { s.inject(ctx, f) })
	}
	time.Sleep(sc.duration)
	stop()
	wg.Wait()
	s.mu.Lock()
	replicas := slices.Clone(s.replicas)
	s.mu.Unlock()
	for _, r := range replicas {
		r.close.Do(r.srv.Close)
	}
	s.redis.Close()
	// Let the clients' goroutines see their connections closed (go-redis
	// retries a broken subscription after 100ms) before the bubble ends.
	time.Sleep(time.Second)
	return s.judge()
}

func (s *sim) addReplica(id int) *simReplica {
	r := &simReplica{id: id}
	// Every seed keeps its trace, replicas' logs included: a failure in a
	// batch prints it, since a seed that fails among thousands run in
	// parallel may order simultaneous events otherwise when run alone.
	log := slog.New(slog.NewTextHandler(simLogWriter{s, id}, &slog.HandlerOptions{
		Level: slog.LevelDebug,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
	srv, err := New(Config{
		Upstream: "http://upstream.sim", UpstreamName: "sim", Redis: "redis://redis.sim:6379",
		TTL: s.sc.ttl, UpstreamTimeout: s.sc.timeout, Log: log,
		redisCallTimeout: s.sc.callTimeout,
		// Quick compression, and a count of what each replica prepares:
		// one preparation per replica per fetched catalogue.
		newSnapshot: func(v render.View, changed, prev time.Time) (*snapshot.Snapshot, error) {
			if len(v.Movies) > 0 {
				if m := markerRe.FindStringSubmatch(v.Movies[0].Title); m != nil {
					n, _ := strconv.Atoi(m[1])
					s.mu.Lock()
					s.prepared[[2]int{id, n}]++
					s.mu.Unlock()
				}
			}
			return snapshot.NewQuick(v, changed, prev)
		},
		jitter:            func() float64 { return float64(s.rand(fmt.Sprint("jitter", id), 1<<20)) / (1 << 20) },
		redisDialer:       func(ctx context.Context, _, _ string) (net.Conn, error) { return s.dial(r) },
		upstreamTransport: simTransport{s, r},
		wallClock: func() time.Time {
			s.mu.Lock()
			defer s.mu.Unlock()
			return time.Now().Add(r.wall)
		},
	})
	if err != nil {
		s.t.Fatal(err)
	}
	r.srv = srv
	s.mu.Lock()
	s.replicas = append(s.replicas, r)
	s.mu.Unlock()
	return r
}

type simLogWriter struct {
	s  *sim
	id int
}

func (w simLogWriter) Write(b []byte) (int, error) {
	w.s.logf("r%d %s", w.id, strings.TrimSpace(string(b)))
	return len(b), nil
}

// reader is a client moving between replicas at random, as behind a load
// balancer.
func (s *sim) reader(ctx context.Context, id int) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(20+s.rand(fmt.Sprint("reader", id), 400)) * time.Millisecond):
		}
		s.mu.Lock()
		var live []*simReplica
		for _, r := range s.replicas {
			if !r.gone {
				live = append(live, r)
			}
		}
		if len(live) == 0 {
			s.mu.Unlock()
			continue
		}
		r := live[s.rand(fmt.Sprint("pick", id), int64(len(live)))]
		r.busy.Add(1) // under s.mu, so a shutdown waits for it
		s.mu.Unlock()
		p := simPage{reader: id, replica: r.id, start: s.now()}
		rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		req := httptest.NewRequestWithContext(rctx, http.MethodGet, "/api/v1/movies", nil)
		rec := httptest.NewRecorder()
		r.srv.Handler().ServeHTTP(rec, req)
		r.busy.Done()
		cancel()
		p.end, p.status = s.now(), rec.Code
		if m := markerRe.FindSubmatch(rec.Body.Bytes()); m != nil {
			p.marker, _ = strconv.Atoi(string(m[1]))
		}
		s.mu.Lock()
		s.pages = append(s.pages, p)
		s.mu.Unlock()
	}
}

// inject makes fault f happen.
func (s *sim) inject(ctx context.Context, f fault) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(f.at):
	}
	s.logf("fault %v", f)
	s.mu.Lock()
	var r *simReplica
	if f.replica < len(s.replicas) {
		r = s.replicas[f.replica]
	}
	s.mu.Unlock()
	switch f.kind {
	case "redis-restart":
		s.redis.FlushAll()
		s.breakConns(nil)
	case "evict":
		keys := s.redis.Keys()
		if len(keys) > 0 {
			slices.Sort(keys)
			s.redis.Del(keys[s.rand("evict", int64(len(keys)))])
		}
	case "redis-clock":
		// Redis keeps expiries as absolute times on its own clock: a step
		// back of d lengthens every TTL by d, a step forward shortens it.
		for _, k := range s.redis.Keys() {
			if ttl := s.redis.TTL(k); ttl > 0 {
				if ttl -= f.d; ttl <= 0 {
					s.redis.Del(k)
				} else {
					s.redis.SetTTL(k, ttl)
				}
			}
		}
	case "replica-clock":
		s.mu.Lock()
		r.wall += f.d
		s.mu.Unlock()
	case "redis-refuses":
		// Every command answered with an error, as a master demoted by a
		// failover answers writes: Redis is there, and quick.
		s.redis.SetError("READONLY You can't write against a read only replica.")
		select {
		case <-ctx.Done():
		case <-time.After(f.until - f.at):
		}
		s.redis.SetError("")
	case "gen-ahead":
		// The snapshot's generation far ahead of the counter (set by
		// hand, or the counter evicted while a clock ran behind).
		for _, k := range s.redis.Keys() {
			if strings.HasSuffix(k, ":snapshot:gen") {
				s.redis.Set(k, strconv.FormatInt(time.Now().UnixMilli()*100, 10))
			}
		}
	case "shutdown-leader", "kill-leader":
		// The replica whose fetch for the fleet is in flight, once there
		// is one.
		for r = nil; r == nil && s.now() < f.until; time.Sleep(5 * time.Millisecond) {
			s.mu.Lock()
			for _, c := range s.replicas {
				if s.inflight[c.id] > 0 && !c.gone {
					r = c
				}
			}
			s.mu.Unlock()
		}
		if r == nil {
			return
		}
		s.logf("fault %s hits r%d", f.kind, r.id)
		if f.kind == "kill-leader" {
			s.kill(r)
			return
		}
		s.mu.Lock()
		r.gone = true
		s.mu.Unlock()
		r.busy.Wait()
		r.close.Do(r.srv.Close)
	case "kill":
		s.kill(r)
	case "shutdown":
		s.mu.Lock()
		r.gone = true
		s.mu.Unlock()
		// As Serve does: out of rotation, requests in flight answered,
		// then its fetches ended.
		r.busy.Wait()
		r.close.Do(r.srv.Close)
	case "join":
		s.mu.Lock()
		id := len(s.replicas)
		s.mu.Unlock()
		s.addReplica(id)
	}
}

// kill takes r out of the readers' rotation, lets the requests in flight
// on it be answered (as a load balancer draining it would: what a kill
// cuts is the replica's own work, never a client's request), then cuts
// everything it does: its Redis connections and its upstream requests.
func (s *sim) kill(r *simReplica) {
	s.mu.Lock()
	r.gone = true
	s.mu.Unlock()
	r.busy.Wait()
	s.mu.Lock()
	r.dead = true
	s.mu.Unlock()
	s.breakConns(r)
}

// simTransport is the fake upstream, in process: /films gets the next
// marker as it arrives, and the faults in force.
type simTransport struct {
	s *sim
	r *simReplica
}

func (tr simTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	s := tr.s
	s.mu.Lock()
	dead := tr.r.dead
	s.mu.Unlock()
	if dead {
		<-req.Context().Done()
		return nil, req.Context().Err()
	}
	latency := s.sc.usual/2 + time.Duration(s.rand(fmt.Sprint("upstream", tr.r.id, req.URL.Path), int64(s.sc.usual)))
	if f, ok := s.active("slow-upstream", -1); ok {
		latency = f.d
	}
	if _, ok := s.active("hung-upstream", -1); ok {
		latency = time.Hour
	}
	status, retry := 0, time.Duration(0)
	if _, ok := s.active("outage", -1); ok {
		status = http.StatusInternalServerError
	}
	if f, ok := s.active("outage-retry-after", -1); ok {
		status, retry = http.StatusServiceUnavailable, f.d
	}
	rec := httptest.NewRecorder()
	marker := 0
	if strings.HasSuffix(req.URL.Path, "/films") {
		s.mu.Lock()
		s.inflight[tr.r.id]++
		defer func() {
			s.mu.Lock()
			s.inflight[tr.r.id]--
			s.mu.Unlock()
		}()
		marker = len(s.arrivals) + 1
		s.arrivals = append(s.arrivals, simArrival{at: s.now(), marker: marker, status: max(status, 200), by: tr.r.id})
		s.mu.Unlock()
		s.logf("upstream /films #%d from r%d (status %d, latency %v)", marker, tr.r.id, max(status, 200), latency)
	}
	if status != 0 {
		if retry > 0 {
			rec.Header().Set("Retry-After", strconv.Itoa(int(retry/time.Second)))
		}
		rec.WriteHeader(status)
	} else {
		// The marker and the body it goes in, at once: two /films
		// requests must not swap markers.
		s.serveMu.Lock()
		if marker != 0 {
			s.data.Update(func(d *builtin.Data) { d.Films[0]["title"] = fmt.Sprintf("Castle in the Sky #%d", marker) })
		}
		s.data.ServeHTTP(rec, req)
		s.serveMu.Unlock()
	}
	select {
	case <-time.After(latency):
	case <-req.Context().Done():
		return nil, req.Context().Err()
	}
	if marker != 0 && retry > 0 { // delivered: the Retry-After now holds
		s.mu.Lock()
		s.arrivals[marker-1].retryAfter, s.arrivals[marker-1].at = retry, s.now()
		s.mu.Unlock()
	}
	resp := rec.Result()
	resp.Request = req
	return resp, nil
}

// dial connects replica r to the miniredis, unless Redis is down or r dead.
func (s *sim) dial(r *simReplica) (net.Conn, error) {
	s.mu.Lock()
	dead := r.dead
	s.mu.Unlock()
	if _, down := s.active("redis-down", -1); down || dead {
		return nil, errors.New("sim: connection refused")
	}
	c, err := s.redis.Dial()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	sc := &simConn{Conn: c, s: s, r: r}
	s.conns = append(s.conns, sc)
	s.mu.Unlock()
	return sc, nil
}

// breakConns closes the connections of r (nil: of everyone), as a Redis
// restart or a killed replica does.
func (s *sim) breakConns(r *simReplica) {
	s.mu.Lock()
	defer s.mu.Unlock()
	keep := s.conns[:0]
	for _, c := range s.conns {
		if r == nil || c.r == r {
			c.Conn.Close()
		} else {
			keep = append(keep, c)
		}
	}
	s.conns = keep
}

// simConn is a connection to Redis that the faults act on: healthy replies
// come a little late, a stalled Redis answers after the call gave up (the
// script ran), a down one answers nothing.
type simConn struct {
	net.Conn
	s *sim
	r *simReplica

	mu         sync.Mutex
	deadline   time.Time
	subscriber bool // carries pub/sub: never delayed (see Write)
	setup      bool // the last command written sets the connection up
}

// Write notes what the client sends. go-redis holds its PubSub's mutex
// while it sets up and reads the subscription's connection, and in a
// synctest bubble a goroutine waiting on a mutex stops virtual time: a
// reply delayed on that connection would never come. So the
// subscription's connection, and the set-up replies of any (HELLO), are
// never delayed; latency and stalls act on the commands.
func (c *simConn) Write(b []byte) (int, error) {
	cmd := bytes.ToLower(b) // go-redis writes its commands in lower case
	c.mu.Lock()
	c.setup = bytes.Contains(cmd, []byte("hello"))
	if bytes.Contains(cmd, []byte("subscribe")) {
		c.subscriber = true
	}
	c.mu.Unlock()
	return c.Conn.Write(b)
}

func (c *simConn) SetDeadline(t time.Time) error {
	c.setDeadline(t)
	return c.Conn.SetDeadline(t)
}

func (c *simConn) SetReadDeadline(t time.Time) error {
	c.setDeadline(t)
	return c.Conn.SetReadDeadline(t)
}

func (c *simConn) setDeadline(t time.Time) {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
}

func (c *simConn) Read(b []byte) (int, error) {
	if _, down := c.s.active("redis-down", -1); down {
		c.Conn.Close()
		return 0, io.ErrUnexpectedEOF
	}
	n, err := c.Conn.Read(b)
	if err != nil {
		return n, err
	}
	c.mu.Lock()
	dl, instant := c.deadline, c.subscriber || c.setup
	c.mu.Unlock()
	if instant {
		return n, nil
	}
	delay := time.Duration(c.s.rand(fmt.Sprint("redis", c.r.id), int64(c.s.sc.redisLatency)+1))
	if f, ok := c.s.active("redis-stall", -1); ok {
		delay = f.d
	}
	if !dl.IsZero() && time.Now().Add(delay).After(dl) {
		// The reply comes after the caller gave up: it is lost with the
		// connection, which the client drops.
		c.s.logf("r%d: a Redis reply %v late, %v past the call's deadline", c.r.id, delay, delay-time.Until(dl))
		time.Sleep(time.Until(dl))
		c.Conn.Close()
		return 0, os.ErrDeadlineExceeded
	}
	time.Sleep(delay)
	return n, nil
}

// judge checks the four promises against what the fake upstream received
// and what the readers were served.
func (s *sim) judge() []string {
	sc := s.sc
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	arrivalOf := map[int]simArrival{}
	for _, a := range s.arrivals {
		arrivalOf[a.marker] = a
	}
	// When the upstream itself failed or hung: requests failing after it
	// are what lone replicas would have answered too, for as long as a
	// fetch, a backoff and the upstream's Retry-After last.
	excused := func(p simPage) bool {
		for _, f := range sc.faults {
			switch f.kind {
			case "hung-upstream", "outage", "outage-retry-after":
				if p.end >= f.at && p.start <= f.until+sc.timeout+5*time.Second+f.d {
					return true
				}
			}
		}
		return false
	}
	stretch := time.Duration(0)
	if sc.clockStepped {
		stretch = time.Second // the promise under a step of one clock
	}
	type seen struct {
		marker int
		at     time.Duration
	}
	newest := map[int]seen{}
	grace := sc.redisLatency + time.Millisecond
	checkMonotonic := !sc.redisTrouble && !sc.refuses && !sc.clockStepped
	// A lone replica's request waits at most one fetch. Redis failing
	// while a replica waited for another's fetch costs that wait as well
	// (the fetch alone that follows has a budget of its own): no more.
	longest := sc.timeout + 50*time.Millisecond
	if sc.redisTrouble {
		longest = 2*sc.timeout + time.Second
	}
	for _, p := range s.pages {
		// Never worse than lone replicas: none fails, none waits longer
		// than a lone replica's fetch could take.
		if p.status != http.StatusOK {
			if !excused(p) {
				add("never worse: reader %d got %d from r%d at %v (asked at %v) with a healthy upstream", p.reader, p.status, p.replica, p.end, p.start)
			}
			continue
		}
		if d := p.end - p.start; d > longest {
			add("never worse: reader %d waited %v on r%d at %v, longer than a lone replica's fetch may take (%v)", p.reader, d, p.replica, p.end, longest)
		}
		a, ok := arrivalOf[p.marker]
		if !ok {
			add("reader %d got a page with marker %d nobody fetched", p.reader, p.marker)
			continue
		}
		// Fresh, from the start of the fetch that made it.
		if age := p.end - a.at; age >= sc.ttl+stretch {
			add("fresh: reader %d got #%d from r%d at %v, %v old (TTL %v)", p.reader, p.marker, p.replica, p.end, age, sc.ttl)
		}
		// Monotonic, for each reader moving between replicas.
		if n := newest[p.reader]; p.marker < n.marker && checkMonotonic && p.end-n.at > grace {
			add("monotonic: reader %d got #%d from r%d at %v after #%d at %v", p.reader, p.marker, p.replica, p.end, n.marker, n.at)
		}
		if p.marker > newest[p.reader].marker {
			newest[p.reader] = seen{p.marker, p.end}
		}
	}
	// Recovering as one: after an outage, once any replica serves again,
	// none answers an error more than a second later.
	if sc.recoverTogether {
		var end time.Duration
		for _, f := range sc.faults {
			end = max(end, f.until)
		}
		first := time.Duration(-1)
		for _, p := range s.pages {
			if p.status == http.StatusOK && p.end > end && (first < 0 || p.end < first) {
				first = p.end
			}
		}
		for _, p := range s.pages {
			if first >= 0 && p.status != http.StatusOK && p.start > first+time.Second {
				add("recover together: reader %d got %d from r%d at %v, more than a second after a replica served again at %v", p.reader, p.status, p.replica, p.end, first)
			}
		}
	}
	// One preparation per replica per fetched catalogue, however it heard
	// of it (its own fetch, a wait, news, a poll), with Redis healthy (a
	// generation set by hand makes the same data a new version) and the
	// clocks agreeing (a writer's clock behind makes its snapshots useless
	// to the others, who fetch again).
	for k, n := range s.prepared {
		if n > 1 && !sc.redisTrouble && !sc.refuses && !sc.clockStepped {
			add("economical: r%d prepared #%d %d times", k[0], k[1], n)
		}
	}
	// Economical: with Redis healthy, one fetch per TTL for the fleet and
	// the early refresh, plus one for each replica that died, left or
	// joined; an upstream's Retry-After holds for the whole fleet.
	if !sc.redisTrouble && !sc.clockStepped {
		// After Redis refused, sharing is due back within a TTL.
		var from time.Duration
		for _, f := range sc.faults {
			if f.kind == "redis-refuses" {
				from = max(from, f.until+sc.ttl)
			}
		}
		deaths := 0
		for _, f := range sc.faults {
			if f.kind == "kill" || f.kind == "shutdown" || f.kind == "join" || f.kind == "kill-leader" || f.kind == "shutdown-leader" {
				deaths++
			}
		}
		fetches := 0
		for _, a := range s.arrivals {
			if a.status == http.StatusOK && a.at >= from && a.at < sc.duration {
				fetches++
			}
		}
		// A snapshot is refreshed at most TTL/2 before it expires (the
		// cache's refresh window), so fetches are at least TTL/2 apart.
		if limit := int((sc.duration-from+sc.ttl/2-1)/(sc.ttl/2)) + 1 + deaths; fetches > limit && !sc.upstreamFault {
			add("economical: %d fetches in %v from %v at a TTL of %v, want at most %d", fetches, sc.duration-from, from, sc.ttl, limit)
		}
		for i, a := range s.arrivals {
			if a.retryAfter == 0 {
				continue
			}
			for _, b := range s.arrivals[i+1:] {
				if b.at < a.at+a.retryAfter-time.Millisecond {
					add("economical: /films #%d from r%d at %v, within the Retry-After %v of #%d at %v", b.marker, b.by, b.at, a.retryAfter, a.marker, a.at)
				}
			}
		}
	}
	return out
}
