// Package fleet lets the replicas of a service share one upstream fetch and
// one snapshot through Redis, without ever making Redis a reason to fail.
//
// Each step is one Lua script, one round trip. acquire: read a newer
// snapshot, back off with the fleet (a recorded Retry-After), wait for the
// lock's holder, or take the lock with a generation above every one issued
// and a short lease the leader renews while it fetches. commit: write the
// snapshot, fenced by generation, free the lock, publish "c:<gen>".
// release: publish "f:<gen>" (failed, its cause and Retry-After recorded)
// or "r:<gen>" (cancelled: take over now). Waiters wake on messages and
// check with Redis, so a message costs at most a read. A shared deadline is
// the earlier of Redis's expiry and the writer's fetch start plus the TTL,
// so a step of one clock cannot stretch it. Every call is bounded and
// behind a circuit breaker; any Redis failure makes the caller fetch alone,
// as a lone replica does. Nothing read from Redis is trusted. The package
// knows nothing of what it stores. docs/fleet.md tells the whole protocol.
package fleet

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// The protocol's timings. Each is pinned by a test that fails if it moves
// the way that breaks a promise.
const (
	// leaseTerm is how long a lock outlives its holder's last renewal:
	// the longest the fleet waits on a replica that died mid-fetch.
	leaseTerm = time.Second
	// renewEvery lets three renewals in a row fail (each bounded by the
	// call timeout) before a live leader's lease could lapse.
	renewEvery = leaseTerm / 4
	// starvedAfter tells a call that failed because this process was
	// starved of CPU from one Redis failed: a call that ends more than a
	// quarter of its timeout after its deadline was woken late by its own
	// timer, which on a free CPU fires within a millisecond. On a
	// saturated machine the reply may sit in the socket while the process
	// waits to run; taking that for a sick Redis would open the breaker and
	// send every replica to the upstream alone, which costs the machine
	// more CPU still. Such a call is no verdict on Redis.
	starvedAfter = 4 // the call timeout over this
	// maxStarvedRun bounds that excuse: after this many starved failures
	// in a row, each next one counts against Redis, so a hung Redis on a
	// host that stays saturated still opens the breaker (its calls cost a
	// timeout each until then).
	maxStarvedRun = 3
	// maxGen bounds generations: above it Lua's numbers lose integers.
	maxGen = 1 << 52
	// maxValueBytes bounds a snapshot, checked inside Redis: far above a
	// catalogue (12 KB), far below what would hurt each replica's render.
	maxValueBytes = 256 << 10
)

// Options configures a Tier.
type Options[V any] struct {
	// Redis is the Redis server and how to reach it; its URL is required.
	Redis Redis
	// Namespace prefixes every key and the channel; default "movies". On
	// a Redis Cluster it must hold a hash tag ("movies:{fleet}"), so that
	// every key and the channel fall in one slot.
	Namespace string
	// TTL is how long a snapshot is served from its fetch's start. Required.
	TTL time.Duration
	// CallTimeout bounds every Redis call; default 100ms.
	CallTimeout time.Duration
	// FetchTimeout, if set, is the budget of a fetch a failed Redis or a
	// dead leader delayed (see budget).
	FetchTimeout time.Duration
	// Decode turns a value read from Redis into a V, or refuses it. Required.
	Decode func([]byte) (V, error)
	// RetryAfter, if set, extracts from a fetch error the wait the
	// upstream asked for: the whole fleet then waits that long.
	RetryAfter func(error) time.Duration
	// Cause, if set, labels a fetch error for the waiters (a short word).
	Cause func(error) string
	// SwitchBefore is how long before a snapshot's deadline the fleet
	// serves the next one, fetched ahead (see Entry.Newer); zero always
	// reads the newest.
	SwitchBefore time.Duration
	// OnNews, if set, is called with the generation of a snapshot
	// committed to Redis: on each announcement and on each read after a
	// (re)subscription, repeating generations. It must be cheap and not
	// block.
	OnNews func(gen uint64)
	// Observe, if set, is told of every Redis call's operation, time, error.
	Observe func(op string, d time.Duration, err error)
	Log     *slog.Logger // the tier's logs and go-redis's own; nil discards them
	// Dialer, if set, replaces the network dial (a synctest bubble's Redis).
	Dialer func(ctx context.Context, network, addr string) (net.Conn, error)
	// Now, if set, replaces the wall clock for what crosses processes
	// (a fetch's start, generation seeds); tests step it. Deadlines on
	// this replica use the monotonic clock whatever Now says.
	Now func() time.Time
}

// Stats are the tier's counters. Their tags name the Prometheus counters
// they are exported as (see package metrics).
type Stats struct {
	ReadHits          uint64 `metric:"fleet_reads_total" labels:"result=hit" help:"Reads of the shared snapshot, by result: hit (a usable snapshot), miss (none, or none newer than ours), error."`
	ReadMisses        uint64 `metric:"fleet_reads_total" labels:"result=miss" help:"Reads of the shared snapshot, by result: hit (a usable snapshot), miss (none, or none newer than ours), error."`
	ReadErrors        uint64 `metric:"fleet_reads_total" labels:"result=error" help:"Reads of the shared snapshot, by result: hit (a usable snapshot), miss (none, or none newer than ours), error."`
	Invalid           uint64 `metric:"fleet_invalid_values_total" help:"Values in Redis rejected as malformed, of the wrong type, too large or hostile; the replica fetched for itself."`
	LockWon           uint64 `metric:"fleet_locks_total" labels:"result=won" help:"Attempts to take the fetch lock, by result."`
	LockLost          uint64 `metric:"fleet_locks_total" labels:"result=lost" help:"Attempts to take the fetch lock, by result."`
	WaitCommitted     uint64 `metric:"fleet_waits_total" labels:"result=committed" help:"Waits for another replica's fetch, by how they ended: committed (its snapshot), released (it shut down), failed (its fetch failed), lapsed (its lease did: it died)."`
	WaitReleased      uint64 `metric:"fleet_waits_total" labels:"result=released" help:"Waits for another replica's fetch, by how they ended: committed (its snapshot), released (it shut down), failed (its fetch failed), lapsed (its lease did: it died)."`
	WaitFailed        uint64 `metric:"fleet_waits_total" labels:"result=failed" help:"Waits for another replica's fetch, by how they ended: committed (its snapshot), released (it shut down), failed (its fetch failed), lapsed (its lease did: it died)."`
	WaitLapsed        uint64 `metric:"fleet_waits_total" labels:"result=lapsed" help:"Waits for another replica's fetch, by how they ended: committed (its snapshot), released (it shut down), failed (its fetch failed), lapsed (its lease did: it died)."`
	CommitOK          uint64 `metric:"fleet_commits_total" labels:"result=ok" help:"Snapshots written to Redis after a fetch, by result: ok, fenced (a newer one was there), error."`
	CommitFenced      uint64 `metric:"fleet_commits_total" labels:"result=fenced" help:"Snapshots written to Redis after a fetch, by result: ok, fenced (a newer one was there), error."`
	CommitErrors      uint64 `metric:"fleet_commits_total" labels:"result=error" help:"Snapshots written to Redis after a fetch, by result: ok, fenced (a newer one was there), error."`
	FallbackBreaker   uint64 `metric:"fleet_fallbacks_total" labels:"cause=breaker" help:"Loads that fetched without the shared tier, by cause: breaker (open), timeout, down, tls, auth, noperm (ACL), oom, readonly (a replica), crossslot, moved (Cluster), loading, invalid (a value not ours), starved (this process waited for CPU), error."`
	FallbackTimeout   uint64 `metric:"fleet_fallbacks_total" labels:"cause=timeout" help:"Loads that fetched without the shared tier, by cause: breaker (open), timeout, down, tls, auth, noperm (ACL), oom, readonly (a replica), crossslot, moved (Cluster), loading, invalid (a value not ours), starved (this process waited for CPU), error."`
	FallbackDown      uint64 `metric:"fleet_fallbacks_total" labels:"cause=down" help:"Loads that fetched without the shared tier, by cause: breaker (open), timeout, down, tls, auth, noperm (ACL), oom, readonly (a replica), crossslot, moved (Cluster), loading, invalid (a value not ours), starved (this process waited for CPU), error."`
	FallbackTLS       uint64 `metric:"fleet_fallbacks_total" labels:"cause=tls" help:"Loads that fetched without the shared tier, by cause: breaker (open), timeout, down, tls, auth, noperm (ACL), oom, readonly (a replica), crossslot, moved (Cluster), loading, invalid (a value not ours), starved (this process waited for CPU), error."`
	FallbackAuth      uint64 `metric:"fleet_fallbacks_total" labels:"cause=auth" help:"Loads that fetched without the shared tier, by cause: breaker (open), timeout, down, tls, auth, noperm (ACL), oom, readonly (a replica), crossslot, moved (Cluster), loading, invalid (a value not ours), starved (this process waited for CPU), error."`
	FallbackNoPerm    uint64 `metric:"fleet_fallbacks_total" labels:"cause=noperm" help:"Loads that fetched without the shared tier, by cause: breaker (open), timeout, down, tls, auth, noperm (ACL), oom, readonly (a replica), crossslot, moved (Cluster), loading, invalid (a value not ours), starved (this process waited for CPU), error."`
	FallbackOOM       uint64 `metric:"fleet_fallbacks_total" labels:"cause=oom" help:"Loads that fetched without the shared tier, by cause: breaker (open), timeout, down, tls, auth, noperm (ACL), oom, readonly (a replica), crossslot, moved (Cluster), loading, invalid (a value not ours), starved (this process waited for CPU), error."`
	FallbackReadOnly  uint64 `metric:"fleet_fallbacks_total" labels:"cause=readonly" help:"Loads that fetched without the shared tier, by cause: breaker (open), timeout, down, tls, auth, noperm (ACL), oom, readonly (a replica), crossslot, moved (Cluster), loading, invalid (a value not ours), starved (this process waited for CPU), error."`
	FallbackCrossSlot uint64 `metric:"fleet_fallbacks_total" labels:"cause=crossslot" help:"Loads that fetched without the shared tier, by cause: breaker (open), timeout, down, tls, auth, noperm (ACL), oom, readonly (a replica), crossslot, moved (Cluster), loading, invalid (a value not ours), starved (this process waited for CPU), error."`
	FallbackMoved     uint64 `metric:"fleet_fallbacks_total" labels:"cause=moved" help:"Loads that fetched without the shared tier, by cause: breaker (open), timeout, down, tls, auth, noperm (ACL), oom, readonly (a replica), crossslot, moved (Cluster), loading, invalid (a value not ours), starved (this process waited for CPU), error."`
	FallbackLoading   uint64 `metric:"fleet_fallbacks_total" labels:"cause=loading" help:"Loads that fetched without the shared tier, by cause: breaker (open), timeout, down, tls, auth, noperm (ACL), oom, readonly (a replica), crossslot, moved (Cluster), loading, invalid (a value not ours), starved (this process waited for CPU), error."`
	FallbackInvalid   uint64 `metric:"fleet_fallbacks_total" labels:"cause=invalid" help:"Loads that fetched without the shared tier, by cause: breaker (open), timeout, down, tls, auth, noperm (ACL), oom, readonly (a replica), crossslot, moved (Cluster), loading, invalid (a value not ours), starved (this process waited for CPU), error."`
	FallbackStarved   uint64 `metric:"fleet_fallbacks_total" labels:"cause=starved" help:"Loads that fetched without the shared tier, by cause: breaker (open), timeout, down, tls, auth, noperm (ACL), oom, readonly (a replica), crossslot, moved (Cluster), loading, invalid (a value not ours), starved (this process waited for CPU), error."`
	FallbackError     uint64 `metric:"fleet_fallbacks_total" labels:"cause=error" help:"Loads that fetched without the shared tier, by cause: breaker (open), timeout, down, tls, auth, noperm (ACL), oom, readonly (a replica), crossslot, moved (Cluster), loading, invalid (a value not ours), starved (this process waited for CPU), error."`
	BreakerOpened     uint64 `metric:"fleet_breaker_opens_total" help:"Times the circuit breaker opened after consecutive Redis failures."`
	NewsReceived      uint64 `metric:"fleet_news_total" help:"Announcements of a newer snapshot, by pub/sub or polling."`
	LeaderFailures    uint64 `metric:"fleet_leader_failures_total" help:"Fetches that failed while this replica held the lock (the waiters were told at once)."`
	Backoffs          uint64 `metric:"fleet_backoffs_total" help:"Loads that did not fetch because the upstream had asked the fleet to wait (Retry-After)."`
}

// Entry is a snapshot with what a replica needs to serve it.
type Entry[V any] struct {
	Value V
	// Gen is the generation of the fetch that made it: 0 for data this
	// replica fetched without the shared tier.
	Gen uint64
	// Deadline is, on this replica's clock, when its TTL ends.
	Deadline time.Time
	// Source says where it came from: "shared", "leader" or "local".
	Source string
	// Newer, if set, is the generation of a snapshot fetched ahead that
	// the fleet serves from this one's switch (Options.SwitchBefore before
	// its deadline): a replica that had nothing gets what the others serve
	// now, and adopts the newer to serve from the switch, as they do.
	Newer uint64
}

// FailedError is returned to a replica that waited for a fetch that
// failed, or that asked while the fleet backs off: the whole fleet waits
// RetryAfter (zero: the waiter backs off as a lone replica would).
type FailedError struct {
	Cause      string
	RetryAfter time.Duration
}

func (e *FailedError) Error() string {
	if e.RetryAfter > 0 {
		return fmt.Sprintf("fleet: the fleet's fetch failed (%s); retry after %s", e.Cause, e.RetryAfter)
	}
	return fmt.Sprintf("fleet: the fleet's fetch failed (%s)", e.Cause)
}

// ErrInvalid marks a value in Redis that this protocol did not write:
// malformed, of the wrong type, too large, or with an expiry it would not
// set. The caller fetches for itself.
var ErrInvalid = errors.New("fleet: invalid value in Redis")

var (
	errOpen = errors.New("fleet: circuit breaker open")
	errSpin = errors.New("fleet: the snapshot announced by Redis cannot be read")
	// errStarved marks a call that failed while this process waited for
	// CPU: no verdict on Redis.
	errStarved = errors.New("fleet: this process was starved of CPU during the call")
	// errRetry and errRecheck tell Load to ask for the lock again: it was
	// released, or its lease was due to lapse.
	errRetry   = errors.New("fleet: the lock was released")
	errRecheck = errors.New("fleet: the lock's lease is due")
)

// Tier is a replica's handle on the shared tier. It is safe for concurrent
// use.
type Tier[V any] struct {
	opts     Options[V]
	client   redis.UniversalClient
	redacted string
	k        keys
	token    string // in the locks this replica takes, to tell them apart
	breaker  breaker
	stats    Stats // only through sync/atomic
	// condition is why the shared tier is not being used, nil while it
	// is: its changes are what the log says (see trouble).
	condition atomic.Pointer[condition]
	condMu    sync.Mutex           // orders changes of condition
	lastWarn  map[string]time.Time // by cause, under condMu
	dials     *dialWatch
	// starvedRun counts the starved failures in a row (see maxStarvedRun).
	starvedRun atomic.Int64

	mu     sync.Mutex
	wake   chan struct{} // closed and replaced on every message
	events []event       // the last 32 messages, oldest first
	seq    uint64        // of the newest event
	newest uint64        // the newest commit heard of

	stop context.CancelFunc
	// resubscribe asks the listener for a new subscription: the master
	// moved, and the old one's channel no longer hears the fleet.
	resubscribe chan struct{}
	bg          sync.WaitGroup // the listener and best-effort releases
}

type keys struct{ snap, snapGen, prev, prevGen, gen, lock, failed, channel string }

// event is one message: kind 'c' (commit), 'r' (released) or 'f' (failed).
type event struct {
	seq, gen uint64
	kind     byte
}

var setLogger sync.Once

// New connects to opts.Redis (lazily: New itself makes no call) and starts
// the goroutine that listens for news and, in the sentinel mode, those
// that listen to the sentinels for the master's moves. Close stops them.
func New[V any](opts Options[V]) (*Tier[V], error) {
	p, err := opts.Redis.parse()
	if err != nil {
		return nil, err
	}
	if opts.TTL <= 0 || opts.Decode == nil {
		return nil, errors.New("fleet: TTL and Decode are required")
	}
	if opts.Namespace == "" {
		opts.Namespace = "movies"
	}
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = 100 * time.Millisecond
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Log
	setLogger.Do(func() { redis.SetLogger(redisLogger{log}) })
	// Pub/sub is not per database: fleets on two databases of one Redis
	// would hear each other's news (and pay a read for each).
	channel := opts.Namespace + ":news"
	if p.db != 0 {
		channel += ":db" + strconv.Itoa(p.db)
	}
	dials := &dialWatch{}
	var tok [8]byte
	rand.Read(tok[:])
	ns := opts.Namespace
	t := &Tier[V]{
		opts: opts, client: p.client(opts.CallTimeout, opts.Dialer, dials), redacted: p.redacted, token: hex.EncodeToString(tok[:]),
		k: keys{
			snap: ns + ":snapshot", snapGen: ns + ":snapshot:gen", gen: ns + ":gen",
			prev: ns + ":previous", prevGen: ns + ":previous:gen",
			lock: ns + ":lock", failed: ns + ":failed", channel: channel,
		},
		breaker:     breaker{threshold: 3, cooldown: time.Second, maxCooldown: 30 * time.Second},
		wake:        make(chan struct{}),
		dials:       dials,
		resubscribe: make(chan struct{}, 1),
		lastWarn:    map[string]time.Time{},
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.stop = cancel
	t.bg.Add(1)
	go t.listen(ctx)
	if p.failover != nil {
		t.bg.Go(func() { t.watchSentinels(ctx, p.failover) })
	}
	return t, nil
}

// Close stops listening for news and closes the connections.
func (t *Tier[V]) Close() error {
	t.stop()
	t.bg.Wait()
	return t.client.Close()
}

// Stats returns the tier's counters.
func (t *Tier[V]) Stats() Stats { return loadStats(&t.stats) }

// BreakerOpen reports whether the breaker is keeping calls away from Redis.
func (t *Tier[V]) BreakerOpen() bool { return t.breaker.isOpen(time.Now()) }

// Load returns a snapshot newer than generation have (what the caller
// holds, 0 for nothing shared): one another replica committed, one this
// replica fetches for the fleet with fetch (which returns the value and
// its bytes to share), or, whenever Redis fails, one it fetches alone.
// ctx bounds the whole load.
func (t *Tier[V]) Load(ctx context.Context, have uint64, fetch func(context.Context) (V, []byte, error)) (Entry[V], error) {
	rechecked := false // the last wait ended when the lock's lease was due
	for rereads := 0; ; {
		if err := ctx.Err(); err != nil {
			return Entry[V]{}, err
		}
		// News during acquire concerns the wait after it: count from before.
		var seq uint64
		t.eventsAfter(&seq)
		a, err := t.acquire(ctx, have)
		if err != nil {
			return t.fallback(ctx, fetch, err)
		}
		t.fine(ctx)
		switch a.kind {
		case acquiredNewer:
			e, found, err := t.Read(ctx, have)
			if err != nil {
				return t.fallback(ctx, fetch, err)
			}
			if found {
				return e, nil
			}
			// Gone or expiring between two calls: ask again, but not for
			// ever (a writer's clock far behind makes every read a miss).
			if rereads++; rereads > 2 {
				return t.fallback(ctx, fetch, errSpin)
			}
		case acquiredLock:
			atomic.AddUint64(&t.stats.LockWon, 1)
			if rechecked { // its holder died, and the wait cost this budget
				atomic.AddUint64(&t.stats.WaitLapsed, 1)
				var done func()
				ctx, done = t.budget(ctx)
				defer done()
			}
			return t.lead(ctx, a.gen, fetch)
		case acquiredBackoff:
			if a.left <= 0 { // it just ended: ask again, but not for ever
				if rereads++; rereads > 2 {
					return t.fallback(ctx, fetch, errSpin)
				}
				continue
			}
			atomic.AddUint64(&t.stats.Backoffs, 1)
			return Entry[V]{}, &FailedError{Cause: a.cause, RetryAfter: a.left}
		case acquiredHeld:
			atomic.AddUint64(&t.stats.LockLost, 1)
			e, found, err := t.wait(ctx, have, a, seq)
			rechecked = errors.Is(err, errRecheck)
			switch {
			case found:
				return e, nil
			case errors.Is(err, errRetry), rechecked:
			case ctx.Err() != nil:
				return Entry[V]{}, ctx.Err()
			case errors.As(err, new(*FailedError)):
				return Entry[V]{}, err
			case err != nil:
				return t.fallback(ctx, fetch, err)
			}
		}
	}
}

// fallback fetches without the shared tier, as a lone replica does.
func (t *Tier[V]) fallback(ctx context.Context, fetch func(context.Context) (V, []byte, error), cause error) (Entry[V], error) {
	// The load ended (its timer may not have run yet): no fetch for nobody.
	if dl, ok := ctx.Deadline(); ctx.Err() != nil || ok && !time.Now().Before(dl) {
		return Entry[V]{}, cmp.Or(ctx.Err(), context.DeadlineExceeded)
	}
	c := t.trouble(ctx, "load", cause)
	t.stats.countFallback(c)
	t.opts.Log.DebugContext(ctx, "fetching alone", "cause", c.name, "redis", t.redacted, "err", cause)
	ctx, done := t.budget(ctx)
	defer done()
	start := time.Now()
	v, _, err := fetch(ctx)
	if err != nil {
		return Entry[V]{}, err
	}
	return Entry[V]{Value: v, Deadline: start.Add(t.opts.TTL), Source: "local"}, nil
}

// budget gives a fetch a failed Redis or a dead leader delayed a budget of
// its own, as a lone replica's has, not what the wait left; a cancellation
// (the replica shutting down) still ends it.
func (t *Tier[V]) budget(ctx context.Context) (context.Context, func()) {
	if t.opts.FetchTimeout <= 0 {
		return ctx, func() {}
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.opts.FetchTimeout)
	stop := context.AfterFunc(ctx, func() {
		if errors.Is(ctx.Err(), context.Canceled) {
			cancel()
		}
	})
	return fctx, func() { stop(); cancel() }
}

// lead fetches for the fleet, renewing the lease meanwhile, and commits.
func (t *Tier[V]) lead(ctx context.Context, gen uint64, fetch func(context.Context) (V, []byte, error)) (Entry[V], error) {
	lock := lockValue(gen, t.token)
	start := time.Now()
	renewCtx, stopRenewing := context.WithCancel(context.WithoutCancel(ctx))
	var renewing sync.WaitGroup
	renewing.Go(func() { t.renew(renewCtx, lock) })
	v, data, err := fetch(ctx)
	stopRenewing()
	renewing.Wait()
	out := context.WithoutCancel(ctx) // the lock and the news go out whatever ctx does
	if err != nil {
		atomic.AddUint64(&t.stats.LeaderFailures, 1)
		t.release(out, gen, err)
		return Entry[V]{}, err
	}
	took := time.Since(start)
	e := Entry[V]{Value: v, Gen: gen, Deadline: start.Add(t.opts.TTL), Source: "leader"}
	px := time.Until(e.Deadline).Milliseconds()
	if px < 2 {
		t.release(out, gen, nil) // nothing left to share
		return e, nil
	}
	startWall := t.opts.Now().Add(-took) // when the fetch started, on the wall clock
	env, err := json.Marshal(envelope{V: 2, Gen: gen, StartMS: startWall.UnixMilli(), Data: data})
	if err != nil {
		t.release(out, gen, nil)
		return e, nil
	}
	var res []int64
	err = t.call(out, "commit", func(ctx context.Context) error {
		var err error
		res, err = commitScript.Run(ctx, t.client, []string{t.k.snap, t.k.snapGen, t.k.lock, t.k.channel, t.k.prev, t.k.prevGen}, gen, env, px, lock).Int64Slice()
		return err
	})
	switch {
	case err != nil:
		atomic.AddUint64(&t.stats.CommitErrors, 1)
		t.trouble(ctx, "commit", err)
		t.opts.Log.DebugContext(ctx, "shared snapshot not written", "redis", t.redacted, "err", err)
		// The lock is still ours, and the commit that would free it did
		// not happen: free it, so the waiters take over now rather than
		// wait out the lease (a slot moving in a Cluster answers a
		// commit TRYAGAIN; the release, a call later, usually lands).
		t.release(out, gen, nil)
	case len(res) == 2 && res[0] == 0:
		// Our lease lapsed (Redis was slow) and another replica committed
		// a newer snapshot: the fleet serves it, and serving ours here
		// would take this replica's readers back in time.
		atomic.AddUint64(&t.stats.CommitFenced, 1)
		t.opts.Log.InfoContext(ctx, "shared snapshot fenced: a newer one is there", "gen", gen, "newer", res[1])
		if newer, found, err := t.Read(out, gen); err == nil && found {
			return newer, nil
		}
	default:
		atomic.AddUint64(&t.stats.CommitOK, 1)
	}
	return e, nil
}

// renew keeps lock's lease alive until ctx ends or it is lost (fencing
// then keeps a late commit from doing harm).
func (t *Tier[V]) renew(ctx context.Context, lock string) {
	tick := time.NewTicker(renewEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		var ok int64
		err := t.call(ctx, "renew", func(ctx context.Context) error {
			var err error
			ok, err = renewScript.Run(ctx, t.client, []string{t.k.lock}, lock, leaseTerm.Milliseconds()).Int64()
			return err
		})
		if err == nil && ok == 0 {
			return
		}
	}
}

// release frees gen's lock after a fetch that did not commit, and tells
// the waiters why: cancelled (err nil or context.Canceled: take over now)
// or failed (cause and Retry-After kept in Redis: no message can forge it).
func (t *Tier[V]) release(ctx context.Context, gen uint64, err error) {
	kind, record, px := "r", "", int64(0)
	if err != nil && !errors.Is(err, context.Canceled) {
		kind = "f"
		var retry time.Duration
		if t.opts.RetryAfter != nil {
			retry = t.opts.RetryAfter(err)
		}
		cause := "error"
		if t.opts.Cause != nil {
			cause = t.opts.Cause(err)
		}
		record = fmt.Sprintf("%d %d %s", gen, retry.Milliseconds(), sanitize(cause))
		px = max(retry, leaseTerm).Milliseconds()
	}
	t.call(ctx, "release", func(ctx context.Context) error {
		return releaseScript.Run(ctx, t.client, []string{t.k.lock, t.k.channel, t.k.failed}, t.token, kind, gen, record, px).Err()
	})
}

// wait waits for the lock's holder to commit, release or fail: found with
// a snapshot, errRetry or errRecheck to ask again, a *FailedError, or
// another error to fetch alone.
func (t *Tier[V]) wait(ctx context.Context, have uint64, a acquired, seen uint64) (Entry[V], bool, error) {
	// Check again when the lease would lapse, or two calls before this
	// load's end: news lost in a Redis restart must not time it out.
	after := min(a.left, leaseTerm) + time.Millisecond
	if dl, ok := ctx.Deadline(); ok {
		if last := time.Until(dl) - 2*t.opts.CallTimeout; last > 0 && last < after {
			after = last
		}
	}
	recheck := time.NewTimer(after)
	defer recheck.Stop()
	for {
		evs, wake := t.eventsAfter(&seen)
		for _, ev := range evs {
			switch {
			case ev.kind == 'c' && ev.gen > have:
				// A commit frees the lock: take its snapshot, or if it is
				// of no use here, ask again at once rather than wait.
				e, found, err := t.Read(ctx, have)
				if found {
					atomic.AddUint64(&t.stats.WaitCommitted, 1)
				}
				return e, found, cmp.Or(err, errRetry)
			case ev.kind == 'r' && ev.gen == a.gen:
				atomic.AddUint64(&t.stats.WaitReleased, 1)
				return Entry[V]{}, false, errRetry
			case ev.kind == 'f' && ev.gen == a.gen:
				if fe, ok := t.failure(ctx, a.gen); ok {
					atomic.AddUint64(&t.stats.WaitFailed, 1)
					return Entry[V]{}, false, fe
				}
			}
		}
		select {
		case <-ctx.Done():
			return Entry[V]{}, false, ctx.Err()
		case <-recheck.C:
			// The lease may have lapsed (the holder died), or was
			// renewed: acquire tells which.
			return Entry[V]{}, false, errRecheck
		case <-wake:
		}
	}
}

// failure reads the failure record of gen: a "f:" message is believed
// only if Redis holds the record.
func (t *Tier[V]) failure(ctx context.Context, gen uint64) (*FailedError, bool) {
	var rec string
	err := t.call(ctx, "failure", func(ctx context.Context) error {
		var err error
		rec, err = peekScript.Run(ctx, t.client, []string{t.k.failed}, 300).Text()
		return err
	})
	if err != nil {
		return nil, false
	}
	g, rest, _ := strings.Cut(rec, " ")
	ms, cause, _ := strings.Cut(rest, " ")
	retry, err := strconv.ParseInt(ms, 10, 64)
	if g != strconv.FormatUint(gen, 10) || err != nil || retry < 0 {
		return nil, false
	}
	return &FailedError{Cause: cause, RetryAfter: min(time.Duration(retry)*time.Millisecond, t.opts.TTL)}, true
}

// Read returns the shared snapshot if one is there, newer than generation
// have, valid and with time left.
func (t *Tier[V]) Read(ctx context.Context, have uint64) (Entry[V], bool, error) {
	var res []any
	asked, wall := time.Now(), t.opts.Now()
	err := t.call(ctx, "read", func(ctx context.Context) error {
		var err error
		res, err = readScript.Run(ctx, t.client, []string{t.k.snap, t.k.snapGen, t.k.prev, t.k.prevGen}, maxValueBytes, have).Slice()
		return err
	})
	if err != nil {
		atomic.AddUint64(&t.stats.ReadErrors, 1)
		return Entry[V]{}, false, err
	}
	e, ok, err := t.decode(res, asked, wall, have)
	switch {
	case err != nil:
		atomic.AddUint64(&t.stats.Invalid, 1)
		atomic.AddUint64(&t.stats.ReadErrors, 1)
		t.opts.Log.ErrorContext(ctx, "rejected the shared snapshot", "redis", t.redacted, "err", err)
		return Entry[V]{}, false, fmt.Errorf("%w: %w", ErrInvalid, err)
	case !ok:
		atomic.AddUint64(&t.stats.ReadMisses, 1)
	default:
		atomic.AddUint64(&t.stats.ReadHits, 1)
	}
	return e, ok, nil
}

// envelope is the value stored in Redis.
type envelope struct {
	V       int             `json:"v"`
	Gen     uint64          `json:"gen"`      // for people; the fence's key is the generation
	StartMS int64           `json:"start_ms"` // the fetch's start, writer's clock
	Data    json.RawMessage `json:"data"`
}

// decode checks what the read script returned: ok false, no error, for no
// snapshot, one not newer than have, or one with no time left. If the
// fleet still serves the previous snapshot (newer than have, before its
// switch), that one comes back, with the newest as its Newer.
func (t *Tier[V]) decode(res []any, asked, wall time.Time, have uint64) (e Entry[V], ok bool, err error) {
	status, _ := at[int64](res, 0)
	switch status {
	case 0:
		return e, false, nil
	case -1:
		return e, false, errors.New("the snapshot key holds a value of the wrong type")
	case -2:
		return e, false, fmt.Errorf("the snapshot is over %d bytes", maxValueBytes)
	}
	if status != 1 || (len(res) != 4 && len(res) != 7) {
		return e, false, errors.New("unexpected reply")
	}
	e, ok, err = t.decodeOne(res[1:4], asked, wall, have)
	if !ok || err != nil || len(res) == 4 || t.opts.SwitchBefore <= 0 {
		return e, ok, err
	}
	p, pok, perr := t.decodeOne(res[4:7], asked, wall, have)
	if perr == nil && pok && p.Gen < e.Gen && time.Now().Before(p.Deadline.Add(-t.opts.SwitchBefore)) {
		p.Newer = e.Gen
		return p, true, nil
	}
	return e, ok, err
}

// decodeOne checks one snapshot: {value, pttl, gen}.
func (t *Tier[V]) decodeOne(res []any, asked, wall time.Time, have uint64) (e Entry[V], ok bool, err error) {
	raw, ok1 := at[string](res, 0)
	pttl, ok2 := at[int64](res, 1)
	g, ok3 := at[string](res, 2)
	if !ok1 || !ok2 || !ok3 {
		return e, false, errors.New("unexpected reply")
	}
	gen, err := strconv.ParseUint(g, 10, 64)
	if err != nil || gen == 0 || gen >= maxGen {
		return e, false, fmt.Errorf("the snapshot's generation %.20q is not one of ours", g)
	}
	switch {
	case pttl == -1:
		return e, false, errors.New("the snapshot has no expiry")
	case pttl <= 1:
		// Gone, or expiring as we speak: a miss, not a wrong value.
		return e, false, nil
	}
	var env envelope
	if err := json.Unmarshal([]byte(raw), &env); err != nil {
		return e, false, fmt.Errorf("malformed envelope: %w", err)
	}
	if env.V != 2 || len(env.Data) == 0 {
		return e, false, errors.New("envelope lacks its version or data")
	}
	if gen <= have {
		return e, false, nil
	}
	// Two estimates of the deadline, from two clocks; the earlier wins.
	// Redis's: asked is before Redis measured the PTTL, which counts
	// whole ms (up to 1 generous): less one, it errs early. More than a
	// TTL means Redis's clock stepped back: a TTL is the most it can be.
	byRedis := asked.Add(min(time.Duration(pttl-1)*time.Millisecond, t.opts.TTL))
	// The writer's: its fetch start plus the TTL, on our clock.
	byWriter := asked.Add(time.UnixMilli(env.StartMS).Add(t.opts.TTL).Sub(wall))
	deadline := byRedis
	if byWriter.Before(deadline) {
		deadline = byWriter
	}
	if !time.Now().Before(deadline) {
		return e, false, nil
	}
	v, err := t.opts.Decode(env.Data)
	if err != nil {
		return e, false, fmt.Errorf("invalid data: %w", err)
	}
	return Entry[V]{Value: v, Gen: gen, Deadline: deadline, Source: "shared"}, true, nil
}

// at returns res[i] as a T, if it is one.
func at[T any](res []any, i int) (v T, ok bool) {
	if i < len(res) {
		v, ok = res[i].(T)
	}
	return v, ok
}

type acquired struct { // what acquire found
	kind  int
	gen   uint64        // acquiredLock: ours; acquiredHeld: the holder's
	left  time.Duration // acquiredHeld: the lease; acquiredBackoff: the wait
	cause string        // acquiredBackoff
}

const (
	acquiredNewer = iota + 1
	acquiredLock
	acquiredHeld
	acquiredBackoff
)

// acquire asks Redis what to do for a caller holding generation have: read
// a newer snapshot, take the lock, wait for its holder, or back off. A lock
// not ours is an error (waiting on it could be for ever); a call that timed
// out may have taken the lock, which is then released in the background.
func (t *Tier[V]) acquire(ctx context.Context, have uint64) (acquired, error) {
	var res []any
	err := t.call(ctx, "lock", func(ctx context.Context) error {
		var err error
		res, err = acquireScript.Run(ctx, t.client, []string{t.k.lock, t.k.gen, t.k.snap, t.k.snapGen, t.k.failed, t.k.channel, t.k.prev, t.k.prevGen},
			have, leaseTerm.Milliseconds(), t.opts.Now().UnixMilli(), t.token).Slice()
		return err
	})
	if err != nil {
		if !errors.Is(err, errOpen) && ctx.Err() == nil {
			t.releaseUnknown()
		}
		return acquired{}, err
	}
	kind, _ := at[int64](res, 0)
	n, _ := at[int64](res, 1)
	switch {
	case kind == acquiredNewer || (kind == acquiredLock && n > 0):
		return acquired{kind: int(kind), gen: uint64(n)}, nil
	case kind == acquiredHeld:
		v, _ := at[string](res, 1)
		pttl, _ := at[int64](res, 2)
		g, tok, _ := strings.Cut(v, " ")
		gen, err := strconv.ParseUint(g, 10, 64)
		if err != nil || tok == "" || pttl <= 0 || time.Duration(pttl)*time.Millisecond > leaseTerm {
			atomic.AddUint64(&t.stats.Invalid, 1)
			err := fmt.Errorf("%w: a lock %q with %d ms left, not one of ours", ErrInvalid, v, pttl)
			t.opts.Log.ErrorContext(ctx, "rejected the shared fetch lock", "redis", t.redacted, "err", err)
			return acquired{}, err
		}
		return acquired{kind: acquiredHeld, gen: gen, left: time.Duration(pttl) * time.Millisecond}, nil
	case kind == acquiredBackoff:
		cause, _ := at[string](res, 1)
		pttl, _ := at[int64](res, 2)
		left := max(min(time.Duration(pttl)*time.Millisecond, t.opts.TTL), 0)
		return acquired{kind: acquiredBackoff, left: left, cause: sanitize(cause)}, nil
	default:
		return acquired{}, fmt.Errorf("%w: unexpected reply to lock %v", ErrInvalid, res)
	}
}

// releaseUnknown frees, in the background, a lock this replica may hold
// without knowing it (a lock call that timed out after Redis ran it), so
// the other replicas do not wait out its lease.
func (t *Tier[V]) releaseUnknown() {
	t.bg.Go(func() { t.release(context.Background(), 0, nil) })
}

// call runs one Redis operation under the breaker and the call timeout.
func (t *Tier[V]) call(parent context.Context, op string, f func(context.Context) error) error {
	ok, probe := t.breaker.allow(time.Now())
	if !ok {
		return errOpen
	}
	ctx, cancel := context.WithTimeout(parent, t.opts.CallTimeout)
	defer cancel()
	start := time.Now()
	err := f(ctx)
	if errors.Is(err, redis.Nil) {
		err = nil
	}
	if t.opts.Observe != nil {
		t.opts.Observe(op, time.Since(start), err)
	}
	if err != nil && parent.Err() != nil {
		// The caller gave up (its request ended): that says nothing
		// about Redis, so it must not open the breaker.
		t.breaker.abandon(probe)
		return err
	}
	late := err != nil && !reply(err) && time.Since(start) > t.opts.CallTimeout+t.opts.CallTimeout/starvedAfter
	if !late {
		t.starvedRun.Store(0)
	} else if t.starvedRun.Add(1) <= maxStarvedRun {
		// The call's own timer ran late: this process, not Redis, was
		// slow (see starvedAfter).
		t.breaker.abandon(probe)
		return fmt.Errorf("%w: %w", errStarved, err)
	}
	// A reply, even an error, is Redis answering, and quickly: a refusal
	// (READONLY, OOM, NOPERM...) costs a round trip, which the breaker
	// must not save at the price of hiding the refusal's cause.
	if opened := t.breaker.record(time.Now(), err == nil || reply(err), probe); opened {
		atomic.AddUint64(&t.stats.BreakerOpened, 1)
		t.opts.Log.Info("circuit breaker open: Redis keeps failing", "redis", t.redacted, "err", err)
	}
	return err
}

// listen delivers news from the channel. Pub/sub keeps nothing, so news
// is lost only while the subscription is down; go-redis pings an idle
// subscription (every 3s) and resubscribes after any break, and each
// (re)subscription is followed by one read of the snapshot's generation:
// the backstop costs nothing while the channel works.
func (t *Tier[V]) listen(ctx context.Context) {
	defer t.bg.Done()
	for t.subscribed(ctx) {
	}
}

// subscribed delivers news from one subscription until ctx ends (false)
// or a new subscription is asked for (true).
func (t *Tier[V]) subscribed(ctx context.Context) bool {
	ps := t.client.Subscribe(ctx, t.k.channel)
	defer ps.Close()
	msgs := ps.ChannelWithSubscriptions()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.resubscribe:
			return true
		case m, ok := <-msgs:
			if !ok {
				return false
			}
			// A message is Redis answering: after an outage, sharing
			// resumes now rather than at the breaker's next probe.
			t.breaker.alive()
			switch m := m.(type) {
			case *redis.Subscription:
				if m.Kind == "subscribe" {
					t.poll(ctx)
				}
			case *redis.Message:
				kind, g, _ := strings.Cut(m.Payload, ":")
				if gen, err := strconv.ParseUint(g, 10, 64); err == nil && gen > 0 && gen < maxGen && len(kind) == 1 && strings.Contains("crf", kind) {
					t.heard(kind[0], gen)
				}
			}
		}
	}
}

// watchSentinels listens to every sentinel named for the master's moves
// (+switch-master) and renews the news subscription on each. go-redis
// moves its command connections to the new master, but not a
// subscription: that one stays on the old master, which after a manual
// failover stays a master, deaf to the new one's news, until the
// sentinels demote it (21 s in the e2e test); the replicas that did not
// lead then serve an older snapshot than the one that did. One connection
// per sentinel, so the news of a move comes while any one is up.
func (t *Tier[V]) watchSentinels(ctx context.Context, fo *redis.FailoverOptions) {
	var wg sync.WaitGroup
	for _, addr := range fo.SentinelAddrs {
		wg.Go(func() {
			sc := redis.NewSentinelClient(&redis.Options{
				Addr: addr, Username: fo.SentinelUsername, Password: fo.SentinelPassword, TLSConfig: fo.TLSConfig,
				Dialer: fo.Dialer, DialTimeout: fo.DialTimeout, ReadTimeout: fo.ReadTimeout, WriteTimeout: fo.WriteTimeout,
				MaxRetries: -1, DialerRetries: 1, DisableIdentity: true,
			})
			defer sc.Close()
			ps := sc.Subscribe(ctx, "+switch-master")
			defer ps.Close()
			for {
				select {
				case <-ctx.Done():
					return
				case m, ok := <-ps.Channel():
					if !ok {
						return
					}
					// "<master name> <old ip> <old port> <new ip> <new port>"
					if name, to, _ := strings.Cut(m.Payload, " "); name == fo.MasterName {
						t.opts.Log.InfoContext(ctx, "the master moved: renewing the news subscription", "sentinel", addr, "move", to)
						select {
						case t.resubscribe <- struct{}{}:
						default: // one is asked for already
						}
					}
				}
			}
		})
	}
	wg.Wait()
}

// poll reads the generation of the snapshot in Redis, news that may have
// been missed.
func (t *Tier[V]) poll(ctx context.Context) {
	var g string
	err := t.call(ctx, "poll", func(ctx context.Context) error {
		var err error
		g, err = peekScript.Run(ctx, t.client, []string{t.k.snapGen}, 20).Text()
		return err
	})
	if gen, perr := strconv.ParseUint(g, 10, 64); err == nil && perr == nil && gen > 0 && gen < maxGen {
		t.heard('c', gen)
	}
}

// heard records a message and wakes every waiter. A commit goes on to
// OnNews even repeated (the read after a resubscription repeats the
// newest): an adoption that failed gets another chance then.
func (t *Tier[V]) heard(kind byte, gen uint64) {
	t.mu.Lock()
	repeat := kind == 'c' && gen <= t.newest // a poll, or a fenced commit's
	if !repeat {
		t.seq++
		t.events = append(t.events[max(0, len(t.events)-31):], event{seq: t.seq, kind: kind, gen: gen})
		if kind == 'c' {
			t.newest = gen
		}
		close(t.wake)
		t.wake = make(chan struct{})
	}
	t.mu.Unlock()
	if kind == 'c' {
		if !repeat {
			atomic.AddUint64(&t.stats.NewsReceived, 1)
		}
		if t.opts.OnNews != nil {
			t.opts.OnNews(gen)
		}
	}
}

// eventsAfter returns the events after *seq, moving *seq to the newest,
// and the channel the next event closes, in one look.
func (t *Tier[V]) eventsAfter(seq *uint64) ([]event, <-chan struct{}) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []event
	for _, ev := range t.events {
		if ev.seq > *seq {
			out = append(out, ev)
		}
	}
	*seq = t.seq
	return out, t.wake
}

// aclCheck is Lua that ends a script with a NOPERM error naming the
// command and key, before the script changes anything, if the ACL denies
// the user one of checks ("cmd:i" for the command on KEYS[i], "cmd:i:j"
// on KEYS[i] and KEYS[j]); Redis
// would otherwise fail the script at that command, after its writes
// before it. Redis before 7 has no redis.acl_check_cmd (nor fine ACLs).
func aclCheck(checks string) string {
	var b strings.Builder
	b.WriteString("if redis.acl_check_cmd then\n  for _, c in ipairs({")
	for _, c := range strings.Fields(checks) {
		cmd, is, _ := strings.Cut(c, ":")
		fmt.Fprintf(&b, "{'%s'", cmd)
		for i := range strings.SplitSeq(is, ":") {
			fmt.Fprintf(&b, ", KEYS[%s]", i)
		}
		if cmd == "set" || cmd == "publish" || cmd == "pexpire" {
			b.WriteString(", '1'") // the value a check needs
		}
		b.WriteString("}, ")
	}
	b.WriteString(`}) do
    if not redis.acl_check_cmd(unpack(c)) then
      return redis.error_reply('NOPERM the fleet needs ' .. string.upper(c[1]) .. ' on ' .. c[2] .. ' (ACL: +' .. c[1] .. ' and a key and channel pattern for it)')
    end
  end
end
`)
	return b.String()
}

func lockValue(gen uint64, token string) string { return strconv.FormatUint(gen, 10) + " " + token }

// sanitize keeps a cause to a short word, for logs and Redis.
func sanitize(s string) string {
	s = strings.Join(strings.Fields(s), "_")
	return s[:min(len(s), 64)]
}

// redisLogger sends go-redis's own messages to the tier's logger.
type redisLogger struct{ log *slog.Logger }

// A failure is said once, in the tier's own WARN with its cause (see
// trouble), not on every dial or every sentinel asked (go-redis retries
// those every 100 ms while they fail); the client's other messages (a
// sentinel naming a new master) are worth an INFO.
func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	level := slog.LevelInfo
	if strings.Contains(msg, "failed") || strings.Contains(msg, "error") {
		level = slog.LevelDebug
	}
	l.log.Log(ctx, level, "redis client", "msg", msg)
}

// The scripts. Each runs atomically in Redis, in one round trip, and reads
// everything it needs before it writes anything, so a script that fails
// (a key of the wrong type, a permission the ACL denies: see aclCheck)
// fails having changed nothing. A Redis out of memory refuses a script's
// first write that may grow memory, and only if the script has written
// nothing before: the lock script's first write is a SET, so a full Redis
// is refused before any lock is taken; a commit that holds its lock
// starts with a RENAME or DEL, which Redis allows, and then finishes.
var (
	// readScript returns {0} for no snapshot (or one without its
	// generation: evicted), {-1} for a key of the wrong type, {-2} for one
	// over ARGV[1] bytes (never transferred), or {1, value, pttl, gen}: gen
	// is what commits are fenced by (KEYS[2]), so reads and locks agree.
	// If the previous snapshot (KEYS[3], of generation KEYS[4]) is newer
	// than the caller's ARGV[2], it follows: {..., value, pttl, gen}.
	readScript = redis.NewScript(`
local t, g = redis.call('TYPE', KEYS[1]).ok, redis.call('TYPE', KEYS[2]).ok
if t == 'none' or g == 'none' then return {0} end
if t ~= 'string' or g ~= 'string' then return {-1} end
if redis.call('STRLEN', KEYS[1]) > tonumber(ARGV[1]) or redis.call('STRLEN', KEYS[2]) > 20 then return {-2} end
local out = {1, redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[2])}
if redis.call('TYPE', KEYS[3]).ok == 'string' and redis.call('TYPE', KEYS[4]).ok == 'string'
  and redis.call('STRLEN', KEYS[3]) <= tonumber(ARGV[1]) and redis.call('STRLEN', KEYS[4]) <= 20 then
  local pg = redis.call('GET', KEYS[4])
  if (tonumber(pg) or 0) > tonumber(ARGV[2]) then
    out[5], out[6], out[7] = redis.call('GET', KEYS[3]), redis.call('PTTL', KEYS[3]), pg
  end
end
return out
`)

	// peekScript returns KEYS[1] if it is a string of at most ARGV[1]
	// bytes, else nil.
	peekScript = redis.NewScript(`
if redis.call('TYPE', KEYS[1]).ok ~= 'string' then return false end
if redis.call('STRLEN', KEYS[1]) > tonumber(ARGV[1]) then return false end
return redis.call('GET', KEYS[1])
`)

	// acquireScript, for a caller holding generation ARGV[1] (it checks
	// first that the ACL lets it run every command the protocol needs, on
	// every key and the channel, KEYS[6], so a missing permission is found
	// before any lock is taken):
	// {1, gen} if the snapshot (KEYS[3], of generation KEYS[4]) is newer
	// and not expiring (a PTTL of 0-1 ms is none, as for a read);
	// {4, cause, pttl} if a failed fetch asked the fleet to wait (KEYS[5])
	// and more than a ms of it is left (as for a snapshot, 0-1 ms is none);
	// {3, holder, pttl} if the lock (KEYS[1]) is held;
	// else it takes the lock for ARGV[2] ms and returns {2, gen}: gen is
	// above the counter (KEYS[2]), the snapshot's, and the caller's clock
	// in ms (ARGV[3]), so generations keep rising across a Redis restarted
	// empty. Generations not below 2^52 are not ours and are ignored.
	acquireScript = redis.NewScript(aclCheck(
		"get:1 set:1 del:1 pexpire:1 pttl:1 get:2 set:2 type:3 strlen:3 get:3 pttl:3 set:3 exists:3 "+
			"type:4 strlen:4 get:4 set:4 type:5 strlen:5 get:5 set:5 pttl:5 publish:6 subscribe:6 rename:3:7 rename:4:8 del:7 del:8 "+
			"type:7 strlen:7 get:7 pttl:7 type:8 strlen:8 get:8") + `
local function gen(k)
  local v = tonumber(redis.call('GET', k))
  if v == nil or v < 0 or v >= 4503599627370496 then return 0 end
  return v
end
local cur, counter = gen(KEYS[4]), gen(KEYS[2])
if cur > tonumber(ARGV[1]) and redis.call('PTTL', KEYS[3]) > 1 then return {1, cur} end
local ms, cause = string.match(redis.call('GET', KEYS[5]) or '', '^%d+ (%d+) (%S*)$')
if ms and tonumber(ms) > 0 then
  local left = redis.call('PTTL', KEYS[5])
  if left > 1 then return {4, cause, left} end
end
local l = redis.call('GET', KEYS[1])
if l then return {3, l, redis.call('PTTL', KEYS[1])} end
local g = math.max(counter + 1, cur + 1, tonumber(ARGV[3]))
local s = string.format('%d', g)
redis.call('SET', KEYS[2], s)
redis.call('SET', KEYS[1], s .. ' ' .. ARGV[4], 'PX', ARGV[2])
return {2, g}
`)

	// renewScript extends the lease of lock ARGV[1] to ARGV[2] ms if it is
	// still held: 1, else 0.
	renewScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
`)

	// commitScript writes the snapshot of generation ARGV[1] (value
	// ARGV[2], for ARGV[3] ms) and its generation, frees lock ARGV[4] and
	// announces it: {1, 0}; the snapshot it replaces becomes the previous
	// one (KEYS[5], KEYS[6]), with its expiry, for replicas that have
	// nothing until the switch. If the snapshot there is of the same or a
	// higher generation, it writes nothing, frees the lock and announces
	// that one instead: {0, its generation}.
	commitScript = redis.NewScript(aclCheck("get:2 exists:1 get:3 rename:1:5 rename:2:6 del:5 del:6 set:1 set:2 del:3 publish:4") + `
local cur = tonumber(redis.call('GET', KEYS[2]))
if cur == nil or cur < 0 or cur >= 4503599627370496 then cur = 0 end
local mine = redis.call('GET', KEYS[3]) == ARGV[4]
if cur >= tonumber(ARGV[1]) and redis.call('EXISTS', KEYS[1]) == 1 then
  if mine then redis.call('DEL', KEYS[3]) end
  redis.call('PUBLISH', KEYS[4], 'c:' .. string.format('%d', cur))
  return {0, cur}
end
if cur > 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[5])
  redis.call('RENAME', KEYS[2], KEYS[6])
else
  redis.call('DEL', KEYS[5], KEYS[6])
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
if mine then redis.call('DEL', KEYS[3]) end
redis.call('PUBLISH', KEYS[4], 'c:' .. ARGV[1])
return {1, 0}
`)

	// releaseScript frees the lock (KEYS[1]) if this replica's token
	// (ARGV[1]) is in it, records a failure (ARGV[4], for ARGV[5] ms, when
	// ARGV[2] is 'f'), and announces ARGV[2]:<gen>, with gen ARGV[3], or
	// the lock's own when ARGV[3] is 0 (a lock taken unknowingly).
	releaseScript = redis.NewScript(aclCheck("get:1 del:1 set:3 publish:2") + `
local l = redis.call('GET', KEYS[1])
local g = ARGV[3]
if l then
  local lg, tok = string.match(l, '^(%d+) (%w+)$')
  if tok == ARGV[1] and (g == '0' or g == lg) then
    redis.call('DEL', KEYS[1])
    g = lg
  end
end
if g == '0' then return 0 end
if ARGV[2] == 'f' then redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5]) end
redis.call('PUBLISH', KEYS[2], ARGV[2] .. ':' .. g)
return 1
`)
)
