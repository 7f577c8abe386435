package fleet

import (
	"sync"
	"time"
)

// breaker keeps calls away from a Redis that keeps failing, so a sick
// Redis costs a few bounded calls, not latency on every request. After
// threshold consecutive failures it opens for cooldown; then one call at a
// time may probe (half-open): a success closes it, a failure opens it again
// for twice as long, up to maxCooldown. It is safe for concurrent use.
type breaker struct {
	threshold   int
	cooldown    time.Duration
	maxCooldown time.Duration

	mu        sync.Mutex
	failures  int           // consecutive
	openUntil time.Time     // calls are refused before this
	wait      time.Duration // the current cooldown
	probing   bool          // a half-open probe is in flight
}

// allow reports whether a call may go to Redis at now, and whether it is
// the half-open probe: only the probe's outcome may end the probing, or a
// slow call let through before the breaker opened, ending during a probe,
// would be taken for it (and a second probe let in beside the first).
func (b *breaker) allow(now time.Time) (ok, probe bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.failures < b.threshold {
		return true, false
	}
	if now.Before(b.openUntil) || b.probing {
		return false, false
	}
	b.probing = true // half-open: this call is the probe
	return true, true
}

// record notes at now the outcome of a call allow let through (probe as
// allow said) and reports whether it opened the breaker. Any success
// closes it: Redis answered.
func (b *breaker) record(now time.Time, ok, probe bool) (opened bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if probe {
		b.probing = false
	}
	if ok {
		b.failures, b.wait = 0, 0
		return false
	}
	b.failures++
	switch {
	case probe:
		b.wait = min(2*b.wait, b.maxCooldown)
	case b.failures == b.threshold:
		b.wait = b.cooldown
		opened = true
	default:
		// Below the threshold, or a straggler failing while the breaker
		// is open already: it says nothing new.
		return false
	}
	b.openUntil = now.Add(b.wait)
	return opened
}

// abandon notes a call that ended because its caller gave up: no verdict
// on Redis, but if it was the probe, the probing is over.
func (b *breaker) abandon(probe bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if probe {
		b.probing = false
	}
}

// alive closes the breaker: Redis was seen answering outside a call.
func (b *breaker) alive() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.probing {
		b.failures, b.wait = 0, 0
	}
}

// isOpen reports whether calls are being refused at now.
func (b *breaker) isOpen(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.failures >= b.threshold && (now.Before(b.openUntil) || b.probing)
}
