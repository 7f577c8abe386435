package main

import (
	"slices"
	"sort"
	"time"
)

// sighting is one request of the scale benchmark's load, as its client saw
// it: which replica, when it was sent and answered, and the marker the
// page showed (-1: the request failed).
type sighting struct {
	replica   int
	sent, got time.Time
	marker    int
}

// fetchRecord is one /films request at the fake upstream: when it came,
// when its answer was written, and the marker that answer carried.
type fetchRecord struct {
	at, done time.Time
	marker   int
}

// backwards counts the pages older than one the fleet had already served:
// a page showing marker n for a request sent more than grace after a
// response showing a newer marker had been received. It is sound: that
// response was served before it was received, the older page after its
// request was sent (the e2e tests' judgeFleet, on the client's clock).
func backwards(obs []sighting, grace time.Duration) int {
	var ok []sighting
	for _, o := range obs {
		if o.marker >= 0 {
			ok = append(ok, o)
		}
	}
	slices.SortFunc(ok, func(a, b sighting) int { return a.got.Compare(b.got) })
	best := make([]int, len(ok)) // best[i]: the newest marker among ok[:i+1]
	for i, o := range ok {
		best[i] = o.marker
		if i > 0 {
			best[i] = max(best[i], best[i-1])
		}
	}
	n := 0
	for _, o := range ok {
		cut := o.sent.Add(-grace)
		// ok[:i] are the responses received before cut.
		i := sort.Search(len(ok), func(i int) bool { return !ok[i].got.Before(cut) })
		if i > 0 && best[i-1] > o.marker {
			n++
		}
	}
	return n
}

// commitLag is, for one marker the upstream handed out, how long after its
// fetch was answered every replica was serving it (or a newer one), and
// how far apart the first and the last replica began to.
type commitLag struct {
	marker      int
	toAll       time.Duration
	spread      time.Duration
	allServedIt bool
}

// commitLags follows each marker fetched before until (later ones may not
// have had the time to spread) through the sightings of replicas 0 to
// replicas-1. Only the first fetch of a marker counts: a replica fetching
// alone can fetch one again. A replica "serves" marker m from its first
// response showing m or newer to a request sent after the fetch began; the
// figure is an upper bound, by up to the gap between two requests to one
// replica.
func commitLags(fetches []fetchRecord, obs []sighting, replicas int, until time.Time) []commitLag {
	first := map[int]fetchRecord{}
	for _, f := range fetches {
		if g, ok := first[f.marker]; !ok || f.at.Before(g.at) {
			first[f.marker] = f
		}
	}
	per := make([][]sighting, replicas)
	for _, o := range obs {
		if o.marker >= 0 && o.replica >= 0 && o.replica < replicas {
			per[o.replica] = append(per[o.replica], o)
		}
	}
	for _, s := range per {
		slices.SortFunc(s, func(a, b sighting) int { return a.got.Compare(b.got) })
	}
	var out []commitLag
	for _, f := range first {
		if !f.done.Before(until) {
			continue
		}
		l := commitLag{marker: f.marker, allServedIt: true}
		var earliest, latest time.Time
		for _, s := range per {
			i := slices.IndexFunc(s, func(o sighting) bool { return o.marker >= f.marker && !o.sent.Before(f.at) })
			if i < 0 {
				l.allServedIt = false
				break
			}
			at := s[i].got
			if earliest.IsZero() || at.Before(earliest) {
				earliest = at
			}
			if at.After(latest) {
				latest = at
			}
		}
		if l.allServedIt {
			l.toAll = max(0, latest.Sub(f.done))
			l.spread = latest.Sub(earliest)
		}
		out = append(out, l)
	}
	slices.SortFunc(out, func(a, b commitLag) int { return a.marker - b.marker })
	return out
}
