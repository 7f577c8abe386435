package fleet

import (
	"context"
	"errors"
	"fmt"
	"github.com/alicebob/miniredis/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/movies-dev/movies/pkg/fleet/fleettest"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func startRedis(t testing.TB) *fleettest.Redis { return fleettest.Start(t) }

// client is a plain client for a test to poke at the keys.
func client(t testing.TB, r *fleettest.Redis) *redis.Client {
	c := r.Client()
	t.Cleanup(func() { c.Close() })
	return c
}

const testTTL = 4 * time.Second

// decodeString accepts what fetcher writes: a quoted string.
func decodeString(b []byte) (string, error) {
	s, err := strconv.Unquote(string(b))
	if err != nil {
		return "", errors.New("want a JSON string")
	}
	return s, nil
}

func newTier(t testing.TB, url string, mod ...func(*Options[string])) *Tier[string] {
	t.Helper()
	o := Options[string]{Redis: Redis{URL: url}, Namespace: "test", TTL: testTTL, Decode: decodeString,
		// These tests are not about Redis being slow: a loaded machine
		// under -race must not turn their calls into fallbacks.
		CallTimeout: time.Second,
		RetryAfter: func(err error) time.Duration {
			var ra retryAfterError
			if errors.As(err, &ra) {
				return time.Duration(ra)
			}
			return 0
		},
	}
	for _, f := range mod {
		f(&o)
	}
	tier, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tier.Close() })
	return tier
}

type retryAfterError time.Duration

func (e retryAfterError) Error() string { return "503, retry after " + time.Duration(e).String() }

// fetcher counts its calls and answers a string naming the call.
type fetcher struct {
	n     atomic.Int64
	delay time.Duration
	err   error
}

func (f *fetcher) fetch(ctx context.Context) (string, []byte, error) {
	n := f.n.Add(1)
	select {
	case <-time.After(f.delay):
	case <-ctx.Done():
		return "", nil, ctx.Err()
	}
	if f.err != nil {
		return "", nil, f.err
	}
	s := fmt.Sprintf("fetch %d", n)
	return s, []byte(strconv.Quote(s)), nil
}

func bg() context.Context { return context.Background() }

// putSnapshot writes a snapshot as commit does: the header, then data,
// fetched startedAgo on this clock, expiring in pttl (0: never).
func putSnapshot(t testing.TB, c *redis.Client, key string, version uint64, startedAgo, pttl time.Duration, data string) {
	t.Helper()
	v := string(header(version, time.Now().Add(-startedAgo), 10*time.Millisecond, "")) + data
	if err := c.Set(bg(), key, v, pttl).Err(); err != nil {
		t.Fatal(err)
	}
}

// TestTier_OneFetchForTheWholeFleet: replicas that need data at once make
// one upstream fetch; the others get it from the news, with its deadline.
func TestTier_OneFetchForTheWholeFleet(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	f := &fetcher{delay: 200 * time.Millisecond}
	var wg sync.WaitGroup
	var mu sync.Mutex
	sources := map[Source]int{}
	values := map[string]bool{}
	for range 5 {
		tier := newTier(t, r.URL)
		wg.Add(1)
		go func() {
			defer wg.Done()
			e, err := tier.Load(bg(), Entry[string]{}, f.fetch)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			sources[e.Source]++
			values[e.Value] = true
			mu.Unlock()
			if left := time.Until(e.Deadline); left <= 0 || left > testTTL {
				t.Errorf("deadline %v away, want within the TTL", left)
			}
		}()
	}
	wg.Wait()
	if f.n.Load() != 1 || sources[FromLead] != 1 || sources[FromFleet] != 4 || len(values) != 1 {
		t.Errorf("fetches = %d, sources = %v, values = %v; want one fetch shared by all", f.n.Load(), sources, values)
	}
}

// TestTier_ALiveLeaderIsNeverOvertaken: a fetch three leases long is
// waited for, not taken over: the leader renews its lease. Pins
// leaseTerm/renewEvery (a lease that lapses under a live leader doubles
// the fetches) and that a waiter with no fetch seen yet waits to the end.
func TestTier_ALiveLeaderIsNeverOvertaken(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	f := &fetcher{delay: 3 * leaseTerm}
	// A fetch budget far above the fetch, so no hedge comes before the
	// lease would have lapsed many times over (the hedge has tests of
	// its own).
	patient := func(o *Options[string]) { o.FetchTimeout = 20 * leaseTerm }
	leader, waiter := newTier(t, r.URL, patient), newTier(t, r.URL, patient)
	done := make(chan Entry[string])
	go func() {
		e, err := leader.Load(bg(), Entry[string]{}, f.fetch)
		if err != nil {
			t.Error(err)
		}
		done <- e
	}()
	waitFor(t, func() bool { return f.n.Load() == 1 })
	ctx, cancel := context.WithTimeout(bg(), 5*leaseTerm)
	defer cancel()
	e, err := waiter.Load(ctx, Entry[string]{}, f.fetch)
	<-done
	if err != nil || e.Source != FromFleet || f.n.Load() != 1 {
		t.Errorf("waiter's Load() = %+v, %v after %d fetches; want the leader's snapshot, one fetch", e, err, f.n.Load())
	}
}

// TestTier_ADeadLeaderIsReplacedWithinALease: a lock whose holder stopped
// renewing it is taken over once its lease lapses, not later.
func TestTier_ADeadLeaderIsReplacedWithinALease(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	c := client(t, r)
	c.Set(bg(), "test:lock", "7 deadbeef", leaseTerm)
	f := &fetcher{}
	start := time.Now()
	e, err := newTier(t, r.URL, func(o *Options[string]) { o.FetchTimeout = 10 * leaseTerm }).Load(bg(), Entry[string]{}, f.fetch)
	if err != nil || e.Source != FromLead || f.n.Load() != 1 {
		t.Fatalf("Load() = %+v, %v; want a takeover", e, err)
	}
	if d := time.Since(start); d > leaseTerm+500*time.Millisecond {
		t.Errorf("takeover after %v, want within the %v lease", d, leaseTerm)
	}
	if e.Version <= 7 {
		t.Errorf("gen %d, want above the dead leader's 7", e.Version)
	}
}

// TestTier_AReleasedLockIsTakenAtOnce: a leader whose fetch is cancelled
// (its replica shutting down) tells its waiters, who take over at once
// instead of failing or waiting out the lease.
func TestTier_AReleasedLockIsTakenAtOnce(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	slow := &fetcher{delay: time.Hour}
	leader, waiter := newTier(t, r.URL), newTier(t, r.URL)
	ctx, cancel := context.WithCancel(bg())
	go leader.Load(ctx, Entry[string]{}, slow.fetch)
	waitFor(t, func() bool { return slow.n.Load() == 1 })
	type result struct {
		e   Entry[string]
		err error
	}
	got := make(chan result)
	f := &fetcher{}
	go func() {
		e, err := waiter.Load(bg(), Entry[string]{}, f.fetch)
		got <- result{e, err}
	}()
	waitFor(t, func() bool { return waiter.Stats().LockLost == 1 })
	start := time.Now()
	cancel()
	res := <-got
	if res.err != nil || res.e.Source != FromLead || f.n.Load() != 1 {
		t.Fatalf("waiter's Load() = %+v, %v; want it to lead after the release", res.e, res.err)
	}
	if d := time.Since(start); d > leaseTerm/2 {
		t.Errorf("the waiter took over %v after the release, want at once", d)
	}
	if st := waiter.Stats(); st.WaitReleased != 1 {
		t.Errorf("stats = %+v, want one wait ended by a release", st)
	}
}

// TestTier_AFailureHoldsForTheFleet: waiters learn of the leader's failure
// at once, with the upstream's Retry-After, and a replica that asks later
// backs off for what is left of it without fetching.
func TestTier_AFailureHoldsForTheFleet(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	f := &fetcher{delay: 300 * time.Millisecond, err: retryAfterError(3 * time.Second)}
	leader, waiter, late := newTier(t, r.URL), newTier(t, r.URL), newTier(t, r.URL)
	go leader.Load(bg(), Entry[string]{}, f.fetch)
	waitFor(t, func() bool { return f.n.Load() == 1 })
	start := time.Now()
	_, err := waiter.Load(bg(), Entry[string]{}, f.fetch)
	var fe *FailedError
	// What is left of the 3s, counted from the leader's failure.
	if !errors.As(err, &fe) || fe.RetryAfter > 3*time.Second || fe.RetryAfter < 2*time.Second || time.Since(start) > time.Second {
		t.Fatalf("waiter's Load() = %v after %v, want the leader's failure with what is left of its 3s, at once", err, time.Since(start))
	}
	_, err = late.Load(bg(), Entry[string]{}, f.fetch)
	if !errors.As(err, &fe) || fe.RetryAfter <= time.Second || fe.RetryAfter > 3*time.Second || f.n.Load() != 1 {
		t.Errorf("late Load() = %v after %d fetches, want the fleet's backoff and no fetch", err, f.n.Load())
	}
}

// TestTier_AMessageCostsAtMostARead: forged news (a failure nobody
// recorded, a commit that is not there) cannot fail or mislead a waiter.
func TestTier_AMessageCostsAtMostARead(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	c := client(t, r)
	f := &fetcher{delay: 600 * time.Millisecond}
	leader, waiter := newTier(t, r.URL), newTier(t, r.URL)
	go leader.Load(bg(), Entry[string]{}, f.fetch)
	waitFor(t, func() bool { return f.n.Load() == 1 })
	got := make(chan error)
	go func() {
		e, err := waiter.Load(bg(), Entry[string]{}, f.fetch)
		if err == nil && e.Source != FromFleet {
			err = fmt.Errorf("source %s", e.Source)
		}
		got <- err
	}()
	waitFor(t, func() bool { return waiter.Stats().LockLost == 1 })
	version, _ := c.Get(bg(), "test:counter").Result()
	for _, msg := range []string{"f:" + version, "c:" + version + "0", "r:1", "x:1", "f:notanumber"} {
		c.Publish(bg(), "test:news", msg)
	}
	if err := <-got; err != nil || f.n.Load() != 1 {
		t.Errorf("waiter's Load() = %v after %d fetches, want the real snapshot", err, f.n.Load())
	}
}

// TestTier_FencedCommitFreesTheLockAndAnnouncesTheNewer: a writer whose
// version is below the snapshot's (its lease lapsed, another committed)
// writes nothing, frees its lock, announces the newer one and serves it.
func TestTier_FencedCommitFreesTheLockAndAnnouncesTheNewer(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	c := client(t, r)
	heard := make(chan uint64, 10)
	slow := newTier(t, r.URL)
	newTier(t, r.URL, func(o *Options[string]) { o.OnNews = func(g uint64) { heard <- g } })
	release := make(chan struct{})
	var version uint64
	done := make(chan Entry[string])
	go func() {
		e, err := slow.Load(bg(), Entry[string]{}, func(ctx context.Context) (string, []byte, error) {
			<-release
			return "old", []byte(`"old"`), nil
		})
		if err != nil {
			t.Error(err)
		}
		done <- e
	}()
	waitFor(t, func() bool { v, _ := c.Get(bg(), "test:counter").Uint64(); version = v; return v > 0 })
	// Another replica's newer commit lands meanwhile.
	newer := version + 10
	putSnapshot(t, c, "test:snapshot", newer, 0, testTTL, `"new"`)
	close(release)
	e := <-done
	if e.Value != "new" || e.Version != newer {
		t.Errorf("fenced writer's Load() = %+v, want the newer snapshot (version %d)", e, newer)
	}
	if n, _ := c.Exists(bg(), "test:lock").Result(); n != 0 {
		t.Error("the fenced commit left its lock behind")
	}
	if v, _ := c.Get(bg(), "test:snapshot").Result(); !strings.Contains(v, `"new"`) {
		t.Errorf("snapshot = %s, want the newer one kept", v)
	}
	timeout := time.After(2 * time.Second)
	for {
		select {
		case g := <-heard:
			if g == newer {
				return
			}
		case <-timeout:
			t.Fatal("the fencing snapshot was not announced")
		}
	}
}

// TestTier_AVersionFarAheadHeals: versions keep rising above whatever
// Redis or the caller hold: a snapshot ahead of the counter (written by
// hand, or the counter evicted) does not fence every commit, and a
// replica holding a version Redis no longer knows (Redis restarted
// empty) leads above it, not below.
func TestTier_AVersionFarAheadHeals(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	c := client(t, r)
	ahead := uint64(time.Now().UnixMilli()) * 10
	putSnapshot(t, c, "test:snapshot", ahead, 10*testTTL, 0, `"ahead"`) // expired by its writer's clock
	c.Set(bg(), "test:counter", 1, 0)
	tier := newTier(t, r.URL)
	e, err := tier.Load(bg(), Entry[string]{}, (&fetcher{}).fetch)
	if err != nil || e.Version <= ahead || tier.Stats().CommitOK != 1 {
		t.Errorf("Load() = %+v, %v, stats %+v; want a commit above version %d", e, err, tier.Stats(), ahead)
	}
	if n, _ := c.Exists(bg(), "test:lock").Result(); n != 0 {
		t.Error("the lock was left behind")
	}
	c.FlushDB(bg()) // Redis restarted empty; the caller still holds e
	held := e.Version + 1000
	e, err = tier.Load(bg(), Entry[string]{Version: held}, (&fetcher{}).fetch)
	if err != nil || e.Version <= held {
		t.Errorf("Load() holding %d over an empty Redis = %+v, %v; want a version above what the caller holds", held, e, err)
	}
	// One past 2^52, where Lua's numbers lose integers, is not ours: it
	// is overwritten by the next commit, not obeyed.
	putSnapshot(t, c, "test:snapshot", 1<<60, 0, testTTL, `"x"`)
	e, err = tier.Load(bg(), e, (&fetcher{}).fetch)
	if err != nil || e.Source != FromLead || e.Version >= maxVersion || tier.Stats().CommitOK != 3 {
		t.Errorf("Load() over a version past 2^52 = %+v, %v, stats %+v; want a commit of our own", e, err, tier.Stats())
	}
}

// TestTier_ReadsTheEarlierOfTwoClocks: a snapshot's deadline is the
// earlier of Redis's expiry and the writer's fetch start plus the TTL, so
// Redis's clock stepping back (a PTTL too long) does not stretch it, nor
// does a writer's clock ahead of ours.
func TestTier_ReadsTheEarlierOfTwoClocks(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	c := client(t, r)
	tier := newTier(t, r.URL)
	put := func(version uint64, startedAgo, pttl time.Duration) {
		putSnapshot(t, c, "test:snapshot", version, startedAgo, pttl, `"x"`)
	}
	for _, tt := range []struct {
		name             string
		startedAgo, pttl time.Duration
		wantLeftAtMost   time.Duration
		wantLeftAtLeast  time.Duration
	}{
		{"Redis's clock stepped back 4s", 3 * time.Second, testTTL + time.Second, time.Second, 800 * time.Millisecond},
		{"the writer's clock 3s ahead", -3 * time.Second, 2 * time.Second, 2 * time.Second, 1800 * time.Millisecond},
		{"both agree", time.Second, 3 * time.Second, 3 * time.Second, 2800 * time.Millisecond},
	} {
		put(uint64(len(tt.name)), tt.startedAgo, tt.pttl)
		e, found, err := tier.Read(bg(), 0)
		left := time.Until(e.Deadline)
		if err != nil || !found || left > tt.wantLeftAtMost || left < tt.wantLeftAtLeast {
			t.Errorf("%s: Read() = %v left, found %v, %v; want %v-%v", tt.name, left, found, err, tt.wantLeftAtLeast, tt.wantLeftAtMost)
		}
	}
}

// TestTier_TheLastMillisecondIsAMiss: a snapshot read as it expires is no
// value to reject or log: a miss, and the load leads a fetch.
func TestTier_TheLastMillisecondIsAMiss(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	c := client(t, r)
	tier := newTier(t, r.URL)
	putSnapshot(t, c, "test:snapshot", 5, 0, time.Millisecond, `"x"`)
	e, err := tier.Load(bg(), Entry[string]{}, (&fetcher{}).fetch)
	if err != nil || e.Source != FromLead {
		t.Errorf("Load() = %+v, %v; want a fetch led for the fleet", e, err)
	}
	if st := tier.Stats(); st.Invalid != 0 {
		t.Errorf("stats = %+v, want nothing invalid", st)
	}
}

// TestTier_NothingInRedisIsTrusted: whatever sits under the keys, the
// replica never uses it unchecked: a value it would read is counted and it
// fetches for itself; one it would not (no expiry, the wrong type) is
// overwritten by its commit, which heals the key.
func TestTier_NothingInRedisIsTrusted(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	c := client(t, r)
	ctx := bg()
	huge := strings.Repeat("x", 300<<10)
	env := func(data string) string {
		return string(header(9, time.Now(), 0, "")) + data
	}
	tests := []struct {
		name string
		want Source
		set  func() error
	}{
		{"wrong type", FromLead, func() error { return c.RPush(ctx, "test:snapshot", "a").Err() }},
		{"no expiry", FromLead, func() error { return c.Set(ctx, "test:snapshot", env(`"x"`), 0).Err() }},
		{"huge", FromAlone, func() error { return c.Set(ctx, "test:snapshot", env(huge), time.Second).Err() }},
		{"no header", FromLead, func() error { return c.Set(ctx, "test:snapshot", "<script>", time.Second).Err() }},
		{"invalid data", FromAlone, func() error { return c.Set(ctx, "test:snapshot", env("[1]"), time.Second).Err() }},
		{"a lock that never expires", FromAlone, func() error { return c.Set(ctx, "test:lock", "3 abc", 0).Err() }},
		{"a lock of another shape", FromAlone, func() error { return c.Set(ctx, "test:lock", "whatever", time.Second).Err() }},
		{"a lock of another type", FromAlone, func() error { return c.HSet(ctx, "test:lock", "a", "b").Err() }},
		{"a counter of another type", FromLead, func() error { return c.RPush(ctx, "test:counter", "a").Err() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.Del(ctx, "test:snapshot", "test:lock", "test:counter")
			if err := tt.set(); err != nil {
				t.Fatal(err)
			}
			tier := newTier(t, r.URL)
			f := &fetcher{}
			e, err := tier.Load(ctx, Entry[string]{}, f.fetch)
			if err != nil || e.Source != tt.want || f.n.Load() != 1 || e.Value != "fetch 1" {
				t.Errorf("Load() = %+v, %v; want our own fetch, as %s", e, err, tt.want)
			}
			st := tier.Stats()
			if tt.want == FromAlone && (st.Invalid != 1 || st.Fallbacks() != 1) {
				t.Errorf("stats = %+v, want 1 invalid value and 1 fallback", st)
			}
			if v, _ := c.Get(ctx, "test:snapshot").Result(); tt.want == FromLead && !strings.Contains(v, `"fetch 1"`) {
				t.Errorf("Redis holds %.40q, want our commit over what was there", v)
			}
		})
	}
}

// TestTier_RedisDownIsNoReasonToFail: with nothing listening, loads fetch
// for themselves at once, and the breaker stops the calls after three.
func TestTier_RedisDownIsNoReasonToFail(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	tier := newTier(t, "redis://user:s3cret-pw@"+addr+"/0", func(o *Options[string]) { o.CallTimeout = 100 * time.Millisecond })
	f := &fetcher{}
	for i := range 10 {
		start := time.Now()
		e, err := tier.Load(bg(), Entry[string]{}, f.fetch)
		if err != nil || e.Source != FromAlone {
			t.Fatalf("load %d = %+v, %v; want a local fetch", i, e, err)
		}
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Errorf("load %d took %v with Redis down", i, d)
		}
	}
	st := tier.Stats()
	if st.Fallbacks() != 10 || st.BreakerOpened != 1 || !tier.BreakerOpen() {
		t.Errorf("stats = %+v, open %v; want 10 fallbacks and the breaker open", st, tier.BreakerOpen())
	}
	if strings.Contains(tier.redacted, "s3cret") {
		t.Errorf("redacted = %q shows the password", tier.redacted)
	}
}

func TestNew_RefusesBadURLsWithoutShowingThePassword(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"ftp://user:s3cret@host", "redis://user:s3cret@host:notaport", "::"} {
		_, err := New(Options[string]{Redis: Redis{URL: u}, TTL: time.Second, Decode: decodeString})
		if err == nil {
			t.Errorf("New(%q) succeeded, want an error", u)
			continue
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("New(%q) error %q shows the password", u, err)
		}
	}
}

// TestTier_NewsReachesOtherReplicas: a commit is announced, and another
// replica hears of it promptly.
func TestTier_NewsReachesOtherReplicas(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	heard := make(chan struct{}, 10)
	listener := newTier(t, r.URL, func(o *Options[string]) { o.OnNews = func(uint64) { heard <- struct{}{} } })
	writer := newTier(t, r.URL)
	time.Sleep(100 * time.Millisecond) // let the subscription settle
	start := time.Now()
	if _, err := writer.Load(bg(), Entry[string]{}, (&fetcher{}).fetch); err != nil {
		t.Fatal(err)
	}
	select {
	case <-heard:
		if d := time.Since(start); d > 250*time.Millisecond {
			t.Errorf("news took %v", d)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no news within 2s")
	}
	if listener.Stats().NewsReceived != 1 {
		t.Errorf("NewsReceived = %d, want 1", listener.Stats().NewsReceived)
	}
}

// waitFor polls cond for up to 5s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
	}
}

func TestBreaker(t *testing.T) {
	t.Parallel()
	b := breaker{threshold: 3, cooldown: time.Second, maxCooldown: 4 * time.Second}
	allowed := func(now time.Time) bool { ok, _ := b.allow(now); return ok }
	t0 := time.Unix(0, 0)
	for i := range 2 {
		if ok, probe := b.allow(t0); !ok || probe || b.record(t0, false, false) {
			t.Fatalf("failure %d: refused, a probe, or opened below the threshold", i+1)
		}
	}
	if !allowed(t0) || !b.record(t0, false, false) {
		t.Fatal("third failure did not open the breaker")
	}
	if allowed(t0.Add(999 * time.Millisecond)) {
		t.Error("open breaker allowed a call inside its cooldown")
	}
	// Half-open: one probe, not two.
	probeAt := t0.Add(time.Second)
	if ok, probe := b.allow(probeAt); !ok || !probe || allowed(probeAt) {
		t.Error("half-open breaker should allow exactly one probe")
	}
	b.record(probeAt, false, true) // the probe failed: twice the cooldown
	if allowed(probeAt.Add(1999*time.Millisecond)) || !allowed(probeAt.Add(2*time.Second)) {
		t.Error("a failed probe should reopen for twice the cooldown")
	}
	// News from Redis (a pub/sub message) closes it too.
	b.record(probeAt.Add(2*time.Second), false, true)
	b.alive()
	if !allowed(probeAt.Add(2*time.Second)) || b.isOpen(probeAt.Add(2*time.Second)) {
		t.Error("a message from Redis should close the breaker")
	}
	for range 3 {
		b.record(probeAt.Add(2*time.Second), false, false)
	}
	_, probe := b.allow(probeAt.Add(5 * time.Second)) // half-open again
	b.record(probeAt.Add(5*time.Second), true, probe) // the probe succeeded
	if !allowed(probeAt.Add(5*time.Second)) || b.isOpen(probeAt.Add(5*time.Second)) {
		t.Error("a successful probe should close the breaker")
	}
}

// TestBreaker_OnlyTheProbeEndsTheProbing: a slow call let through before
// the breaker opened that fails during a probe is not the probe: it must
// neither let a second probe in nor move the reopening.
func TestBreaker_OnlyTheProbeEndsTheProbing(t *testing.T) {
	t.Parallel()
	b := breaker{threshold: 3, cooldown: time.Second, maxCooldown: 4 * time.Second}
	t0 := time.Unix(0, 0)
	_, slow1 := b.allow(t0) // two calls that will take long
	ok, slow2 := b.allow(t0)
	if !ok || slow1 || slow2 {
		t.Fatal("a closed breaker refused a call or called it a probe")
	}
	for range 3 {
		b.allow(t0)
		b.record(t0, false, false)
	}
	probeAt := t0.Add(time.Second)
	if ok, probe := b.allow(probeAt); !ok || !probe {
		t.Fatal("no probe after the cooldown")
	}
	b.abandon(slow1) // its caller gave up during the probe
	if ok, _ := b.allow(probeAt); ok {
		t.Error("a straggler abandoned ended the probing: a second probe was let in")
	}
	b.record(probeAt, false, slow2) // the other fails during the probe
	if ok, _ := b.allow(probeAt); ok {
		t.Error("a straggler's failure ended the probing: a second probe was let in")
	}
	failedAt := probeAt.Add(500 * time.Millisecond)
	b.record(failedAt, false, true) // the probe fails: twice the cooldown from now
	if ok, _ := b.allow(failedAt.Add(1999 * time.Millisecond)); ok {
		t.Error("the probe's failure did not reopen the breaker for twice the cooldown from it")
	}
}

// TestTier_KeepsAConnectionReady: a replica's first call after start does
// not have to dial and handshake inside its 100ms: a connection is dialled
// before any call.
func TestTier_KeepsAConnectionReady(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	tier := newTier(t, r.URL)
	for deadline := time.Now().Add(2 * time.Second); tier.client.PoolStats().IdleConns == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no idle connection 2s after New with no call made: pool %+v", *tier.client.PoolStats())
		}
	}
	if st := tier.client.PoolStats(); st.Misses != 0 {
		t.Errorf("pool %+v: a call had to dial", *st)
	}
}

// TestTier_NewsLostWhileTheSubscriptionWasDownIsCaught: a commit whose
// message was lost (here: written without one) is heard as soon as the
// subscription comes back (here: killed by CLIENT KILL), by the one read
// that follows each (re)subscription; while the channel works, nothing
// is polled.
func TestTier_NewsLostWhileTheSubscriptionWasDownIsCaught(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	c := client(t, r)
	heard := make(chan uint64, 10)
	newTier(t, r.URL, func(o *Options[string]) { o.OnNews = func(g uint64) { heard <- g } })
	// Subscribed: confirmed by the first read's answer (no snapshot yet).
	time.Sleep(200 * time.Millisecond)
	// A commit without its message: the key as commitScript writes it.
	putSnapshot(t, c, "test:snapshot", 41, 0, testTTL, `"x"`)
	select {
	case g := <-heard:
		t.Fatalf("heard version %d with the subscription up and no message: something polls", g)
	case <-time.After(1500 * time.Millisecond):
	}
	if err := c.Do(bg(), "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case g := <-heard:
		if g != 41 {
			t.Errorf("heard version %d, want 41", g)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no news of a commit whose message was lost within 2s of the subscription's return")
	}
}

// TestTier_ANewReplicaServesWhatTheFleetServes: a replica that holds
// nothing, reading while the fleet still serves the previous snapshot (a
// newer one fetched ahead, before the switch), gets the previous one with
// the newer as Newer, so it switches with the others; after the switch it
// gets the newest. On redis-server and on miniredis (the simulator's).
func TestTier_ANewReplicaServesWhatTheFleetServes(t *testing.T) {
	t.Parallel()
	mini := miniredis.RunT(t)
	for name, url := range map[string]string{"redis-server": startRedis(t).URL, "miniredis": "redis://" + mini.Addr()} {
		t.Run(name, func(t *testing.T) {
			switchBefore := testTTL - 500*time.Millisecond
			opt := func(o *Options[string]) { o.SwitchBefore = switchBefore }
			leader := newTier(t, url, opt)
			f := &fetcher{}
			first, err := leader.Load(bg(), Entry[string]{}, f.fetch)
			if err != nil {
				t.Fatal(err)
			}
			second, err := leader.Load(bg(), first, f.fetch) // fetched ahead
			if err != nil || second.Version <= first.Version {
				t.Fatalf("second load = %+v, %v", second, err)
			}
			newcomer := newTier(t, url, opt)
			e, found, err := newcomer.Read(bg(), 0)
			if err != nil || !found || e.Version != first.Version || e.Newer != second.Version || e.Value != first.Value {
				t.Fatalf("newcomer before the switch read %+v (found %v, %v); want version %d with Newer %d", e, found, err, first.Version, second.Version)
			}
			if e, found, err := newcomer.Read(bg(), first.Version); err != nil || !found || e.Version != second.Version || e.Newer != 0 {
				t.Errorf("newcomer holding the previous read %+v (found %v, %v); want the newest, %d", e, found, err, second.Version)
			}
			time.Sleep(time.Until(first.Deadline.Add(-switchBefore)))
			if e, found, err := newcomer.Read(bg(), 0); err != nil || !found || e.Version != second.Version || e.Newer != 0 {
				t.Errorf("newcomer after the switch read %+v (found %v, %v); want the newest, %d", e, found, err, second.Version)
			}
		})
	}
}
