package web

// The simulator's judge: the fleet against its lone twin, request by
// request, and against its own promises (docs/fleet.md, "The promises"),
// from the fake upstream's record and the pages the readers got.

import (
	"cmp"
	"fmt"
	"math"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/movies-dev/movies/pkg/cache"
)

// span is a stretch of the run, from the start.
type span struct{ from, to time.Duration }

func (s span) holds(t time.Duration) bool { return t >= s.from && t < s.to }

func anyHolds(spans []span, t time.Duration) bool {
	return slices.ContainsFunc(spans, func(s span) bool { return s.holds(t) })
}

// settle is how long after a fault ends the fleet is held to its promises
// again: every snapshot made during the fault has expired (a TTL), and a
// load has had time to run (a fetch, twice: a wait and its own).
func (sc scenario) settle() time.Duration { return sc.ttl + 2*sc.timeout }

// clockStep is a stretch in which one replica's wall clock disagrees with
// the others', and by how much.
type clockStep struct {
	span
	by   time.Duration // how far off, either way
	hour bool          // an hour or more: set right at its fault's end
}

// clockSteps are the replica-clock faults as stretches: a step of an hour
// or more is set right at its fault's end, and settles; any other stays,
// past the run's end too. Every verdict that depends on the clocks
// agreeing reads them from here.
func (sc scenario) clockSteps(faults []fault) (out []clockStep) {
	for _, f := range faults {
		switch {
		case f.kind != "replica-clock" || f.d == 0:
		case f.d >= time.Hour:
			out = append(out, clockStep{span{f.at, f.until + sc.settle()}, f.d, true})
		default:
			out = append(out, clockStep{span{f.at, math.MaxInt64}, max(f.d, -f.d), false})
		}
	}
	return out
}

// excused returns the stretches, each fault's plus settle, of the faults
// for which keep reports true.
func (sc scenario) excused(faults []fault, keep func(fault) bool) []span {
	var out []span
	for _, f := range faults {
		if keep(f) {
			out = append(out, span{f.at, f.until + sc.settle()})
		}
	}
	return out
}

func isRedisFault(f fault) bool { return slices.Contains(redisFaults, f.kind) }

func stepsAClock(f fault) bool {
	return (f.kind == "redis-clock" || f.kind == "replica-clock") && f.d != 0
}

// fleetBound is the longest a fleet's request may take: one wait for the
// replica fetching for the fleet, no longer than a fetch of its own would
// take, then a fetch of its own, and the few Redis calls around them.
func (sc scenario) fleetBound() time.Duration { return 2*sc.timeout + 4*sc.callTimeout }

// judge checks the fleet's run against its twin's and its own promises.
func judge(sc scenario, fleet, twin runResult) []string {
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	faults := fleet.resolved
	pausedFor := func(p simPage) time.Duration {
		var d time.Duration
		for _, f := range fleet.pauses {
			if f.replica == p.replica {
				d += max(0, min(f.until, p.end)-max(f.at, p.start))
			}
		}
		return d
	}

	// Never worse than lone replicas, request by request: no failure
	// where the twin was served, but inside a Retry-After the upstream
	// gave (capped as a lone replica caps it), which the fleet honours for
	// every replica; no wait past the fleet's bound; no more upstream
	// requests than the twin made.
	raWindows := retryAfterWindows(fleet.arrivals, sc.callTimeout)
	// While the whole upstream fails, and as long after as a fetch and a
	// backoff last, a fleet may fail where a lone replica is still
	// served: the lone replicas fetched at staggered times, and one of
	// them may hold a copy fetched later than the fleet's one fetch, which
	// the fleet did not make because it had a fresh snapshot. That is the
	// economy itself, not a fault of the fleet's: its copy expires a TTL
	// after its fetch, as every lone replica's does.
	var outages []span
	for _, f := range faults {
		// (A jittery upstream fails whoever draws a latency past the
		// timeout: the fleet's leader and a lone replica draw apart.)
		if f.kind == "outage" || f.kind == "outage-ra" || f.kind == "hung-upstream" || f.kind == "upstream-jitter" {
			outages = append(outages, span{f.at, f.until + sc.timeout + 5*time.Second + min(f.d, cache.MaxRetryAfter)})
		}
	}
	for i, rq := range sc.requests {
		f, w := fleet.pages[i], twin.pages[i]
		if f.status == 0 {
			continue // no replica in rotation
		}
		inOutage := slices.ContainsFunc(outages, func(s span) bool { return f.end >= s.from && f.start < s.to })
		// A replica frozen while it served a request fails or serves it
		// as its timers and its sockets happen to wake, and a load that
		// failed so leaves a backoff (at most 5 s, the cache's): its own
		// requests then are the freeze's, in either run (the others' are
		// the fleet's).
		frozen := slices.ContainsFunc(fleet.pauses, func(p fault) bool {
			return p.replica == f.replica && f.end >= p.at && f.start < p.until+5*time.Second
		})
		// One bad connection fails one replica at most: the one whose
		// fetch met it (its own requests, for that fetch and the backoff
		// after), as a lone replica would fail; never the others, whose
		// lone twins it would not have touched. Which replica meets it,
		// and when, differs between the runs: its fetches do.
		metBadConnection := slices.ContainsFunc(fleet.fired, func(b fault) bool {
			return b.kind == "hang-one" && b.replica == f.replica && f.end >= b.at && f.start < b.until+5*time.Second
		})
		if f.status != http.StatusOK && w.status == http.StatusOK && !raWindows.covers(f) && !inOutage && !frozen && !metBadConnection {
			add("never worse: request %d (reader %d at %v) failed with %d on r%d at %v; its lone twin was served by r%d at %v",
				i, rq.reader, f.start, f.status, f.replica, f.end, w.replica, w.end)
		}
		if d := f.end - f.start - pausedFor(f); d > sc.fleetBound() {
			add("never worse: request %d (reader %d) waited %v on r%d until %v, past the fleet's bound of %v (its twin: %v)",
				i, rq.reader, d, f.replica, f.end, sc.fleetBound(), w.end-w.start)
		}
	}
	// A fetch and the second one a replica sends beside it, while the
	// first is unanswered (it was late), are one fetch, hedged: that is
	// what makes a fault of one connection cost nobody a request. While
	// the whole upstream fails, the fleet's replicas all need a snapshot
	// at once (lone replicas only when their copies happen to expire
	// together), and each retries once per backoff of its own, as a lone
	// replica does (pkg/cache's backoff): those stretches are not counted.
	// Nor is the run's teardown: its replicas are closed one by one, and
	// a leader's fetch cancelled by its close frees a waiter on a replica
	// not yet closed to fetch (seed 99400).
	// Nor is a Retry-After that held a replica of the twin where, in the
	// fleet, the one answer that carried it went to a replica killed as
	// it came, which bound nobody (below): the twin's replica fetched
	// nothing while it waited, and failed its requests, which the fleet
	// served, fetching as usual (seed 152315). The fleet's own
	// Retry-Afters are judged below, from its own arrivals.
	var uncounted []span
	if slices.ContainsFunc(fleet.arrivals, func(a simArrival) bool { return a.retryAfter > 0 && killedAsItCame(faults, a, sc.callTimeout) }) {
		uncounted = retryAfterWindows(twin.arrivals, sc.callTimeout)
	}
	outside := func(arrivals []simArrival) []simArrival {
		return slices.DeleteFunc(slices.Clone(arrivals), func(a simArrival) bool {
			return anyHolds(outages, a.at) || anyHolds(uncounted, a.at) || a.at >= sc.duration
		})
	}
	// Each outage that ends before the run does restarts both runs'
	// refreshes at phases of their own: the one the twin made just
	// before the end of the uncounted stretch, the fleet may make just
	// after it (seeds 27848, 34940: the fleet fetched less over the run,
	// and one more after the outage). One fetch per such end is that.
	phase := outageEnds(outages, sc.duration)
	if fetches, seconds := countFetches(outside(fleet.arrivals)); fetches > len(outside(twin.arrivals))+phase {
		add("never worse: outside whole-upstream outages the fleet made %d fetches (and %d second requests beside late ones), its lone twin %d (and %d outage ends)",
			fetches, seconds, len(outside(twin.arrivals)), phase)
	}

	// Fresh, for both runs (the twin's is the simulator's own check):
	// no page older than the TTL, counted from the start of the fetch that
	// made it; a step of one clock may cost a second.
	stretch := time.Duration(0)
	if slices.ContainsFunc(faults, stepsAClock) {
		stretch = time.Second
	}
	for _, run := range []struct {
		name string
		r    runResult
	}{{"fleet", fleet}, {"lone twin", twin}} {
		arrivalOf := map[int]simArrival{}
		for _, a := range run.r.arrivals {
			arrivalOf[a.marker] = a
		}
		for _, p := range run.r.pages {
			if p.status != http.StatusOK {
				continue
			}
			a, ok := arrivalOf[p.marker]
			if !ok {
				add("%s: reader %d got a page with marker %d nobody fetched", run.name, p.reader, p.marker)
			} else if age := p.end - a.at; age >= sc.ttl+stretch {
				add("fresh (%s): reader %d got #%d from r%d at %v, %v old (TTL %v)", run.name, p.reader, p.marker, p.replica, p.end, age, sc.ttl)
			}
		}
	}

	// Monotonic: a reader moving between replicas never gets an older
	// catalogue after a newer one, while Redis and the news are healthy,
	// the clocks agree and no replica is frozen, and again once each such
	// fault has settled.
	noOrder := sc.excused(slices.Concat(faults, fleet.pauses), func(f fault) bool {
		return isRedisFault(f) || f.kind == "pubsub-drop" || f.kind == "pubsub-delay" || f.kind == "pause"
	})
	steps := sc.clockSteps(faults)
	for _, c := range steps {
		noOrder = append(noOrder, c.span)
	}
	grace := sc.redisLatency + time.Millisecond
	byReader := map[int][]simPage{}
	for _, p := range fleet.pages {
		if p.status == http.StatusOK {
			byReader[p.reader] = append(byReader[p.reader], p)
		}
	}
	for _, pages := range byReader {
		slices.SortFunc(pages, func(a, b simPage) int { return int(a.start - b.start) })
		newest := simPage{}
		for _, q := range pages {
			if q.marker < newest.marker && q.start > newest.end+grace && !anyHolds(noOrder, q.end) && !anyHolds(noOrder, newest.end) {
				add("monotonic: reader %d got #%d from r%d at %v after #%d from r%d at %v", q.reader, q.marker, q.replica, q.end, newest.marker, newest.replica, newest.end)
			}
			if q.marker > newest.marker {
				newest = q
			}
		}
	}

	// Every script runs to its end: a Lua error is a bug in the protocol,
	// whatever Redis or the replicas did.
	for _, line := range fleet.scripts {
		add("a fleet script failed: %s", line)
	}

	// Economical: while nothing excuses it, one fetch per TTL for the
	// fleet and the early refresh (fetches are at least TTL/2 apart: the
	// refresh window is at most half the TTL), and an upstream's
	// Retry-After holds for the whole fleet while Redis is healthy.
	costly := sc.excused(slices.Concat(faults, fleet.fired), func(f fault) bool { return f.kind != "pubsub-forge" && f.kind != "none" })
	for _, c := range steps {
		if !c.hour {
			// The clocks disagree from then on: a writer behind makes
			// snapshots the others take for expired (docs/fleet.md,
			// Clocks: the replicas' wall clocks must agree).
			costly = append(costly, c.span)
		}
	}
	for _, s := range healthyStretches(costly, sc.duration) {
		n := 0
		for _, a := range fleet.arrivals {
			if s.holds(a.at) {
				n++
			}
		}
		if limit := int((s.to-s.from+sc.ttl/2-1)/(sc.ttl/2)) + 1; n > limit {
			add("economical: %d fetches from %v to %v at a TTL of %v, want at most %d", n, s.from, s.to, sc.ttl, limit)
		}
	}
	redisTrouble := sc.excused(faults, isRedisFault)
	// A failure record's wait ends at the end its writer recorded, on the
	// replicas' clock: while they disagree, a replica ahead of the writer
	// ends it early by the difference (docs/fleet.md, Clocks), and its
	// twin, never told of it, would not have waited at all (seeds 42199,
	// 48811, 49131, 53535, 56789). skew is the most they can disagree by.
	skew := func(t time.Duration) (d time.Duration) {
		for _, c := range steps {
			if c.holds(t) {
				d += c.by
			}
		}
		return d
	}
	// A fetch begun before a Retry-After came goes on, its client's one
	// retry after a 5xx included (within 150 ms: pkg/ghibli's retryWait
	// and jitter).
	retryOfEarlier := func(b simArrival, from time.Duration) bool {
		return slices.ContainsFunc(fleet.arrivals, func(p simArrival) bool {
			return p.by == b.by && p.at < from && p.status >= 500 && p.retryAfter == 0 && b.at >= p.done && b.at <= p.done+150*time.Millisecond
		})
	}
	for _, a := range fleet.arrivals {
		if a.retryAfter <= 0 {
			continue
		}
		// The replica it was given to fetches nothing until it ends,
		// whatever Redis and the other replicas did: it needs neither
		// to remember it, and a snapshot another replica fetched ends
		// its backoff, not the wait (seed 87943). Unless the upstream
		// answered 200 to a fetch the replica sent beside it before it
		// came (a late fetch's second): then its load succeeded, and
		// only the fleet's record of the wait holds it, as it holds the
		// others (below; seed 127234).
		raced := slices.ContainsFunc(fleet.arrivals, func(p simArrival) bool {
			return p.by == a.by && p.status == http.StatusOK && p.at > a.at && p.at < a.done
		})
		for _, b := range fleet.arrivals {
			if !raced && b.by == a.by && b.at > a.done && b.at < a.done+min(a.retryAfter, cache.MaxRetryAfter)-time.Millisecond && !retryOfEarlier(b, a.done) {
				add("economical: /films #%d from r%d at %v, within the Retry-After %v r%d was given with #%d at %v", b.marker, b.by, b.at, a.retryAfter, a.by, a.marker, a.done)
			}
		}
		// Read late (its replica was paused) after the upstream had
		// served a fetch sent since: that 200 is the upstream's word
		// after the Retry-After, and the other replicas, whom the fleet
		// holds to it, need not wait on an answer it has overtaken
		// (seed 70152).
		if slices.ContainsFunc(fleet.arrivals, func(b simArrival) bool {
			return b.status == http.StatusOK && b.at > a.sent && b.at < a.done
		}) {
			continue
		}
		// Given to a replica killed as it came: it died before it could
		// record it, and the fleet never heard of it, nor would its
		// twin (seed 101652).
		if killedAsItCame(faults, a, sc.callTimeout) {
			continue
		}
		// From when it is recorded: a Redis call after its delivery.
		from, until := a.done+sc.callTimeout, a.done+min(a.retryAfter, cache.MaxRetryAfter)-time.Millisecond
		for _, b := range fleet.arrivals {
			if (b.by != a.by || raced) && b.at < until-skew(b.at) && b.at > from && !retryOfEarlier(b, from) && !anyHolds(redisTrouble, a.done) && !anyHolds(redisTrouble, b.at) {
				add("economical: /films #%d from r%d at %v, within the Retry-After %v of #%d, delivered at %v", b.marker, b.by, b.at, a.retryAfter, a.marker, a.done)
			}
		}
	}
	// One preparation per replica per fetched catalogue, however it heard
	// of it (its own fetch, a wait, news, a forged or repeated message),
	// with Redis healthy and the clocks agreeing.
	if !slices.ContainsFunc(faults, func(f fault) bool { return isRedisFault(f) || stepsAClock(f) }) {
		for k, n := range fleet.prepared {
			if n > 1 {
				add("economical: r%d prepared #%d %d times", k[0], k[1], n)
			}
		}
	}

	// Recovering as one: after an outage, once any replica serves again,
	// none answers an error more than a second later.
	if sc.recoverTogether {
		var end time.Duration
		for _, f := range faults {
			end = max(end, f.until)
		}
		first := time.Duration(-1)
		for _, p := range fleet.pages {
			if p.status == http.StatusOK && p.end > end && (first < 0 || p.end < first) {
				first = p.end
			}
		}
		for _, p := range fleet.pages {
			if first >= 0 && p.status != http.StatusOK && p.status != 0 && p.start > first+time.Second {
				add("recover together: reader %d got %d from r%d at %v, more than a second after a replica served again at %v", p.reader, p.status, p.replica, p.end, first)
			}
		}
	}
	return out
}

// killedAsItCame reports whether the replica a's answer came to was
// killed while a was unanswered, or within a Redis call after: it died
// before it could record what the answer said.
func killedAsItCame(faults []fault, a simArrival, call time.Duration) bool {
	return slices.ContainsFunc(faults, func(f fault) bool {
		return f.kind == "kill" && f.replica == a.by && f.at >= a.at && f.at <= a.done+call
	})
}

// healthyStretches are the parts of [0, d) outside every excused span.
func healthyStretches(excused []span, d time.Duration) []span {
	slices.SortFunc(excused, func(a, b span) int { return int(a.from - b.from) })
	var out []span
	at := time.Duration(0)
	for _, s := range excused {
		if s.from > at {
			out = append(out, span{at, s.from})
		}
		at = max(at, s.to)
	}
	if at < d {
		out = append(out, span{at, d})
	}
	return out
}

// raSpans are the stretches in which the upstream had asked the fleet to
// wait: from a Retry-After's delivery, for as long as it asked, capped as
// a lone replica caps it, and a Redis call more (the record is written a
// round trip after the answer came).
type raSpans []span

func retryAfterWindows(arrivals []simArrival, call time.Duration) raSpans {
	var out raSpans
	for _, a := range arrivals {
		if a.retryAfter > 0 {
			out = append(out, span{a.done, a.done + min(a.retryAfter, cache.MaxRetryAfter) + call})
		}
	}
	return out
}

// countFetches counts the /films requests, less those a replica sent
// while one of its own was unanswered (second requests beside late ones).
// outageEnds counts the ends, before the run's, of the stretches the
// spans cover together (overlapping spans are one stretch).
func outageEnds(spans []span, end time.Duration) int {
	spans = slices.Clone(spans)
	slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.from, b.from) })
	n := 0
	for i := 0; i < len(spans); {
		to := spans[i].to
		for i++; i < len(spans) && spans[i].from <= to; i++ {
			to = max(to, spans[i].to)
		}
		if to < end {
			n++
		}
	}
	return n
}

func countFetches(arrivals []simArrival) (fetches, seconds int) {
	for i, b := range arrivals {
		if slices.ContainsFunc(arrivals[:i], func(a simArrival) bool { return a.by == b.by && b.at < a.done }) {
			seconds++
		} else {
			fetches++
		}
	}
	return fetches, seconds
}

// covers reports whether a failed page fell in a Retry-After: asked during
// one, or waiting on the fetch that brought it when it came.
func (w raSpans) covers(p simPage) bool {
	return slices.ContainsFunc(w, func(s span) bool { return p.end >= s.from && p.start <= s.to+time.Millisecond })
}

// The judge's allowance for a phase shift is one fetch per stretch of
// outages that ends inside the run: overlapping spans are one stretch,
// and one that runs past the end leaves no phase to shift.
func TestSimulate_OutageEnds(t *testing.T) {
	s := time.Second
	for _, c := range []struct {
		spans []span
		want  int
	}{
		{nil, 0},
		{[]span{{2 * s, 5 * s}}, 1},
		{[]span{{2 * s, 5 * s}, {4 * s, 7 * s}}, 1},
		{[]span{{6 * s, 9 * s}, {1 * s, 3 * s}}, 2},
		{[]span{{2 * s, 5 * s}, {4 * s, 16 * s}}, 0},
		{[]span{{1 * s, 3 * s}, {10 * s, 15 * s}}, 1},
	} {
		if got := outageEnds(c.spans, 15*s); got != c.want {
			t.Errorf("outageEnds(%v, 15s) = %d, want %d", c.spans, got, c.want)
		}
	}
}
