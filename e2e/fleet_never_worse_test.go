//go:build linux

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/movies-dev/movies/pkg/fleet/fleettest"
	"github.com/movies-dev/movies/pkg/ghibli/ghiblitest"
)

// cacheMaxRetryAfter is package cache's cap on an upstream's Retry-After:
// the longest a lone replica backs off after one.
const cacheMaxRetryAfter = 30 * time.Second

// TestFleet_NeverWorseThanLone runs faults of one request, one message,
// one process, and of Redis's memory and execution, each beside its lone
// control (twinCase; compare lists what the fleet is held to). Whatever
// the fleet shares is an optimisation over a lone replica, never a
// dependency: no fault may make it fail, wait or fetch where the same
// replicas without Redis would not.
func TestFleet_NeverWorseThanLone(t *testing.T) {
	skipIfShort(t)
	for _, c := range []*twinCase{
		longRetryAfterOnce(),
		oneRequestHangs(),
		forgedNewsFarAhead(),
		leaderPausedPastItsLease(),
		evictionUnderVolatileTTL(),
		leaderOfAMissShutsDown(),
		redisStallsExecution(),
	} {
		t.Run(c.name, func(t *testing.T) { c.runTwins(t) })
	}
}

// longRetryAfterOnce: the upstream answers one /films request 503 with
// Retry-After: 3600, then is healthy. A lone replica caps the wait at 30s
// (package cache): the one that met it answers 503 until then, the others
// never. The fleet holds an upstream's Retry-After for every replica, so
// all may answer 503 for as long, but each must serve again within the
// cap and a TTL (the TTL: when each asks again), as the lone one does.
// Both runs mostly wait out the cap, so they run side by side.
func longRetryAfterOnce() *twinCase {
	return &twinCase{
		name: "one long Retry-After",
		ttl:  4 * time.Second, timeout: 2 * time.Second,
		replicas: 3, clients: 2, parallel: true,
		run: func(r *twinRun) {
			r.startLoad()
			time.Sleep(r.c.ttl)
			met := r.nextRequestMeets(ghiblitest.Behavior{Status: http.StatusServiceUnavailable, RetryAfter: "3600"}, r.c.ttl, "the 503")
			r.fault("retry-after-3600", met.at, met.at.Add(cacheMaxRetryAfter))
			servesBy := met.at.Add(cacheMaxRetryAfter + r.c.ttl)
			r.excuse = func(o fleetObs) bool { return !o.sent.Before(met.at) && o.sent.Before(servesBy) }
			r.note("met_by=%s", met.by)
			sleepUntil(servesBy.Add(2 * time.Second))
		},
	}
}

// oneRequestHangs: one /films request hangs (a half-open keep-alive, one
// bad backend) while the rest of the upstream is fine. A lone replica that
// sent it fails what waits on that fetch until -upstream-timeout, and
// during the first backoff after it (at most 250ms); no other replica
// fails. The fleet may fail no more: not every waiter on that leader.
func oneRequestHangs() *twinCase {
	return &twinCase{
		name: "one upstream request hangs",
		ttl:  4 * time.Second, timeout: 2 * time.Second,
		replicas: 3, clients: 4,
		run: func(r *twinRun) {
			r.startLoad()
			time.Sleep(r.c.ttl)
			met := r.nextRequestMeets(ghiblitest.Behavior{Hang: true}, r.c.ttl, "the hang")
			end := met.at.Add(r.c.timeout)
			r.fault("one-request-hangs", met.at, end)
			// What waited on its fetch, and the backoff after, with a
			// second's room for a loaded machine; only on its replica.
			r.excuse = func(o fleetObs) bool {
				return o.replica == met.by && o.sent.After(met.at.Add(-r.c.timeout)) && o.sent.Before(end.Add(time.Second))
			}
			r.note("hung=%s", met.by)
			sleepUntil(end.Add(r.c.ttl + 2*time.Second))
		},
	}
}

// forgedNewsFarAhead: a commit message with a version far ahead
// arrives on the fleet's channel, forged or left by a fleet whose counter
// ran ahead. A message is a hint, not a fact: misses must keep costing one
// fetch (the leader's, and a read for the waiters), not a lease recheck
// each, and the fleet must keep to one fetch per expiry. The load comes in
// bursts a TTL apart, so each burst starts with every replica missing at
// once; the message is forged after the first. The harm is a lease less a
// fetch, so a machine so loaded that a fetch takes most of a second hides
// it; a fleet without it passes however loaded.
func forgedNewsFarAhead() *twinCase {
	const (
		burstFor = 800 * time.Millisecond
		bursts   = 3
		// What a waiter may add to a lone fetch: news, a read, and a
		// loaded machine; a lease recheck (1s) is over it.
		missSlack = 400 * time.Millisecond
		// aheadVersion is just under 2^52, the highest version the fleet
		// takes for one of its own.
		aheadVersion = 4503599627370000
	)
	return &twinCase{
		name: "forged news far ahead",
		ttl:  3 * time.Second, timeout: 1500 * time.Millisecond,
		replicas: 3, clients: 3,
		run: func(r *twinRun) {
			r.startLoad()
			time.Sleep(burstFor)
			r.stopLoad()
			if r.fleet {
				forgeNews(r.t, r.rig.redis, fmt.Sprintf("c:%d", aheadVersion))
			}
			for range bursts {
				time.Sleep(r.c.ttl + 300*time.Millisecond) // every snapshot expired
				from := len(r.obs)
				r.startLoad()
				time.Sleep(burstFor)
				r.stopLoad()
				r.samples = append(r.samples, slowestFirstAnswer(r.obs[from:]))
			}
			var times []time.Time
			for _, a := range r.rig.filmsBetween(r.start, time.Now()) {
				times = append(times, a.at)
			}
			r.note("slowest_first_answer_per_burst=%v max_fetches_per_ttl=%d", roundAll(r.samples), maxInWindow(times, r.c.ttl))
			if r.fleet && maxInWindow(times, r.c.ttl) > 2 {
				r.t.Errorf("the fleet made %d fetches within one TTL after the forged message, want at most 2 (one on expiry, one early)", maxInWindow(times, r.c.ttl))
			}
		},
		judge: func(t *testing.T, lone, fleet *twinRun) {
			l, f := median(lone.samples), median(fleet.samples)
			if f > l+missSlack {
				t.Errorf("after the forged message a burst's misses took %v in the fleet (the slowest first answer per burst: %v), %v alone (%v): a miss must cost one fetch, not a wait for a lease",
					f, roundAll(fleet.samples), l, roundAll(lone.samples))
			}
		},
	}
}

// forgeNews publishes msg on the fleet's news channel, found with PUBSUB
// CHANNELS: its name space is a fingerprint the test does not compute.
func forgeNews(t *testing.T, r *fleettest.Redis, msg string) {
	t.Helper()
	rc := r.Client()
	defer rc.Close()
	ctx := context.Background()
	chans, err := rc.PubSubChannels(ctx, "movies:*").Result()
	if err != nil || len(chans) != 1 {
		t.Fatalf("PUBSUB CHANNELS movies:* = %v, %v; want the fleet's one news channel", chans, err)
	}
	n, err := rc.Publish(ctx, chans[0], msg).Result()
	if err != nil || n == 0 {
		t.Fatalf("PUBLISH %s %q = %d, %v; want it heard", chans[0], msg, n, err)
	}
}

// slowestFirstAnswer is the slowest of each replica's first answer in obs:
// the first request of a burst to a replica whose snapshot expired misses.
func slowestFirstAnswer(obs []fleetObs) time.Duration {
	first := map[string]fleetObs{}
	for _, o := range obs {
		if f, ok := first[o.replica]; !ok || o.sent.Before(f.sent) {
			first[o.replica] = o
		}
	}
	var slowest time.Duration
	for _, o := range first {
		slowest = max(slowest, o.got.Sub(o.sent))
	}
	return slowest
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(ds))
	return s[len(s)/2]
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}

// leaderPausedPastItsLease: the replica leading an early refresh is
// stopped (SIGSTOP: a long GC, a starved container) just after its fetch
// reached the upstream, past its lease, and resumed while the replica that
// took over still fetches, so its own fetch commits late; then a replica
// joins, reading what Redis holds. Stopped, it answers nobody, in both
// runs. Settled a lease after it runs again: it fetched nothing alone, so
// no snapshot of its own must expire first, and the only work of the pause
// left to land is its commit.
func leaderPausedPastItsLease() *twinCase {
	const (
		latency = time.Second
		pause   = 1400 * time.Millisecond // past the lease, before the takeover's fetch ends
	)
	return &twinCase{
		name: "a leader paused past its lease",
		ttl:  8 * time.Second, timeout: 4 * time.Second,
		replicas: 3, clients: 4, leaderFault: true,
		run: func(r *twinRun) {
			r.settle = fleetLeaseTerm + monotonicSlack
			r.rig.up.SetBehavior("", ghiblitest.Behavior{Latency: latency})
			films := r.rig.filmsChannel()
			r.startLoad()
			r.nextFetch(films, 5*time.Second, "first fetch")
			time.Sleep(latency + 500*time.Millisecond)
			for len(films) > 0 {
				<-films
			}
			// The next fetch refreshes ahead of expiry (the window is
			// four fetches long, at most half the TTL): its replica leads.
			a := r.nextFetch(films, r.c.ttl, "early refresh")
			leader := r.sender(a)
			r.signal(leader, syscall.SIGSTOP)
			stopped := time.Now()
			defer syscall.Kill(leader.p.cmd.Process.Pid, syscall.SIGCONT) // if the test stops first
			sleepUntil(stopped.Add(pause))
			r.signal(leader, syscall.SIGCONT)
			r.fault("leader-paused", stopped, time.Now())
			// Joins once the takeover has committed, while the fleet
			// still serves the snapshot the refresh was to replace.
			sleepUntil(a.at.Add(fleetLeaseTerm + latency + 500*time.Millisecond))
			r.rig.addReplica(fmt.Sprintf("r%d", r.c.replicas+1))
			r.note("paused=%s paused_after=%v", leader.name, stopped.Sub(a.at).Round(time.Millisecond))
			// Until the snapshot the refresh was to replace has expired.
			sleepUntil(a.at.Add(r.c.ttl/2 + 2*time.Second))
		},
	}
}

// evictionUnderVolatileTTL: Redis runs out of room under maxmemory-policy
// volatile-ttl, kept full by filler keys with long expiries written while
// the load runs, so it evicts the fleet's keys first (the lock, the
// failure record, the snapshot: the shortest expiries), silently. No
// failure, no stale page, no more fetches than lone replicas; monotonic
// reads only a TTL after the eviction stops (Redis losing keys is no
// healthy Redis).
func evictionUnderVolatileTTL() *twinCase {
	return &twinCase{
		name: "Redis evicts the fleet keys under volatile-ttl",
		ttl:  3 * time.Second, timeout: 1500 * time.Millisecond,
		replicas: 3, clients: 4,
		run: func(r *twinRun) {
			r.startLoad()
			time.Sleep(r.c.ttl)
			start := time.Now()
			if r.fleet {
				stop := evictWithFiller(r.t, r.rig.redis, "volatile-ttl")
				time.Sleep(2 * r.c.ttl)
				fleetKeys, all := stop()
				r.note("evicted_fleet_keys=%d evicted_keys=%d", fleetKeys, all)
				if fleetKeys == 0 {
					r.t.Errorf("Redis evicted %d keys, none of the fleet's: the case did not test eviction", all)
				}
			} else {
				time.Sleep(2 * r.c.ttl)
			}
			r.fault("eviction", start, time.Now())
			time.Sleep(r.c.ttl + time.Second)
		},
	}
}

// evictWithFiller sets a small maxmemory under policy and keeps Redis full
// with filler keys that expire in an hour, counting the keys Redis evicts
// (from its keyspace notifications) until stop.
func evictWithFiller(t *testing.T, r *fleettest.Redis, policy string) (stop func() (fleetKeys, all int)) {
	t.Helper()
	rc := r.Client()
	ctx, cancel := context.WithCancel(context.Background())
	info, err := rc.Info(ctx, "memory").Result()
	if err != nil {
		t.Fatalf("INFO memory: %v", err)
	}
	var used int64
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			fmt.Sscan(v, &used)
		}
	}
	// Room for the fleet's keys and some 16 filler keys: each filler
	// write then evicts about one key, from a sample of 5 that often
	// holds one of the fleet's.
	for _, kv := range [][2]string{
		{"notify-keyspace-events", "Ee"},
		{"maxmemory-policy", policy},
		{"maxmemory", fmt.Sprint(used + 1<<20)},
	} {
		if err := rc.ConfigSet(ctx, kv[0], kv[1]).Err(); err != nil {
			t.Fatalf("CONFIG SET %s %s: %v", kv[0], kv[1], err)
		}
	}
	ps := rc.Subscribe(ctx, "__keyevent@0__:evicted")
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatalf("subscribe to evictions: %v", err)
	}
	var fleetKeys, all int
	var wg sync.WaitGroup
	wg.Go(func() {
		for m := range ps.Channel() {
			all++
			if strings.HasPrefix(m.Payload, "movies:") {
				fleetKeys++
			}
		}
	})
	filler := strings.Repeat("f", 64<<10)
	wg.Go(func() {
		for n := 0; ctx.Err() == nil; n++ {
			rc.Set(ctx, fmt.Sprintf("filler:%d", n), filler, time.Hour)
			time.Sleep(20 * time.Millisecond)
		}
	})
	return func() (int, int) {
		cancel()
		ps.Close()
		wg.Wait()
		rc.Close()
		return fleetKeys, all
	}
}

// leaderOfAMissShutsDown: every replica misses at once (a cold start), the
// upstream is slow (2.5s at -upstream-timeout 4s), and the replica leading
// the fetch gets SIGTERM 1.8s into it, with a grace period
// (-shutdown-timeout) shorter than what is left of the fetch: its own
// waiting requests are cut, in both runs (excused: the operator cut them),
// and its fetch is cancelled and released. The waiters take the fetch over
// with a budget of their own, not the 2.2s their wait left: no request
// fails on the other replicas. Settled a lease after the leader exits: the
// takeover is the fleet's own fetch.
func leaderOfAMissShutsDown() *twinCase {
	const (
		latency = 2500 * time.Millisecond
		into    = 1800 * time.Millisecond
	)
	return &twinCase{
		name: "graceful shutdown of the leader of a miss",
		ttl:  8 * time.Second, timeout: 4 * time.Second,
		replicas: 3, clients: 4, leaderFault: true,
		args: []string{"-shutdown-timeout", "300ms", "-drain-delay", "0s"},
		run: func(r *twinRun) {
			r.settle = fleetLeaseTerm + monotonicSlack
			r.rig.up.SetBehavior("", ghiblitest.Behavior{Latency: latency})
			films := r.rig.filmsChannel()
			r.startLoad()
			a := r.nextFetch(films, 5*time.Second, "first fetch")
			leader := r.sender(a)
			sleepUntil(a.at.Add(into))
			r.drain(leader)
			r.excuse = func(o fleetObs) bool { return o.replica == leader.name }
			stopped := time.Now()
			r.signal(leader, syscall.SIGTERM)
			select {
			case <-leader.p.done:
			case <-time.After(10 * time.Second):
				r.t.Fatalf("%s still running 10s after SIGTERM", leader.name)
			}
			r.fault("leader-sigterm", stopped, time.Now())
			r.note("leader=%s exited_after=%v", leader.name, time.Since(stopped).Round(time.Millisecond))
			time.Sleep(latency + 2*time.Second)
		},
	}
}

// redisStallsExecution: Redis stops executing for 300ms (DEBUG SLEEP: a
// fork, a slow command, a stalled disk) each time the fleet fetches, at
// most every 700ms, so its commits run late, after their callers gave up.
// No failure, no stale page, no more fetches than lone replicas; monotonic
// reads once the fleet shares again: a TTL after the stalls stop and after
// the last fetch a replica made alone. A replica whose calls timed out
// fetches alone until its breaker lets a call through again, which may be
// a cooldown (1 s, doubled by each probe a stall failed) after the stalls
// stop; what it fetched alone is served until it expires, on its own
// deadline, not switched with the fleet's (docs/fleet.md, "The promises").
// TestFleet_RedisFaults settles the same way.
func redisStallsExecution() *twinCase {
	const (
		stall = 300 * time.Millisecond
		every = 700 * time.Millisecond
		// after is how long both runs go on once the stalls stop: a TTL
		// for what was fetched during them to expire, the longest
		// cooldown six seconds of stalls can leave a breaker in (4 s),
		// and a second judged after both.
		after = 3*time.Second + 4*time.Second + time.Second
	)
	return &twinCase{
		name: "Redis stalls execution",
		ttl:  3 * time.Second, timeout: 1500 * time.Millisecond,
		replicas: 3, clients: 4,
		redisArgs: []string{"--enable-debug-command", "local"},
		run: func(r *twinRun) {
			// The upstream takes a little, so a stall sent as a fetch
			// arrives is running when its commit comes.
			r.rig.up.SetBehavior("", ghiblitest.Behavior{Latency: 100 * time.Millisecond})
			r.startLoad()
			time.Sleep(r.c.ttl)
			start := time.Now()
			if !r.fleet {
				time.Sleep(2 * r.c.ttl)
				r.fault("redis-stalls", start, time.Now())
				time.Sleep(after)
				return
			}
			alone := r.rig.watchFallbacks()
			stop := stallOnEachFetch(r.t, r.rig, stall, every)
			time.Sleep(2 * r.c.ttl)
			r.note("stalls=%d", stop())
			end := time.Now()
			r.fault("redis-stalls", start, end)
			time.Sleep(after)
			alone.stop()
			if last := alone.last(); last.After(end) {
				// Fetched alone after the stalls: not yet sharing.
				r.fault("fetching-alone", end, last)
				r.note("fetched_alone_until=+%v", last.Sub(end).Round(time.Millisecond))
				if judged := end.Add(after).Sub(last.Add(r.c.ttl)); judged < time.Second/2 {
					r.t.Errorf("a replica still fetched alone %v after the stalls stopped: sharing did not resume", last.Sub(end).Round(time.Millisecond))
				}
			}
		},
	}
}

// stallOnEachFetch makes Redis sleep for stall (DEBUG SLEEP) as each /films
// request reaches the fake, at most once every every, until stop, which
// returns how many stalls there were.
func stallOnEachFetch(t *testing.T, rig *fleetRig, stall, every time.Duration) (stop func() int) {
	t.Helper()
	rc := redis.NewClient(&redis.Options{Addr: rig.redis.Addr, ReadTimeout: stall + time.Second})
	if err := rc.Do(context.Background(), "DEBUG", "SLEEP", "0").Err(); err != nil {
		t.Fatalf("DEBUG SLEEP: %v (redis-server needs --enable-debug-command local)", err)
	}
	var (
		mu     sync.Mutex
		next   time.Time
		count  int
		armed  = true
		stalls sync.WaitGroup
	)
	seconds := fmt.Sprintf("%.3f", stall.Seconds())
	rig.setOnFilms(func(arrival) {
		mu.Lock()
		defer mu.Unlock()
		if !armed || time.Now().Before(next) {
			return
		}
		next = time.Now().Add(every)
		count++
		stalls.Go(func() {
			if err := rc.Do(context.Background(), "DEBUG", "SLEEP", seconds).Err(); err != nil {
				t.Errorf("DEBUG SLEEP %s: %v", seconds, err)
			}
		})
	})
	return func() int {
		mu.Lock()
		armed = false
		mu.Unlock()
		rig.setOnFilms(nil)
		stalls.Wait()
		rc.Close()
		return count
	}
}
