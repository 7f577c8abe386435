// Package cache is a read-through cache of one value with a time to live,
// whose concurrent misses share a single load.
//
// There is no background goroutine or ticker: a load happens only because a
// caller of Get needs one. A value is fresh while its age, counted from the
// moment its load started, is below the TTL; nothing older is ever returned.
// The package knows nothing of what it caches.
package cache

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
)

// ErrExpired is returned when a load finished but its value was already
// older than the TTL (a loader that ignored its context's deadline). The
// value is dropped rather than served past the promise.
var ErrExpired = errors.New("cache: loaded value expired before it could be served")

// A Loader produces a new value. started is the instant the cache counts the
// value's age from; a value that shows its own timestamp should use it so the
// two cannot disagree.
type Loader[V any] interface {
	Load(ctx context.Context, started time.Time) (V, error)
}

// LoaderFunc adapts a function to a Loader.
type LoaderFunc[V any] func(ctx context.Context, started time.Time) (V, error)

// Load calls f(ctx, started).
func (f LoaderFunc[V]) Load(ctx context.Context, started time.Time) (V, error) {
	return f(ctx, started)
}

// Snapshot is a value and the moment the load that produced it started.
type Snapshot[V any] struct {
	Value   V
	Fetched time.Time
}

// Age is how old s is at now.
func (s Snapshot[V]) Age(now time.Time) time.Duration { return now.Sub(s.Fetched) }

// Options configures a Cache.
type Options struct {
	// TTL is how long a value stays fresh, from the start of its load. Required.
	TTL time.Duration
	// LoadTimeout bounds one load. Zero or anything above TTL means TTL,
	// since a load that outlives the TTL yields a value nobody may be served.
	LoadTimeout time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Stats are the cache's counters since it was created.
type Stats struct {
	Hits       uint64 // Get calls served from a fresh value
	Misses     uint64 // Get calls that had to wait for a load, as leader or joiner
	Coalesced  uint64 // misses that joined a load another caller started
	Loads      uint64 // loads run
	LoadErrors uint64 // loads that failed (including panics and ErrExpired)
}

// Cache is a read-through TTL cache of one value. It is safe for
// concurrent use.
type Cache[V any] struct {
	loader      Loader[V]
	ttl         time.Duration
	loadTimeout time.Duration
	now         func() time.Time

	group singleflight.Group
	snap  atomic.Pointer[Snapshot[V]]

	hits, misses, coalesced, loads, loadErrors atomic.Uint64
}

// New returns a Cache that loads values with l. It panics if o.TTL is not
// positive: that is a programming error, not a runtime condition.
func New[V any](l Loader[V], o Options) *Cache[V] {
	if o.TTL <= 0 {
		panic("cache: TTL must be positive")
	}
	c := &Cache[V]{loader: l, ttl: o.TTL, loadTimeout: o.LoadTimeout, now: o.Now}
	if c.loadTimeout <= 0 || c.loadTimeout > c.ttl {
		c.loadTimeout = c.ttl
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c
}

// flightKey is the one singleflight key: the cache holds a single value.
const flightKey = ""

// Get returns a fresh snapshot, loading one if the cached one is missing or
// expired. Concurrent callers that miss share one load. The load runs
// detached from the caller that started it, so a leader that gives up does
// not fail the others; each caller stops waiting when its own ctx ends.
func (c *Cache[V]) Get(ctx context.Context) (Snapshot[V], error) {
	if s := c.fresh(c.now()); s != nil {
		c.hits.Add(1)
		return *s, nil
	}
	c.misses.Add(1)

	led := false
	ch := c.group.DoChan(flightKey, func() (any, error) {
		led = true
		return c.load(ctx)
	})
	select {
	case <-ctx.Done():
		return Snapshot[V]{}, ctx.Err()
	case res := <-ch:
		if !led {
			c.coalesced.Add(1)
		}
		if res.Err != nil {
			return Snapshot[V]{}, res.Err
		}
		s := res.Val.(*Snapshot[V])
		// The load may have outlived its deadline (a loader that ignores
		// ctx); never hand out what the promise forbids.
		if s.Age(c.now()) >= c.ttl {
			return Snapshot[V]{}, ErrExpired
		}
		return *s, nil
	}
}

// load runs inside the flight.
func (c *Cache[V]) load(ctx context.Context) (*Snapshot[V], error) {
	start := c.now()
	// Re-check: between our miss and this flight starting, another flight
	// may have finished and stored a fresh value; loading again would double
	// the upstream traffic for nothing.
	if s := c.fresh(start); s != nil {
		return s, nil
	}
	// The load belongs to every waiter, not to the leader: keep the leader's
	// values (request id for logs) but not its cancellation.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.loadTimeout)
	defer cancel()

	c.loads.Add(1)
	v, err := c.safeLoad(ctx, start)
	if err != nil {
		c.loadErrors.Add(1)
		return nil, err
	}
	s := &Snapshot[V]{Value: v, Fetched: start}
	if s.Age(c.now()) >= c.ttl {
		c.loadErrors.Add(1)
		return nil, ErrExpired
	}
	c.snap.Store(s)
	return s, nil
}

// safeLoad turns a panic in the loader into an error: singleflight would
// otherwise re-panic it on a fresh goroutine and crash the process.
func (c *Cache[V]) safeLoad(ctx context.Context, start time.Time) (v V, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("cache: load panicked: %v", r)
		}
	}()
	return c.loader.Load(ctx, start)
}

// fresh returns the cached snapshot if it is younger than the TTL at now.
func (c *Cache[V]) fresh(now time.Time) *Snapshot[V] {
	s := c.snap.Load()
	if s == nil || s.Age(now) >= c.ttl {
		return nil
	}
	return s
}

// Peek returns the last value loaded, however old, without loading or
// counting. It is for reporting (its age in metrics), never for serving.
func (c *Cache[V]) Peek() (Snapshot[V], bool) {
	s := c.snap.Load()
	if s == nil {
		return Snapshot[V]{}, false
	}
	return *s, true
}

// TTL returns the time to live the cache was built with.
func (c *Cache[V]) TTL() time.Duration { return c.ttl }

// Stats returns the cache's counters.
func (c *Cache[V]) Stats() Stats {
	return Stats{
		Hits:       c.hits.Load(),
		Misses:     c.misses.Load(),
		Coalesced:  c.coalesced.Load(),
		Loads:      c.loads.Load(),
		LoadErrors: c.loadErrors.Load(),
	}
}
