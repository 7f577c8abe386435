package fleet

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Load returns a snapshot newer than have, what the caller holds (its
// Version, 0 for nothing shared, and its Deadline; the zero Entry for
// nothing): one another replica committed, one this replica fetches for
// the fleet with fetch, one it fetched beside a late leader, or, whenever
// Redis fails, one it fetches alone, as a lone replica does. ctx bounds
// the whole load: give it twice FetchTimeout (one wait for a leader, then
// one fetch of its own).
func (t *Tier[V]) Load(ctx context.Context, have Entry[V], fetch Fetch[V]) (Entry[V], error) {
	hedge := time.NewTimer(t.waitHedgeAfter())
	defer hedge.Stop()
	l := &load[V]{t: t, have: have.Version, held: have.Deadline, fetch: fetch, hedge: hedge.C, shared: true}
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
	have  uint64    // the version the caller holds
	held  time.Time // when what the caller holds ends (zero: nothing)
	fetch Fetch[V]
	hedge <-chan time.Time // fires when the leader is late (waitHedgeAfter)

	shared  bool   // news may answer it (false once it fetches alone)
	version uint64 // of the fetch it makes (lead, hedge), 0 alone
	seen    uint64 // the news read so far
	holder  began  // stepWait: the lock's holder
	rereads int    // reads that found nothing where begin saw a snapshot
	starved bool   // begin was asked again after this process starved
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
		if errors.Is(err, errStarved) && !l.starved {
			// This process was slow, not Redis (a pause it just woke
			// from): ask again, once, before fetching alone, which
			// would not know of a Retry-After the fleet was given.
			l.starved = true
			return stepBegin
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
				of, fe, ok, err := t.failure(ctx)
				switch {
				case err != nil:
					return l.failed(err)
				case !ok || of != ev.version:
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

// fail releases the lock of version after its fetch failed, and tells the
// waiters why: cancelled (the replica is shutting down: take over now) or
// failed, with the cause and the Retry-After (capped) recorded in Redis,
// where no message can forge it.
func (t *Tier[V]) fail(ctx context.Context, token string, version uint64, f fetched[V]) {
	if errors.Is(f.err, context.Canceled) {
		t.release(ctx, token, 'r', version, "", 0)
		return
	}
	// The record says why for as long as the fleet waits, exactly; one
	// that asks for no wait lives a lease, for the waiters to check the
	// message against.
	retry, px := t.retryLeft(f), leaseTerm
	if retry > 0 {
		px = retry
	}
	t.release(ctx, token, 'f', version, t.failureRecord(version, retry, f.err), px.Milliseconds())
}

// retryAfter is the wait the upstream asked for with err, capped.
func (t *Tier[V]) retryAfter(err error) time.Duration {
	if t.opts.RetryAfter == nil || err == nil {
		return 0
	}
	return t.capBackoff(t.opts.RetryAfter(err))
}

// retryLeft is what is left of the wait the upstream asked for with a
// failed fetch: counted from when its answer came, not from now (a second
// fetch may have run on after it); all of it if the answer came within a
// call's time.
func (t *Tier[V]) retryLeft(f fetched[V]) time.Duration {
	ra := t.retryAfter(f.err)
	if since := time.Since(f.at); ra > 0 && since > t.opts.CallTimeout {
		return max(ra-since, time.Millisecond)
	}
	return ra
}

// failedAs is the error a failed fetch ends its load with: its own, or,
// if the upstream asked for a wait whose start has passed, the wait that
// is left of it, so this replica's cache waits no longer than the fleet.
func (t *Tier[V]) failedAs(f fetched[V]) error {
	if ra := t.retryAfter(f.err); ra > 0 && time.Since(f.at) > t.opts.CallTimeout {
		return &FailedError{Cause: t.cause(f.err), RetryAfter: t.retryLeft(f)}
	}
	return f.err
}

// cause labels a fetch error for the fleet: a short word.
func (t *Tier[V]) cause(err error) string {
	if t.opts.Cause == nil {
		return "error"
	}
	return sanitize(t.opts.Cause(err))
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
			t.checkScript(t.alive, "release", err)
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
// replica may start a fetch the upstream asked it not to. The record
// alone, with no message: the fetches still running go on.
func (t *Tier[V]) noteRetryAfter(ctx context.Context, version uint64, f fetched[V]) {
	if version == 0 {
		return // alone: Redis is not to be counted on
	}
	retry := t.retryLeft(f)
	if retry <= 0 {
		return
	}
	t.release(ctx, "", 'n', version, t.failureRecord(version, retry, f.err), retry.Milliseconds())
}

// failureRecord is the failure record of version's fetch, which failed
// with err asking the fleet to wait retry: "<version> <retry ms> <end ms>
// <cause>", the end on this replica's wall clock, which the readers hold
// against theirs (see luaBackoff): a record outliving its wait, because
// Redis's clock stepped back or a call ran late, asks for no more of it.
func (t *Tier[V]) failureRecord(version uint64, retry time.Duration, err error) string {
	return fmt.Sprintf("%d %d %d %s", version, retry.Milliseconds(), t.opts.Now().Add(retry).UnixMilli(), t.cause(err))
}

// waitAsked reports whether Redis holds a failure record, of any fetch,
// that asks the fleet to wait now (the upstream's Retry-After). Redis
// failing asks for nothing: a lone replica would not have known.
func (t *Tier[V]) waitAsked(ctx context.Context) bool {
	_, fe, ok, err := t.failure(ctx)
	return err == nil && ok && fe.RetryAfter > 0
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
