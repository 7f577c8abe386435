//go:build linux

package e2e

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/movies-dev/movies/pkg/ghibli/ghiblitest"
)

// TestFleet_SecondEdition runs the six cases issue 15 found the first
// edition of the fleet failing, on real replica processes and a real
// redis-server. Each runs twice: as a fleet, and as its control, the same
// replicas without Redis. Both are judged from the fake upstream's own
// timeline and counts and the clients' observations; a fleet that does
// worse than its control, in failures, staleness or fetches, fails.
func TestFleet_SecondEdition(t *testing.T) {
	skipIfShort(t)
	for _, c := range []struct {
		name string
		run  func(t *testing.T, withRedis bool) caseResult
	}{
		{"slow upstream", caseSlowUpstream},
		{"graceful shutdown of the leader", caseLeaderShutdown},
		{"the end of an outage", caseOutageEnd},
		{"Retry-After for the fleet", caseRetryAfter},
		{"Redis's clock steps back", caseRedisClockStep},
		{"a generation far ahead", caseGenerationAhead},
	} {
		t.Run(c.name, func(t *testing.T) {
			var lone, fleet caseResult
			t.Run("lone", func(t *testing.T) { lone = c.run(t, false) })
			t.Run("fleet", func(t *testing.T) { fleet = c.run(t, true) })
			logSummary(t, fmt.Sprintf("fleet2 case=%q lone: %v | fleet: %v", c.name, lone, fleet))
			if fleet.failed > lone.failed || fleet.stale > lone.stale {
				t.Errorf("the fleet did worse than its control: fleet %v, lone %v", fleet, lone)
			}
			if fleet.fetches > lone.fetches {
				t.Errorf("the fleet fetched more than lone replicas: fleet %v, lone %v", fleet, lone)
			}
		})
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

// caseResult is what one run of a case measured.
type caseResult struct {
	fleetFigures
	fetches int    // /films requests the fake received during the load
	extra   string // what the case measures besides
	obs     []fleetObs
}

func (r caseResult) String() string {
	return fmt.Sprintf("%v fetches=%d %s", r.fleetFigures, r.fetches, r.extra)
}

// runLoad runs clients over rig for d after start, calls during(load)
// meanwhile (it may block), and judges what the clients saw against ttl.
func runLoad(t *testing.T, rig *fleetRig, clients int, d, ttl time.Duration, during func(*fleetLoad)) caseResult {
	t.Helper()
	start := time.Now()
	load := rig.startLoad(clients, "case")
	if during != nil {
		during(load)
	}
	if left := d - time.Since(start); left > 0 {
		time.Sleep(left)
	}
	obs, _ := load.stop()
	judgeFleet(obs, rig.timeline, ttl)
	return caseResult{
		fleetFigures: figures(obs, func(fleetObs) bool { return true }),
		fetches:      len(rig.filmsBetween(start, time.Now())),
		obs:          obs,
	}
}

// caseSlowUpstream: a healthy upstream slower than a lease (2.9s at
// -upstream-timeout 4s). The first edition's second replica took the lock
// over at the lease and timed out: a 503 at 4s. Now the leader renews its
// lease and the waiter waits for it: no request fails.
func caseSlowUpstream(t *testing.T, withRedis bool) caseResult {
	const ttl = 8 * time.Second
	rig := newFleetRig(t, withRedis, "-ttl", ttl.String(), "-upstream-timeout", "4s")
	rig.up.SetBehavior("", ghiblitest.Behavior{Latency: 2900 * time.Millisecond})
	rig.addReplica("r1")
	rig.addReplica("r2")
	r := runLoad(t, rig, 4, 12*time.Second, ttl, nil)
	if r.failed > 0 {
		t.Errorf("%d requests failed with a healthy upstream: %v", r.failed, r.problems)
	}
	return r
}

// caseLeaderShutdown: the replica leading an early refresh (a fetch no
// request of its own waits for) gets SIGTERM while the other waits for
// that fetch. The first edition published the cancelled fetch as a
// failure: the waiter answered 503 for a while. Now it is released and the
// waiter fetches at once.
func caseLeaderShutdown(t *testing.T, withRedis bool) caseResult {
	const (
		ttl     = 6 * time.Second
		latency = 2 * time.Second
	)
	rig := newFleetRig(t, withRedis, "-ttl", ttl.String(), "-upstream-timeout", "3s", "-drain-delay", "0s")
	rig.up.SetBehavior("", ghiblitest.Behavior{Latency: latency})
	rig.addReplica("r1")
	rig.addReplica("r2")
	films := rig.filmsChannel()
	var takeover time.Duration
	r := runLoad(t, rig, 4, 14*time.Second, ttl, func(*fleetLoad) {
		// The first fetches serve the first misses; wait for the first
		// early refresh, and stop its leader mid-fetch.
		time.Sleep(latency + 500*time.Millisecond)
		for len(films) > 0 {
			<-films
		}
		var refresh arrival
		select {
		case refresh = <-films:
		case <-time.After(ttl):
			t.Fatal("no early refresh within a TTL")
		}
		leader := rig.byName(refresh.by)
		if leader == nil {
			t.Fatalf("no replica owns the socket of the fetch from %s", refresh.remote)
		}
		rig.mu.Lock()
		rig.live = slices.DeleteFunc(rig.live, func(x *replica) bool { return x == leader })
		rig.mu.Unlock()
		for leader.inflight.Load() > 0 {
			time.Sleep(time.Millisecond)
		}
		stopped := time.Now()
		if err := syscall.Kill(leader.p.cmd.Process.Pid, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case a := <-films:
			takeover = a.at.Sub(stopped)
		case <-time.After(ttl):
			takeover = -1
		}
		if err := leader.p.wait(t, 10*time.Second); err != nil {
			t.Errorf("%s exited with %v after SIGTERM", leader.name, err)
		}
	})
	r.extra = fmt.Sprintf("next_fetch_after_sigterm=%v", takeover.Round(time.Millisecond))
	if r.failed > 0 {
		t.Errorf("%d requests failed after another replica's graceful shutdown: %v", r.failed, r.problems)
	}
	if withRedis && (takeover < 0 || takeover > time.Second) {
		t.Errorf("the waiter's own fetch came %v after the leader's SIGTERM, want at once (the lock released)", takeover)
	}
	return r
}

// caseOutageEnd: the upstream answers 503 with Retry-After: 4 long enough
// for every replica's snapshot to expire, at different times; then it
// recovers. The first edition's second replica kept answering 503 for
// seconds while a fresh shared snapshot sat in Redis. Now news of it ends
// every replica's backoff: they recover within a second of each other.
func caseOutageEnd(t *testing.T, withRedis bool) caseResult {
	const ttl = 4 * time.Second
	rig := newFleetRig(t, withRedis, "-ttl", ttl.String(), "-upstream-timeout", "2s")
	rig.addReplica("r1")
	rig.addReplica("r2")
	rig.addReplica("r3")
	var ended time.Time
	r := runLoad(t, rig, 6, 16*time.Second, ttl, func(*fleetLoad) {
		time.Sleep(time.Second)
		rig.up.SetBehavior("", ghiblitest.Behavior{Status: http.StatusServiceUnavailable, RetryAfter: "4"})
		time.Sleep(ttl + 3*time.Second)
		rig.up.SetBehavior("", ghiblitest.Behavior{})
		ended = time.Now()
	})
	// When each replica served again after the outage ended: from the
	// clients' own observations.
	spread := recoverySpread(t, r.obs, ended)
	r.extra = fmt.Sprintf("recovery_spread=%v", spread.Round(time.Millisecond))
	// Failures during the outage are the upstream's, for fleet and control
	// alike; what the fleet is judged by is the spread.
	r.extra += fmt.Sprintf(" failed_in_outage=%d", r.failed)
	r.failed, r.problems = 0, nil
	if withRedis && spread > time.Second {
		t.Errorf("the replicas recovered %v apart after the outage, want within 1s", spread)
	}
	return r
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

// caseRetryAfter: the upstream answers 503 with Retry-After: 6 under load
// on three replicas. The first edition's news of a failure carried no
// retry time, so the fleet asked about once per replica per Retry-After.
// Now the wait holds for the whole fleet: one request per Retry-After.
func caseRetryAfter(t *testing.T, withRedis bool) caseResult {
	const (
		ttl = 4 * time.Second
		ra  = 6 * time.Second
	)
	rig := newFleetRig(t, withRedis, "-ttl", ttl.String(), "-upstream-timeout", "2s")
	rig.addReplica("r1")
	rig.addReplica("r2")
	rig.addReplica("r3")
	var from, to time.Time
	r := runLoad(t, rig, 6, 18*time.Second, ttl, func(*fleetLoad) {
		time.Sleep(time.Second)
		rig.up.SetBehavior("", ghiblitest.Behavior{Status: http.StatusServiceUnavailable, RetryAfter: strconv.Itoa(int(ra / time.Second))})
		from = time.Now()
		time.Sleep(16 * time.Second)
		to = time.Now()
		rig.up.SetBehavior("", ghiblitest.Behavior{})
	})
	asked := rig.filmsBetween(from, to)
	closest := time.Duration(math.MaxInt64)
	for i := 1; i < len(asked); i++ {
		closest = min(closest, asked[i].at.Sub(asked[i-1].at))
	}
	r.extra = fmt.Sprintf("asked_during_outage=%d closest=%v", len(asked), closest.Round(time.Millisecond))
	r.extra += fmt.Sprintf(" failed_in_outage=%d", r.failed)
	r.failed, r.problems = 0, nil // the upstream's failures, for both
	if withRedis && len(asked) > 1 && closest < ra-200*time.Millisecond {
		t.Errorf("the fleet asked the upstream twice %v apart while it said Retry-After %v: %d requests in %v", closest, ra, len(asked), to.Sub(from).Round(time.Second))
	}
	return r
}

// caseRedisClockStep: Redis's clock steps back 4s after a commit (an NTP
// step, a failover to a node whose clock is behind). Redis keeps expiries
// as absolute times, so every key's TTL grows by 4s; the test makes that
// happen with PEXPIRE (it cannot step a shared machine's clock). The first
// edition trusted the PTTL and served a page 7.77s old at a 6s TTL. Now a
// shared deadline is also bounded by the writer's fetch start: no stale
// page, even on a replica that starts after the step and reads Redis.
func caseRedisClockStep(t *testing.T, withRedis bool) caseResult {
	const ttl = 6 * time.Second
	rig := newFleetRig(t, withRedis, "-ttl", ttl.String())
	rig.addReplica("r1")
	rig.addReplica("r2")
	films := rig.filmsChannel()
	r := runLoad(t, rig, 4, 14*time.Second, ttl, func(*fleetLoad) {
		select {
		case <-films:
		case <-time.After(ttl):
			t.Fatal("no fetch")
		}
		time.Sleep(300 * time.Millisecond) // committed
		if withRedis {
			rc := rig.redis.Client()
			defer rc.Close()
			stepBack(t, rc, 4*time.Second)
		}
		rig.addReplica("r3") // reads Redis after the step
	})
	if r.stale > 0 {
		t.Errorf("%d pages past the TTL after Redis's clock stepped back: %v", r.stale, r.problems)
	}
	return r
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

// caseGenerationAhead: the snapshot's generation far ahead of the counter
// (set by hand, or the counter evicted under allkeys-lru while a clock ran
// behind). The first edition fenced every commit from then on and kept
// the lock: every miss waited out a lease, for ever. Now the next lock's
// generation is above the snapshot's: it heals at once, nobody waits.
func caseGenerationAhead(t *testing.T, withRedis bool) caseResult {
	const ttl = 4 * time.Second
	rig := newFleetRig(t, withRedis, "-ttl", ttl.String(), "-upstream-timeout", "2s")
	rig.addReplica("r1")
	rig.addReplica("r2")
	rig.addReplica("r3")
	r := runLoad(t, rig, 6, 3*ttl, ttl, func(*fleetLoad) {
		time.Sleep(time.Second)
		if !withRedis {
			return
		}
		rc := rig.redis.Client()
		defer rc.Close()
		ctx := context.Background()
		keys, _ := rc.Keys(ctx, "movies:{*}:snapshot:gen").Result()
		if len(keys) != 1 {
			t.Fatalf("snapshot generation keys: %v", keys)
		}
		ahead := time.Now().UnixMilli() * 100
		if err := rc.SetArgs(ctx, keys[0], ahead, redis.SetArgs{KeepTTL: true}).Err(); err != nil {
			t.Fatal(err)
		}
	})
	if r.failed > 0 || r.p99 > time.Second {
		t.Errorf("after the generation jumped ahead: %d failed, p99 %v; want none failed and nobody waiting out a lease", r.failed, r.p99)
	}
	// Healed: at most the design's fetches (2 per TTL, +1 for the window
	// cut at each end) over the run.
	if bound := 2*3 + 2; withRedis && r.fetches > bound {
		t.Errorf("%d fetches in three TTLs after the generation jumped, want at most %d: it did not heal", r.fetches, bound)
	}
	return r
}
