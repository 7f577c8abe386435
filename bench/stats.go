package main

import (
	"cmp"
	"math"
	"slices"
	"time"
)

// median is the middle of xs (the mean of the two middle values for an
// even count); NaN for none. xs is not modified.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// ratios divides a by b element by element (0 where b is 0). A ratio of
// runs from the same round, seconds apart, is what the hit benchmark
// reports: a ratio of medians could pair rounds run under different load.
func ratios(a, b []float64) []float64 {
	out := make([]float64, min(len(a), len(b)))
	for i := range out {
		if b[i] != 0 {
			out[i] = a[i] / b[i]
		}
	}
	return out
}

// percentile is the nearest-rank p-th percentile (0 < p <= 100) of ds:
// the smallest value with at least p % of the values at or below it.
// Zero for none.
func percentile[T cmp.Ordered](ds []T, p float64) T {
	var zero T
	if len(ds) == 0 {
		return zero
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	rank = min(max(rank, 1), len(s))
	return s[rank-1]
}

// countIn counts the times in [from, to).
func countIn(times []time.Time, from, to time.Time) int {
	n := 0
	for _, t := range times {
		if !t.Before(from) && t.Before(to) {
			n++
		}
	}
	return n
}

// perWindow is count events over span expressed per window: fetches per
// TTL window.
func perWindow(count int, span, window time.Duration) float64 {
	if span <= 0 {
		return math.NaN()
	}
	return float64(count) * float64(window) / float64(span)
}

// maxInWindow is the most times found in any window-long interval: the
// busiest TTL window, wherever it starts.
func maxInWindow(times []time.Time, window time.Duration) int {
	s := slices.Clone(times)
	slices.SortFunc(s, func(a, b time.Time) int { return a.Compare(b) })
	best, j := 0, 0
	for i := range s {
		for s[i].Sub(s[j]) >= window {
			j++
		}
		best = max(best, i-j+1)
	}
	return best
}

// minGap is the shortest time between two consecutive times (sorted
// first); zero for fewer than two.
func minGap(times []time.Time) time.Duration {
	s := slices.Clone(times)
	slices.SortFunc(s, func(a, b time.Time) int { return a.Compare(b) })
	var gap time.Duration
	for i := 1; i < len(s); i++ {
		if d := s[i].Sub(s[i-1]); i == 1 || d < gap {
			gap = d
		}
	}
	return gap
}
