// Package fleet lets the replicas of a service share one upstream fetch and
// one snapshot through Redis, without ever making Redis a reason to fail.
//
// The protocol, all of it in single-round-trip Lua scripts:
//
//   - The snapshot lives under one key whose Redis expiry is the time its
//     TTL has left, counted from the start of the fetch that made it. A
//     reader's local deadline is when it asked plus the PTTL Redis answered,
//     so no two clocks need to agree: Redis's expiry is the one clock.
//   - A replica that needs a fetch takes a lock with a lease (SET NX PX) and
//     a generation number, higher than any issued before. The winner fetches
//     and commits: the commit is refused (fenced) if a snapshot of the same
//     or a higher generation is already there, so a slow writer never
//     replaces a newer snapshot. Each commit is announced on a pub/sub
//     channel.
//   - The losers wait for that news (with polling as a backstop) until the
//     lease ends; a leader that died is replaced by the next one to take the
//     lock. A lease that would outlast the waiter's load (a replica
//     configured apart) is waited on only while half a lease is left to
//     fetch alone.
//   - Every call is bounded (100 ms by default) and goes through a circuit
//     breaker. Any Redis failure makes the caller fetch for itself, as a
//     lone replica does.
//
// Values read from Redis are not trusted: they are size-checked inside
// Redis, type-checked, and passed to Options.Validate before use. The
// package knows nothing of what it stores.
package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Options configures a Tier.
type Options struct {
	// URL is the Redis server: redis:// or rediss://, with optional user,
	// password and database number. Required.
	URL string
	// Prefix namespaces the keys and the channel; default "movies".
	Prefix string
	// TTL is how long a snapshot is served from the start of its fetch.
	// Required.
	TTL time.Duration
	// Lease is how long a fetching replica holds the lock; the others wait
	// that long for its news before one of them takes over. Required: it
	// must be shorter than what a caller is willing to wait (the fetch
	// timeout), so a takeover still leaves time for a fetch.
	Lease time.Duration
	// CallTimeout bounds every Redis call; default 100ms.
	CallTimeout time.Duration
	// MaxValueBytes is the largest value accepted; default 4 MiB. Larger
	// ones are refused inside Redis, never transferred.
	MaxValueBytes int
	// Validate checks a value read from Redis before it is used. Required.
	Validate func([]byte) error
	// Observe, if set, is told of every Redis call: its operation, how long
	// it took and its error.
	Observe func(op string, d time.Duration, err error)
	// OnNews, if set, is called (from the Tier's own goroutine) with the
	// generation of the newest snapshot committed to Redis, so the caller
	// may adopt it: on every announcement and every poll (5 a second),
	// repeating generations it has seen. It must be cheap and not block.
	OnNews func(gen uint64)
	// Log receives the tier's logs; nil discards them.
	Log *slog.Logger
}

// Stats are the tier's counters. Their tags name the Prometheus counters
// they are exported as (see package metrics).
type Stats struct {
	ReadHits       uint64 `metric:"fleet_reads_total" labels:"result=hit" help:"Reads of the shared snapshot, by result: hit (a usable snapshot), miss (none, or none newer than ours), error."`
	ReadMisses     uint64 `metric:"fleet_reads_total" labels:"result=miss" help:"Reads of the shared snapshot, by result: hit (a usable snapshot), miss (none, or none newer than ours), error."`
	ReadErrors     uint64 `metric:"fleet_reads_total" labels:"result=error" help:"Reads of the shared snapshot, by result: hit (a usable snapshot), miss (none, or none newer than ours), error."`
	Invalid        uint64 `metric:"fleet_invalid_values_total" help:"Values in Redis rejected as malformed, of the wrong type, too large or hostile; the replica fetched for itself."`
	LockWon        uint64 `metric:"fleet_locks_total" labels:"result=won" help:"Attempts to take the fetch lock, by result."`
	LockLost       uint64 `metric:"fleet_locks_total" labels:"result=lost" help:"Attempts to take the fetch lock, by result."`
	WaitNotified   uint64 `metric:"fleet_waits_total" labels:"result=notified" help:"Waits for another replica's fetch, by how they ended: notified (pub/sub), polled, gave_up (lease passed with no news)."`
	WaitPolled     uint64 `metric:"fleet_waits_total" labels:"result=polled" help:"Waits for another replica's fetch, by how they ended: notified (pub/sub), polled, gave_up (lease passed with no news)."`
	WaitGaveUp     uint64 `metric:"fleet_waits_total" labels:"result=gave_up" help:"Waits for another replica's fetch, by how they ended: notified (pub/sub), polled, gave_up (lease passed with no news)."`
	CommitOK       uint64 `metric:"fleet_commits_total" labels:"result=ok" help:"Snapshots written to Redis after a fetch, by result: ok, fenced (a newer one was there), error."`
	CommitFenced   uint64 `metric:"fleet_commits_total" labels:"result=fenced" help:"Snapshots written to Redis after a fetch, by result: ok, fenced (a newer one was there), error."`
	CommitErrors   uint64 `metric:"fleet_commits_total" labels:"result=error" help:"Snapshots written to Redis after a fetch, by result: ok, fenced (a newer one was there), error."`
	Fallbacks      uint64 `metric:"fleet_fallbacks_total" help:"Loads that fetched without the shared tier because Redis failed or the breaker was open."`
	BreakerOpened  uint64 `metric:"fleet_breaker_opens_total" help:"Times the circuit breaker opened after consecutive Redis failures."`
	NewsReceived   uint64 `metric:"fleet_news_total" help:"Announcements of another replica's snapshot, by pub/sub or polling."`
	LeaderFailures uint64 `metric:"fleet_leader_failures_total" help:"Fetches that failed while this replica held the lock (the waiters were told at once)."`
}

// Entry is a snapshot's data with what a replica needs to serve it.
type Entry struct {
	Data []byte
	// Gen is the generation of the fetch that produced it; 0 for data this
	// replica fetched without the shared tier.
	Gen uint64
	// FetchedAt is the fetch's start on the writer's clock: for display
	// only, never for freshness.
	FetchedAt time.Time
	// Deadline is, on this replica's clock, when the data's TTL ends.
	Deadline time.Time
	// Source says where it came from: "shared", "leader" or "local".
	Source string
}

// ErrLeaderFailed is returned to replicas that waited for a fetch that
// failed: they learn it at once instead of waiting out the lease, and
// back off like the leader.
var ErrLeaderFailed = errors.New("fleet: the fetch this replica waited for failed")

// ErrInvalid marks a value in Redis that this protocol did not write:
// malformed, of the wrong type, too large, or with an expiry it would not
// set. The caller fetches for itself; there is no point asking again for
// the same value.
var ErrInvalid = errors.New("fleet: invalid value in Redis")

// errLeaseOutlastsLoad is why a waiter fetches alone when the lock's
// lease would end too late for it to fetch before its load's end.
var errLeaseOutlastsLoad = errors.New("fleet: the lock's lease outlasts this load")

// errOpen is returned by calls refused while the breaker is open.
var errOpen = errors.New("fleet: circuit breaker open")

// Tier is a replica's handle on the shared tier. It is safe for concurrent
// use.
type Tier struct {
	opts     Options
	client   *redis.Client
	redacted string
	keys     keys
	breaker  breaker
	stats    Stats // only through sync/atomic

	// news is closed and replaced whenever news arrives, waking every
	// waiter at once.
	newsMu  sync.Mutex
	news    chan struct{}
	failed  map[uint64]bool // generations whose leader announced failure
	lastGen atomic.Uint64   // newest generation heard of

	// read is the generation this replica read last and the earliest
	// deadline it computed for it. Each reading errs early by a different
	// amount (the call's latency), so without it a second reading of the
	// same snapshot could look newer than the first, and be taken as news.
	readMu sync.Mutex
	read   struct {
		gen      uint64
		deadline time.Time
	}

	stop context.CancelFunc
	done chan struct{}
}

type keys struct {
	snap, snapGen, gen, lock, channel string
}

// New connects to opts.URL (lazily: New itself makes no call) and starts
// the goroutine that listens for news. Close stops it.
func New(opts Options) (*Tier, error) {
	u, err := url.Parse(opts.URL)
	if err != nil {
		return nil, errors.New("fleet: the Redis URL is not a URL")
	}
	redacted := u.Redacted()
	ro, err := redis.ParseURL(opts.URL)
	if err != nil {
		// go-redis's message may quote parts of the URL: never the
		// password, but say only what is safe.
		return nil, fmt.Errorf("fleet: invalid Redis URL %s: want redis://[user:password@]host:port[/db] or rediss://", redacted)
	}
	if opts.TTL <= 0 || opts.Lease <= 0 || opts.Validate == nil {
		return nil, errors.New("fleet: TTL, Lease and Validate are required")
	}
	if opts.Prefix == "" {
		opts.Prefix = "movies"
	}
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = 100 * time.Millisecond
	}
	if opts.MaxValueBytes <= 0 {
		opts.MaxValueBytes = 4 << 20
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	// Every call is bounded by its context, with no retries hidden inside
	// the client: a sick Redis must cost a request one bounded call, after
	// which the breaker keeps it out of the way.
	ro.ContextTimeoutEnabled = true
	ro.MaxRetries = -1
	ro.DialTimeout = opts.CallTimeout
	ro.ReadTimeout = opts.CallTimeout
	ro.WriteTimeout = opts.CallTimeout
	ro.PoolTimeout = opts.CallTimeout
	// A connection kept ready, so a replica's first read after start or
	// idle does not spend its bounded call on a dial and a handshake, and
	// no CLIENT SETINFO round trip on each new connection.
	ro.MinIdleConns = 1
	ro.DisableIdentity = true
	t := &Tier{
		opts:     opts,
		client:   redis.NewClient(ro),
		redacted: redacted,
		keys: keys{
			snap:    opts.Prefix + ":snapshot",
			snapGen: opts.Prefix + ":snapshot:gen",
			gen:     opts.Prefix + ":gen",
			lock:    opts.Prefix + ":lock",
			channel: opts.Prefix + ":news",
		},
		breaker: breaker{threshold: 3, cooldown: time.Second, maxCooldown: 30 * time.Second},
		news:    make(chan struct{}),
		failed:  make(map[uint64]bool),
		done:    make(chan struct{}),
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.stop = cancel
	go t.listen(ctx)
	return t, nil
}

// Redacted is the Redis URL with its password masked, for logs.
func (t *Tier) Redacted() string { return t.redacted }

// Close stops listening for news and closes the connections.
func (t *Tier) Close() error {
	t.stop()
	<-t.done
	return t.client.Close()
}

// Stats returns the tier's counters.
func (t *Tier) Stats() Stats { return loadStats(&t.stats) }

// BreakerOpen reports whether the breaker is keeping calls away from Redis.
func (t *Tier) BreakerOpen() bool { return t.breaker.isOpen(time.Now()) }

// Load returns data fresher than haveDeadline (zero when the caller has
// nothing fresh): from Redis if another replica already fetched it, by
// leading the fleet's fetch with fetch, or by waiting for the replica that
// leads it. If Redis fails at any step it fetches for itself. ctx bounds
// the whole load.
func (t *Tier) Load(ctx context.Context, haveDeadline time.Time, fetch func(context.Context) ([]byte, error)) (Entry, error) {
	for rereads, takeovers := 0, 0; ; {
		if err := ctx.Err(); err != nil {
			return Entry{}, err
		}
		e, found, seen, err := t.readSeen(ctx, haveDeadline)
		if err != nil {
			return t.fallback(ctx, fetch, err)
		}
		if found {
			return e, nil
		}
		gen, holder, leaseLeft, redisNow, err := t.lock(ctx, seen)
		if err != nil {
			return t.fallback(ctx, fetch, err)
		}
		if gen == 0 && holder == 0 {
			// A snapshot was committed since we read: read it. Commits
			// take the lock, so a second time in one load means keys
			// that disagree (not written by this protocol).
			if rereads++; rereads > 2 {
				return t.fallback(ctx, fetch, errors.New("fleet: the snapshot and its generation disagree"))
			}
			continue
		}
		if gen > 0 {
			atomic.AddUint64(&t.stats.LockWon, 1)
			return t.lead(ctx, gen, redisNow, fetch)
		}
		atomic.AddUint64(&t.stats.LockLost, 1)
		// Wait out the lease, but not so long that no time is left to
		// fetch alone: a lease may outlast this load (a replica
		// configured with a longer one, or a second takeover in a row),
		// and a load that waited until its context ended would fail its
		// readers for no fault of the upstream.
		patience, short := leaseLeft+20*time.Millisecond, false
		if dl, ok := ctx.Deadline(); ok {
			if left := time.Until(dl) - t.fetchRoom(); left < patience {
				patience, short = left, true
			}
		}
		if patience <= 0 {
			return t.fallback(ctx, fetch, errLeaseOutlastsLoad)
		}
		e, found, err = t.wait(ctx, haveDeadline, holder, patience)
		switch {
		case found:
			return e, nil
		case errors.Is(err, ErrLeaderFailed):
			return Entry{}, err
		case ctx.Err() != nil:
			return Entry{}, ctx.Err()
		case err != nil:
			// Redis failed while we waited: fetch alone, as on any
			// other Redis failure.
			return t.fallback(ctx, fetch, err)
		case short:
			return t.fallback(ctx, fetch, errLeaseOutlastsLoad)
		}
		// The lease passed without news: the leader died or hangs. Go
		// round: the next replica to try takes the lock over. Leases are
		// bounded (lock refuses any longer than ours), but a lock that
		// keeps being taken by replicas that never commit is not worth
		// waiting on for ever: after two, fetch alone.
		if takeovers++; takeovers > 2 {
			return t.fallback(ctx, fetch, errors.New("fleet: no snapshot after two leases"))
		}
	}
}

// fetchRoom is the time a waiter keeps for fetching alone when it stops
// waiting before its load's end: half a lease. It is less than a whole
// lease so that one who waited out a leader that died at once (a lease
// after its load began, a load lasting two leases) still takes over rather
// than falling back.
func (t *Tier) fetchRoom() time.Duration { return t.opts.Lease / 2 }

// fallback fetches without the shared tier, as a lone replica does.
func (t *Tier) fallback(ctx context.Context, fetch func(context.Context) ([]byte, error), cause error) (Entry, error) {
	atomic.AddUint64(&t.stats.Fallbacks, 1)
	t.opts.Log.DebugContext(ctx, "shared tier unavailable, fetching alone", "redis", t.redacted, "err", cause)
	start := time.Now()
	data, err := fetch(ctx)
	if err != nil {
		return Entry{}, err
	}
	return Entry{Data: data, FetchedAt: start, Deadline: start.Add(t.opts.TTL), Source: "local"}, nil
}

// lead fetches for the fleet and commits the result. lockedAt is Redis's
// clock (ms) when the lock was taken, before the fetch started: the
// snapshot expires in Redis at lockedAt + TTL on Redis's own clock, so no
// delay between here and Redis (a slow network, a Redis paused and
// resumed) can move its expiry later.
func (t *Tier) lead(ctx context.Context, gen uint64, lockedAt int64, fetch func(context.Context) ([]byte, error)) (Entry, error) {
	start := time.Now()
	data, err := fetch(ctx)
	if err != nil {
		atomic.AddUint64(&t.stats.LeaderFailures, 1)
		// Tell the waiters now rather than let them wait out the lease;
		// they back off as we do, so an outage costs the upstream one
		// fetch per backoff for the whole fleet.
		// The fetch may have failed because ctx ended: the lock and the
		// news must go out anyway, or the waiters wait out the lease.
		t.call(context.WithoutCancel(ctx), "release", func(ctx context.Context) error {
			return releaseScript.Run(ctx, t.client, []string{t.keys.lock, t.keys.channel}, gen).Err()
		})
		return Entry{}, err
	}
	e := Entry{Data: data, Gen: gen, FetchedAt: start, Deadline: start.Add(t.opts.TTL), Source: "leader"}
	if !time.Now().Before(e.Deadline) {
		// Nothing to share: the data is past its TTL already. The cache
		// refuses to serve it too.
		return e, nil
	}
	expireAt := lockedAt + t.opts.TTL.Milliseconds()
	env, err := json.Marshal(envelope{V: 1, Gen: gen, FetchedAtMS: start.UnixMilli(), Data: data})
	if err != nil {
		atomic.AddUint64(&t.stats.CommitErrors, 1)
		return e, nil
	}
	var res int64
	// Committed even if ctx ended meanwhile: the data is good, and the
	// waiters are waiting for it.
	err = t.call(context.WithoutCancel(ctx), "commit", func(ctx context.Context) error {
		var err error
		res, err = commitScript.Run(ctx, t.client,
			[]string{t.keys.snap, t.keys.snapGen, t.keys.lock, t.keys.channel},
			gen, env, expireAt).Int64()
		return err
	})
	switch {
	case err != nil:
		atomic.AddUint64(&t.stats.CommitErrors, 1)
		t.opts.Log.WarnContext(ctx, "shared snapshot not written", "redis", t.redacted, "err", err)
	case res == -1:
		// Already expired by Redis's clock: nothing worth sharing.
		atomic.AddUint64(&t.stats.CommitFenced, 1)
	case res == 0:
		atomic.AddUint64(&t.stats.CommitFenced, 1)
		t.opts.Log.InfoContext(ctx, "shared snapshot fenced: a newer one is there", "gen", gen)
		// The fleet serves the newer one already: serving ours here
		// would take this replica's readers back in time.
		if newer, found, err := t.Read(ctx, time.Time{}); err == nil && found && newer.Gen > gen {
			return newer, nil
		}
	default:
		atomic.AddUint64(&t.stats.CommitOK, 1)
	}
	// The data is good whatever Redis said: serve it here.
	return e, nil
}

// wait waits up to patience for the lock holder's news, then reads the
// snapshot. found is false if that passed with no usable snapshot.
func (t *Tier) wait(ctx context.Context, haveDeadline time.Time, holder uint64, patience time.Duration) (Entry, bool, error) {
	lease := time.NewTimer(patience)
	defer lease.Stop()
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	for {
		news := t.newsChan()
		how := &t.stats.WaitPolled
		select {
		case <-ctx.Done():
			return Entry{}, false, ctx.Err()
		case <-lease.C:
			atomic.AddUint64(&t.stats.WaitGaveUp, 1)
			return Entry{}, false, nil
		case <-news:
			how = &t.stats.WaitNotified
		case <-poll.C:
		}
		if t.leaderFailed(holder) {
			return Entry{}, false, ErrLeaderFailed
		}
		e, found, err := t.Read(ctx, haveDeadline)
		if err != nil {
			// Redis went away while we waited: fetch alone.
			return Entry{}, false, err
		}
		if found {
			atomic.AddUint64(how, 1)
			return e, true, nil
		}
	}
}

// Read returns the shared snapshot if there is one, valid, fresher than
// haveDeadline and with time left to serve it.
func (t *Tier) Read(ctx context.Context, haveDeadline time.Time) (Entry, bool, error) {
	e, found, _, err := t.readSeen(ctx, haveDeadline)
	return e, found, err
}

// readSeen is Read that also returns the generation of the snapshot it
// saw, usable or not (0 if there was none), for lock.
func (t *Tier) readSeen(ctx context.Context, haveDeadline time.Time) (Entry, bool, uint64, error) {
	var res []any
	asked := time.Now()
	err := t.call(ctx, "read", func(ctx context.Context) error {
		var err error
		res, err = readScript.Run(ctx, t.client, []string{t.keys.snap}, t.opts.MaxValueBytes).Slice()
		return err
	})
	if err != nil {
		atomic.AddUint64(&t.stats.ReadErrors, 1)
		return Entry{}, false, 0, err
	}
	e, err := t.decode(res, asked)
	if err != nil {
		atomic.AddUint64(&t.stats.Invalid, 1)
		atomic.AddUint64(&t.stats.ReadErrors, 1)
		t.opts.Log.ErrorContext(ctx, "rejected the shared snapshot", "redis", t.redacted, "err", err)
		return Entry{}, false, 0, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if e.Data != nil {
		e.Deadline = t.steadyDeadline(e.Gen, e.Deadline)
	}
	// A snapshot is worth taking only if it is newer than ours and has
	// time left to be prepared and served: one with less would expire on
	// the way out, and its readers would be answered 503.
	if e.Data == nil || !e.Deadline.After(haveDeadline) || time.Until(e.Deadline) < t.minLeft() {
		atomic.AddUint64(&t.stats.ReadMisses, 1)
		return Entry{}, false, e.Gen, nil
	}
	atomic.AddUint64(&t.stats.ReadHits, 1)
	return e, true, e.Gen, nil
}

// minLeft is the least time a shared snapshot must have left to be taken:
// far more than preparing it costs (tens of milliseconds), and a small part
// of a short TTL.
func (t *Tier) minLeft() time.Duration { return min(time.Second, t.opts.TTL/4) }

// steadyDeadline returns the earliest deadline this replica computed for
// generation gen, d included: one snapshot keeps one deadline (the most
// cautious), so reading it again is never mistaken for news.
func (t *Tier) steadyDeadline(gen uint64, d time.Time) time.Time {
	t.readMu.Lock()
	defer t.readMu.Unlock()
	if gen == t.read.gen && t.read.deadline.Before(d) {
		return t.read.deadline
	}
	t.read.gen, t.read.deadline = gen, d
	return d
}

// envelope is the value stored in Redis.
type envelope struct {
	V           int             `json:"v"`
	Gen         uint64          `json:"gen"`
	FetchedAtMS int64           `json:"fetched_at_ms"`
	Data        json.RawMessage `json:"data"`
}

// decode checks what the read script returned. An absent snapshot is a
// zero Entry and no error.
func (t *Tier) decode(res []any, asked time.Time) (Entry, error) {
	if len(res) == 0 {
		return Entry{}, errors.New("empty reply")
	}
	status, _ := res[0].(int64)
	switch {
	case status == 0:
		return Entry{}, nil
	case status == -1:
		return Entry{}, errors.New("the snapshot key holds a value of the wrong type")
	case status == -2:
		return Entry{}, fmt.Errorf("the snapshot is over %d bytes", t.opts.MaxValueBytes)
	case status != 1 || len(res) != 3:
		return Entry{}, errors.New("unexpected reply")
	}
	raw, ok1 := res[1].(string)
	pttl, ok2 := res[2].(int64)
	if !ok1 || !ok2 {
		return Entry{}, errors.New("unexpected reply types")
	}
	if pttl <= 1 || time.Duration(pttl)*time.Millisecond > t.opts.TTL {
		// No expiry, or more than a TTL left: not written by this
		// protocol, and serving it could break the promise.
		return Entry{}, fmt.Errorf("the snapshot's expiry (%d ms) is not within the TTL", pttl)
	}
	var env envelope
	if err := json.Unmarshal([]byte(raw), &env); err != nil {
		return Entry{}, fmt.Errorf("malformed envelope: %w", err)
	}
	if env.V != 1 || env.Gen == 0 || len(env.Data) == 0 {
		return Entry{}, errors.New("envelope lacks its version, generation or data")
	}
	if err := t.opts.Validate(env.Data); err != nil {
		return Entry{}, fmt.Errorf("invalid data: %w", err)
	}
	return Entry{
		Data:      env.Data,
		Gen:       env.Gen,
		FetchedAt: time.UnixMilli(env.FetchedAtMS),
		// asked is before Redis measured the PTTL, and Redis counts
		// whole milliseconds (a PTTL may be up to 1ms generous): less
		// one, the local deadline errs early, never late.
		Deadline: asked.Add(time.Duration(pttl-1) * time.Millisecond),
		Source:   "shared",
	}, nil
}

// lock tries to take the fetch lock, unless the snapshot in Redis is no
// longer the one of generation seen (0: none) the caller read and found
// wanting. It returns the new generation and Redis's clock (ms) if it won;
// 0, the holder's generation and how long its lease has left if another
// replica holds it; or all zeros if a snapshot was committed since the
// caller read, which it should read instead of fetching again. A lock this
// protocol did not write (no expiry, a lease as long as the TTL, no
// generation) is an error: waiting on it could mean waiting for ever.
func (t *Tier) lock(ctx context.Context, seen uint64) (gen, holder uint64, leaseLeft time.Duration, redisNow int64, err error) {
	var res []int64
	err = t.call(ctx, "lock", func(ctx context.Context) error {
		var err error
		res, err = lockScript.Run(ctx, t.client, []string{t.keys.lock, t.keys.gen, t.keys.snap, t.keys.snapGen},
			t.opts.Lease.Milliseconds(), time.Now().UnixMilli(), seen).Int64Slice()
		return err
	})
	if err != nil {
		return 0, 0, 0, 0, err
	}
	switch {
	case len(res) == 1 && res[0] == 0:
		return 0, 0, 0, 0, nil
	case len(res) == 3 && res[0] == 1 && res[1] > 0 && res[2] > 0:
		return uint64(res[1]), 0, 0, res[2], nil
	case len(res) == 3 && res[0] == 2 && res[1] > 0 && res[2] > 0 && res[2] <= t.opts.TTL.Milliseconds():
		// Replicas configured apart may hold leases longer than ours,
		// but none as long as a TTL.
		return 0, uint64(res[1]), time.Duration(res[2]) * time.Millisecond, 0, nil
	case len(res) == 3 && res[0] == 2:
		atomic.AddUint64(&t.stats.Invalid, 1)
		err := fmt.Errorf("%w: a lock of generation %d with %d ms left, not one of ours (TTL %s)", ErrInvalid, res[1], res[2], t.opts.TTL)
		t.opts.Log.ErrorContext(ctx, "rejected the shared fetch lock", "redis", t.redacted, "err", err)
		return 0, 0, 0, 0, err
	default:
		return 0, 0, 0, 0, fmt.Errorf("%w: unexpected reply to lock %v", ErrInvalid, res)
	}
}

// call runs one Redis operation under the breaker and the call timeout.
func (t *Tier) call(parent context.Context, op string, f func(context.Context) error) error {
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
	if opened := t.breaker.record(time.Now(), err == nil, probe); opened {
		atomic.AddUint64(&t.stats.BreakerOpened, 1)
		t.opts.Log.Warn("shared tier off: Redis keeps failing; serving as a lone replica", "redis", t.redacted, "err", err)
	}
	return err
}

// listen delivers news of commits from the pub/sub channel, with polling of
// the snapshot's generation as the backstop for lost messages (pub/sub
// drops what is sent while a subscriber reconnects).
func (t *Tier) listen(ctx context.Context) {
	defer close(t.done)
	ps := t.client.Subscribe(ctx, t.keys.channel)
	defer ps.Close()
	msgs := ps.Channel(redis.WithChannelHealthCheckInterval(time.Second))
	poll := time.NewTicker(200 * time.Millisecond)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-msgs:
			if !ok {
				return
			}
			// A message is Redis answering: after an outage, sharing
			// (and adopting this very news) resumes now rather than at
			// the breaker's next probe.
			t.breaker.alive()
			t.heard(m.Payload)
		case <-poll.C:
			if !t.breaker.isOpen(time.Now()) {
				var g string
				err := t.call(ctx, "poll", func(ctx context.Context) error {
					var err error
					g, err = t.client.Get(ctx, t.keys.snapGen).Result()
					return err
				})
				if err == nil && g != "" {
					t.heard(g)
				}
			}
		}
	}
}

// heard handles one announcement: "<gen>" for a commit, "fail:<gen>" for a
// leader's failed fetch.
func (t *Tier) heard(payload string) {
	rest, failed := strings.CutPrefix(payload, "fail:")
	gen, err := strconv.ParseUint(rest, 10, 64)
	if err != nil || gen == 0 {
		return
	}
	t.newsMu.Lock()
	changed := true
	if failed {
		if len(t.failed) >= 64 { // bounded: only recent ones matter
			clear(t.failed)
		}
		t.failed[gen] = true
	} else {
		changed = t.lastGen.Swap(gen) != gen
	}
	if changed {
		close(t.news)
		t.news = make(chan struct{})
	}
	t.newsMu.Unlock()
	if changed && !failed {
		atomic.AddUint64(&t.stats.NewsReceived, 1)
	}
	// Repeated on every poll, not only when new: an adoption that was
	// busy or failed when the news first came gets another chance.
	if !failed && t.opts.OnNews != nil {
		t.opts.OnNews(gen)
	}
}

func (t *Tier) newsChan() <-chan struct{} {
	t.newsMu.Lock()
	defer t.newsMu.Unlock()
	return t.news
}

// leaderFailed reports whether the lock holder of generation holder
// announced a failed fetch.
func (t *Tier) leaderFailed(holder uint64) bool {
	t.newsMu.Lock()
	defer t.newsMu.Unlock()
	return t.failed[holder]
}

// The scripts. Each runs atomically in Redis, in one round trip.
var (
	// readScript returns {0} for no snapshot, {-1} for a key of the wrong
	// type, {-2} for one over ARGV[1] bytes (never transferred), or
	// {1, value, pttl}.
	readScript = redis.NewScript(`
local t = redis.call('TYPE', KEYS[1]).ok
if t == 'none' then return {0} end
if t ~= 'string' then return {-1} end
if redis.call('STRLEN', KEYS[1]) > tonumber(ARGV[1]) then return {-2} end
return {1, redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
`)

	// lockScript takes the lock for ARGV[1] ms if it is free and returns
	// {1, a new generation, Redis's clock in ms}: the generation is above
	// every earlier one, and seeded from the caller's clock (ARGV[2], ms)
	// so generations keep rising across a Redis restarted empty. If the
	// lock is held it returns {2, the holder's generation, its PTTL} as
	// they are, for the caller to judge (-1: no expiry).
	// First, if a snapshot (KEYS[3], of generation KEYS[4]) is there that
	// is not the one of generation ARGV[3] the caller read, it returns
	// {0}: one was committed between the caller's read and now, and
	// fetching again would double the fleet's fetches.
	lockScript = redis.NewScript(`
local cur = tonumber(redis.call('GET', KEYS[4]))
if cur and cur ~= tonumber(ARGV[3]) and redis.call('EXISTS', KEYS[3]) == 1 then
  return {0}
end
if redis.call('SET', KEYS[1], '0', 'NX', 'PX', ARGV[1]) then
  local g = math.max((tonumber(redis.call('GET', KEYS[2])) or 0) + 1, tonumber(ARGV[2]))
  redis.call('SET', KEYS[2], string.format('%d', g))
  redis.call('SET', KEYS[1], string.format('%d', g), 'PX', ARGV[1])
  local now = redis.call('TIME')
  return {1, g, tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)}
end
local h = 0
if redis.call('TYPE', KEYS[1]).ok == 'string' then h = tonumber(redis.call('GET', KEYS[1])) or 0 end
return {2, h, redis.call('PTTL', KEYS[1])}
`)

	// commitScript writes the snapshot of generation ARGV[1] (value
	// ARGV[2], expiring at ARGV[3], ms on Redis's clock) unless one of the
	// same or a higher generation is there (fencing), announces it, and
	// frees the lock if it is still ours. It returns 1, 0 if fenced, or -1
	// if the expiry has passed.
	commitScript = redis.NewScript(`
local cur = tonumber(redis.call('GET', KEYS[2])) or 0
if cur >= tonumber(ARGV[1]) then return 0 end
local now = redis.call('TIME')
local px = tonumber(ARGV[3]) - (tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
if px <= 0 then return -1 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', px)
redis.call('SET', KEYS[2], ARGV[1])
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
redis.call('PUBLISH', KEYS[4], ARGV[1])
return 1
`)

	// releaseScript frees the lock of generation ARGV[1] after a failed
	// fetch and tells the waiters.
	releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', KEYS[2], 'fail:' .. ARGV[1])
return 1
`)
)
