package fleet

// The fetches a load makes: leading for the fleet, hedging beside a late
// leader, alone when Redis fails; each races a second fetch when late,
// and the fleet's news, and shares what it got.

import (
	"cmp"
	"context"
	"sync/atomic"
	"time"
)

// fetched is what a fetch returned.
type fetched[V any] struct {
	value V
	data  []byte
	err   error
	took  time.Duration // from its own start: a second fetch's, not the late one's
	at    time.Time     // when it returned: a Retry-After counts from then
	trace string        // its span's traceparent, if it told ShareTrace
}

// hedgeFetch fetches beside the leader (or after it, if it failed), with a
// fetch budget of its own, and takes whichever answer comes first: the
// fleet's commit or its own, which it commits under a version of its own,
// above the leader's, so the leader's later commit is fenced and the
// fleet keeps the newer fetch. If a fetch meanwhile asked the fleet to
// wait (a Retry-After), it waits instead.
func (l *load[V]) hedgeFetch(ctx context.Context) (Entry[V], error) {
	t := l.t
	b, err := t.ticket(ctx, l.have)
	if err != nil {
		l.cause = err
		return l.alone(ctx)
	}
	if b.kind == beganBackoff {
		atomic.AddUint64(&t.stats.Backoffs, 1)
		return Entry[V]{}, &FailedError{Cause: b.cause, RetryAfter: b.left}
	}
	version := b.version
	l.version = version
	start, wall := time.Now(), t.opts.Now()
	f, theirs, fleetFirst := l.race(ctx)
	switch {
	case fleetFirst:
		atomic.AddUint64(&t.stats.HedgeLost, 1)
		return theirs, nil
	case f.err != nil:
		atomic.AddUint64(&t.stats.HedgeFailed, 1)
		t.noteRetryAfter(context.WithoutCancel(ctx), version, f)
		return Entry[V]{}, t.failedAs(f)
	}
	atomic.AddUint64(&t.stats.HedgeWon, 1)
	t.fetches.add(f.took)
	return t.share(context.WithoutCancel(ctx), version, l.have, l.heldFor(), "", f, start, wall, f.took, FromHedge), nil
}

// race fetches with a budget of its own while it listens for the fleet's
// news, and returns whichever answer comes first: its own, or a snapshot
// newer than the load's that another replica committed meanwhile (a hedge
// that overtook this leader, or the leader that a hedge waited for), in
// which case its own fetch is cancelled. A fetch that is late (lateAfter)
// gets a second one beside it, with a budget of its own, as "The Tail at
// Scale" hedges a request: a fetch that met a hung connection or a bad
// backend does not fail this replica's requests when a second one would
// not. A fetch that fails is not retried: the client has retried what is
// worth retrying. ctx (the load's) bounds them all.
func (l *load[V]) race(ctx context.Context) (f fetched[V], theirs Entry[V], fleetFirst bool) {
	t := l.t
	results := make(chan fetched[V], 2)
	running := 0
	var cancels []context.CancelFunc
	fetch := func() {
		fctx, cancel := context.WithTimeout(ctx, t.opts.FetchTimeout)
		cancels = append(cancels, cancel)
		running++
		go func() {
			start := time.Now()
			var trace string
			v, data, err := l.fetch(context.WithValue(fctx, traceKey{}, &trace))
			results <- fetched[V]{v, data, err, time.Since(start), time.Now(), trace}
		}()
	}
	// Whatever returns, the fetches still running end now.
	defer func() {
		for _, cancel := range cancels {
			cancel()
		}
		for ; running > 0; running-- {
			<-results
		}
	}()
	fetch()
	var late <-chan time.Time
	if after, known := t.lateAfter(); known && after < t.opts.FetchTimeout {
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
			// Not a snapshot no newer than what the load holds, whatever
			// its version (see heldFor).
			if e, found, err := t.Read(ctx, l.have); err == nil && found && e.Deadline.After(l.heldUntil()) {
				return f, e, true
			}
		}
		select {
		case r := <-results:
			running--
			if r.err != nil && f.err != nil && t.retryAfter(r.err) == 0 {
				r = f // the upstream's word (a Retry-After) outlives a timeout
			}
			if f = r; f.err == nil || running == 0 {
				return f, theirs, false
			}
			// The first failed; the second may still answer. If the
			// upstream asked the fleet to wait, the fleet waits from now,
			// whatever that second brings (see noteRetryAfter).
			t.noteRetryAfter(ctx, l.version, f)
		case <-late:
			// Not if a fetch elsewhere in the fleet was asked meanwhile to
			// wait: the upstream's word holds for every replica (see
			// noteRetryAfter); alone, nobody could have told us.
			// Nor if the fetch has answered meanwhile (a process woken
			// from a pause finds both ready, and select picks either;
			// asked after Redis, which gives its goroutine the time).
			if running == 1 && !(l.shared && l.version != 0 && t.waitAsked(ctx)) && len(results) == 0 {
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
		t.fail(out, token, version, f)
		return Entry[V]{}, t.failedAs(f)
	}
	t.fetches.add(f.took)
	e := t.share(out, version, l.have, l.heldFor(), token, f, start, wall, f.took, FromLead)
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
// lock's, "" for a hedge, which holds none; have and heldMS are what its
// load began from, see heldFor) and returns what to serve: its own fetch,
// or the newer snapshot that fenced it.
func (t *Tier[V]) share(ctx context.Context, version, have uint64, heldMS int64, token string, f fetched[V], start, wall time.Time, took time.Duration, src Source) Entry[V] {
	lock := ""
	if token != "" {
		lock = lockValue(version, token)
	}
	e := Entry[V]{Value: f.value, Version: version, Deadline: start.Add(t.opts.TTL), Source: src, Trace: f.trace}
	px := time.Until(e.Deadline).Milliseconds()
	if px < 2 {
		if lock != "" {
			t.release(ctx, token, 'r', version, "", 0) // nothing left to share
		}
		return e
	}
	value := append(header(version, wall, took, f.trace), f.data...)
	c, err := t.commit(ctx, version, have, heldMS, value, px, lock)
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
		// Another fetch of this round committed first (a hedge, the
		// leader a hedge raced, a takeover of our lapsed lease): the
		// fleet serves it, and serving ours here would show this
		// replica's readers a snapshot the others do not serve.
		atomic.AddUint64(&t.stats.CommitFenced, 1)
		t.opts.Log.InfoContext(ctx, "shared snapshot fenced: a newer one is there", "version", version, "newer", c.version)
		if newer, found, err := t.Read(ctx, have); err == nil && found {
			return newer
		}
	default:
		atomic.AddUint64(&t.stats.CommitOK, 1)
		e.Version = c.version // above a snapshot no newer than have's, if one was there
	}
	return e
}

// heldUntil is when what the load began from ends, as far as the fleet can
// tell it from a newer snapshot: its deadline plus a call's time
// (CallTimeout), since that deadline was reckoned on this replica's clock
// from a read that took up to a call (see decodeOne, which errs early). A
// snapshot that ends by then carries nothing newer than what the load
// holds, whatever its version says: it neither answers the load's fetch
// (race) nor fences its commit (heldFor). Zero for nothing held.
func (l *load[V]) heldUntil() time.Time {
	if l.held.IsZero() {
		return time.Time{}
	}
	return l.held.Add(l.t.opts.CallTimeout)
}

// heldFor is heldUntil as the commit script compares it with the stored
// snapshot's PTTL: the ms left until it; 0 if nothing is held, or what is
// held has ended (a miss: any live snapshot is newer).
func (l *load[V]) heldFor() int64 {
	if !time.Now().Before(l.held) {
		return 0
	}
	return time.Until(l.heldUntil()).Milliseconds()
}
