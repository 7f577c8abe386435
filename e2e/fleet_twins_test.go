//go:build linux

package e2e

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/movies-dev/movies/pkg/fleet/fleettest"
	"github.com/movies-dev/movies/pkg/ghibli/ghiblitest"
)

const (
	// latencySlack is what a loaded 2-core machine adds to a request
	// beyond the protocol's own bound (scheduling, a render, the race
	// detector in the test's own clients); the bounds are the protocol's.
	latencySlack = 300 * time.Millisecond
	// fleetLeaseTerm is package fleet's lease: how long a lock outlives
	// its holder's last renewal.
	fleetLeaseTerm = time.Second
)

// twinCase is one fault, run twice with the same replicas, client load and
// upstream behaviour: as lone replicas (no -redis: the control) and as a
// fleet on a real redis-server. Both runs are judged only from the fake
// upstream's record (its /films requests, its marker timeline) and what
// the clients saw (pages, statuses, latencies), never from the servers'
// metrics, and the fleet is held to its control by compare.
type twinCase struct {
	name              string
	ttl, timeout      time.Duration // -ttl and -upstream-timeout
	replicas, clients int
	args              []string // further flags for every replica
	redisArgs         []string // further redis-server options
	// leaderFault: the fault stops or slows a replica that may be leading
	// the fleet's fetch, so a wait on it may last up to its bound.
	leaderFault bool
	// parallel runs the control beside the fleet rather than before it:
	// for a case that mostly waits, where both runs see the same machine.
	parallel bool
	// run drives the load and the fault on one run.
	run func(r *twinRun)
	// judge, if set, checks what the case measured beyond compare's rules.
	judge func(t *testing.T, lone, fleet *twinRun)
}

// twinRun is one run of a twinCase: the rig, the load, and what the case
// recorded of its faults.
type twinRun struct {
	t     *testing.T
	c     *twinCase
	fleet bool
	rig   *fleetRig

	load       *fleetLoad
	start, end time.Time // of the load, over every burst
	faults     []phaseSpan
	// settle is how long after a fault ends pages need not be monotonic
	// yet; zero means the TTL, after which every snapshot fetched during
	// the fault has expired.
	settle time.Duration
	// excuse tells a failure the case allows in both runs.
	excuse  func(fleetObs) bool
	notes   []string             // the case's own figures, for the summary
	marks   map[string]time.Time // the case's own moments, for its judge
	samples []time.Duration      // the case's own latencies, for its judge

	// What the run measured, once the load has stopped.
	obs                        []fleetObs
	films                      []arrival
	all                        fleetFigures
	failed, excused, backwards int      // failures not excused, excused; pages backwards once settled
	failures, backwardsSeen    []string // the first few of each
	outputs                    []string // each replica's log, kept for a failed comparison
	done                       bool
}

// runTwins runs the control and the fleet and compares them.
func (c *twinCase) runTwins(t *testing.T) {
	lone := &twinRun{c: c, fleet: false}
	fleet := &twinRun{c: c, fleet: true}
	t.Run("runs", func(t *testing.T) {
		for _, r := range []*twinRun{lone, fleet} {
			t.Run(r.name(), func(t *testing.T) {
				if c.parallel {
					t.Parallel()
				}
				r.t = t
				r.setUp()
				c.run(r)
				r.measure()
			})
		}
	})
	if !lone.done || !fleet.done {
		return // a run stopped: it said why
	}
	c.compare(t, lone, fleet)
	if t.Failed() {
		for _, r := range []*twinRun{lone, fleet} {
			for _, out := range r.outputs {
				t.Logf("%s run, %s", r.name(), out)
			}
		}
	}
}

func (r *twinRun) name() string { return map[bool]string{false: "lone", true: "fleet"}[r.fleet] }

// setUp starts the fake upstream, the replicas and, for the fleet, Redis.
func (r *twinRun) setUp() {
	t := r.t
	args := append([]string{"-ttl", r.c.ttl.String(), "-upstream-timeout", r.c.timeout.String()}, r.c.args...)
	if r.fleet {
		redis := fleettest.Start(t, r.c.redisArgs...)
		r.rig = newFleetRigOn(t, redis.URL, args...)
		r.rig.redis = redis
	} else {
		r.rig = newFleetRigOn(t, "", args...)
	}
	for i := range r.c.replicas {
		r.rig.addReplica(fmt.Sprintf("r%d", i+1))
	}
}

// startLoad starts the case's clients; a case may run several loads, one
// after another (bursts).
func (r *twinRun) startLoad() {
	r.load = r.rig.startLoad(r.c.clients, "load")
	if r.start.IsZero() {
		r.start = r.load.spans[0].start
	}
}

// stopLoad stops the clients and keeps what they saw.
func (r *twinRun) stopLoad() {
	obs, spans := r.load.stop()
	r.obs = append(r.obs, obs...)
	r.end = spans[len(spans)-1].end
	r.load = nil
}

// fault records that a fault lasted from start to end.
func (r *twinRun) fault(name string, start, end time.Time) {
	r.faults = append(r.faults, phaseSpan{name: name, start: start, end: end})
}

// note adds a figure to the run's summary.
func (r *twinRun) note(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

// mark records a moment the case's judge needs.
func (r *twinRun) mark(name string, at time.Time) {
	if r.marks == nil {
		r.marks = map[string]time.Time{}
	}
	r.marks[name] = at
}

// sleepUntil sleeps until at: a case's schedule counts from the moments
// its faults happened, not from when the test got round to them.
func sleepUntil(at time.Time) { time.Sleep(time.Until(at)) }

// nextRequestMeets queues b for the next /films request only
// (ghiblitest's SetNextBehavior), waits for the request it is applied to,
// and returns that request's arrival as the rig recorded it: when, and
// which replica sent it.
func (r *twinRun) nextRequestMeets(b ghiblitest.Behavior, within time.Duration, what string) arrival {
	r.t.Helper()
	armed := time.Now()
	taken := r.rig.up.SetNextBehavior(ghiblitest.Films, b)
	var req *http.Request
	select {
	case req = <-taken:
	case <-time.After(within):
		r.t.Fatalf("no upstream request met %s within %v", what, within)
	}
	// The rig records the request in the fake's hook, just after the
	// fault was taken; a keep-alive connection carried others before it.
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		var a arrival
		found := false
		r.rig.mu.Lock()
		for _, x := range slices.Backward(r.rig.arrivals) {
			if x.remote == req.RemoteAddr && !x.at.Before(armed) {
				a, found = x, true
				break
			}
		}
		r.rig.mu.Unlock()
		switch {
		case found && a.by == "":
			r.t.Fatalf("no replica owns the socket of the request that met %s (%s)", what, a.remote)
		case found:
			return a
		case time.Now().After(deadline):
			r.t.Fatalf("the request that met %s (%s) was never recorded", what, req.RemoteAddr)
		}
	}
}

// nextFetch waits for the next /films request on films.
func (r *twinRun) nextFetch(films <-chan arrival, within time.Duration, what string) arrival {
	r.t.Helper()
	select {
	case a := <-films:
		return a
	case <-time.After(within):
		r.t.Fatalf("no %s within %v", what, within)
		return arrival{}
	}
}

// sender is the replica that sent a, which must still run.
func (r *twinRun) sender(a arrival) *replica {
	r.t.Helper()
	rep := r.rig.byName(a.by)
	if rep == nil {
		r.t.Fatalf("no replica owns the socket of the fetch from %s", a.remote)
	}
	return rep
}

// signal sends sig to a replica's process.
func (r *twinRun) signal(rep *replica, sig syscall.Signal) {
	r.t.Helper()
	if err := syscall.Kill(rep.p.cmd.Process.Pid, sig); err != nil {
		r.t.Fatalf("%v to %s: %v", sig, rep.name, err)
	}
}

// drain takes rep out of the load balancer's rotation; requests it is
// already answering go on.
func (r *twinRun) drain(rep *replica) {
	r.rig.mu.Lock()
	defer r.rig.mu.Unlock()
	r.rig.live = slices.DeleteFunc(r.rig.live, func(x *replica) bool { return x == rep })
}

// settled reports whether a request sent at is judged for monotonic reads:
// outside every fault and the settling after it.
func (r *twinRun) settled(at time.Time) bool {
	settle := r.settle
	if settle == 0 {
		settle = r.c.ttl
	}
	for _, f := range r.faults {
		if !at.Before(f.start) && at.Before(f.end.Add(settle)) {
			return false
		}
	}
	return true
}

// since is how far into the run's load at was, for messages.
func (r *twinRun) since(at time.Time) time.Duration { return at.Sub(r.start).Round(time.Millisecond) }

// measure judges the run's pages and counts its fetches.
func (r *twinRun) measure() {
	t := r.t
	if r.load != nil {
		r.stopLoad()
	}
	judgeFleet(r.obs, r.rig.timeline, r.c.ttl)
	r.films = r.rig.filmsBetween(r.start, r.end)
	r.all = figures(r.obs, func(fleetObs) bool { return true })
	for _, o := range r.obs {
		switch {
		case o.err != nil && r.excuse != nil && r.excuse(o):
			r.excused++
		case o.err != nil:
			r.failed++
			if len(r.failures) < 10 {
				r.failures = append(r.failures, fmt.Sprintf("%s, sent %v into the load: %v", o.replica, r.since(o.sent), o.err))
			}
		}
		if o.backwards != "" && r.settled(o.sent) {
			r.backwards++
			if len(r.backwardsSeen) < 10 {
				r.backwardsSeen = append(r.backwardsSeen, fmt.Sprintf("sent %v into the load: %s", r.since(o.sent), o.backwards))
			}
		}
	}
	var faults []string
	for _, f := range r.faults {
		faults = append(faults, fmt.Sprintf("%s@%v+%v", f.name, r.since(f.start), f.end.Sub(f.start).Round(time.Millisecond)))
	}
	logSummary(t, fmt.Sprintf("twins case=%q run=%s fetches=%d failed=%d excused=%d stale=%d backwards=%d settled_backwards=%d p99=%v max=%v requests=%d faults=[%s] %s",
		r.c.name, r.name(), len(r.films), r.failed, r.excused, r.all.stale, r.all.backwards, r.backwards,
		r.all.p99.Round(100*time.Microsecond), r.all.max.Round(time.Millisecond), r.all.requests,
		strings.Join(faults, " "), strings.Join(r.notes, " ")))
	if r.all.requests == 0 {
		t.Error("no requests")
	}
	for _, rep := range r.rig.all {
		r.outputs = append(r.outputs, fmt.Sprintf("output of %s:\n%s", rep.name, tail(rep.p.out.String(), 3000)))
	}
	r.done = true
}

// compare holds the fleet to its control: docs/fleet.md, "The promises".
//
//   - No failed request the control would have served: the control must
//     fail none but what the case excuses in both (the replica that met a
//     one-request fault, the upstream's own outage), and the fleet none
//     besides.
//   - No page past the TTL, in either run.
//   - No more /films requests than the control.
//   - No request slower than twice -upstream-timeout (one wait for the
//     leader, then a fetch of its own); where no replica that may lead is
//     at fault, none slower than the control's slowest or a lone fetch's
//     budget, whichever is longer.
//   - Once settled (twinRun.settle after each fault), no page older than
//     one already served.
func (c *twinCase) compare(t *testing.T, lone, fleet *twinRun) {
	t.Helper()
	if lone.failed > 0 || lone.all.stale > 0 {
		t.Errorf("the control failed %d requests the case does not excuse and served %d stale pages: the case is wrong, not the fleet:\n%s\n%s",
			lone.failed, lone.all.stale, strings.Join(lone.failures, "\n"), strings.Join(lone.all.problems, "\n"))
	}
	if fleet.failed > 0 {
		t.Errorf("the fleet failed %d requests that its control served (the control failed %d, all excused); the first:\n%s",
			fleet.failed, lone.excused, strings.Join(fleet.failures, "\n"))
	}
	if fleet.all.stale > 0 {
		t.Errorf("the fleet served %d pages past the TTL; the first:\n%s", fleet.all.stale, strings.Join(fleet.all.problems, "\n"))
	}
	if fleet.backwards > 0 {
		t.Errorf("once settled, the fleet served %d pages older than one it had served over %v before; the first:\n%s",
			fleet.backwards, monotonicSlack, strings.Join(fleet.backwardsSeen, "\n"))
	}
	if len(fleet.films) > len(lone.films) {
		t.Errorf("the fleet asked the upstream for /films %d times, its control %d", len(fleet.films), len(lone.films))
	}
	if bound := 2*c.timeout + latencySlack; fleet.all.max > bound {
		t.Errorf("a fleet request took %v, over twice -upstream-timeout (%v): a wait for the leader and a fetch of its own", fleet.all.max, 2*c.timeout)
	}
	if bound := max(lone.all.max, c.timeout) + latencySlack; !c.leaderFault && fleet.all.max > bound {
		t.Errorf("a fleet request took %v, its control's slowest %v: a wait longer than a lone fetch's budget (%v) with no leader at fault",
			fleet.all.max, lone.all.max, c.timeout)
	}
	if c.judge != nil {
		c.judge(t, lone, fleet)
	}
}
