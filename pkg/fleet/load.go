package fleet

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Load returns a snapshot newer than version have (what the caller holds,
// 0 for nothing shared): one another replica committed, one this replica
// fetches for the fleet with fetch, one it fetched beside a late leader,
// or, whenever Redis fails, one it fetches alone, as a lone replica does.
// ctx bounds the whole load: give it twice FetchTimeout (one wait for a
// leader, then one fetch of its own).
func (t *Tier[V]) Load(ctx context.Context, have uint64, fetch Fetch[V]) (Entry[V], error) {
	hedge := time.NewTimer(t.waitHedgeAfter())
	defer hedge.Stop()
	l := &load[V]{t: t, have: have, fetch: fetch, hedge: hedge.C, shared: true}
	for step := stepBegin; ; {
		switch step {
		case stepBegin:
			step = l.begin(ctx)
		case stepWait:
			step = l.wait(ctx)
		case stepHedge:
			return l.hedgeFetch(ctx)
		case stepAlone:
			return l.alone(ctx)
		case stepDone:
			return l.entry, l.err
		}
	}
}

// A step is what a load does next.
type step int

const (
	stepBegin step = iota // ask Redis what to do (again)
	stepWait              // wait for the replica holding the lock
	stepHedge             // fetch beside (or after) the leader; the first answer wins
	stepAlone             // Redis failed: fetch as a lone replica
	stepDone              // the load has its answer
)

// load is one Load's state.
type load[V any] struct {
	t     *Tier[V]
	have  uint64
	fetch Fetch[V]
	hedge <-chan time.Time // fires when the leader is late (waitHedgeAfter)

	shared  bool   // news may answer it (false once it fetches alone)
	version uint64 // of the fetch it makes (lead, hedge), 0 alone
	seen    uint64 // the news read so far
	holder  began  // stepWait: the lock's holder
	rereads int    // reads that found nothing where begin saw a snapshot
	cause   error  // stepAlone: why Redis could not be used

	entry Entry[V] // stepDone
	err   error
}

func (l *load[V]) done(e Entry[V], err error) step {
	l.entry, l.err = e, err
	return stepDone
}

func (l *load[V]) failed(err error) step {
	l.cause = err
	return stepAlone
}

// begin asks Redis what to do: read, back off, lead, or wait.
func (l *load[V]) begin(ctx context.Context) step {
	t := l.t
	if err := ctx.Err(); err != nil {
		return l.done(Entry[V]{}, err)
	}
	t.news.since(&l.seen) // news during begin concerns the wait after it
	token := t.newToken()
	b, err := t.begin(ctx, l.have, token)
	if errors.Is(err, ErrInvalid) {
		atomic.AddUint64(&t.stats.Invalid, 1)
		t.opts.Log.ErrorContext(ctx, "rejected the shared fetch lock", "redis", t.redacted, "err", err)
	}
	if err != nil {
		if !errors.Is(err, errOpen) && !errors.Is(err, ErrInvalid) && !reply(err) {
			t.releaseUnknown(token)
		}
		return l.failed(err)
	}
	t.fine(ctx)
	switch b.kind {
	case beganNewer:
		e, found, err := t.Read(ctx, l.have)
		switch {
		case err != nil:
			return l.failed(err)
		case found:
			return l.done(e, nil)
		}
		// Gone or expiring between two calls: ask again, but not for
		// ever (a writer's clock far behind makes every read a miss).
		if l.rereads++; l.rereads > 2 {
			return l.failed(errSpin)
		}
		return stepBegin
	case beganBackoff:
		atomic.AddUint64(&t.stats.Backoffs, 1)
		return l.done(Entry[V]{}, &FailedError{Cause: b.cause, RetryAfter: b.left})
	case beganLock:
		atomic.AddUint64(&t.stats.LockWon, 1)
		return l.done(l.lead(ctx, b.version, token))
	}
	atomic.AddUint64(&t.stats.LockLost, 1)
	l.holder = b
	return stepWait
}

// wait waits for the lock's holder to commit, release or fail, for its
// lease to be due, or for it to be late. Messages are hints: a commit
// costs a read, a failure is believed only if Redis holds its record.
func (l *load[V]) wait(ctx context.Context) step {
	t := l.t
	lapse := time.NewTimer(min(l.holder.left, leaseTerm) + time.Millisecond)
	defer lapse.Stop()
	for {
		evs, wake := t.news.since(&l.seen)
		for _, ev := range evs {
			switch {
			case ev.kind == 'c' && ev.version > l.have:
				e, found, err := t.Read(ctx, l.have)
				switch {
				case err != nil:
					return l.failed(err)
				case found:
					atomic.AddUint64(&t.stats.WaitCommitted, 1)
					return l.done(e, nil)
				}
				// Of no use here (expired on arrival, or forged): the
				// commit freed the lock, so ask again now.
				return stepBegin
			case ev.kind == 'r' && ev.version == l.holder.version:
				atomic.AddUint64(&t.stats.WaitReleased, 1)
				return stepBegin
			case ev.kind == 'f' && ev.version == l.holder.version:
				fe, ok, err := t.failure(ctx, ev.version)
				switch {
				case err != nil:
					return l.failed(err)
				case !ok:
					continue // forged, or the record is gone: the lease tells
				}
				atomic.AddUint64(&t.stats.WaitFailed, 1)
				if fe.RetryAfter > 0 {
					return l.done(Entry[V]{}, fe)
				}
				// No Retry-After: the fault may be the leader's alone (one
				// connection, one backend), so fetch, as a lone replica
				// would have.
				return stepHedge
			}
		}
		select {
		case <-ctx.Done():
			return l.done(Entry[V]{}, ctx.Err())
		case <-lapse.C:
			// Renewed (wait on) or lapsed (take over): begin tells.
			atomic.AddUint64(&t.stats.WaitRechecked, 1)
			return stepBegin
		case <-l.hedge:
			atomic.AddUint64(&t.stats.WaitHedged, 1)
			return stepHedge
		case <-wake:
		}
	}
}

// fetched is what a fetch returned.
type fetched[V any] struct {
	value V
	data  []byte
	err   error
	took  time.Duration // from its own start: a second fetch's, not the late one's
}

// hedgeFetch fetches beside the leader (or after it, if it failed), with a
// fetch budget of its own, and takes whichever answer comes first: the
// fleet's commit or its own, which it commits under a version of its own,
// above the leader's, so the leader's later commit is fenced and the
// fleet keeps the newer fetch.
func (l *load[V]) hedgeFetch(ctx context.Context) (Entry[V], error) {
	t := l.t
	version, err := t.ticket(ctx, l.have)
	if err != nil {
		l.cause = err
		return l.alone(ctx)
	}
	l.version = version
	start, wall := time.Now(), t.opts.Now()
	f, theirs, fleetFirst := l.race(ctx)
	switch {
	case fleetFirst:
		atomic.AddUint64(&t.stats.HedgeLost, 1)
		return theirs, nil
	case f.err != nil:
		atomic.AddUint64(&t.stats.HedgeFailed, 1)
		t.noteRetryAfter(context.WithoutCancel(ctx), version, f.err)
		return Entry[V]{}, f.err
	}
	atomic.AddUint64(&t.stats.HedgeWon, 1)
	t.fetches.add(f.took)
	return t.share(context.WithoutCancel(ctx), version, "", f, start, wall, f.took, FromHedge), nil
}

// race fetches with a budget of its own while it listens for the fleet's
// news, and returns whichever answer comes first: its own, or a snapshot
// newer than the load's that another replica committed meanwhile (a hedge
// that overtook this leader, or the leader that a hedge waited for), in
// which case its own fetch is cancelled. A fetch that is late (lateAfter)
// gets a second one beside it, within the same budget if it fits, as "The Tail at
// Scale" hedges a request: a fetch that met a hung connection or a bad
// backend does not fail this replica's requests when a second one would
// not. A fetch that fails is not retried: the client has retried what is
// worth retrying.
func (l *load[V]) race(ctx context.Context) (f fetched[V], theirs Entry[V], fleetFirst bool) {
	t := l.t
	fctx, cancel := context.WithTimeout(ctx, t.opts.FetchTimeout)
	defer cancel()
	results := make(chan fetched[V], 2)
	running := 0
	fetch := func() {
		running++
		go func() {
			start := time.Now()
			v, data, err := l.fetch(fctx)
			results <- fetched[V]{v, data, err, time.Since(start)}
		}()
	}
	// Whatever returns, the fetches still running end with fctx.
	defer func() {
		cancel()
		for ; running > 0; running-- {
			<-results
		}
	}()
	fetch()
	var late <-chan time.Time
	if after, secondToo := t.lateAfter(); secondToo {
		timer := time.NewTimer(after)
		defer timer.Stop()
		late = timer.C
	}
	for {
		evs, wake := t.news.since(&l.seen)
		for _, ev := range evs {
			if ev.kind != 'c' || ev.version <= l.have || !l.shared {
				continue
			}
			if e, found, err := t.Read(ctx, l.have); err == nil && found {
				return f, e, true
			}
		}
		select {
		case r := <-results:
			running--
			if r.err != nil && f.err != nil && t.retryAfter(r.err) == 0 {
				r.err = f.err // the upstream's word (a Retry-After) outlives a timeout
			}
			if f = r; f.err == nil || running == 0 {
				return f, theirs, false
			}
			// The first failed; the second may still answer. If the
			// upstream asked the fleet to wait, the fleet waits from now,
			// whatever that second brings (see noteRetryAfter).
			t.noteRetryAfter(ctx, l.version, f.err)
		case <-late:
			if running == 1 {
				atomic.AddUint64(&t.stats.LateFetches, 1)
				fetch()
			}
		case <-wake:
		}
	}
}

// alone fetches without the shared tier, as a lone replica does, with a
// fetch budget of its own (and a second fetch if it is late, see race).
func (l *load[V]) alone(ctx context.Context) (Entry[V], error) {
	t := l.t
	// The load ended (its timer may not have run yet): no fetch for nobody.
	if dl, ok := ctx.Deadline(); ctx.Err() != nil || ok && !time.Now().Before(dl) {
		return Entry[V]{}, cmp.Or(ctx.Err(), context.DeadlineExceeded)
	}
	c := t.trouble(ctx, "load", l.cause)
	t.stats.countFallback(c)
	t.opts.Log.DebugContext(ctx, "fetching alone", "cause", c.name, "redis", t.redacted, "err", l.cause)
	start := time.Now()
	l.shared = false // Redis failed: no news is awaited
	f, _, _ := l.race(ctx)
	if f.err != nil {
		return Entry[V]{}, f.err
	}
	t.fetches.add(f.took)
	return Entry[V]{Value: f.value, Deadline: start.Add(t.opts.TTL), Source: FromAlone}, nil
}

// lead fetches for the fleet holding the lock of version, renewing its
// lease meanwhile, and shares what it fetched, or tells the waiters why
// not. A newer snapshot committed meanwhile (a waiter's hedge overtook a
// fetch that hung) is an answer too: the first one wins.
func (l *load[V]) lead(ctx context.Context, version uint64, token string) (Entry[V], error) {
	t := l.t
	lock := lockValue(version, token)
	l.version = version
	start, wall := time.Now(), t.opts.Now()
	lost := t.keepLease(lock)
	f, theirs, fleetFirst := l.race(ctx)
	leaseLost := lost()
	out := context.WithoutCancel(ctx) // the lock and the news go out whatever ctx does
	switch {
	case fleetFirst:
		t.release(out, token, 'r', version, "", 0)
		return theirs, nil
	case f.err != nil:
		atomic.AddUint64(&t.stats.LeaderFailures, 1)
		t.fail(out, token, version, f.err)
		return Entry[V]{}, f.err
	}
	t.fetches.add(f.took)
	e := t.share(out, version, token, f, start, wall, f.took, FromLead)
	if leaseLost {
		t.leaseLost(ctx, version)
	}
	return e, nil
}

// keepLease renews lock's lease until the returned func is called, which
// reports whether the lease was lost meanwhile (the lock vanished, or
// another replica took it over after it lapsed). A lost lease needs no
// repair: the commit is fenced by version, whoever holds the lock.
func (t *Tier[V]) keepLease(lock string) (stop func() (lost bool)) {
	ctx, cancel := context.WithCancel(context.Background())
	var lost atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(renewEvery)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if held, err := t.renew(ctx, lock); err == nil && held != lockOurs {
				lost.Store(true)
				return
			}
		}
	}()
	return func() bool {
		cancel()
		<-done
		return lost.Load()
	}
}

// leaseLost says that a lock this replica held vanished or was taken over
// before it let it go: Redis evicted it (a maxmemory-policy that evicts
// keys with an expiry first), lost it (restarted, failed over), or this
// process was paused past its lease. Fencing keeps it harmless; the log
// says it once a minute, as the fleet's economy suffers from it.
func (t *Tier[V]) leaseLost(ctx context.Context, version uint64) {
	atomic.AddUint64(&t.stats.LeasesLost, 1)
	t.warnOnce(ctx, "lease", "fetch lock lost before its lease ended: Redis evicts or lost the fleet's keys, or this process was paused",
		"version", version, "hint", "use maxmemory-policy allkeys-lru or noeviction, and enough maxmemory for the fleet's keys", "redis", t.redacted)
}

// share commits what this replica fetched (under version; token is its
// lock's, "" for a hedge, which holds none) and returns what to serve:
// its own fetch, or the newer snapshot that fenced it.
func (t *Tier[V]) share(ctx context.Context, version uint64, token string, f fetched[V], start, wall time.Time, took time.Duration, src Source) Entry[V] {
	lock := ""
	if token != "" {
		lock = lockValue(version, token)
	}
	e := Entry[V]{Value: f.value, Version: version, Deadline: start.Add(t.opts.TTL), Source: src}
	px := time.Until(e.Deadline).Milliseconds()
	if px < 2 {
		if lock != "" {
			t.release(ctx, token, 'r', version, "", 0) // nothing left to share
		}
		return e
	}
	value := append(header(version, wall, took), f.data...)
	c, err := t.commit(ctx, version, value, px, lock)
	switch {
	case err != nil:
		atomic.AddUint64(&t.stats.CommitErrors, 1)
		t.trouble(ctx, "commit", err)
		t.opts.Log.DebugContext(ctx, "shared snapshot not written", "redis", t.redacted, "err", err)
		if lock != "" {
			// The commit that would free the lock did not happen: free
			// it, so the waiters take over now rather than at its lease.
			t.release(ctx, token, 'r', version, "", 0)
		}
	case !c.ok:
		// A newer fetch committed first (a hedge, or a takeover of our
		// lapsed lease): the fleet serves it, and serving ours here
		// would take this replica's readers back in time.
		atomic.AddUint64(&t.stats.CommitFenced, 1)
		t.opts.Log.InfoContext(ctx, "shared snapshot fenced: a newer one is there", "version", version, "newer", c.version)
		if newer, found, err := t.Read(ctx, version); err == nil && found {
			return newer
		}
	default:
		atomic.AddUint64(&t.stats.CommitOK, 1)
	}
	return e
}

// fail releases the lock of version after its fetch failed, and tells the
// waiters why: cancelled (the replica is shutting down: take over now) or
// failed, with the cause and the Retry-After (capped) recorded in Redis,
// where no message can forge it.
func (t *Tier[V]) fail(ctx context.Context, token string, version uint64, err error) {
	if errors.Is(err, context.Canceled) {
		t.release(ctx, token, 'r', version, "", 0)
		return
	}
	retry := t.retryAfter(err)
	cause := "error"
	if t.opts.Cause != nil {
		cause = t.opts.Cause(err)
	}
	record := fmt.Sprintf("%d %d %s", version, retry.Milliseconds(), sanitize(cause))
	t.release(ctx, token, 'f', version, record, max(retry, leaseTerm).Milliseconds())
}

// retryAfter is the wait the upstream asked for with err, capped.
func (t *Tier[V]) retryAfter(err error) time.Duration {
	if t.opts.RetryAfter == nil || err == nil {
		return 0
	}
	return t.capBackoff(t.opts.RetryAfter(err))
}

// newToken names one begin call's lock.
func (t *Tier[V]) newToken() string {
	return t.token + strconv.FormatUint(t.begins.Add(1), 36)
}

// releaseUnknown frees, in the background, the lock a begin call may have
// taken though its caller never heard back (the call timed out after
// Redis ran it, or Redis ran it late, after a stall), so the waiters do
// not wait out its lease for a fetch nobody makes. It tries until that
// lease would have lapsed anyway, whatever the breaker says: a call in
// the background costs no request anything, and the breaker is open
// exactly when this is needed (a Redis resuming runs the queued begin).
func (t *Tier[V]) releaseUnknown(token string) {
	t.bg.Go(func() {
		for end := time.Now().Add(leaseTerm); time.Now().Before(end); {
			ctx, cancel := context.WithTimeout(t.alive, t.opts.CallTimeout)
			err := t.releaseCall(ctx, token, 'r', 0, "", 0)
			cancel()
			if err == nil || reply(err) {
				return
			}
			select {
			case <-t.alive.Done():
				return
			case <-time.After(renewEvery):
			}
		}
	})
}

// noteRetryAfter records, if the upstream answered err with a Retry-After,
// that the fleet waits (capped) from now: a fetch that failed beside
// another (a hedge, a second fetch) asks no waiter to give up, but no
// replica may start a fetch the upstream asked it not to. A plain SET of
// the record, with no message: the fetches still running go on.
func (t *Tier[V]) noteRetryAfter(ctx context.Context, version uint64, err error) {
	if version == 0 {
		return // alone: Redis is not to be counted on
	}
	retry := t.retryAfter(err)
	if retry <= 0 {
		return
	}
	cause := "error"
	if t.opts.Cause != nil {
		cause = t.opts.Cause(err)
	}
	record := fmt.Sprintf("%d %d %s", version, retry.Milliseconds(), sanitize(cause))
	t.call(ctx, "note", func(ctx context.Context) error {
		return t.client.Set(ctx, t.k[keyFailed], record, retry).Err()
	})
}

// failure reads the failure record of version: ok false if Redis holds
// none for it (the message was forged, or the record has expired).
func (t *Tier[V]) failure(ctx context.Context, version uint64) (*FailedError, bool, error) {
	rec, err := t.peek(ctx, "failure", keyFailed, 128)
	if err != nil {
		if reply(err) { // a key of another type: no record of ours
			return nil, false, nil
		}
		return nil, false, err
	}
	v, rest, _ := strings.Cut(rec, " ")
	ms, cause, _ := strings.Cut(rest, " ")
	retry, err := strconv.ParseInt(ms, 10, 64)
	if v != strconv.FormatUint(version, 10) || err != nil || retry < 0 {
		return nil, false, nil
	}
	return &FailedError{Cause: sanitize(cause), RetryAfter: t.capBackoff(time.Duration(retry) * time.Millisecond)}, true, nil
}

func lockValue(version uint64, token string) string {
	return strconv.FormatUint(version, 10) + " " + token
}

// parseLock returns the version in a lock's value, if it is one of ours.
func parseLock(v string) (uint64, bool) {
	vs, tok, _ := strings.Cut(v, " ")
	version, err := strconv.ParseUint(vs, 10, 64)
	return version, err == nil && version > 0 && version < maxVersion && tok != "" && !strings.ContainsAny(tok, " \n")
}

// sanitize keeps a cause to a short word, for logs and Redis.
func sanitize(s string) string {
	s = strings.Join(strings.Fields(s), "_")
	return s[:min(len(s), 64)]
}
