package fleet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
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

const testTTL = 2 * time.Second

func validJSON(b []byte) error {
	if !bytes.HasPrefix(b, []byte(`"`)) {
		return errors.New("want a JSON string")
	}
	return nil
}

func newTier(t testing.TB, url string, mod ...func(*Options)) *Tier {
	t.Helper()
	o := Options{URL: url, Prefix: "test", TTL: testTTL, Lease: 500 * time.Millisecond, Validate: validJSON}
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

// fetcher counts its calls and answers a JSON string naming the call.
type fetcher struct {
	n     atomic.Int64
	delay time.Duration
	err   error
}

func (f *fetcher) fetch(ctx context.Context) ([]byte, error) {
	n := f.n.Add(1)
	select {
	case <-time.After(f.delay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if f.err != nil {
		return nil, f.err
	}
	return fmt.Appendf(nil, `"fetch %d"`, n), nil
}

func TestTier_OneFetchForTheWholeFleet(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	f := &fetcher{delay: 50 * time.Millisecond}
	var wg sync.WaitGroup
	entries := make([]Entry, 5)
	for i := range entries {
		tier := newTier(t, r.URL)
		wg.Go(func() {
			e, err := tier.Load(context.Background(), time.Time{}, f.fetch)
			if err != nil {
				t.Errorf("replica %d: Load() error = %v", i, err)
			}
			entries[i] = e
		})
	}
	wg.Wait()
	if got := f.n.Load(); got != 1 {
		t.Errorf("5 replicas made %d upstream fetches, want 1", got)
	}
	sources := map[string]int{}
	for i, e := range entries {
		sources[e.Source]++
		if string(e.Data) != `"fetch 1"` || e.Gen != entries[0].Gen {
			t.Errorf("replica %d got %s (gen %d), want the one fetch's data, gen %d", i, e.Data, e.Gen, entries[0].Gen)
		}
	}
	if sources["leader"] != 1 || sources["shared"] != 4 {
		t.Errorf("sources = %v, want 1 leader and 4 shared", sources)
	}
}

// TestTier_DeadlineIsRedisExpiry: a reader's deadline comes from Redis's
// PTTL, never later than the writer's, whatever the readers' clocks say.
func TestTier_DeadlineIsRedisExpiry(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	leader, reader := newTier(t, r.URL), newTier(t, r.URL)
	f := &fetcher{delay: 300 * time.Millisecond}
	led, err := leader.Load(context.Background(), time.Time{}, f.fetch)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	got, found, err := reader.Read(context.Background(), time.Time{})
	if err != nil || !found {
		t.Fatalf("Read() = %v, %v", found, err)
	}
	if got.Deadline.After(led.Deadline) {
		t.Errorf("reader's deadline %v is after the writer's %v", got.Deadline, led.Deadline)
	}
	if d := led.Deadline.Sub(got.Deadline); d > 50*time.Millisecond {
		t.Errorf("reader's deadline is %v early, want within a round trip or so", d)
	}
	// The expiry in Redis is the TTL minus the fetch's own duration.
	if pttl := client(t, r).PTTL(context.Background(), "test:snapshot").Val(); pttl > testTTL-450*time.Millisecond {
		t.Errorf("PTTL = %v, want at most the TTL less the 300ms fetch and the 200ms since", pttl)
	}
}

// TestTier_FencesASlowWriter: a leader slower than its lease is overtaken;
// its late commit is refused and never replaces the newer snapshot, and it
// serves the newer snapshot too, not its own: the fleet has served that
// one already, and its own would take its readers back in time.
func TestTier_FencesASlowWriter(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	slow, fast := newTier(t, r.URL), newTier(t, r.URL)
	release := make(chan struct{})
	slowDone := make(chan Entry)
	go func() {
		e, err := slow.Load(context.Background(), time.Time{}, func(ctx context.Context) ([]byte, error) {
			<-release
			return []byte(`"slow"`), nil
		})
		if err != nil {
			t.Errorf("slow Load() error = %v", err)
		}
		slowDone <- e
	}()
	time.Sleep(600 * time.Millisecond) // past the 500ms lease
	e, err := fast.Load(context.Background(), time.Time{}, func(context.Context) ([]byte, error) { return []byte(`"fast"`), nil })
	if err != nil || e.Source != "leader" {
		t.Fatalf("fast Load() = %+v, %v; want it to take the lock over and lead", e, err)
	}
	close(release)
	slowEntry := <-slowDone
	if slowEntry.Gen != e.Gen || string(slowEntry.Data) != `"fast"` || slowEntry.Source != "shared" {
		t.Errorf("slow leader's Load() = %s (gen %d, %s), want the overtaking one's %s (gen %d) from Redis", slowEntry.Data, slowEntry.Gen, slowEntry.Source, e.Data, e.Gen)
	}
	if st := slow.Stats(); st.CommitFenced != 1 {
		t.Errorf("slow leader's stats = %+v, want its commit fenced", st)
	}
	if v := client(t, r).Get(context.Background(), "test:snapshot").Val(); !strings.Contains(v, `"fast"`) {
		t.Errorf("Redis holds %s, want the newer snapshot", v)
	}
}

// TestTier_TakesOverFromADeadLeader: a lock whose holder never commits
// (killed mid-fetch) holds the others up for one lease, no longer.
func TestTier_TakesOverFromADeadLeader(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	dead, alive := newTier(t, r.URL), newTier(t, r.URL)
	if gen, _, _, _, err := dead.lock(context.Background(), 0); err != nil || gen == 0 {
		t.Fatalf("lock() = %d, %v", gen, err)
	}
	start := time.Now()
	f := &fetcher{}
	e, err := alive.Load(context.Background(), time.Time{}, f.fetch)
	took := time.Since(start)
	if err != nil || e.Source != "leader" || f.n.Load() != 1 {
		t.Fatalf("Load() = %+v, %v after %d fetches; want it to lead once the lease passed", e, err, f.n.Load())
	}
	if took < 400*time.Millisecond || took > 1500*time.Millisecond {
		t.Errorf("took over after %v, want about the 500ms lease", took)
	}
	if st := alive.Stats(); st.WaitGaveUp != 1 || st.LockLost != 1 || st.LockWon != 1 {
		t.Errorf("stats = %+v, want one lost lock, one wait given up, one won", st)
	}
}

// TestTier_ALockNotOursIsNotWaitedOn: a lock key this protocol did not
// write (no expiry, or a lease as long as the TTL) would hold every replica
// up for ever; it is counted as invalid and the replica fetches alone.
func TestTier_ALockNotOursIsNotWaitedOn(t *testing.T) {
	t.Parallel()
	for name, set := range map[string]func(c *redis.Client) error{
		"no expiry":      func(c *redis.Client) error { return c.Set(context.Background(), "test:lock", "7", 0).Err() },
		"lease too long": func(c *redis.Client) error { return c.Set(context.Background(), "test:lock", "7", time.Hour).Err() },
		"not a number":   func(c *redis.Client) error { return c.Set(context.Background(), "test:lock", "x", time.Second).Err() },
		"wrong type":     func(c *redis.Client) error { return c.HSet(context.Background(), "test:lock", "a", "b").Err() },
	} {
		t.Run(name, func(t *testing.T) {
			r := startRedis(t)
			if err := set(client(t, r)); err != nil {
				t.Fatal(err)
			}
			tier := newTier(t, r.URL)
			f := &fetcher{}
			start := time.Now()
			e, err := tier.Load(context.Background(), time.Time{}, f.fetch)
			if err != nil || e.Source != "local" || f.n.Load() != 1 || e.Data == nil {
				t.Fatalf("Load() = %+v, %v after %d fetches; want a local fetch", e, err, f.n.Load())
			}
			if d := time.Since(start); d > 400*time.Millisecond {
				t.Errorf("Load() took %v, want no wait on a lock that is not ours", d)
			}
			if st := tier.Stats(); st.Fallbacks != 1 || st.Invalid != 1 {
				t.Errorf("stats = %+v, want the lock counted invalid and one fallback", st)
			}
		})
	}
}

// TestTier_StopsWaitingOnLocksThatNeverCommit: a lock taken again and
// again by replicas that never commit (crashing in turn) is waited on for
// two leases at most; then the replica fetches alone.
func TestTier_StopsWaitingOnLocksThatNeverCommit(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	c := client(t, r)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			c.Set(context.Background(), "test:lock", "7", 200*time.Millisecond)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	defer func() { cancel(); <-done }()
	time.Sleep(20 * time.Millisecond)
	tier := newTier(t, r.URL)
	f := &fetcher{}
	e, err := tier.Load(context.Background(), time.Time{}, f.fetch)
	if err != nil || e.Source != "local" || f.n.Load() != 1 {
		t.Fatalf("Load() = %+v, %v after %d fetches; want a local fetch", e, err, f.n.Load())
	}
	if st := tier.Stats(); st.WaitGaveUp != 3 || st.Fallbacks != 1 {
		t.Errorf("stats = %+v, want three waits given up, then a fallback", st)
	}
}

// TestTier_LoadEndsWithItsContext: a waiter whose context is cancelled
// (its server shutting down) gets the context's error, never an empty
// entry and no error.
func TestTier_LoadEndsWithItsContext(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	dead, waiter := newTier(t, r.URL), newTier(t, r.URL)
	if gen, _, _, _, err := dead.lock(context.Background(), 0); err != nil || gen == 0 {
		t.Fatalf("lock() = %d, %v", gen, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	time.AfterFunc(100*time.Millisecond, cancel)
	f := &fetcher{}
	e, err := waiter.Load(ctx, time.Time{}, f.fetch)
	if !errors.Is(err, context.Canceled) || e.Data != nil || f.n.Load() != 0 {
		t.Errorf("Load() = %+v, %v after %d fetches; want the context's error", e, err, f.n.Load())
	}
	if waiter.BreakerOpen() {
		t.Error("a caller giving up opened the breaker")
	}
}

// TestTier_ALeaseLongerThanTheLoadIsNotWaitedOut: a lock held for longer
// than a load can wait (another replica configured with a longer lease, a
// second takeover in a row) is waited on only while time is left to fetch
// alone; then the replica fetches alone instead of failing its readers.
func TestTier_ALeaseLongerThanTheLoadIsNotWaitedOut(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	// A lease of 1.5s (within the 2s TTL: a valid lock), held by a
	// replica that never commits.
	if err := client(t, r).Set(context.Background(), "test:lock", "7", 1500*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	tier := newTier(t, r.URL) // 500ms lease, so it keeps 250ms to fetch
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	f := &fetcher{}
	start := time.Now()
	e, err := tier.Load(ctx, time.Time{}, f.fetch)
	took := time.Since(start)
	if err != nil || e.Source != "local" || f.n.Load() != 1 {
		t.Fatalf("Load() = %+v, %v after %d fetches; want a local fetch before the load's end", e, err, f.n.Load())
	}
	if took < 600*time.Millisecond || took > 950*time.Millisecond {
		t.Errorf("Load() returned after %v, want it to wait about 750ms (1s less the 250ms kept to fetch)", took)
	}
	if st := tier.Stats(); st.LockLost != 1 || st.WaitGaveUp != 1 || st.Fallbacks != 1 {
		t.Errorf("stats = %+v, want one lost lock, one wait given up, one fallback", st)
	}
	// A load with less time than that left does not wait at all.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	start = time.Now()
	if e, err := tier.Load(ctx2, time.Time{}, f.fetch); err != nil || e.Source != "local" {
		t.Fatalf("Load() = %+v, %v; want a local fetch at once", e, err)
	}
	if d := time.Since(start); d > 150*time.Millisecond {
		t.Errorf("a load with 200ms left waited %v on a 1.5s lease", d)
	}
}

// TestTier_AFetchEndedByItsCallerStillReleasesTheLock: a leader whose
// context ends mid-fetch (the server shutting down) still frees the lock
// and tells the waiters, who then need not wait out the lease.
func TestTier_AFetchEndedByItsCallerStillReleasesTheLock(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	leader := newTier(t, r.URL, func(o *Options) { o.Lease = 1900 * time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{})
	fetch := func(ctx context.Context) ([]byte, error) {
		close(started)
		<-ctx.Done()
		return nil, ctx.Err()
	}
	errc := make(chan error, 1)
	go func() { _, err := leader.Load(ctx, time.Time{}, fetch); errc <- err }()
	<-started
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("leader's Load() = %v, want context.Canceled", err)
	}
	if n := client(t, r).Exists(context.Background(), "test:lock").Val(); n != 0 {
		t.Error("the lock is still held after the leader's fetch ended")
	}
	if st := leader.Stats(); st.LeaderFailures != 1 || leader.BreakerOpen() {
		t.Errorf("stats = %+v, breaker open %v; want one leader failure, breaker closed", st, leader.BreakerOpen())
	}
}

// TestTier_WaitersLearnOfALeadersFailure: waiters do not wait out the
// lease when the leader's fetch fails; they are told at once.
func TestTier_WaitersLearnOfALeadersFailure(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	leader, waiter := newTier(t, r.URL, func(o *Options) { o.Lease = 1900 * time.Millisecond }), newTier(t, r.URL)
	boom := errors.New("upstream down")
	go leader.Load(context.Background(), time.Time{}, (&fetcher{delay: 200 * time.Millisecond, err: boom}).fetch)
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	_, err := waiter.Load(context.Background(), time.Time{}, (&fetcher{}).fetch)
	if !errors.Is(err, ErrLeaderFailed) || time.Since(start) > time.Second {
		t.Errorf("waiter's Load() = %v after %v, want ErrLeaderFailed well within the 1.9s lease", err, time.Since(start))
	}
}

// TestTier_NoFetchForASnapshotCommittedSinceTheRead: a replica that read
// and found the snapshot wanting does not take the lock once another
// replica has committed a newer one (which also frees the lock): it reads
// that one instead of fetching again.
func TestTier_NoFetchForASnapshotCommittedSinceTheRead(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	ctx := context.Background()
	leader, late := newTier(t, r.URL), newTier(t, r.URL)
	_, found, seen, err := late.readSeen(ctx, time.Time{})
	if err != nil || found || seen != 0 {
		t.Fatalf("readSeen() of an empty Redis = %v, %d, %v", found, seen, err)
	}
	led, err := leader.Load(ctx, time.Time{}, (&fetcher{}).fetch)
	if err != nil {
		t.Fatal(err)
	}
	if gen, holder, leaseLeft, _, err := late.lock(ctx, seen); err != nil || gen != 0 || holder != 0 || leaseLeft != 0 {
		t.Errorf("lock() after a commit since the read = %d, %d, %v, %v; want news (all zeros)", gen, holder, leaseLeft, err)
	}
	f := &fetcher{}
	e, err := late.Load(ctx, time.Time{}, f.fetch)
	if err != nil || e.Gen != led.Gen || f.n.Load() != 0 {
		t.Errorf("Load() = gen %d, %v after %d fetches; want the committed gen %d and no fetch", e.Gen, err, f.n.Load(), led.Gen)
	}
	// Having read it, the replica may take the lock to refresh it.
	if gen, _, _, _, err := late.lock(ctx, led.Gen); err != nil || gen <= led.Gen {
		t.Errorf("lock() with the current snapshot read = %d, %v; want a new generation above %d", gen, err, led.Gen)
	}
}

// TestTier_DisagreeingKeysAreNoReasonToSpin: a snapshot whose stored
// generation disagrees with its own (not written by this protocol) makes
// every lock attempt look like news; the load gives up on the shared tier
// after a few reads instead of spinning until its deadline.
func TestTier_DisagreeingKeysAreNoReasonToSpin(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	ctx := context.Background()
	c := client(t, r)
	c.Set(ctx, "test:snapshot", `{"v":1,"gen":9,"fetched_at_ms":1,"data":"x"}`, time.Second)
	c.Set(ctx, "test:snapshot:gen", "5", 0)
	var locks atomic.Int64
	tier := newTier(t, r.URL, func(o *Options) {
		o.Observe = func(op string, _ time.Duration, _ error) {
			if op == "lock" {
				locks.Add(1)
			}
		}
	})
	f := &fetcher{}
	// Ours expires after the shared one: it is no use, so the tier tries
	// to lead.
	e, err := tier.Load(ctx, time.Now().Add(testTTL), f.fetch)
	if err != nil || e.Source != "local" || f.n.Load() != 1 {
		t.Errorf("Load() = %+v, %v after %d fetches; want a local fetch", e, err, f.n.Load())
	}
	if n := locks.Load(); n > 3 {
		t.Errorf("Load() tried the lock %d times, want at most 3", n)
	}
}

// TestTier_ReadingASnapshotAgainIsNoNews: each reading of a snapshot errs
// early by its own call's latency, but a replica that has read one never
// takes a second reading of it for a newer snapshot.
func TestTier_ReadingASnapshotAgainIsNoNews(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	ctx := context.Background()
	leader, reader := newTier(t, r.URL), newTier(t, r.URL)
	if _, err := leader.Load(ctx, time.Time{}, (&fetcher{}).fetch); err != nil {
		t.Fatal(err)
	}
	// A slow first reading (Redis paused 40ms): its deadline errs early.
	type read struct {
		e   Entry
		err error
	}
	first := make(chan read)
	r.Stop()
	go func() {
		e, _, err := reader.Read(ctx, time.Time{})
		first <- read{e, err}
	}()
	time.Sleep(40 * time.Millisecond)
	r.Cont()
	got := <-first
	if got.err != nil {
		t.Fatal(got.err)
	}
	if e, found, err := reader.Read(ctx, got.e.Deadline); err != nil || found {
		t.Errorf("Read() of the same snapshot again = found %v (deadline %v later), %v; want a miss",
			found, e.Deadline.Sub(got.e.Deadline), err)
	}
}

// TestTier_RedisLostWhileWaitingFetchesAlone: a replica waiting for
// another's fetch when Redis goes away fetches for itself, as on any other
// Redis failure, rather than failing the load.
func TestTier_RedisLostWhileWaitingFetchesAlone(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	ctx := context.Background()
	dead := newTier(t, r.URL, func(o *Options) { o.Lease = 1900 * time.Millisecond })
	waiter := newTier(t, r.URL)
	if gen, _, _, _, err := dead.lock(ctx, 0); err != nil || gen == 0 {
		t.Fatalf("lock() = %d, %v", gen, err)
	}
	go func() {
		time.Sleep(100 * time.Millisecond) // the waiter is waiting
		r.Kill()
	}()
	start := time.Now()
	f := &fetcher{}
	e, err := waiter.Load(ctx, time.Time{}, f.fetch)
	if err != nil || e.Source != "local" || f.n.Load() != 1 {
		t.Errorf("Load() = %+v, %v after %d fetches; want a local fetch", e, err, f.n.Load())
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Load() took %v, want well within the 1.9s lease", d)
	}
	if st := waiter.Stats(); st.LockLost != 1 || st.Fallbacks != 1 {
		t.Errorf("stats = %+v, want one lost lock and one fallback", st)
	}
}

// TestTier_NothingInRedisIsTrusted: whatever sits under the key, the
// replica never uses it unchecked; it counts it and fetches for itself.
func TestTier_NothingInRedisIsTrusted(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	c := client(t, r)
	ctx := context.Background()
	huge := strings.Repeat("x", 5<<20)
	tests := []struct {
		name string
		set  func() error
	}{
		{"wrong type", func() error { return c.RPush(ctx, "test:snapshot", "a").Err() }},
		{"huge", func() error { return c.Set(ctx, "test:snapshot", huge, time.Second).Err() }},
		{"not JSON", func() error { return c.Set(ctx, "test:snapshot", "<script>", time.Second).Err() }},
		{"invalid data", func() error {
			return c.Set(ctx, "test:snapshot", `{"v":1,"gen":9,"fetched_at_ms":1,"data":[1]}`, time.Second).Err()
		}},
		{"no expiry", func() error {
			return c.Set(ctx, "test:snapshot", `{"v":1,"gen":9,"fetched_at_ms":1,"data":"x"}`, 0).Err()
		}},
		{"expiry beyond the TTL", func() error {
			return c.Set(ctx, "test:snapshot", `{"v":1,"gen":9,"fetched_at_ms":1,"data":"x"}`, time.Hour).Err()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.Del(ctx, "test:snapshot")
			if err := tt.set(); err != nil {
				t.Fatal(err)
			}
			tier := newTier(t, r.URL)
			f := &fetcher{}
			e, err := tier.Load(ctx, time.Time{}, f.fetch)
			if err != nil || e.Source != "local" || f.n.Load() != 1 {
				t.Errorf("Load() = %+v, %v; want a local fetch", e, err)
			}
			if st := tier.Stats(); st.Invalid != 1 || st.Fallbacks != 1 {
				t.Errorf("stats = %+v, want 1 invalid value and 1 fallback", st)
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
	tier := newTier(t, "redis://user:s3cret-pw@"+addr+"/0")
	f := &fetcher{}
	for i := range 10 {
		start := time.Now()
		e, err := tier.Load(context.Background(), time.Time{}, f.fetch)
		if err != nil || e.Source != "local" {
			t.Fatalf("load %d = %+v, %v; want a local fetch", i, e, err)
		}
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Errorf("load %d took %v with Redis down", i, d)
		}
	}
	st := tier.Stats()
	if st.Fallbacks != 10 || st.BreakerOpened != 1 || !tier.BreakerOpen() {
		t.Errorf("stats = %+v, open %v; want 10 fallbacks and the breaker open", st, tier.BreakerOpen())
	}
	if strings.Contains(tier.Redacted(), "s3cret") {
		t.Errorf("Redacted() = %q shows the password", tier.Redacted())
	}
}

func TestNew_RefusesBadURLsWithoutShowingThePassword(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"ftp://user:s3cret@host", "redis://user:s3cret@host:notaport", "::"} {
		_, err := New(Options{URL: u, TTL: time.Second, Lease: time.Second, Validate: validJSON})
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
	listener := newTier(t, r.URL, func(o *Options) { o.OnNews = func(uint64) { heard <- struct{}{} } })
	writer := newTier(t, r.URL)
	time.Sleep(100 * time.Millisecond) // let the subscription settle
	start := time.Now()
	if _, err := writer.Load(context.Background(), time.Time{}, (&fetcher{}).fetch); err != nil {
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
