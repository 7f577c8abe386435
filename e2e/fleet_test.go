//go:build linux

// The fleet tests prove the fleet's promises (docs/fleet.md) on what
// ships: replicas of the real binary share a real redis-server, in front
// of the in-process fake upstream whose data changes every 300ms, under
// round-robin load. They judge the fleet
// from the fake's own record (its marker timeline and the /films requests
// it received), never from the servers' metrics, except to check that a
// fenced commit happened at all, to explain a failure, and to know when
// replicas fetched alone (where monotonic reads are not promised).
// Linux-only: they ask /proc which replica owns the socket an upstream
// request came on, and kill and stop replicas with signals.

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
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
	"github.com/redis/go-redis/v9"

	"github.com/movies-dev/movies/pkg/fleet/fleettest"
	"github.com/movies-dev/movies/pkg/ghibli"
	"github.com/movies-dev/movies/pkg/ghibli/ghiblitest"
)

const (
	// monotonicSlack is how long after a newer snapshot was served an older
	// one may still be (the time news takes to travel the fleet).
	monotonicSlack = 250 * time.Millisecond
	// fleetMarkerEvery is how often the fake's data changes.
	fleetMarkerEvery = 300 * time.Millisecond
)

// fleetRig is a fleet under test: the fake upstream with its changing
// data, a redis-server (nil: the replicas run alone) and the replicas.
type fleetRig struct {
	t        *testing.T
	up       *ghiblitest.Server
	timeline *markerTimeline
	redis    *fleettest.Redis
	args     []string

	mu       sync.Mutex
	all      []*replica
	live     []*replica // in the load balancer's rotation
	next     int
	arrivals []arrival     // /films requests, as the fake received them
	onFilms  func(arrival) // called in the fake's handler, after recording
}

// replica is one movies process.
type replica struct {
	name     string
	p        *process
	url      string
	inflight atomic.Int64 // the load's requests to it not yet answered
}

// arrival is one /films request at the fake: every fetch makes exactly one
// unless it fails (the client retries only a reset or a 5xx).
type arrival struct {
	at     time.Time
	remote string
	by     string // the replica that sent it, from /proc; "" if unknown
}

// newFleetRig starts the fake upstream, whose first film's title carries a
// marker that changes every fleetMarkerEvery, and, with withRedis, a
// redis-server. args are the replicas' flags besides -upstream and -redis.
func newFleetRig(t *testing.T, withRedis bool, args ...string) *fleetRig {
	t.Helper()
	skipIfShort(t)
	var r *fleettest.Redis
	url := ""
	if withRedis {
		r = fleettest.Start(t)
		url = r.URL
	}
	rig := newFleetRigOn(t, url, args...)
	rig.redis = r
	return rig
}

// newFleetRigOn is newFleetRig on a Redis the caller started (a Cluster, a
// Sentinel set, TLS: e2e/deployments_test.go), at redisURL ("" runs the
// replicas alone); args may carry the flags that deployment needs.
func newFleetRigOn(t *testing.T, redisURL string, args ...string) *fleetRig {
	t.Helper()
	skipIfShort(t)
	rig := &fleetRig{t: t, up: startFake(t), timeline: &markerTimeline{}}
	filmIndex := slices.IndexFunc(ghiblitest.Bundled().Films, func(f map[string]any) bool { return f["id"] == castleID })
	rig.up.Update(func(d *ghiblitest.Data) { d.Films[filmIndex]["title"] = "Castle in the Sky #0" })
	rig.up.OnRequest(func(r *http.Request) {
		if r.URL.Path != ghibli.EndpointFilms {
			return
		}
		a := arrival{at: time.Now(), remote: r.RemoteAddr}
		rig.mu.Lock()
		procs := make(map[string]int, len(rig.all))
		for _, rep := range rig.all {
			if !rep.p.exited() {
				procs[rep.name] = rep.p.cmd.Process.Pid
			}
		}
		rig.mu.Unlock()
		a.by = socketOwner(a.remote, procs) // the replica is blocked on this request: its socket is there
		rig.mu.Lock()
		rig.arrivals = append(rig.arrivals, a)
		hook := rig.onFilms
		rig.mu.Unlock()
		if hook != nil {
			hook(a)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		rig.timeline.changeEvery(ctx, rig.up, filmIndex, fleetMarkerEvery)
	}()
	t.Cleanup(func() { cancel(); <-done }) // before the fake closes: cleanups run last-in first-out
	rig.args = append([]string{"-upstream", rig.up.URL}, args...)
	if redisURL != "" {
		rig.args = append(rig.args, "-redis", redisURL)
	}
	return rig
}

// addReplica starts a replica and puts it in the rotation.
func (rig *fleetRig) addReplica(name string) *replica {
	rig.t.Helper()
	p, url := startMovies(rig.t, name, rig.args...)
	r := &replica{name: name, p: p, url: url}
	rig.mu.Lock()
	defer rig.mu.Unlock()
	rig.all = append(rig.all, r)
	rig.live = append(rig.live, r)
	return r
}

// pick is the load balancer: round robin over the rotation. The request
// counts as in flight from here, so drain cannot miss it.
func (rig *fleetRig) pick() *replica {
	rig.mu.Lock()
	defer rig.mu.Unlock()
	r := rig.live[rig.next%len(rig.live)]
	rig.next++
	r.inflight.Add(1)
	return r
}

// byName returns the replica called name, or nil.
func (rig *fleetRig) byName(name string) *replica {
	rig.mu.Lock()
	defer rig.mu.Unlock()
	for _, r := range rig.all {
		if r.name == name {
			return r
		}
	}
	return nil
}

// kill takes r out of the rotation, waits for the load's requests to it to
// be answered, as a load balancer draining it would, and SIGKILLs it: what
// is cut is only the replica's own work, never a client's request.
func (rig *fleetRig) kill(r *replica) {
	rig.t.Helper()
	rig.mu.Lock()
	rig.live = slices.DeleteFunc(rig.live, func(x *replica) bool { return x == r })
	rig.mu.Unlock()
	for deadline := time.Now().Add(time.Second); r.inflight.Load() > 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			rig.t.Fatalf("%s still had %d requests in flight a second after leaving the rotation", r.name, r.inflight.Load())
		}
	}
	if err := syscall.Kill(-r.p.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		rig.t.Fatal(err)
	}
	<-r.p.done
}

// counters reads an unlabelled counter from each live replica, for
// failure messages.
func (rig *fleetRig) counters(name string) map[string]float64 {
	out := map[string]float64{}
	for _, r := range rig.all {
		if r.p.exited() {
			continue
		}
		if v, err := scrapeCounter(r.url, name, "", ""); err == nil {
			out[r.name] = v
		}
	}
	return out
}

// filmsBetween returns the /films requests the fake received in [from, to).
func (rig *fleetRig) filmsBetween(from, to time.Time) []arrival {
	rig.mu.Lock()
	defer rig.mu.Unlock()
	var out []arrival
	for _, a := range rig.arrivals {
		if !a.at.Before(from) && a.at.Before(to) {
			out = append(out, a)
		}
	}
	// Stamped on arrival, recorded after the look in /proc: nearly sorted.
	slices.SortFunc(out, func(a, b arrival) int { return a.at.Compare(b.at) })
	return out
}

// setOnFilms sets the hook called on each /films request.
func (rig *fleetRig) setOnFilms(f func(arrival)) {
	rig.mu.Lock()
	defer rig.mu.Unlock()
	rig.onFilms = f
}

// socketOwner returns the name of the process in procs that holds the TCP
// socket whose local address is remote (a request's RemoteAddr as the fake
// sees it), or "".
func socketOwner(remote string, procs map[string]int) string {
	_, portText, err := net.SplitHostPort(remote)
	if err != nil {
		return ""
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil {
		return ""
	}
	var inode string
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(table)
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(b)) {
			f := strings.Fields(line)
			if len(f) < 10 {
				continue
			}
			_, hexPort, _ := strings.Cut(f[1], ":") // local_address, e.g. 0100007F:D431
			if p, err := strconv.ParseUint(hexPort, 16, 16); err == nil && p == port && f[9] != "0" {
				inode = f[9]
			}
		}
	}
	if inode == "" {
		return ""
	}
	want := "socket:[" + inode + "]"
	for name, pid := range procs {
		dir := fmt.Sprintf("/proc/%d/fd", pid)
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if l, err := os.Readlink(dir + "/" + e.Name()); err == nil && l == want {
				return name
			}
		}
	}
	return ""
}

// fleetObs is one client request of the load.
type fleetObs struct {
	replica   string
	phase     string
	sent, got time.Time
	marker    int   // the marker the page showed; -1 if the request failed
	err       error // why it failed: no answer, not 200, or a bad page
	stale     string
	backwards string
}

// fleetLoad is round-robin client load over a rig's rotation.
type fleetLoad struct {
	mu     sync.Mutex
	phase  string
	spans  []phaseSpan
	obs    []fleetObs
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type phaseSpan struct {
	name       string
	start, end time.Time
}

// startLoad starts clients that each send a request, check the answer and
// pause 2-4ms, round robin over the rotation; a quarter of the clients
// alternate with the API. Requests are not cancelled by stop: one cut by
// the test would look like a failure of the server.
func (rig *fleetRig) startLoad(clients int, phase string) *fleetLoad {
	rig.t.Helper()
	client, tr := loopbackClient(clients)
	rig.t.Cleanup(tr.CloseIdleConnections)
	ctx, cancel := context.WithCancel(context.Background())
	l := &fleetLoad{cancel: cancel, phase: phase, spans: []phaseSpan{{name: phase, start: time.Now()}}}
	for i := range clients {
		l.wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				api := i%4 == 0 && n%2 == 1
				path := "/movies/"
				if api {
					path = "/api/v1/movies"
				}
				r := rig.pick()
				l.mu.Lock()
				o := fleetObs{replica: r.name, phase: l.phase, marker: -1, sent: time.Now()}
				l.mu.Unlock()
				resp, err := client.Get(r.url + path)
				if err == nil {
					var body []byte
					body, err = io.ReadAll(resp.Body)
					resp.Body.Close()
					if err == nil {
						o.marker, err = checkSoakResponse(api, resp.StatusCode, resp.Header, body)
					}
					if err == nil && resp.StatusCode != http.StatusOK {
						o.marker, err = -1, fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				o.got = time.Now()
				r.inflight.Add(-1)
				o.err = err
				l.mu.Lock()
				l.obs = append(l.obs, o)
				l.mu.Unlock()
				time.Sleep(2*time.Millisecond + rand.N(2*time.Millisecond))
			}
		})
	}
	return l
}

// setPhase labels the requests sent from now on.
func (l *fleetLoad) setPhase(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	l.spans[len(l.spans)-1].end = now
	l.spans = append(l.spans, phaseSpan{name: name, start: now})
	l.phase = name
}

// stop stops the clients and returns what they saw and the phases; the
// last phase ends now, though requests sent in it may end later.
func (l *fleetLoad) stop() ([]fleetObs, []phaseSpan) {
	l.setPhase("stopping")
	l.cancel()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.obs, l.spans[:len(l.spans)-1]
}

// judgeFleet marks each page that breaks a promise, using only the fake's
// timeline and the clients' clocks.
//
// Stale: as in the soak (markerTimeline.stale); it holds fleet-wide, the
// replicas sharing the fake's clock.
//
// Backwards: a page showing marker n for a request sent more than
// monotonicSlack after a response showing a newer marker m had been
// received. Sound: that response was served before it was received, and
// the older page after its request was sent.
func judgeFleet(obs []fleetObs, timeline *markerTimeline, ttl time.Duration) {
	first := map[int]int{} // marker: index of the earliest answer showing it
	for i, o := range obs {
		if o.err != nil {
			continue
		}
		if j, ok := first[o.marker]; !ok || o.got.Before(obs[j].got) {
			first[o.marker] = i
		}
	}
	markers := make([]int, 0, len(first))
	for m := range first {
		markers = append(markers, m)
	}
	slices.Sort(markers)
	// newer[m] is the earliest answer showing any marker above m.
	newer := map[int]int{}
	best := -1
	for _, m := range slices.Backward(markers) {
		newer[m] = best
		if j := first[m]; best < 0 || obs[j].got.Before(obs[best].got) {
			best = j
		}
	}
	for i := range obs {
		o := &obs[i]
		if o.err != nil {
			continue
		}
		if v := timeline.stale(sighting{o.marker, o.sent}, ttl); v != "" {
			o.stale = o.replica + ": " + v
		}
		if j := newer[o.marker]; j >= 0 {
			if late := o.sent.Sub(obs[j].got); late > monotonicSlack {
				n := obs[j]
				o.backwards = fmt.Sprintf("%s served #%d to a request sent %v after %s had answered with #%d",
					o.replica, o.marker, late.Round(time.Millisecond), n.replica, n.marker)
			}
		}
	}
}

// fleetFigures sums up the requests of a scenario.
type fleetFigures struct {
	requests, failed, stale, backwards int
	p99, max                           time.Duration
	problems                           []string // the first few, for failure messages
	backwardsExamples                  []string
}

func figures(obs []fleetObs, keep func(fleetObs) bool) fleetFigures {
	var f fleetFigures
	var lat []time.Duration
	for _, o := range obs {
		if !keep(o) {
			continue
		}
		f.requests++
		lat = append(lat, o.got.Sub(o.sent))
		switch {
		case o.err != nil:
			f.failed++
			f.note(fmt.Sprintf("%s in phase %s: %v", o.replica, o.phase, o.err))
		case o.stale != "":
			f.stale++
			f.note(o.stale)
		}
		if o.backwards != "" {
			f.backwards++
			if len(f.backwardsExamples) < 5 {
				f.backwardsExamples = append(f.backwardsExamples, o.backwards)
			}
		}
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		f.p99 = lat[(len(lat)*99+99)/100-1]
		f.max = lat[len(lat)-1]
	}
	return f
}

func (f *fleetFigures) note(s string) {
	if len(f.problems) < 10 {
		f.problems = append(f.problems, s)
	}
}

func (f fleetFigures) String() string {
	return fmt.Sprintf("requests=%d failed=%d stale=%d backwards=%d p99=%v max=%v",
		f.requests, f.failed, f.stale, f.backwards, f.p99.Round(100*time.Microsecond), f.max.Round(100*time.Microsecond))
}

// requireClean fails the test for any failed request or stale page, and,
// if monotonic, for any page older than one already served.
func requireClean(t *testing.T, what string, f fleetFigures, monotonic bool) {
	t.Helper()
	if f.requests == 0 {
		t.Errorf("%s: no requests", what)
	}
	if f.failed > 0 || f.stale > 0 {
		t.Errorf("%s: %d failed requests and %d stale pages, want none; the first:\n%s", what, f.failed, f.stale, strings.Join(f.problems, "\n"))
	}
	if monotonic && f.backwards > 0 {
		t.Errorf("%s: %d pages older than one the fleet had served over %v earlier, want none; the first:\n%s",
			what, f.backwards, monotonicSlack, strings.Join(f.backwardsExamples, "\n"))
	}
}

func logSummary(t *testing.T, line string) {
	t.Helper()
	t.Log(line)
	fmt.Println(line)
}

func during(s phaseSpan) func(fleetObs) bool {
	return func(o fleetObs) bool { return !o.sent.Before(s.start) && o.sent.Before(s.end) }
}

// TestFleet_FetchesPerTTL runs 1, 3 and 5 replicas under round-robin load
// for four TTLs, with and without Redis, and counts the /films requests the
// fake received: each fetch makes one (there are no faults, so no retries).
//
// The bound with Redis: a replica fetches for the fleet only when the
// shared snapshot is the one it serves (fleet.Tier.Load reads, and the
// lock is refused if another was committed since), and it looks only when
// that snapshot has expired or entered its refresh-ahead window, which is
// at most TTL/2 long (cache.Options.RefreshAhead: four times the last
// load, from 500ms up to TTL/2). So the fleet's fetches start at least
// TTL/2 apart, less a little (a replica dates a shared snapshot by its
// read of Redis's expiry, which errs early by the read's latency, at most
// the 100ms call bound; the fake sees each request a moment after the
// lock): one on expiry and one early refresh per TTL window, at most
// 2×D/TTL + 1 in a load of D.
// Without Redis every replica keeps its own snapshot fresh, so each
// fetches at least once per TTL.
//
// Every page is fresh and no request fails; with Redis (or alone) no page
// is older than one the fleet served over 250ms before.
func TestFleet_FetchesPerTTL(t *testing.T) {
	skipIfShort(t)
	const (
		ttl     = 2 * time.Second
		loadFor = 4 * ttl
		windows = int(loadFor / ttl)
		bound   = 2*windows + 1
		clients = 4
		// The slack on the TTL/2 spacing of fleet fetches: a reading of
		// Redis's expiry errs early by at most its call's 100ms bound,
		// and the fake sees each request a moment after its lock.
		gapSlack = 150 * time.Millisecond
	)
	var table []string
	for _, withRedis := range []bool{false, true} {
		for _, n := range []int{1, 3, 5} {
			redisOn := map[bool]string{false: "off", true: "on"}[withRedis]
			t.Run(fmt.Sprintf("replicas=%d/redis=%s", n, redisOn), func(t *testing.T) {
				rig := newFleetRig(t, withRedis, "-ttl", ttl.String())
				for i := range n {
					rig.addReplica(fmt.Sprintf("r%d", i+1))
				}
				load := rig.startLoad(clients, "steady")
				time.Sleep(loadFor)
				obs, spans := load.stop()
				judgeFleet(obs, rig.timeline, ttl)
				f := figures(obs, func(fleetObs) bool { return true })
				films := rig.filmsBetween(spans[0].start, spans[0].end)
				times := make([]time.Time, len(films))
				by := map[string]int{}
				for i, a := range films {
					times[i] = a.at
					by[a.by]++
				}
				elapsed := spans[0].end.Sub(spans[0].start)
				perMinute := float64(len(films)) / elapsed.Minutes()
				maxPerTTL := maxInWindow(times, ttl)
				line := fmt.Sprintf("fleet: replicas=%d redis=%s fetches=%d per_minute=%.0f max_per_ttl=%d min_gap=%v bound=%d %v",
					n, redisOn, len(films), perMinute, maxPerTTL, minGap(times).Round(time.Millisecond), bound, f)
				logSummary(t, line)
				t.Logf("fetches by replica: %v; gaps between fetches: %v", by, gaps(times))
				table = append(table, line)

				requireClean(t, "load", f, withRedis || n == 1)
				switch {
				case withRedis && (len(films) > bound || minGap(times) < ttl/2-gapSlack):
					t.Errorf("%d replicas sharing Redis made %d fetches in %v, as little as %v apart; want at most %d, at least %v apart; fallbacks to fetching alone (a Redis call over its 100ms bound): %v",
						n, len(films), elapsed.Round(time.Millisecond), minGap(times), bound, ttl/2-gapSlack, rig.counters("movies_fleet_fallbacks_total"))
				case !withRedis && len(films) < n*windows:
					t.Errorf("%d lone replicas made %d fetches in %v, want at least %d: the count does not see them", n, len(films), elapsed.Round(time.Millisecond), n*windows)
				}
			})
		}
	}
	if len(table) > 0 {
		t.Logf("fetches per TTL window (TTL %v, %v of load):\n%s", ttl, loadFor, strings.Join(table, "\n"))
	}
}

// minGap is the shortest time between consecutive fetches.
func minGap(times []time.Time) time.Duration {
	gap := time.Duration(1<<63 - 1)
	for i := 1; i < len(times); i++ {
		gap = min(gap, times[i].Sub(times[i-1]))
	}
	return gap
}

// gaps are the times between consecutive fetches, for the log.
func gaps(times []time.Time) []time.Duration {
	var out []time.Duration
	for i := 1; i < len(times); i++ {
		out = append(out, times[i].Sub(times[i-1]).Round(time.Millisecond))
	}
	return out
}

// TestFleet_RedisFaults runs three replicas sharing a Redis under
// continuous round-robin load, through each Redis fault in turn, each
// followed by time to recover: Redis killed (and restarted once the
// replicas have had to refresh without it), Redis hung (SIGSTOP: its
// connections stay open and nothing answers), Redis restarted empty, and
// every connection dropped (CLIENT KILL, normal and pub/sub, repeatedly).
// No request may fail and no page may be stale in any phase; while Redis
// hangs the p99 latency is reported and bounded.
//
// Pages older than one already served are counted in every phase, and
// judged where the promise holds (docs/fleet.md: monotonic with Redis
// healthy): before the faults, and once settled after recovery, each
// outside the TTL after any replica fetched alone. A replica that fetched
// alone serves its snapshot at once while the others serve theirs; it
// does so while its breaker keeps it from Redis, which may outlast the
// fault. Once settled, the fleet is back to one fetch per TTL window plus
// one early refresh.
func TestFleet_RedisFaults(t *testing.T) {
	skipIfShort(t)
	const (
		ttl     = 2 * time.Second
		clients = 4
		// Long enough for the replicas' snapshots to expire, so they must
		// fetch while the fault lasts.
		faultFor   = ttl + time.Second
		recoverFor = 2 * ttl
		// While Redis hangs a load costs at most one call timeout
		// (100ms) before the breaker opens and the replica fetches alone;
		// hits never wait for Redis. Far below the client's patience, far
		// above what a working breaker costs.
		maxHangP99 = 500 * time.Millisecond
		// After recovery: how long the settled stretch is judged, and how
		// long sharing may take to resume (a breaker whose probes failed
		// during the faults waits up to a few seconds more before it
		// tries Redis again).
		judgeFor    = 3 * time.Second
		maxRecovery = 12 * time.Second
	)
	rig := newFleetRig(t, true, "-ttl", ttl.String())
	for i := range 3 {
		rig.addReplica(fmt.Sprintf("r%d", i+1))
	}
	rc := rig.redis.Client()
	defer rc.Close()
	ctx := context.Background()
	alone := rig.watchFallbacks()

	load := rig.startLoad(clients, "steady")
	time.Sleep(2 * ttl)

	load.setPhase("redis-killed")
	rig.redis.Kill()
	time.Sleep(faultFor)
	rig.redis.Restart()
	load.setPhase("recover-1")
	time.Sleep(recoverFor)

	load.setPhase("redis-hung")
	rig.redis.Stop()
	time.Sleep(faultFor)
	rig.redis.Cont()
	load.setPhase("recover-2")
	time.Sleep(recoverFor)

	load.setPhase("redis-restarted-empty")
	rig.redis.Kill()
	rig.redis.Restart()
	time.Sleep(faultFor)

	load.setPhase("connections-dropped")
	for end := time.Now().Add(faultFor); time.Now().Before(end); time.Sleep(400 * time.Millisecond) {
		for _, typ := range []string{"normal", "pubsub"} {
			if err := rc.ClientKillByFilter(ctx, "TYPE", typ).Err(); err != nil {
				t.Errorf("CLIENT KILL TYPE %s: %v", typ, err)
			}
		}
	}
	load.setPhase("recovered")
	recovered := time.Now()
	// Settled a TTL after the last fetch alone: every snapshot fetched
	// alone has expired by then.
	settledFrom := func() time.Time {
		if last := alone.last(); last.After(recovered) {
			return last.Add(ttl + monotonicSlack)
		}
		return recovered.Add(ttl + monotonicSlack)
	}
	for time.Now().Before(settledFrom().Add(judgeFor)) && time.Since(recovered) < maxRecovery {
		time.Sleep(100 * time.Millisecond)
	}
	obs, spans := load.stop()
	alone.stop()

	judgeFleet(obs, rig.timeline, ttl)
	sharing := func(o fleetObs) bool { return !alone.near(o.sent, ttl+monotonicSlack) }
	for _, s := range spans {
		f := figures(obs, during(s))
		films := rig.filmsBetween(s.start, s.end)
		logSummary(t, fmt.Sprintf("fleet fault=%s duration=%v %v fetches=%d fetches_alone=%d",
			s.name, s.end.Sub(s.start).Round(time.Millisecond), f, len(films), alone.between(s.start, s.end)))
		if len(f.backwardsExamples) > 0 {
			t.Logf("%s: pages older than one already served, e.g.:\n%s", s.name, strings.Join(f.backwardsExamples, "\n"))
		}
		// Every phase: no failure, no stale page.
		requireClean(t, s.name, f, false)
		if s.name == "redis-hung" && f.p99 > maxHangP99 {
			t.Errorf("p99 latency %v while Redis hung, want under %v: Redis must not add latency", f.p99, maxHangP99)
		}
		if s.name == "steady" {
			requireMonotonic(t, "steady", figures(obs, func(o fleetObs) bool { return during(s)(o) && sharing(o) }))
		}
	}
	// Recovered: sharing resumed by itself.
	last := spans[len(spans)-1]
	settled := phaseSpan{name: "recovered-settled", start: settledFrom(), end: last.end}
	if settled.end.Sub(settled.start) < judgeFor {
		t.Fatalf("replicas still fetched alone %v after Redis recovered (the last fetch alone %v after): sharing did not resume",
			time.Since(recovered).Round(time.Millisecond), alone.last().Sub(recovered).Round(time.Millisecond))
	}
	f := figures(obs, during(settled))
	films := rig.filmsBetween(settled.start, settled.end)
	windows := int(settled.end.Sub(settled.start) / ttl)
	logSummary(t, fmt.Sprintf("fleet fault=none(after recovery) settled_after=%v duration=%v %v fetches=%d bound=%d",
		settled.start.Sub(recovered).Round(time.Millisecond), settled.end.Sub(settled.start).Round(time.Millisecond), f, len(films), 2*windows+2))
	requireClean(t, "after recovery", f, true)
	// 2 per whole TTL window, plus one for the window cut at each end.
	if len(films) > 2*windows+2 {
		t.Errorf("after recovery the fleet made %d fetches in %v, want at most %d: sharing did not resume",
			len(films), settled.end.Sub(settled.start).Round(time.Millisecond), 2*windows+2)
	}
}

// fallbackWatch records when replicas fetched alone, from their own count
// of snapshots they serve unshared (scrapeUnshared), sampled every
// fallbackSample. Monotonic reads are promised while the replicas share;
// the count only places the stretches where they do, and the pages in them
// are still judged against the fake's timeline.
type fallbackWatch struct {
	mu     sync.Mutex
	seen   []time.Time // when a sample found a replica's count risen
	cancel context.CancelFunc
	done   chan struct{}
}

const fallbackSample = 100 * time.Millisecond

// watchFallbacks starts sampling every live replica's count of fetches
// alone until stop.
func (rig *fleetRig) watchFallbacks() *fallbackWatch {
	rig.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &fallbackWatch{cancel: cancel, done: make(chan struct{})}
	counts := map[string]float64{}
	for _, r := range rig.all {
		v, err := scrapeUnshared(r.url)
		if err != nil {
			rig.t.Fatalf("the test reads each replica's count of fetches alone to know when the fleet shares: %v", err)
		}
		counts[r.name] = v
	}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(fallbackSample)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			rig.mu.Lock()
			live := slices.Clone(rig.all)
			rig.mu.Unlock()
			for _, r := range live {
				if r.p.exited() {
					continue
				}
				v, err := scrapeUnshared(r.url)
				if err == nil && v > counts[r.name] {
					counts[r.name] = v
					w.mu.Lock()
					w.seen = append(w.seen, time.Now())
					w.mu.Unlock()
				}
			}
		}
	}()
	return w
}

func (w *fallbackWatch) stop() { w.cancel(); <-w.done }

// last is when a fetch alone was last seen, or the zero time.
func (w *fallbackWatch) last() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.seen) == 0 {
		return time.Time{}
	}
	return w.seen[len(w.seen)-1]
}

// near reports whether a snapshot fetched alone may have been served at
// at, one that lives within: a sample at s that found a fetch alone means
// it began after the sample before, s - fallbackSample.
func (w *fallbackWatch) near(at time.Time, within time.Duration) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, s := range w.seen {
		if !at.Before(s.Add(-fallbackSample)) && at.Before(s.Add(within)) {
			return true
		}
	}
	return false
}

// between counts the samples in [from, to) that found a fetch alone.
func (w *fallbackWatch) between(from, to time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, s := range w.seen {
		if !s.Before(from) && s.Before(to) {
			n++
		}
	}
	return n
}

// requireMonotonic fails the test for any page older than one already
// served.
func requireMonotonic(t *testing.T, what string, f fleetFigures) {
	t.Helper()
	if f.backwards > 0 {
		t.Errorf("%s: %d pages older than one the fleet had served over %v earlier, want none; the first:\n%s",
			what, f.backwards, monotonicSlack, strings.Join(f.backwardsExamples, "\n"))
	}
}

// TestFleet_LeaderFaults makes the upstream slow (1.5s a request, with
// -upstream-timeout 4s) and, under continuous round-robin load over three
// replicas sharing a Redis:
//
//   - kills the replica whose /films request for the fleet is in flight
//     (found from the fake's side of the socket, through /proc): another
//     must take the fetch over once the dead leader's lease lapses, within
//     one lease term (1s) of the kill;
//   - starts a replacement, which must serve its first page from Redis
//     without asking the upstream (warm start);
//   - makes one fetch far slower than a lease (2.5s): its leader renews
//     its lease, so nobody overtakes it (and fences its commit) and the
//     fleet makes that one fetch. It stays below what the fleet calls late
//     (twice the slowest recent fetch, 1.5s, plus two calls: about 3.2s),
//     past which the leader would rightly race a second fetch of its own. Redis must never hold a snapshot older
//     than one a client has been served.
//
// No request fails and no page is stale throughout.
func TestFleet_LeaderFaults(t *testing.T) {
	skipIfShort(t)
	const (
		ttl             = 8 * time.Second
		upstreamTimeout = 4 * time.Second
		leaseTerm       = time.Second // package fleet's: how long a dead leader's lock outlives it
		latency         = 1500 * time.Millisecond
		slowLatency     = 2500 * time.Millisecond // past two leases, not late (see above)
		clients         = 4
	)
	rig := newFleetRig(t, true, "-ttl", ttl.String(), "-upstream-timeout", upstreamTimeout.String())
	rig.up.SetBehavior("", ghiblitest.Behavior{Latency: latency})
	for i := range 3 {
		rig.addReplica(fmt.Sprintf("r%d", i+1))
	}
	rc := rig.redis.Client()
	defer rc.Close()

	// Redis's own record: the snapshot's version and marker, sampled.
	type sample struct {
		at          time.Time
		gen, marker int
	}
	var (
		samplesMu sync.Mutex
		samples   []sample
	)
	watchCtx, stopWatch := context.WithCancel(context.Background())
	var watch sync.WaitGroup
	watch.Go(func() {
		for watchCtx.Err() == nil {
			at := time.Now()
			if v, err := rc.Get(watchCtx, snapshotKey(t, rc)).Bytes(); err == nil {
				gen, marker, err := snapshotMarker(v)
				if err != nil {
					t.Errorf("Redis holds a snapshot the test cannot read: %v", err)
					return
				}
				samplesMu.Lock()
				samples = append(samples, sample{at, gen, marker})
				samplesMu.Unlock()
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	defer func() { stopWatch(); watch.Wait() }()

	films := make(chan arrival, 16)
	rig.setOnFilms(func(a arrival) {
		select {
		case films <- a:
		default:
		}
	})
	nextFetch := func(within time.Duration) (arrival, bool) {
		select {
		case a := <-films:
			return a, true
		case <-time.After(within):
			return arrival{}, false
		}
	}

	load := rig.startLoad(clients, "steady")
	if _, ok := nextFetch(5 * time.Second); !ok { // the first, on the first miss
		t.Fatal("no fetch for the first requests")
	}
	// Let that first fetch finish, then wait for the next one: an early
	// refresh, led by one replica while the others wait for it.
	time.Sleep(latency + 500*time.Millisecond)
	for len(films) > 0 {
		<-films
	}

	// The leader killed mid-fetch.
	leaderFetch, ok := nextFetch(ttl)
	if !ok {
		t.Fatal("no refresh within a TTL")
	}
	load.setPhase("leader-killed")
	leader := rig.byName(leaderFetch.by)
	if leader == nil {
		t.Fatalf("no replica owns the socket of the fetch from %s", leaderFetch.remote)
	}
	rig.kill(leader)
	killedAt := time.Now()
	killedAfter := killedAt.Sub(leaderFetch.at)
	if killedAfter >= latency {
		t.Fatalf("%s killed %v after its fetch began, not mid-fetch (the fetch takes %v)", leader.name, killedAfter, latency)
	}
	takeover, ok := nextFetch(leaseTerm + 2*time.Second)
	if !ok {
		t.Fatalf("nobody took the fetch over within %v of %s's death", leaseTerm+2*time.Second, leader.name)
	}
	after := takeover.at.Sub(killedAt)
	logSummary(t, fmt.Sprintf("fleet fault=leader-killed leader=%s killed_after=%v takeover_by=%s takeover_after_kill=%v lease=%v",
		leader.name, killedAfter.Round(time.Millisecond), takeover.by, after.Round(time.Millisecond), leaseTerm))
	if after > leaseTerm+300*time.Millisecond || takeover.by == leader.name {
		t.Errorf("%s took the fetch over %v after %s's death, want within the %v lease", takeover.by, after, leader.name, leaseTerm)
	}
	time.Sleep(latency + 500*time.Millisecond) // the takeover's fetch commits

	// A replacement starts warm.
	load.setPhase("replacement")
	repl := rig.addReplica("r4")
	warmFrom := time.Now()
	if err := wantStatus(repl.url+"/movies/", http.StatusOK); err != nil {
		t.Fatal(err)
	}
	warm := time.Since(warmFrom)
	own := 0
	for _, a := range rig.filmsBetween(warmFrom, time.Now()) {
		if a.by == repl.name {
			own++
		}
	}
	logSummary(t, fmt.Sprintf("fleet fault=none(replacement) first_page=%v own_fetches=%d", warm.Round(100*time.Microsecond), own))
	if own > 0 || warm > 500*time.Millisecond {
		t.Errorf("the replacement's first page took %v and %d upstream fetches, want it from Redis at once", warm, own)
	}
	for len(films) > 0 {
		<-films
	}

	// A fetch far slower than a lease: waited for, never overtaken.
	load.setPhase("slow-fetch")
	rig.up.SetBehavior(ghiblitest.People, ghiblitest.Behavior{})
	rig.up.SetBehavior(ghiblitest.Films, ghiblitest.Behavior{Latency: slowLatency})
	var armed atomic.Bool
	armed.Store(true)
	rig.setOnFilms(func(a arrival) {
		// This request waits out slowLatency (its behaviour was read
		// before the hook); any other would be answered at once.
		if armed.CompareAndSwap(true, false) {
			rig.up.SetBehavior(ghiblitest.Films, ghiblitest.Behavior{})
		}
		select {
		case films <- a:
		default:
		}
	})
	slow, ok := nextFetch(ttl)
	if !ok {
		t.Fatal("no refresh within a TTL")
	}
	if other, ok := nextFetch(slowLatency + 300*time.Millisecond); ok {
		t.Errorf("%s fetched %v into %s's slow fetch: a live leader was overtaken", other.by, other.at.Sub(slow.at), slow.by)
	}
	time.Sleep(time.Second) // the slow fetch has committed
	load.setPhase("settled")
	time.Sleep(2 * time.Second)
	obs, spans := load.stop()
	stopWatch()
	watch.Wait()

	fenced := 0.0
	for _, r := range rig.all {
		if r.p.exited() {
			continue
		}
		v, err := scrapeCounter(r.url, "movies_fleet_commits_total", "result", "fenced")
		if err != nil {
			t.Fatal(err)
		}
		fenced += v
	}

	judgeFleet(obs, rig.timeline, ttl)
	for _, s := range spans {
		f := figures(obs, during(s))
		line := fmt.Sprintf("fleet fault=%s duration=%v %v fetches=%d", s.name, s.end.Sub(s.start).Round(time.Millisecond), f, len(rig.filmsBetween(s.start, s.end)))
		if s.name == "slow-fetch" {
			line += fmt.Sprintf(" slow=%s fenced_commits=%v", slow.by, fenced)
		}
		logSummary(t, line)
		requireClean(t, s.name, f, true)
	}
	if fenced != 0 {
		t.Errorf("replicas counted %v fenced commits, want none: nobody should overtake a live leader", fenced)
	}

	// Redis never held a snapshot older than one already served, nor went
	// back a version.
	samplesMu.Lock()
	defer samplesMu.Unlock()
	var served []fleetObs
	for _, o := range obs {
		if o.err == nil {
			served = append(served, o)
		}
	}
	slices.SortFunc(served, func(a, b fleetObs) int { return a.got.Compare(b.got) })
	newest, i := -1, 0
	var problems []string
	for k, s := range samples {
		for ; i < len(served) && served[i].got.Before(s.at); i++ {
			newest = max(newest, served[i].marker)
		}
		if s.marker < newest {
			problems = append(problems, fmt.Sprintf("Redis held marker #%d (gen %d) after #%d had been served", s.marker, s.gen, newest))
		}
		if k > 0 && s.gen < samples[k-1].gen {
			problems = append(problems, fmt.Sprintf("Redis went from version %d back to %d", samples[k-1].gen, s.gen))
		}
	}
	t.Logf("Redis sampled %d times", len(samples))
	if len(problems) > 0 {
		t.Errorf("%d problems with what Redis held, the first:\n%s", len(problems), strings.Join(problems[:min(len(problems), 10)], "\n"))
	}
}

// snapshotKey finds the fleet's snapshot key: its name space is a
// fingerprint (package web's namespace) the test does not compute.
func snapshotKey(t *testing.T, rc *redis.Client) string {
	keys, err := rc.Keys(context.Background(), "movies:{*}:snapshot").Result()
	if err != nil || len(keys) != 1 {
		return "movies:{none}:snapshot"
	}
	return keys[0]
}

// snapshotMarker reads the version and the marker of the snapshot
// stored in Redis (package fleet's envelope around package web's
// catalogue).
func snapshotMarker(v []byte) (version, marker int, err error) {
	// "<version> <fetch start ms> <fetch ms>\n" and the catalogue (pkg/fleet).
	head, data, ok := bytes.Cut(v, []byte("\n"))
	fields := strings.Fields(string(head))
	if !ok || len(fields) != 3 {
		return 0, 0, fmt.Errorf("a snapshot without its header: %.40q", v)
	}
	if version, err = strconv.Atoi(fields[0]); err != nil {
		return 0, 0, err
	}
	var movies []struct{ ID, Title string }
	if err := json.Unmarshal(data, &movies); err != nil {
		return 0, 0, err
	}
	for _, m := range movies {
		if n, ok := strings.CutPrefix(m.Title, "Castle in the Sky #"); ok && m.ID == castleID {
			marker, err := strconv.Atoi(n)
			return version, marker, err
		}
	}
	return 0, 0, fmt.Errorf("no marker in the snapshot of version %d", version)
}

// scrapeUnshared reads how many snapshots a replica fetched and served
// without the fleet: its fetches alone (movies_fleet_fallbacks_total, every
// cause) and its fetches for the fleet that Redis did not take
// (movies_fleet_commits_total{result="error"}: a commit that timed out is
// served by its replica alone, on its own deadline, as a fetch alone is).
func scrapeUnshared(base string) (float64, error) {
	alone, err := scrapeCounterSum(base, "movies_fleet_fallbacks_total")
	if err != nil {
		return 0, err
	}
	unwritten, err := scrapeCounter(base, "movies_fleet_commits_total", "result", "error")
	return alone + unwritten, err
}

// scrapeCounterSum reads the sum of the counter name over all its labels
// from base's /metrics.
func scrapeCounterSum(base, name string) (float64, error) {
	resp, err := http.Get(base + "/metrics")
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
	if !ok {
		return 0, fmt.Errorf("/metrics has no %s", name)
	}
	sum := 0.0
	for _, m := range f.GetMetric() {
		sum += m.GetCounter().GetValue()
	}
	return sum, nil
}

// scrapeCounter reads the counter name{label="value"} from base's
// /metrics; label "" reads an unlabelled one.
func scrapeCounter(base, name, label, value string) (float64, error) {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("parse /metrics: %w", err)
	}
	for _, m := range families[name].GetMetric() {
		if label == "" && len(m.GetLabel()) == 0 {
			return m.GetCounter().GetValue(), nil
		}
		for _, l := range m.GetLabel() {
			if l.GetName() == label && l.GetValue() == value {
				return m.GetCounter().GetValue(), nil
			}
		}
	}
	return 0, fmt.Errorf("/metrics has no %s{%s=%q}", name, label, value)
}
