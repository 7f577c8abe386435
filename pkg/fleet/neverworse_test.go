package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// The tests of this file pin what makes the fleet never worse than lone
// replicas: a waiter does not inherit a fault of its leader's, a shared
// backoff is capped as a lone replica caps its own, and a message is a
// hint, not a fact.

// hangingFetch blocks until its context ends, as a request on a half-open
// connection does.
func hangingFetch(n *atomic.Int64) Fetch[string] {
	return func(ctx context.Context) (string, []byte, error) {
		n.Add(1)
		<-ctx.Done()
		return "", nil, ctx.Err()
	}
}

// TestTier_ALateLeaderIsHedged: the leader's fetches hang (its second one
// too) while the upstream answers others at once: the waiter, which has
// seen fetches take 50ms, fetches beside it after waitHedgeAfter,
// serves its own answer long before the leader's fetch times out, and
// shares it under a version above the leader's, which a third replica
// reads.
func TestTier_ALateLeaderIsHedged(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	budget := func(o *Options[string]) { o.FetchTimeout = 3 * time.Second; o.CallTimeout = 100 * time.Millisecond }
	leader, waiter, reader := newTier(t, r.URL, budget), newTier(t, r.URL, budget), newTier(t, r.URL, budget)
	var hung atomic.Int64
	ctx, cancel := context.WithCancel(bg())
	leaderDone := make(chan struct{})
	go func() { leader.Load(ctx, Entry[string]{}, hangingFetch(&hung)); close(leaderDone) }()
	defer func() { cancel(); <-leaderDone }()
	waitFor(t, func() bool { return hung.Load() == 1 })
	waiter.fetches.add(50 * time.Millisecond)
	if got, want := waiter.waitHedgeAfter(), 2*(hedgeFactor*50*time.Millisecond+2*100*time.Millisecond); got != want {
		t.Fatalf("waitHedgeAfter() = %v, want %v (twice hedgeFactor x the slowest fetch + a commit's two calls)", got, want)
	}
	f := &fetcher{delay: 50 * time.Millisecond}
	start := time.Now()
	e, err := waiter.Load(bg(), Entry[string]{}, f.fetch)
	took := time.Since(start)
	if err != nil || e.Source != FromHedge || f.n.Load() != 1 {
		t.Fatalf("waiter's Load() = %+v, %v; want its own fetch, hedged", e, err)
	}
	if took > time.Second {
		t.Errorf("the waiter served after %v, want about waitHedgeAfter + a fetch (650ms), not the leader's timeout", took)
	}
	got, found, err := reader.Read(bg(), 0)
	if err != nil || !found || got.Version != e.Version || got.Value != e.Value {
		t.Errorf("a third replica read %+v (found %v, %v), want the hedge's snapshot", got, found, err)
	}
	if st := waiter.Stats(); st.WaitHedged != 1 || st.HedgeWon != 1 || st.CommitOK != 1 {
		t.Errorf("waiter stats = %+v, want one hedge, won and shared", st)
	}
}

// TestTier_ALateFetchGetsASecond: a fetch that meets a hung connection
// (the first only) is late after lateAfter, and a second one beside it
// answers: the leader serves, its waiters with it, and the lone fetch
// path does the same with Redis gone.
func TestTier_ALateFetchGetsASecond(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	budget := func(o *Options[string]) { o.FetchTimeout = 4 * time.Second; o.CallTimeout = 100 * time.Millisecond }
	for _, tc := range []struct {
		name string
		url  string
		want Source
	}{{"leading", r.URL, FromLead}, {"alone", "redis://127.0.0.1:1", FromAlone}} {
		t.Run(tc.name, func(t *testing.T) {
			tier := newTier(t, tc.url, budget)
			tier.fetches.add(20 * time.Millisecond) // late after 240ms
			var n atomic.Int64
			fetch := func(ctx context.Context) (string, []byte, error) {
				if n.Add(1) == 1 {
					<-ctx.Done() // the first meets a hung connection
					return "", nil, ctx.Err()
				}
				return "second", []byte(`"second"`), nil
			}
			start := time.Now()
			e, err := tier.Load(bg(), Entry[string]{}, fetch)
			if err != nil || e.Value != "second" || e.Source != tc.want || n.Load() != 2 {
				t.Fatalf("Load() = %+v, %v after %d fetches; want the second fetch's answer", e, err, n.Load())
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("served after %v, want about lateAfter (240ms), not the budget", d)
			}
			if st := tier.Stats(); st.LateFetches != 1 {
				t.Errorf("stats = %+v, want one late fetch", st)
			}
		})
	}
}

// TestTier_AHedgeYieldsToTheLeadersCommit: the leader is late but not
// lost; its commit comes before the hedge's own answer, which is then
// cancelled, and the waiter serves the leader's snapshot.
func TestTier_AHedgeYieldsToTheLeadersCommit(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	budget := func(o *Options[string]) { o.FetchTimeout = 3 * time.Second; o.CallTimeout = 100 * time.Millisecond }
	leader, waiter := newTier(t, r.URL, budget), newTier(t, r.URL, budget)
	slow := &fetcher{delay: 600 * time.Millisecond}
	go leader.Load(bg(), Entry[string]{}, slow.fetch)
	waitFor(t, func() bool { return slow.n.Load() == 1 })
	waiter.fetches.add(10 * time.Millisecond) // hedges after 440ms
	slower := &fetcher{delay: 2 * time.Second}
	e, err := waiter.Load(bg(), Entry[string]{}, slower.fetch)
	if err != nil || e.Source != FromFleet || e.Value != "fetch 1" {
		t.Fatalf("waiter's Load() = %+v, %v; want the leader's snapshot", e, err)
	}
	if st := waiter.Stats(); st.HedgeLost != 1 || slower.n.Load() != 1 {
		t.Errorf("stats = %+v after %d hedged fetches; want one hedge, lost", st, slower.n.Load())
	}
}

// TestTier_AFailureWithoutRetryAfterIsNotInherited: the leader's fetch
// fails without asking the fleet to wait (a reset connection, a timeout:
// perhaps its fault alone); the waiter fetches, as a lone replica would
// have, instead of failing with it.
func TestTier_AFailureWithoutRetryAfterIsNotInherited(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	leader, waiter := newTier(t, r.URL), newTier(t, r.URL)
	broken := &fetcher{delay: 200 * time.Millisecond, err: errors.New("connection reset by peer")}
	go leader.Load(bg(), Entry[string]{}, broken.fetch)
	waitFor(t, func() bool { return broken.n.Load() == 1 })
	f := &fetcher{}
	e, err := waiter.Load(bg(), Entry[string]{}, f.fetch)
	if err != nil || f.n.Load() != 1 || e.Value != "fetch 1" {
		t.Fatalf("waiter's Load() = %+v, %v; want its own fetch after the leader failed", e, err)
	}
	if st := waiter.Stats(); st.WaitFailed != 1 {
		t.Errorf("stats = %+v, want one wait ended by a failure", st)
	}
}

// TestTier_TheFleetsBackoffIsCappedAsALoneReplicasIs: the upstream asks
// for an hour; the fleet waits MaxBackoff, as each replica's own cache
// would, not an hour: a waiter is told MaxBackoff, a replica that asks
// later the rest of it, and once it is over the next one fetches.
func TestTier_TheFleetsBackoffIsCappedAsALoneReplicasIs(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	const cap = 1500 * time.Millisecond
	capped := func(o *Options[string]) { o.MaxBackoff = cap }
	leader, waiter, late := newTier(t, r.URL, capped), newTier(t, r.URL, capped), newTier(t, r.URL, capped)
	f := &fetcher{delay: 300 * time.Millisecond, err: retryAfterError(time.Hour)}
	go leader.Load(bg(), Entry[string]{}, f.fetch)
	waitFor(t, func() bool { return f.n.Load() == 1 })
	_, err := waiter.Load(bg(), Entry[string]{}, f.fetch)
	var fe *FailedError
	if !errors.As(err, &fe) || fe.RetryAfter > cap || fe.RetryAfter < cap-500*time.Millisecond {
		t.Fatalf("waiter's Load() = %v, want the leader's failure with what is left of its Retry-After capped at %v", err, cap)
	}
	if pttl, _ := client(t, r).PTTL(bg(), "test:failed").Result(); pttl > cap {
		t.Errorf("the failure record expires in %v, want at most %v", pttl, cap)
	}
	if _, err := late.Load(bg(), Entry[string]{}, f.fetch); !errors.As(err, &fe) || fe.RetryAfter > cap {
		t.Errorf("late Load() = %v, want the fleet's backoff, at most %v", err, cap)
	}
	time.Sleep(cap)
	ok := &fetcher{}
	if e, err := late.Load(bg(), Entry[string]{}, ok.fetch); err != nil || ok.n.Load() != 1 || e.Source != FromLead {
		t.Errorf("Load() after the capped backoff = %+v, %v; want a fetch", e, err)
	}
}

// TestTier_AForgedMessageIsOnlyAHint: a commit message far ahead of any
// real version (forged, or left by a fleet whose counter ran ahead) does
// not make the real commits that follow look old: a waiter wakes on the
// real one at once, not at its lease's recheck, and OnNews hears both.
func TestTier_AForgedMessageIsOnlyAHint(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	c := client(t, r)
	heard := make(chan uint64, 10)
	waiter := newTier(t, r.URL, func(o *Options[string]) { o.OnNews = func(v uint64) { heard <- v } })
	leader := newTier(t, r.URL)
	time.Sleep(100 * time.Millisecond) // subscribed
	forged := uint64(maxVersion - 1)
	c.Publish(bg(), "test:news", "c:"+strconv.FormatUint(forged, 10))
	if v := <-heard; v != forged {
		t.Fatalf("heard %d, want the forged %d first", v, forged)
	}
	for round := range 3 {
		slow := &fetcher{delay: 300 * time.Millisecond}
		var have Entry[string]
		if e, found, _ := waiter.Read(bg(), 0); found {
			have = e
		}
		go leader.Load(bg(), have, slow.fetch)
		waitFor(t, func() bool { return slow.n.Load() == 1 })
		start := time.Now()
		e, err := waiter.Load(bg(), have, (&fetcher{}).fetch)
		if err != nil || e.Source != FromFleet {
			t.Fatalf("round %d: waiter's Load() = %+v, %v; want the leader's snapshot", round, e, err)
		}
		if d := time.Since(start); d > 600*time.Millisecond {
			t.Errorf("round %d: the waiter woke %v after it began, want about the leader's 300ms fetch, not its lease", round, d)
		}
		select {
		case v := <-heard:
			if v != e.Version {
				t.Errorf("round %d: OnNews heard %d, want the real commit %d", round, v, e.Version)
			}
		case <-time.After(time.Second):
			t.Errorf("round %d: OnNews did not hear the real commit after the forged one", round)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTier_ALostLeaseIsSaid: the leader's lock vanishes mid-fetch (an
// eviction under a volatile-* policy, a restart): its commit still lands
// (fenced by version, not by the lock), and the loss is counted and said.
func TestTier_ALostLeaseIsSaid(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	c := client(t, r)
	var log lockedBuffer
	leader := newTier(t, r.URL, func(o *Options[string]) { o.Log = slog.New(slog.NewTextHandler(&log, nil)) })
	f := &fetcher{delay: 2 * renewEvery}
	go func() {
		waitFor(t, func() bool { return f.n.Load() == 1 })
		c.Del(bg(), "test:lock")
	}()
	e, err := leader.Load(bg(), Entry[string]{}, f.fetch)
	if err != nil || e.Source != FromLead {
		t.Fatalf("Load() = %+v, %v", e, err)
	}
	if st := leader.Stats(); st.LeasesLost != 1 || st.CommitOK != 1 {
		t.Errorf("stats = %+v, want the lost lease counted and the commit made", st)
	}
	if !strings.Contains(log.String(), "level=WARN") || !strings.Contains(log.String(), "lock lost") {
		t.Errorf("log = %s, want a WARN about the lost lock", log.String())
	}
}

// TestTier_AVersionFarAheadOnOldDataFencesNothing: while a replica
// fetches, the snapshot it holds is set far ahead in version (by hand, by
// a fleet whose counter ran ahead), announced or not. That snapshot
// carries nothing newer than what the replica holds, so it neither
// answers the load nor fences its commit: the fetch commits above it and
// the replica serves its own, as a lone replica would, not the old data,
// which ends sooner and would cost a fetch early.
func TestTier_AVersionFarAheadOnOldDataFencesNothing(t *testing.T) {
	t.Parallel()
	for _, announced := range []bool{false, true} {
		t.Run(fmt.Sprintf("announced=%v", announced), func(t *testing.T) {
			t.Parallel()
			r := startRedis(t)
			c := client(t, r)
			tier := newTier(t, r.URL)
			held, err := tier.Load(bg(), Entry[string]{}, (&fetcher{}).fetch)
			if err != nil {
				t.Fatal(err)
			}
			ahead := held.Version * 1000
			f := &fetcher{delay: 300 * time.Millisecond}
			go func() {
				waitFor(t, func() bool { return f.n.Load() == 1 })
				v, _ := c.Get(bg(), "test:snapshot").Result()
				_, rest, _ := strings.Cut(v, " ")
				c.Set(bg(), "test:snapshot", strconv.FormatUint(ahead, 10)+" "+rest, redis.KeepTTL)
				if announced {
					c.Publish(bg(), "test:news", "c:"+strconv.FormatUint(ahead, 10))
				}
			}()
			e, err := tier.Load(bg(), held, f.fetch)
			if err != nil || e.Source != FromLead || e.Version != ahead+1 || !e.Deadline.After(held.Deadline) {
				t.Fatalf("Load() = %+v, %v; want its own fetch, committed as version %d, above the old data at %d", e, err, ahead+1, ahead)
			}
			got, found, err := tier.Read(bg(), held.Version)
			if err != nil || !found || got.Version != ahead+1 || got.Value != e.Value {
				t.Errorf("Read() = %+v, %v, %v; want the fetch just committed", got, found, err)
			}
			// One far ahead that ends later than what the load holds is
			// newer data, committed during the fetch: it fences as ever.
			f = &fetcher{delay: 300 * time.Millisecond}
			go func() {
				waitFor(t, func() bool { return f.n.Load() == 1 })
				putSnapshot(t, c, "test:snapshot", ahead+10, 0, testTTL+time.Second, `"newer"`)
				if announced {
					c.Publish(bg(), "test:news", "c:"+strconv.FormatUint(ahead+10, 10))
				}
			}()
			e, err = tier.Load(bg(), e, f.fetch)
			if err != nil || e.Version != ahead+10 || e.Value != "newer" {
				t.Errorf("Load() = %+v, %v; want the newer snapshot, at %d", e, err, ahead+10)
			}
		})
	}
}

// TestFetchTimes_TheSlowestOfTheLastFew: lateness is judged by the slowest
// of the last recentFetches fetch times, so one slow fetch raises the bar
// for that many fetches and no longer.
func TestFetchTimes_TheSlowestOfTheLastFew(t *testing.T) {
	t.Parallel()
	var f fetchTimes
	if _, ok := f.slowest(); ok {
		t.Fatal("slowest() of nothing says it knows")
	}
	f.add(time.Second)
	for i := range recentFetches - 1 {
		f.add(10 * time.Millisecond)
		if got, _ := f.slowest(); got != time.Second {
			t.Fatalf("after %d fast fetches slowest() = %v, want the slow one still", i+1, got)
		}
	}
	f.add(10 * time.Millisecond)
	if got, _ := f.slowest(); got != 10*time.Millisecond {
		t.Errorf("after %d fast fetches slowest() = %v, want the slow one forgotten", recentFetches, got)
	}
}
