// Package cache is a read-through cache of one value with a time to live,
// whose concurrent misses share a single load.
//
// There is no background goroutine or ticker: a load happens only because a
// caller of Get needs one, or because another process announced a newer
// value (Adopt). A value is fresh while its age, counted from the moment the
// fetch that made it started, is below the TTL; nothing older is ever
// returned, unless Options.StaleIfError is set and then only marked Stale.
//
// The cache is the one owner of what is served: every value it holds came
// out of its single flight, so loads, early refreshes and adoptions never
// run side by side, and a loader need not remember what it returned.
// The package knows nothing of what it caches.
package cache

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
)

// ErrExpired is returned when a load finished but its value was already
// older than the TTL (a loader that ignored its context's deadline). The
// value is dropped rather than served past the promise.
var ErrExpired = errors.New("cache: loaded value expired before it could be served")

// ErrNotNewer is what a SharedLoader returns for an adoption, or an early
// refresh, that found nothing newer than what the cache holds. It is not a failure: no backoff
// starts, and a Get that joined that load starts one of its own.
var ErrNotNewer = errors.New("cache: nothing newer to adopt")

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

// A SharedLoader is a Loader whose values may come from other processes
// that share them (package fleet): each carries the instant its age counts
// from and a version that orders it among those processes' values. New uses
// LoadShared when a Loader has it.
type SharedLoader[V any] interface {
	LoadShared(ctx context.Context, r Request[V]) (Snapshot[V], error)
}

// SharedFunc adapts a function to a SharedLoader (and a Loader).
type SharedFunc[V any] func(ctx context.Context, r Request[V]) (Snapshot[V], error)

// LoadShared calls f(ctx, r).
func (f SharedFunc[V]) LoadShared(ctx context.Context, r Request[V]) (Snapshot[V], error) {
	return f(ctx, r)
}

// Load calls f with a request that says only when the load started.
func (f SharedFunc[V]) Load(ctx context.Context, started time.Time) (V, error) {
	s, err := f(ctx, Request[V]{Started: started})
	return s.Value, err
}

// A Request tells a SharedLoader what a load is for.
type Request[V any] struct {
	// Started is the instant a value fetched by this load ages from.
	Started time.Time
	// Have is the value the cache held when the load began, fresh or
	// not; nil if none.
	Have *Snapshot[V]
	// Adopt, if nonzero, is a version another process announced: the
	// loader should take that value or a newer one without fetching, and
	// return ErrNotNewer if there is none.
	Adopt uint64
	// Hold, if nonzero, is when the wait a source asked of this process
	// (its Retry-After, capped) ends: until then the loader may take a
	// value newer than Have that another process made, but must not
	// fetch, and returns ErrNotNewer if there is none. A lone process is
	// never asked: its own backoff keeps every load back until then.
	Hold time.Time
}

// Snapshot is a value, the instant its age counts from, and its version.
type Snapshot[V any] struct {
	Value V
	// Fetched is when the fetch that made Value started, on this
	// process's clock: it is served until Fetched + TTL.
	Fetched time.Time
	// Version orders values shared between processes: of two values that
	// both have one, the higher is newer. 0 is none (a value loaded
	// alone); such values are ordered by Fetched.
	Version uint64
	// Newer, set by a SharedLoader, is a version the other processes
	// serve from this value's switch (SwitchBefore its deadline): the
	// cache adopts it next, to switch with them.
	Newer uint64
	// Stale is set when Get returns a value past its TTL because loading
	// failed and Options.StaleIfError allowed it. Never set otherwise.
	Stale bool
	// Served says how Get came by the value: set on what Get returns.
	Served Served
	// Origin, set by a SharedLoader, says where the value came from, in
	// words for people (a Cache-Status detail); the cache never reads it.
	Origin string
}

// Served says how a Get came by its value.
type Served uint8

const (
	// Hit: the value was fresh in the cache.
	Hit Served = iota
	// Missed: nothing fresh was cached, and the request waited for the
	// load it started.
	Missed
	// Collapsed: nothing fresh was cached, and the request joined a load
	// another started: one of the requests coalescing saves a fetch.
	Collapsed
)

// Age is how old s is at now.
func (s Snapshot[V]) Age(now time.Time) time.Duration { return now.Sub(s.Fetched) }

// supersedes reports whether s should replace cur. Versions decide where
// both have one; Fetched, a deadline and not a version, orders only values
// that lack one.
func (s *Snapshot[V]) supersedes(cur *Snapshot[V]) bool {
	if cur == nil {
		return true
	}
	if s.Version != 0 && cur.Version != 0 {
		return s.Version > cur.Version
	}
	return !s.Fetched.Before(cur.Fetched)
}

// UnavailableError is returned by Get when no fresh value could be had:
// the load failed, or an earlier failure's backoff has not passed yet.
type UnavailableError struct {
	Err     error     // the load's error; in a backoff, the last one
	RetryAt time.Time // when the next load may start
	Backoff bool      // no load was tried for this call: it fell in a backoff
}

func (e *UnavailableError) Error() string {
	if e.Backoff {
		return "cache: in backoff after: " + e.Err.Error()
	}
	return e.Err.Error()
}

func (e *UnavailableError) Unwrap() error { return e.Err }

// Options configures a Cache.
type Options struct {
	// TTL is how long a value stays fresh, from the start of its load. Required.
	TTL time.Duration
	// LoadTimeout bounds one load. Zero or anything above TTL means TTL,
	// since a load that outlives the TTL yields a value nobody may be served.
	LoadTimeout time.Duration
	// RetryAfter, if set, extracts from a load error a wait the source asked
	// for (an HTTP Retry-After); the backoff after that failure is then
	// that, capped at MaxRetryAfter, instead of the cache's own. A value
	// another process made (a SharedLoader's) may be served meanwhile, but
	// no load of this process fetches before the wait ends (Request.Hold).
	RetryAfter func(error) time.Duration
	// StaleIfError, if positive, lets Get return the last value up to this
	// long past its TTL, marked Stale, when it cannot load a fresh one.
	// Zero (the default) keeps the TTL a hard limit.
	StaleIfError time.Duration
	// RefreshAhead makes a hit on a value in the last stretch of its TTL
	// start one load in the background (through the same flight) while it
	// is served the still-fresh value, so under steady traffic nobody waits
	// for a load. The stretch is four times the last load's duration, at
	// least 2s and at most half the TTL: long enough for a load like the
	// last one to finish before expiry, and for the value to be replaced
	// while whole seconds of it remain (caches that count whole seconds
	// downstream cannot keep a value that has less than one left), short
	// enough to cost few extra loads (about 3% at a 1-minute TTL). Idle,
	// nothing is loaded; if the early load fails, the value still expires
	// at its TTL.
	RefreshAhead bool
	// Rand returns a number in [0, 1) for the backoff's jitter; nil means
	// math/rand/v2. Tests set it for exact windows.
	Rand func() float64
}

// Backoff after failed loads: the first waits minBackoff, each consecutive
// one doubles up to maxBackoff, each jittered down by up to half so
// replicas do not retry in step. Calls inside the window fail at once.
const (
	minBackoff       = 250 * time.Millisecond
	maxBackoff       = 5 * time.Second
	minRefreshWindow = 2 * time.Second
)

// MaxRetryAfter caps the backoff a source's Retry-After imposes: a source
// that asks for an hour is asked again after this. Processes that share
// a backoff (package fleet) cap it alike.
const MaxRetryAfter = 30 * time.Second

// Stats are the cache's counters since it was created. Each field is
// defined here once: its tags name the Prometheus counter it is exported
// as (package metrics reads them), and Stats copies every field, so a new
// counter is a field and the one line that counts it.
type Stats struct {
	Hits       uint64 `metric:"cache_hits_total" help:"Requests served from a fresh cached snapshot."`
	Misses     uint64 `metric:"cache_misses_total" help:"Requests that had to wait for an upstream fetch, as leader or joiner."`
	Coalesced  uint64 `metric:"cache_coalesced_total" help:"Misses that joined a fetch another request had already started and received its result."`
	Loads      uint64 `metric:"cache_loads_total" help:"Snapshot fetches started (each makes one or two requests per upstream endpoint)."`
	LoadErrors uint64 `metric:"cache_load_errors_total" help:"Snapshot fetches that failed (including panics and fetches that outlived the TTL)."`
	Rejected   uint64 `metric:"cache_backoff_rejections_total" help:"Requests failed at once, without a fetch, because an earlier fetch failed and its backoff had not passed."`
	Stale      uint64 `metric:"stale_served_total" help:"Requests served a snapshot past its TTL because the upstream failed (-stale-if-error)."`
	Early      uint64 `metric:"cache_early_refreshes_total" help:"Fetches started ahead of expiry by a request that was itself served the still-fresh snapshot."`
	Adopted    uint64 `metric:"cache_adoptions_total" help:"Snapshots another replica announced that replaced this replica's own."`
}

// Cache is a read-through TTL cache of one value. It is safe for
// concurrent use.
type Cache[V any] struct {
	// stats is first so its words are 64-bit aligned for the atomic adds
	// on every platform; it is only touched through sync/atomic.
	stats Stats

	loader Loader[V]
	opts   Options // defaults filled in

	group singleflight.Group
	state atomic.Pointer[held[V]] // replaced only by the flight, and by promote

	mu       sync.Mutex // guards the failure state below, and Close against track
	failures int        // consecutive failed loads
	retryAt  time.Time  // no load starts before this
	lastErr  error
	// holdUntil is when the last Retry-After a source gave ends, and
	// holdErr the failure that carried it. A value another process made
	// ends the backoff (it is served), not the hold: the source asked
	// this process to wait, and a lone process would have (Request.Hold).
	holdUntil time.Time
	holdErr   error

	lastLoad   atomic.Int64   // duration of the last successful load, ns
	refreshing atomic.Bool    // an early refresh goroutine is running
	waiting    atomic.Int64   // Get calls waiting on a load (Waiting)
	background sync.WaitGroup // refreshes, adoptions and running loads

	adoptMu    sync.Mutex
	adopting   bool   // an adoption goroutine is running
	adoptWant  uint64 // the newest version it was told of (a hint)
	adoptHints uint64 // hints received, so an adoption sees news that came while it loaded

	// closed ends every load, running or to come, once Close is called.
	closed context.Context
	close  context.CancelFunc
}

// New returns a Cache that loads values with l. It panics if o.TTL is not
// positive: that is a programming error, not a runtime condition.
func New[V any](l Loader[V], o Options) *Cache[V] {
	if o.TTL <= 0 {
		panic("cache: TTL must be positive")
	}
	if o.LoadTimeout <= 0 || o.LoadTimeout > o.TTL {
		o.LoadTimeout = o.TTL
	}
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	c := &Cache[V]{loader: l, opts: o}
	c.closed, c.close = context.WithCancel(context.Background())
	return c
}

// held is what the cache holds: the value it serves, and the one that
// replaces it at switchAt, if a newer one came while it was fresh.
type held[V any] struct {
	cur, next *Snapshot[V]
	switchAt  time.Time
}

// switchBefore is how long before the served value's deadline a newer one,
// loaded ahead (an early refresh, another replica's news), takes its place.
// Every replica of a fleet reckons that deadline alike, so they switch
// together and a reader moving between them never sees an older value
// after a newer one; a second before expiry, because caches downstream
// count whole seconds and could not keep a value with less than one left.
// At most a quarter of the TTL.
const switchBefore = time.Second

// SwitchBefore is how long before a value's deadline, at ttl, the value
// loaded ahead takes its place (see switchBefore): what other processes
// sharing values need to know to switch with this one.
func SwitchBefore(ttl time.Duration) time.Duration { return min(switchBefore, ttl/4) }

// flightKey is the one singleflight key: the cache holds a single value.
const flightKey = ""

// Get returns a fresh snapshot, loading one if the cached one is missing or
// expired. Concurrent callers that miss share one load. The load runs
// detached from the caller that started it, so a leader that gives up does
// not fail the others; each caller stops waiting when its own ctx ends.
// When no fresh value can be had the error is an *UnavailableError, unless
// StaleIfError allows the last value, which then comes back marked Stale.
func (c *Cache[V]) Get(ctx context.Context) (Snapshot[V], error) {
	now := time.Now()
	if s := c.fresh(now); s != nil {
		atomic.AddUint64(&c.stats.Hits, 1)
		if c.opts.RefreshAhead && s.Age(now) >= c.opts.TTL-c.refreshWindow() && c.newest() == s {
			c.refreshEarly(ctx, now)
		}
		return *s, nil
	}
	if err := c.backoff(now); err != nil {
		atomic.AddUint64(&c.stats.Rejected, 1)
		return c.staleOr(err)
	}
	atomic.AddUint64(&c.stats.Misses, 1)
	c.waiting.Add(1)
	defer c.waiting.Add(-1)

	// At most twice: a flight joined may have been an adoption that found
	// nothing, which is no answer for a miss; the second flight is ours.
	for attempt := 0; ; attempt++ {
		led := false
		ch := c.group.DoChan(flightKey, func() (any, error) {
			led = true
			return c.load(ctx, false, 0)
		})
		var res singleflight.Result
		select {
		case <-ctx.Done():
			return Snapshot[V]{}, ctx.Err()
		case res = <-ch:
		}
		if errors.Is(res.Err, ErrNotNewer) && attempt == 0 {
			continue
		}
		if !led {
			atomic.AddUint64(&c.stats.Coalesced, 1)
		}
		if res.Err != nil {
			return c.staleOr(res.Err)
		}
		s := res.Val.(*Snapshot[V])
		// The load may have outlived its deadline (a loader that ignores
		// ctx); never hand out what the promise forbids.
		if s.Age(time.Now()) >= c.opts.TTL {
			return c.staleOr(c.unavailable(ErrExpired))
		}
		got := *s
		got.Served = Missed
		if !led {
			got.Served = Collapsed
		}
		return got, nil
	}
}

// Waiting is how many Get calls are waiting on a load now: a load's
// caller can tell how many requests its result will answer.
func (c *Cache[V]) Waiting() int { return int(c.waiting.Load()) }

// refreshWindow is how long before expiry RefreshAhead starts a load.
func (c *Cache[V]) refreshWindow() time.Duration {
	return min(max(4*time.Duration(c.lastLoad.Load()), minRefreshWindow), c.opts.TTL/2)
}

// refreshEarly starts one background load unless one is running or a
// backoff forbids it. The atomic comes first, so while a refresh runs a
// burst of hits in the window costs each of them nothing more.
func (c *Cache[V]) refreshEarly(ctx context.Context, now time.Time) {
	if !c.refreshing.CompareAndSwap(false, true) {
		return
	}
	if c.backoff(now) != nil || !c.track() {
		c.refreshing.Store(false)
		return
	}
	atomic.AddUint64(&c.stats.Early, 1)
	// The hit's request ends now; the load must not end with it, but it
	// keeps the request's values (its id) for the fetch's log line.
	ctx = context.WithoutCancel(ctx)
	go func() {
		defer c.background.Done()
		defer c.refreshing.Store(false)
		<-c.group.DoChan(flightKey, func() (any, error) { return c.load(ctx, true, 0) })
	}()
}

// Adopt is told that another process made version v of the value: a
// hint, which may be stale, repeated or forged. Unless the cache holds v
// or newer, it loads (Request.Adopt) in the background, through the same
// flight as every other load, so a process never prepares one version
// twice however it heard of it. What it loads is whatever is newer than
// what it holds; v is forgotten once the adoption ends, so a forged v
// costs a load that finds nothing, never a belief. It never blocks.
func (c *Cache[V]) Adopt(v uint64) {
	if c.holds(v) {
		return
	}
	c.adoptMu.Lock()
	c.adoptWant = max(c.adoptWant, v)
	c.adoptHints++
	running := c.adopting
	c.adopting = true
	c.adoptMu.Unlock()
	if running {
		return // the running adoption sees the hint
	}
	if !c.track() {
		c.endAdoption()
		return
	}
	go func() {
		defer c.background.Done()
		c.adopt()
	}()
}

// maxAdoptRounds bounds one adoption, whatever the loader and the hints do.
const maxAdoptRounds = 8

// adopt loads until the cache holds the newest version it was told of, or
// a load of its own finds nothing newer and no hint came meanwhile.
// Joining a flight that was not an adoption (a load under way), or one
// that took an older version (the one served until the switch), may leave
// the version still to take: then another round, ours.
func (c *Cache[V]) adopt() {
	defer c.endAdoption()
	for range maxAdoptRounds {
		c.adoptMu.Lock()
		want, hints := c.adoptWant, c.adoptHints
		c.adoptMu.Unlock()
		if c.holds(want) {
			return
		}
		led := false
		res := <-c.group.DoChan(flightKey, func() (any, error) {
			led = true
			return c.load(context.Background(), false, want)
		})
		c.adoptMu.Lock()
		heard := c.adoptHints != hints
		c.adoptMu.Unlock()
		if led && res.Err != nil && !heard {
			return // nothing newer to be had: the hint was stale or forged
		}
	}
}

// endAdoption forgets what the adoption was told.
func (c *Cache[V]) endAdoption() {
	c.adoptMu.Lock()
	c.adoptWant, c.adopting = 0, false
	c.adoptMu.Unlock()
}

// holds reports whether the cached value is version v or newer.
func (c *Cache[V]) holds(v uint64) bool {
	s := c.newest()
	return s != nil && s.Version >= v
}

// current returns the value to serve at now, switching to the next one
// if its time has come.
func (c *Cache[V]) current(now time.Time) *Snapshot[V] {
	h := c.state.Load()
	if h == nil {
		return nil
	}
	if h.next != nil && !now.Before(h.switchAt) {
		c.state.CompareAndSwap(h, &held[V]{cur: h.next})
		return h.next
	}
	return h.cur
}

// newest returns the newest value held, served yet or not.
func (c *Cache[V]) newest() *Snapshot[V] {
	h := c.state.Load()
	switch {
	case h == nil:
		return nil
	case h.next != nil:
		return h.next
	}
	return h.cur
}

// store puts s in the cache at now: to serve at once if nothing fresh is
// served, else next, at the switch. It returns what is served now.
func (c *Cache[V]) store(s *Snapshot[V], now time.Time) *Snapshot[V] {
	for {
		h := c.state.Load()
		cur := c.current(now)
		if h != c.state.Load() {
			continue // promoted meanwhile
		}
		nh := &held[V]{cur: s}
		if cur != nil && cur.Age(now) < c.opts.TTL {
			if at := cur.Fetched.Add(c.opts.TTL - SwitchBefore(c.opts.TTL)); now.Before(at) {
				nh = &held[V]{cur: cur, next: s, switchAt: at}
			}
		}
		if c.state.CompareAndSwap(h, nh) {
			return nh.cur
		}
	}
}

// Close cancels every running load, makes later ones fail at once, and
// waits until every load, refresh and adoption has returned, so a
// shutting-down program leaves no goroutine behind and a refresh nobody
// waits for cannot hold up its exit. Get still serves a fresh value.
func (c *Cache[V]) Close() {
	c.mu.Lock()
	c.close()
	c.mu.Unlock()
	c.background.Wait()
}

// track counts a load or refresh for Close, unless the cache is closed: no
// Add may race with the Wait in Close.
func (c *Cache[V]) track() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Err() != nil {
		return false
	}
	c.background.Add(1)
	return true
}

// load runs inside the flight. early is set for a RefreshAhead load, which
// is wanted while the value is fresh but inside the refresh window; adopt
// for an adoption of that version.
func (c *Cache[V]) load(ctx context.Context, early bool, adopt uint64) (*Snapshot[V], error) {
	start := time.Now()
	hold := c.held(start)
	// Re-check: between our miss and this flight starting, another flight
	// may have finished and stored a fresh value, or failed and started a
	// backoff; loading anyway would double the upstream traffic, and in an
	// outage would let the retry rate grow with the request rate. An
	// adoption fetches nothing, so no backoff holds it back.
	cur := c.newest()
	switch s := c.fresh(start); {
	case adopt != 0:
		if c.holds(adopt) {
			return nil, ErrNotNewer
		}
	case s != nil && (!early || s.Age(start) < c.opts.TTL-c.refreshWindow() || cur != s):
		// Fresh, and for an early refresh either not in its window yet
		// or with a newer value waiting for its switch.
		return s, nil
	default:
		if err := c.backoff(start); err != nil {
			return nil, err
		}
	}
	// The load belongs to every waiter, not to the leader: keep the leader's
	// values (request id for logs) but not its cancellation. Close ends it.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opts.LoadTimeout)
	defer cancel()
	if !c.track() {
		return nil, c.unavailable(context.Canceled)
	}
	defer c.background.Done()
	defer context.AfterFunc(c.closed, cancel)()

	if adopt == 0 {
		atomic.AddUint64(&c.stats.Loads, 1)
	}
	s, err := c.safeLoad(ctx, Request[V]{Started: start, Have: cur, Adopt: adopt, Hold: hold})
	if err != nil && adopt == 0 && !hold.IsZero() {
		// Nothing another process made, and no fetch of our own
		// before the source's wait ends: back off until then.
		return nil, c.holdOff()
	}
	if errors.Is(err, ErrNotNewer) {
		return nil, ErrNotNewer
	}
	if err == nil && time.Since(s.Fetched) >= c.opts.TTL {
		err = ErrExpired
	}
	if err != nil {
		if adopt != 0 {
			return nil, ErrNotNewer // nothing lost: what is held stays
		}
		atomic.AddUint64(&c.stats.LoadErrors, 1)
		return nil, c.fail(err)
	}
	// A fresh value ends an outage's backoff, whoever fetched it; a
	// source's Retry-After holds for this process's fetches (held).
	c.mu.Lock()
	c.failures, c.retryAt, c.lastErr = 0, time.Time{}, nil
	c.mu.Unlock()
	if adopt == 0 {
		c.lastLoad.Store(int64(time.Since(start)))
	}
	// Only the flight stores, so cur is still the newest held; a value
	// no newer than it (the same version, read again) leaves it in place
	// while it is fresh.
	now := time.Now()
	if cur != nil && !s.supersedes(cur) && cur.Age(now) < c.opts.TTL {
		return c.current(now), nil
	}
	if adopt != 0 {
		atomic.AddUint64(&c.stats.Adopted, 1)
	}
	served := c.store(s, now)
	if s.Newer > s.Version {
		// Served until its switch, as the others serve it; the newer
		// one comes next, through the flight, as news does (once this
		// flight has ended: Adopt never blocks).
		c.Adopt(s.Newer)
	}
	return served, nil
}

// fail records a failed load and starts its backoff.
func (c *Cache[V]) fail(err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failures++
	wait := minBackoff << min(c.failures-1, 30)
	if wait > maxBackoff || wait <= 0 {
		wait = maxBackoff
	}
	wait -= time.Duration(c.opts.Rand() * float64(wait/2))
	if c.opts.RetryAfter != nil {
		// The source said when to come back: that, capped, and not our
		// own backoff's guess on top. Processes sharing a backoff (package
		// fleet) all end it when the source said, not each later by its
		// own count of failures.
		if ra := min(c.opts.RetryAfter(err), MaxRetryAfter); ra > 0 {
			wait = ra
			c.holdUntil, c.holdErr = time.Now().Add(wait), err
		}
	}
	c.retryAt = time.Now().Add(wait)
	c.lastErr = err
	return &UnavailableError{Err: err, RetryAt: c.retryAt}
}

// held returns when the source's wait ends if it has not at now, else the
// zero time.
func (c *Cache[V]) held(now time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now.Before(c.holdUntil) {
		return c.holdUntil
	}
	return time.Time{}
}

// holdOff backs off until the source's wait ends, with the failure that
// asked for it: a load found nothing it may take without fetching.
func (c *Cache[V]) holdOff() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.retryAt, c.lastErr = c.holdUntil, c.holdErr
	return &UnavailableError{Err: c.holdErr, RetryAt: c.holdUntil, Backoff: true}
}

// backoff returns an error if a load may not start at now.
func (c *Cache[V]) backoff(now time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lastErr == nil || !now.Before(c.retryAt) {
		return nil
	}
	return &UnavailableError{Err: c.lastErr, RetryAt: c.retryAt, Backoff: true}
}

func (c *Cache[V]) unavailable(err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return &UnavailableError{Err: err, RetryAt: c.retryAt}
}

// staleOr returns the last value if StaleIfError allows it, else err.
func (c *Cache[V]) staleOr(err error) (Snapshot[V], error) {
	if s := c.current(time.Now()); s != nil && c.opts.StaleIfError > 0 &&
		s.Age(time.Now()) < c.opts.TTL+c.opts.StaleIfError {
		atomic.AddUint64(&c.stats.Stale, 1)
		out := *s
		out.Stale = true
		return out, nil
	}
	return Snapshot[V]{}, err
}

// safeLoad turns a panic in the loader into an error: singleflight would
// otherwise re-panic it on a fresh goroutine and crash the process. A
// Fetched after the load's start is impossible for a value loaded now, and
// one left zero means the start; both are taken as the start.
func (c *Cache[V]) safeLoad(ctx context.Context, r Request[V]) (s *Snapshot[V], err error) {
	defer func() {
		if p := recover(); p != nil {
			s, err = nil, fmt.Errorf("cache: load panicked: %v", p)
		}
	}()
	var out Snapshot[V]
	if sl, ok := c.loader.(SharedLoader[V]); ok {
		out, err = sl.LoadShared(ctx, r)
	} else {
		out.Value, err = c.loader.Load(ctx, r.Started)
	}
	if err != nil {
		return nil, err
	}
	if out.Fetched.IsZero() || out.Fetched.After(time.Now()) {
		out.Fetched = r.Started
	}
	out.Stale = false
	return &out, nil
}

// fresh returns the cached snapshot if it is younger than the TTL at now.
func (c *Cache[V]) fresh(now time.Time) *Snapshot[V] {
	s := c.current(now)
	if s == nil || s.Age(now) >= c.opts.TTL {
		return nil
	}
	return s
}

// Peek returns the last value loaded, however old, without loading or
// counting. It is for reporting (its age in metrics), never for serving.
func (c *Cache[V]) Peek() (Snapshot[V], bool) {
	s := c.current(time.Now())
	if s == nil {
		return Snapshot[V]{}, false
	}
	return *s, true
}

// TTL returns the time to live the cache was built with.
func (c *Cache[V]) TTL() time.Duration { return c.opts.TTL }

// Stats returns the cache's counters. It copies every field of Stats,
// whatever they are, so a counter is never left out of the copy.
func (c *Cache[V]) Stats() Stats {
	var out Stats
	src, dst := reflect.ValueOf(&c.stats).Elem(), reflect.ValueOf(&out).Elem()
	for i := range src.NumField() {
		dst.Field(i).SetUint(atomic.LoadUint64(src.Field(i).Addr().Interface().(*uint64)))
	}
	return out
}
