// Package fleet lets the replicas of a service share one upstream fetch and
// one snapshot through Redis. What it shares is an optimisation over each
// replica fetching alone, never a dependency: whatever Redis or another
// replica does, a replica does at least as well as it would alone.
//
// A load begins with one script: a newer snapshot is there (read it), the
// fleet backs off (a failed fetch's Retry-After, capped as a lone replica
// caps its own), another replica holds the lock (wait for it), or the
// caller takes the lock and a version and fetches for the fleet, renewing
// its lease, then commits (fenced by version) and announces the commit.
// A waiter wakes on messages, which are hints it checks with Redis, and
// fetches for itself when its leader is late (a hedge: whichever answer
// comes first wins), when the leader failed without a Retry-After, and
// whenever Redis fails. Every call is bounded and behind a circuit
// breaker; nothing read from Redis is trusted. The package knows nothing
// of what it stores. docs/fleet.md tells the whole protocol.
package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"
)

// The protocol's timings and bounds. Each is pinned by a test that fails
// if it moves the way that breaks a promise.
const (
	// leaseTerm is how long a lock outlives its holder's last renewal:
	// the longest the fleet waits on a replica that died or froze
	// mid-fetch before one of the waiters takes over.
	leaseTerm = time.Second
	// renewEvery lets three renewals in a row fail (each bounded by the
	// call timeout) before a live leader's lease could lapse.
	renewEvery = leaseTerm / 4
	// hedgeFactor is how many of the slowest recent fetches a fetch may
	// take before it is late (see lateAfter): variance within that is the
	// upstream's own; past it, the fetch has most likely met a hung
	// connection or a bad backend, and a second one, on another
	// connection, races it.
	hedgeFactor = 2
	// recentFetches is how many fetch times the hedge is judged from.
	recentFetches = 8
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
	// host that stays saturated still opens the breaker.
	maxStarvedRun = 3
	// maxVersion bounds versions: above it Lua's numbers lose integers.
	maxVersion = 1 << 52
	// maxValueBytes bounds a snapshot, checked inside Redis: far above a
	// catalogue (12 KB), far below what would hurt each replica's render.
	maxValueBytes = 256 << 10
	// defaultMaxBackoff is the longest the fleet backs off for a
	// Retry-After when Options.MaxBackoff is not set.
	defaultMaxBackoff = 30 * time.Second
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
	// FetchTimeout bounds each fetch this replica makes, as it bounds a
	// lone replica's; default TTL/2. A load lasts at most one wait for a
	// leader (less than FetchTimeout) and one fetch: twice FetchTimeout.
	FetchTimeout time.Duration
	// MaxBackoff caps the wait a failed fetch's Retry-After imposes on the
	// fleet, as the replica's own cache caps it; default 30s.
	MaxBackoff time.Duration
	// CallTimeout bounds every Redis call; default 100ms.
	CallTimeout time.Duration
	// Decode turns a value read from Redis into a V, or refuses it. Required.
	Decode func([]byte) (V, error)
	// RetryAfter, if set, extracts from a fetch error the wait the
	// upstream asked for: the whole fleet then waits that long (capped).
	RetryAfter func(error) time.Duration
	// Cause, if set, labels a fetch error for the waiters (a short word).
	Cause func(error) string
	// SwitchBefore is how long before a snapshot's deadline the fleet
	// serves the next one, fetched ahead (see Entry.Newer); zero always
	// reads the newest.
	SwitchBefore time.Duration
	// OnNews, if set, is called with the version of a snapshot announced
	// on the channel, or read after a (re)subscription: a hint, repeated,
	// out of order or forged, to be checked with Redis. It must be cheap
	// and not block.
	OnNews func(version uint64)
	// Observe, if set, is told of every Redis call's operation, time, error.
	Observe func(op string, d time.Duration, err error)
	Log     *slog.Logger // the tier's logs and go-redis's own; nil discards them
	// Tracer, if set, makes each Redis command a request or a fetch sends
	// a span in its trace.
	Tracer trace.TracerProvider
	// Dialer, if set, replaces the network dial (a synctest bubble's Redis).
	Dialer func(ctx context.Context, network, addr string) (net.Conn, error)
	// Now, if set, replaces the wall clock for what crosses processes
	// (a fetch's start, version seeds); tests step it. Deadlines on this
	// replica use the monotonic clock whatever Now says.
	Now func() time.Time
}

// A Source says where an Entry came from.
type Source string

const (
	// FromFleet: another replica fetched it, this one read it from Redis.
	FromFleet Source = "fleet"
	// FromLead: this replica fetched it holding the fleet's lock.
	FromLead Source = "lead"
	// FromHedge: this replica fetched it beside a late leader, and its
	// answer came first.
	FromHedge Source = "hedge"
	// FromAlone: this replica fetched it without the shared tier (Redis
	// failed); it has no version.
	FromAlone Source = "alone"
)

// Entry is a snapshot with what a replica needs to serve it.
type Entry[V any] struct {
	Value V
	// Version orders snapshots across the fleet: the higher is newer. 0
	// for data this replica fetched without the shared tier.
	Version uint64
	// Deadline is, on this replica's clock, when its TTL ends.
	Deadline time.Time
	// Source says where it came from.
	Source Source
	// Newer, if set, is the version of a snapshot fetched ahead that the
	// fleet serves from this one's switch (Options.SwitchBefore before its
	// deadline): a replica that had nothing gets what the others serve
	// now, and adopts the newer to serve from the switch, as they do.
	Newer uint64
	// Trace is the W3C traceparent of the span of the fetch that made it,
	// as the fetching replica told ShareTrace; "" if it did not.
	Trace string
}

// A Fetch fetches the value, and the bytes to share it as.
type Fetch[V any] func(context.Context) (V, []byte, error)

// traceKey's context value is where a Fetch's trace goes (*string).
type traceKey struct{}

// ShareTrace tells the fleet the W3C traceparent of the span of the fetch
// running under ctx (a Fetch's): the fleet writes it with the snapshot,
// so the replicas that serve what this one fetched can link their
// requests to that span (Entry.Trace). Outside a Fetch, or with anything
// but a traceparent, it does nothing: a trace is for people, never for
// the protocol.
func ShareTrace(ctx context.Context, traceparent string) {
	if p, ok := ctx.Value(traceKey{}).(*string); ok && validTraceparent(traceparent) {
		*p = traceparent
	}
}

// FailedError is returned to a replica that waited for a fetch that
// failed with a Retry-After, or that asked while the fleet backs off: the
// whole fleet waits RetryAfter, at most Options.MaxBackoff.
type FailedError struct {
	Cause      string
	RetryAfter time.Duration
}

func (e *FailedError) Error() string {
	return fmt.Sprintf("fleet: the fleet's fetch failed (%s); retry after %s", e.Cause, e.RetryAfter)
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
)

// Tier is a replica's handle on the shared tier. It is safe for concurrent
// use.
type Tier[V any] struct {
	opts     Options[V]
	client   redis.UniversalClient
	redacted string
	k        *keys
	token    string        // in the locks this replica takes, to tell them apart
	begins   atomic.Uint64 // begin calls made, each naming its lock (newToken)
	breaker  breaker
	stats    Stats // only through sync/atomic
	fetches  fetchTimes
	// condition is why the shared tier is not being used, nil while it
	// is: its changes are what the log says (see trouble).
	condition atomic.Pointer[condition]
	condMu    sync.Mutex           // orders changes of condition
	lastWarn  map[string]time.Time // by cause, under condMu
	dials     *dialWatch
	// starvedRun counts the starved failures in a row (see maxStarvedRun).
	starvedRun atomic.Int64

	news news

	alive context.Context // ends with Close
	stop  context.CancelFunc
	// resubscribe asks the listener for a new subscription: the master
	// moved, and the old one's channel no longer hears the fleet.
	resubscribe chan struct{}
	bg          sync.WaitGroup // the listener and best-effort releases
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
	if opts.FetchTimeout <= 0 {
		opts.FetchTimeout = opts.TTL / 2
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = defaultMaxBackoff
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
	t := &Tier[V]{
		opts: opts, client: p.client(opts.CallTimeout, opts.Dialer, dials), redacted: p.redacted,
		token:       hex.EncodeToString(tok[:]),
		k:           newKeys(opts.Namespace, channel),
		breaker:     breaker{threshold: 3, cooldown: time.Second, maxCooldown: 30 * time.Second},
		news:        news{wake: make(chan struct{})},
		dials:       dials,
		resubscribe: make(chan struct{}, 1),
		lastWarn:    map[string]time.Time{},
	}
	if opts.Tracer != nil {
		if err := traceCommands(t.client, opts.Tracer); err != nil {
			t.client.Close()
			return nil, err
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.alive, t.stop = ctx, cancel
	t.bg.Go(func() { t.listen(ctx) })
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

// capBackoff bounds a backoff read from Redis (or asked for by the
// upstream) as the replica's own cache bounds it.
func (t *Tier[V]) capBackoff(d time.Duration) time.Duration {
	return max(min(d, t.opts.MaxBackoff), 0)
}

// fetchTimes are the last few fetch times this replica has seen: its own
// fetches, and the fleet's (each snapshot says how long its fetch took).
type fetchTimes struct {
	mu   sync.Mutex
	ring [recentFetches]time.Duration
	n    int
}

func (f *fetchTimes) add(d time.Duration) {
	if d <= 0 {
		return
	}
	f.mu.Lock()
	f.ring[f.n%recentFetches] = d
	f.n++
	f.mu.Unlock()
}

// slowest is the slowest fetch time seen lately, false if none yet.
func (f *fetchTimes) slowest() (time.Duration, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slicesMax(f.ring[:]), f.n > 0
}

func slicesMax(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

// lateAfter is how long a fetch may take before it is late: hedgeFactor
// times the slowest fetch seen lately, plus a commit's call and its news.
// known is false while no fetch has been seen: then no fetch is late (an
// upstream that always takes more than half the budget would have every
// first fetch hedged), and a waiter hedges once a fetch of its own would
// have timed out (half of FetchTimeout, twice). A late fetch gets a second
// one (see race); a waiter whose leader has not answered in twice
// lateAfter fetches too (see waitHedgeAfter).
func (t *Tier[V]) lateAfter() (late time.Duration, known bool) {
	slowest, ok := t.fetches.slowest()
	if !ok {
		return t.opts.FetchTimeout / 2, false
	}
	return hedgeFactor*slowest + 2*t.opts.CallTimeout, true
}

// waitHedgeAfter is how long after its load began a waiter fetches beside
// its leader: twice lateAfter, so the leader's own second fetch has had
// its turn first, and at most FetchTimeout, so a load lasts at most twice
// FetchTimeout.
func (t *Tier[V]) waitHedgeAfter() time.Duration {
	late, _ := t.lateAfter()
	return min(2*late, t.opts.FetchTimeout)
}
