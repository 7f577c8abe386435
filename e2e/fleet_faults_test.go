//go:build linux

package e2e

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/movies-dev/movies/pkg/ghibli/ghiblitest"
)

// TestFleet_KeepsSharingThroughFaults runs faults through which the fleet
// must go on sharing one fetch, one backoff or one switch, each beside its
// lone control (twinCase; compare lists what every fleet is held to): a
// leader slower than its lease, a leader shut down mid-refresh, the end of
// an upstream outage, an upstream's Retry-After, Redis's clock stepping
// back, and a snapshot version set far ahead of the counter. Each also
// checks the sharing it is about.
func TestFleet_KeepsSharingThroughFaults(t *testing.T) {
	skipIfShort(t)
	for _, c := range []*twinCase{
		slowLeader(),
		leaderShutsDownMidRefresh(),
		outageEnds(),
		retryAfterForTheFleet(),
		redisClockStepsBack(),
		versionFarAhead(),
		versionFarAheadDuringAFetch(),
	} {
		t.Run(c.name, func(t *testing.T) { c.runTwins(t) })
	}
}

// filmsChannel delivers the fake's /films requests (the last 16 unread).
func (rig *fleetRig) filmsChannel() <-chan arrival {
	films := make(chan arrival, 16)
	rig.setOnFilms(func(a arrival) {
		select {
		case films <- a:
		default:
		}
	})
	return films
}

// slowLeader: a healthy upstream slower than a lease (2.9s at
// -upstream-timeout 4s). The leader renews its lease and the waiters wait
// for it rather than take its fetch over and time out: no request fails.
func slowLeader() *twinCase {
	return &twinCase{
		name: "a leader slower than its lease",
		ttl:  8 * time.Second, timeout: 4 * time.Second,
		replicas: 2, clients: 4,
		run: func(r *twinRun) {
			r.rig.up.SetBehavior("", ghiblitest.Behavior{Latency: 2900 * time.Millisecond})
			r.startLoad()
			time.Sleep(12 * time.Second)
		},
	}
}

// leaderShutsDownMidRefresh: the replica leading an early refresh (a fetch
// no request of its own waits for) gets SIGTERM while the other waits for
// that fetch. Its fetch is cancelled and released, not published as a
// failure: the waiter takes the lock at once, and nobody answers 503.
// Settled a lease after the leader exits: the takeover is the fleet's own
// fetch.
func leaderShutsDownMidRefresh() *twinCase {
	const latency = 2 * time.Second
	return &twinCase{
		name: "graceful shutdown of the leader mid-refresh",
		ttl:  6 * time.Second, timeout: 3 * time.Second,
		replicas: 2, clients: 4, leaderFault: true,
		args: []string{"-drain-delay", "0s"},
		run: func(r *twinRun) {
			r.settle = fleetLeaseTerm + monotonicSlack
			r.rig.up.SetBehavior("", ghiblitest.Behavior{Latency: latency})
			films := r.rig.filmsChannel()
			r.startLoad()
			// The first fetches serve the first misses; wait for the
			// first early refresh, and stop its leader mid-fetch.
			time.Sleep(latency + 500*time.Millisecond)
			for len(films) > 0 {
				<-films
			}
			refresh := r.nextFetch(films, r.c.ttl, "early refresh")
			leader := r.sender(refresh)
			r.drain(leader)
			for deadline := time.Now().Add(time.Second); leader.inflight.Load() > 0; time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					r.t.Fatalf("%s still had %d requests in flight a second after leaving the rotation", leader.name, leader.inflight.Load())
				}
			}
			stopped := time.Now()
			r.signal(leader, syscall.SIGTERM)
			var takeover time.Duration
			select {
			case a := <-films:
				takeover = a.at.Sub(stopped)
			case <-time.After(r.c.ttl):
				takeover = -1
			}
			if err := leader.p.wait(r.t, 10*time.Second); err != nil {
				r.t.Errorf("%s exited with %v after SIGTERM", leader.name, err)
			}
			r.fault("leader-sigterm", stopped, time.Now())
			r.note("next_fetch_after_sigterm=%v", takeover.Round(time.Millisecond))
			if r.fleet && (takeover < 0 || takeover > time.Second) {
				r.t.Errorf("the waiter's own fetch came %v after the leader's SIGTERM, want at once (the lock released)", takeover)
			}
			sleepUntil(r.start.Add(14 * time.Second))
		},
	}
}

// outageEnds: the upstream answers 503 with Retry-After: 4 long enough for
// every replica's snapshot to expire, at different times; then it
// recovers. Failures until the last backoff has run out are the
// upstream's, in both runs. News of the first fresh snapshot ends every
// replica's backoff: the fleet's replicas serve again within a second of
// each other.
func outageEnds() *twinCase {
	const ra = 4 * time.Second
	return &twinCase{
		name: "the end of an outage",
		ttl:  4 * time.Second, timeout: 2 * time.Second,
		replicas: 3, clients: 6,
		run: func(r *twinRun) {
			r.startLoad()
			time.Sleep(time.Second)
			r.rig.up.SetBehavior("", ghiblitest.Behavior{Status: http.StatusServiceUnavailable, RetryAfter: strconv.Itoa(int(ra / time.Second))})
			start := time.Now()
			time.Sleep(r.c.ttl + 3*time.Second)
			r.rig.up.SetBehavior("", ghiblitest.Behavior{})
			ended := time.Now()
			r.fault("outage", start, ended)
			r.mark("ended", ended)
			r.excuse = func(o fleetObs) bool { return !o.sent.Before(start) && o.sent.Before(ended.Add(ra+time.Second)) }
			sleepUntil(r.start.Add(16 * time.Second))
		},
		judge: func(t *testing.T, lone, fleet *twinRun) {
			l := recoverySpread(t, lone.obs, lone.marks["ended"])
			f := recoverySpread(t, fleet.obs, fleet.marks["ended"])
			logSummary(t, fmt.Sprintf("twins case=%q recovery_spread lone=%v fleet=%v", lone.c.name, l.Round(time.Millisecond), f.Round(time.Millisecond)))
			if f > time.Second {
				t.Errorf("the fleet's replicas recovered %v apart after the outage, want within 1s", f)
			}
		},
	}
}

// recoverySpread is how far apart the replicas first answered 200 to a
// request sent after ended, as the clients saw it.
func recoverySpread(t *testing.T, obs []fleetObs, ended time.Time) time.Duration {
	t.Helper()
	first := map[string]time.Time{}
	for _, o := range obs {
		if o.err == nil && o.sent.After(ended) {
			if f, ok := first[o.replica]; !ok || o.got.Before(f) {
				first[o.replica] = o.got
			}
		}
	}
	if len(first) == 0 {
		t.Error("no replica served after the outage ended")
		return math.MaxInt64
	}
	var lo, hi time.Time
	for _, at := range first {
		if lo.IsZero() || at.Before(lo) {
			lo = at
		}
		if at.After(hi) {
			hi = at
		}
	}
	return hi.Sub(lo)
}

// retryAfterForTheFleet: the upstream answers 503 with Retry-After: 6
// under load on three replicas. The wait holds for the whole fleet: the
// fleet asks the upstream once per Retry-After, where lone replicas ask
// once each. Failures from the outage on are the upstream's, in both runs.
func retryAfterForTheFleet() *twinCase {
	const ra = 6 * time.Second
	return &twinCase{
		name: "Retry-After for the fleet",
		ttl:  4 * time.Second, timeout: 2 * time.Second,
		replicas: 3, clients: 6,
		run: func(r *twinRun) {
			r.startLoad()
			time.Sleep(time.Second)
			r.rig.up.SetBehavior("", ghiblitest.Behavior{Status: http.StatusServiceUnavailable, RetryAfter: strconv.Itoa(int(ra / time.Second))})
			from := time.Now()
			r.excuse = func(o fleetObs) bool { return !o.sent.Before(from) }
			time.Sleep(16 * time.Second)
			to := time.Now()
			r.rig.up.SetBehavior("", ghiblitest.Behavior{})
			r.fault("outage", from, to)
			asked := r.rig.filmsBetween(from, to)
			closest := time.Duration(math.MaxInt64)
			for i := 1; i < len(asked); i++ {
				closest = min(closest, asked[i].at.Sub(asked[i-1].at))
			}
			r.note("asked_during_outage=%d closest=%v", len(asked), closest.Round(time.Millisecond))
			if r.fleet && len(asked) > 1 && closest < ra-200*time.Millisecond {
				r.t.Errorf("the fleet asked the upstream twice %v apart while it said Retry-After %v: %d requests in %v", closest, ra, len(asked), to.Sub(from).Round(time.Second))
			}
			time.Sleep(time.Second)
		},
	}
}

// redisClockStepsBack: Redis's clock steps back 4s after a commit (an NTP
// step, a failover to a node whose clock is behind). Redis keeps expiries
// as absolute times, so every key's TTL grows by 4s; the test makes that
// happen with PEXPIRE (it cannot step a shared machine's clock). A shared
// deadline is also bounded by the writer's fetch start: no stale page
// (compare), even on a replica that starts after the step and reads Redis.
func redisClockStepsBack() *twinCase {
	return &twinCase{
		name: "Redis's clock steps back",
		ttl:  6 * time.Second, timeout: 3 * time.Second,
		replicas: 2, clients: 4,
		run: func(r *twinRun) {
			films := r.rig.filmsChannel()
			r.startLoad()
			r.nextFetch(films, r.c.ttl, "first fetch")
			time.Sleep(300 * time.Millisecond) // committed
			if r.fleet {
				rc := r.rig.redis.Client()
				defer rc.Close()
				stepBack(r.t, rc, 4*time.Second)
			}
			r.fault("clock-step", time.Now(), time.Now())
			r.rig.addReplica("r3") // reads Redis after the step
			sleepUntil(r.start.Add(14 * time.Second))
		},
	}
}

// stepBack lengthens every fleet key's TTL by d, as Redis's clock stepping
// back by d does.
func stepBack(t *testing.T, rc *redis.Client, d time.Duration) {
	t.Helper()
	ctx := context.Background()
	keys, err := rc.Keys(ctx, "movies:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	stepped := 0
	for _, k := range keys {
		if pttl, err := rc.PTTL(ctx, k).Result(); err == nil && pttl > 0 {
			rc.PExpire(ctx, k, pttl+d)
			stepped++
		}
	}
	if stepped == 0 {
		t.Fatal("no key with an expiry to step")
	}
}

// versionFarAhead: the snapshot's version set far ahead of the
// counter (by hand, or the counter evicted under allkeys-lru while a clock
// ran behind). The next lock's version is above the snapshot's, so
// commits are not fenced and nobody waits out a lease: p99 under a second,
// and no more than the design's fetches (2 per TTL, and one for the window
// cut at each end) over three TTLs.
func versionFarAhead() *twinCase {
	return &twinCase{
		name: "a version far ahead",
		ttl:  4 * time.Second, timeout: 2 * time.Second,
		replicas: 3, clients: 6,
		run: func(r *twinRun) {
			r.startLoad()
			time.Sleep(time.Second)
			if r.fleet {
				setVersionAhead(r)
			}
			r.fault("version-ahead", time.Now(), time.Now())
			sleepUntil(r.start.Add(3 * r.c.ttl))
		},
		judge: func(t *testing.T, _, fleet *twinRun) {
			if fleet.all.p99 > time.Second {
				t.Errorf("after the version jumped ahead the fleet's p99 was %v, want under a second: nobody waiting out a lease", fleet.all.p99)
			}
			if bound := 2*3 + 2; len(fleet.films) > bound {
				t.Errorf("%d fetches in three TTLs after the version jumped, want at most %d: it did not heal", len(fleet.films), bound)
			}
		},
	}
}

// setVersionAhead sets the version of the fleet's snapshot far ahead of
// the counter, keeping its data and expiry.
func setVersionAhead(r *twinRun) {
	rc := r.rig.redis.Client()
	defer rc.Close()
	ctx := context.Background()
	keys, _ := rc.Keys(ctx, "movies:{*}:snapshot").Result()
	if len(keys) != 1 {
		r.t.Errorf("snapshot keys: %v", keys)
		return
	}
	// The version is the first field of the snapshot's header
	// ("<version> <fetch start ms> <fetch ms>\n", pkg/fleet).
	v, err := rc.Get(ctx, keys[0]).Result()
	head, data, ok := strings.Cut(v, "\n")
	fields := strings.Fields(head)
	if err != nil || !ok || len(fields) != 3 {
		r.t.Errorf("the snapshot %.40q (%v) has no header", v, err)
		return
	}
	fields[0] = strconv.FormatInt(time.Now().UnixMilli()*100, 10)
	if err := rc.SetArgs(ctx, keys[0], strings.Join(fields, " ")+"\n"+data, redis.SetArgs{KeepTTL: true}).Err(); err != nil {
		r.t.Error(err)
	}
}

// versionFarAheadDuringAFetch: the snapshot the fleet holds is set far
// ahead in version while a refresh's fetch is at the upstream (simulator
// seed 118836). That snapshot carries nothing newer than what the
// fetching replica holds, so it must not fence the commit: were it to,
// the fleet would serve the old data, which is in its refresh window
// already, and fetch again about a second later (measured with the old
// fence put back: 997 ms, 5 fetches in two TTLs), where its control's
// replicas each wait a TTL less the window (here half a TTL: 2 s). The
// judge: the fleet's next fetch comes at least 3/8 of a TTL (1.5 s) after
// the one the fault met, midway between the two.
func versionFarAheadDuringAFetch() *twinCase {
	return &twinCase{
		name: "a version far ahead, set during a fetch",
		ttl:  4 * time.Second, timeout: 2 * time.Second,
		replicas: 3, clients: 6,
		run: func(r *twinRun) {
			var n atomic.Int64
			var set atomic.Pointer[time.Time]
			if r.fleet {
				r.rig.setOnFilms(func(a arrival) {
					if n.Add(1) == 2 { // a refresh: the fleet holds the first fetch's snapshot
						setVersionAhead(r)
						now := time.Now()
						set.Store(&now)
					}
				})
			}
			r.startLoad()
			sleepUntil(r.start.Add(2 * r.c.ttl))
			if r.fleet {
				r.rig.setOnFilms(nil)
				if at := set.Load(); at != nil {
					r.fault("version-ahead", *at, *at)
				} else {
					r.t.Error("no second fetch to set the version ahead during")
				}
			}
		},
		judge: func(t *testing.T, _, fleet *twinRun) {
			if len(fleet.films) < 3 {
				t.Fatalf("the fleet fetched %d times in two TTLs, want at least 3", len(fleet.films))
			}
			if gap, want := fleet.films[2].at.Sub(fleet.films[1].at), 3*fleet.c.ttl/8; gap < want {
				t.Errorf("the fleet fetched again %v after the fetch whose snapshot's version jumped ahead, want at least 3/8 of a TTL (%v): the old data fenced the new", gap, want)
			}
		},
	}
}
