package cache_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/movies-dev/movies/pkg/cache"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const ttl = time.Minute

// counter is a loader returning 1, 2, 3... and counting its calls.
type counter struct{ n atomic.Int64 }

func (c *counter) Load(ctx context.Context, _ time.Time) (int64, error) {
	return c.n.Add(1), nil
}

func mustGet[V any](t *testing.T, c *cache.Cache[V]) cache.Snapshot[V] {
	t.Helper()
	s, err := c.Get(context.Background())
	if err != nil {
		t.Fatalf("Get() error = %v", err)
	}
	return s
}

// TestCache_Freshness pins when a value is served from the cache and when it
// is loaded again, in virtual time, including the exact TTL boundary.
func TestCache_Freshness(t *testing.T) {
	tests := []struct {
		name      string
		wait      time.Duration // between the first and second Get
		wantValue int64
		wantStats cache.Stats
	}{
		{"hit right away", 0, 1, cache.Stats{Hits: 1, Misses: 1, Loads: 1}},
		{"hit just before TTL", ttl - time.Nanosecond, 1, cache.Stats{Hits: 1, Misses: 1, Loads: 1}},
		{"miss exactly at TTL", ttl, 2, cache.Stats{Misses: 2, Loads: 2}},
		{"miss after TTL", ttl + time.Hour, 2, cache.Stats{Misses: 2, Loads: 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c := cache.New[int64](&counter{}, cache.Options{TTL: ttl})
				first := mustGet(t, c)
				if first.Value != 1 || !first.Fetched.Equal(time.Now()) {
					t.Fatalf("first Get() = %+v, want value 1 fetched now", first)
				}
				time.Sleep(tt.wait)
				if got := mustGet(t, c); got.Value != tt.wantValue {
					t.Errorf("second Get() = %d, want %d", got.Value, tt.wantValue)
				}
				if got := c.Stats(); got != tt.wantStats {
					t.Errorf("Stats() = %+v, want %+v", got, tt.wantStats)
				}
			})
		})
	}
}

// TestCache_AgeCountsFromLoadStart: a slow load's value is as old as the
// moment the load started, not the moment it finished.
func TestCache_AgeCountsFromLoadStart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		var gotStarted time.Time
		l := cache.LoaderFunc[int](func(ctx context.Context, started time.Time) (int, error) {
			gotStarted = started
			time.Sleep(10 * time.Second)
			return 1, nil
		})
		c := cache.New[int](l, cache.Options{TTL: ttl})
		s := mustGet(t, c)
		if !s.Fetched.Equal(start) || !gotStarted.Equal(start) {
			t.Fatalf("Fetched = %v, loader started = %v, want both %v", s.Fetched, gotStarted, start)
		}
		time.Sleep(ttl - 10*time.Second) // now exactly TTL after the load started
		mustGet(t, c)
		if got := c.Stats().Loads; got != 2 {
			t.Errorf("Loads = %d, want 2: the value expired TTL after its load started", got)
		}
	})
}

func TestCache_CoalescesConcurrentMisses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		var loads atomic.Int64
		l := cache.LoaderFunc[string](func(ctx context.Context, _ time.Time) (string, error) {
			loads.Add(1)
			<-release
			return "v", nil
		})
		c := cache.New[string](l, cache.Options{TTL: ttl})

		const n = 64
		var wg sync.WaitGroup
		errs := make(chan error, n)
		served := make(chan cache.Served, n)
		for range n {
			wg.Go(func() {
				s, err := c.Get(context.Background())
				if err == nil && s.Value != "v" {
					err = errors.New("wrong value " + s.Value)
				}
				errs <- err
				served <- s.Served
			})
		}
		synctest.Wait() // every caller is now blocked in Get
		close(release)
		wg.Wait()
		close(errs)
		close(served)
		for err := range errs {
			if err != nil {
				t.Errorf("Get() error = %v", err)
			}
		}
		if got := loads.Load(); got != 1 {
			t.Errorf("loads = %d, want 1", got)
		}
		want := cache.Stats{Misses: n, Coalesced: n - 1, Loads: 1}
		if got := c.Stats(); got != want {
			t.Errorf("Stats() = %+v, want %+v", got, want)
		}
		// Each caller is told how it was served: one led the load, the
		// others joined it; the next is a hit.
		count := map[cache.Served]int{}
		for s := range served {
			count[s]++
		}
		if count[cache.Missed] != 1 || count[cache.Collapsed] != n-1 {
			t.Errorf("served %v, want 1 Missed and %d Collapsed", count, n-1)
		}
		if s := mustGet(t, c); s.Served != cache.Hit {
			t.Errorf("warm Get served %v, want Hit", s.Served)
		}
	})
}

// TestCache_LeaderCancellation: the caller that started a load gives up; the
// load goes on for the others and is not cancelled.
func TestCache_LeaderCancellation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		var loadErr error
		l := cache.LoaderFunc[int](func(ctx context.Context, _ time.Time) (int, error) {
			<-release
			loadErr = ctx.Err()
			return 7, nil
		})
		c := cache.New[int](l, cache.Options{TTL: ttl})

		leaderCtx, cancelLeader := context.WithCancel(context.Background())
		leaderErr := make(chan error, 1)
		go func() {
			_, err := c.Get(leaderCtx)
			leaderErr <- err
		}()
		synctest.Wait() // the leader is in the flight
		joined := make(chan cache.Snapshot[int], 1)
		go func() {
			s, err := c.Get(context.Background())
			if err != nil {
				t.Errorf("joiner Get() error = %v", err)
			}
			joined <- s
		}()
		synctest.Wait()
		cancelLeader()
		if err := <-leaderErr; !errors.Is(err, context.Canceled) {
			t.Errorf("leader Get() error = %v, want context.Canceled", err)
		}
		close(release)
		if s := <-joined; s.Value != 7 {
			t.Errorf("joiner Get() = %d, want 7", s.Value)
		}
		if loadErr != nil {
			t.Errorf("load saw ctx.Err() = %v, want nil: it must not inherit the leader's cancellation", loadErr)
		}
		if got := mustGet(t, c); got.Value != 7 {
			t.Errorf("Get() after = %d, want the cached 7", got.Value)
		}
	})
}

func TestCache_Failures(t *testing.T) {
	errUpstream := errors.New("upstream down")
	tests := []struct {
		name    string
		fail    func(ctx context.Context) (int, error)
		opts    cache.Options
		wantErr func(error) bool
	}{
		{
			name:    "error",
			fail:    func(context.Context) (int, error) { return 0, errUpstream },
			wantErr: func(err error) bool { return errors.Is(err, errUpstream) },
		},
		{
			name:    "panic",
			fail:    func(context.Context) (int, error) { panic("boom") },
			wantErr: func(err error) bool { return err != nil && strings.Contains(err.Error(), "panicked: boom") },
		},
		{
			name: "load timeout",
			fail: func(ctx context.Context) (int, error) {
				<-ctx.Done()
				return 0, ctx.Err()
			},
			opts:    cache.Options{LoadTimeout: 5 * time.Second},
			wantErr: func(err error) bool { return errors.Is(err, context.DeadlineExceeded) },
		},
		{
			name: "loader ignores its deadline past the TTL",
			fail: func(ctx context.Context) (int, error) {
				time.Sleep(2 * ttl)
				return 1, nil
			},
			wantErr: func(err error) bool { return errors.Is(err, cache.ErrExpired) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var calls atomic.Int64
				gate := make(chan struct{})
				l := cache.LoaderFunc[int](func(ctx context.Context, _ time.Time) (int, error) {
					if calls.Add(1) == 1 {
						<-gate // until every waiter has joined
						return tt.fail(ctx)
					}
					return 42, nil
				})
				opts := tt.opts
				opts.TTL = ttl
				c := cache.New[int](l, opts)

				// Every waiter of the failing load gets the error.
				const n = 4
				errs := make(chan error, n)
				for range n {
					go func() {
						_, err := c.Get(context.Background())
						errs <- err
					}()
				}
				synctest.Wait()
				close(gate)
				for range n {
					err := <-errs
					if !tt.wantErr(err) {
						t.Errorf("Get() error = %v, want the %s", err, tt.name)
					}
					var ue *cache.UnavailableError
					if !errors.As(err, &ue) || ue.Backoff {
						t.Errorf("Get() error = %#v, want an *UnavailableError from a load", err)
					}
				}
				if _, ok := c.Peek(); ok {
					t.Errorf("Peek() found a value after a failed load")
				}
				// Nothing was cached and the key is not stuck: once the
				// backoff has passed, the next Get loads.
				time.Sleep(5 * time.Second)
				if got := mustGet(t, c); got.Value != 42 {
					t.Errorf("Get() after failure = %d, want 42", got.Value)
				}
				if got := c.Stats(); got.Loads != 2 || got.LoadErrors != 1 {
					t.Errorf("Stats() = %+v, want 2 loads, 1 error", got)
				}
			})
		})
	}
}

// TestCache_NeverServesExpiredAfterFailure: once the value expires, a failed
// reload is an error, never the old value.
func TestCache_NeverServesExpiredAfterFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var fail atomic.Bool
		l := cache.LoaderFunc[int](func(ctx context.Context, _ time.Time) (int, error) {
			if fail.Load() {
				return 0, errors.New("down")
			}
			return 1, nil
		})
		c := cache.New[int](l, cache.Options{TTL: ttl})
		mustGet(t, c)
		fail.Store(true)
		time.Sleep(ttl)
		if s, err := c.Get(context.Background()); err == nil {
			t.Fatalf("Get() = %+v, nil after expiry with the upstream down, want an error", s)
		}
		if s, ok := c.Peek(); !ok || s.Value != 1 {
			t.Errorf("Peek() = %+v, %v, want the last good value for reporting", s, ok)
		}
	})
}

// TestCache_WaiterGivesUpAlone: a joiner whose context ends stops waiting
// without failing the load for the leader.
func TestCache_WaiterGivesUpAlone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		l := cache.LoaderFunc[int](func(ctx context.Context, _ time.Time) (int, error) {
			<-release
			return 3, nil
		})
		c := cache.New[int](l, cache.Options{TTL: ttl})
		leader := make(chan int, 1)
		go func() {
			s, _ := c.Get(context.Background())
			leader <- s.Value
		}()
		synctest.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if _, err := c.Get(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("joiner Get() error = %v, want context.DeadlineExceeded", err)
		}
		close(release)
		if got := <-leader; got != 3 {
			t.Errorf("leader Get() = %d, want 3", got)
		}
	})
}

func TestNew_PanicsOnNonPositiveTTL(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("New with TTL 0 did not panic")
		}
	}()
	cache.New[int64](&counter{}, cache.Options{})
}

// failing is a loader that fails while down is set, counting its loads.
type failing struct {
	down  atomic.Bool
	loads atomic.Int64
	err   error
}

func (f *failing) Load(ctx context.Context, _ time.Time) (int, error) {
	f.loads.Add(1)
	if f.down.Load() {
		if f.err != nil {
			return 0, f.err
		}
		return 0, errors.New("down")
	}
	return 1, nil
}

func TestCache_BacksOffAfterFailures(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &failing{}
		f.down.Store(true)
		c := cache.New[int](f, cache.Options{TTL: ttl, Rand: func() float64 { return 0 }}) // no jitter: exact windows

		// Backoff doubles per consecutive failure from 250ms up to the 5s cap.
		ms := time.Millisecond
		for i, want := range []time.Duration{250 * ms, 500 * ms, time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second} {
			_, err := c.Get(context.Background())
			var ue *cache.UnavailableError
			if !errors.As(err, &ue) || ue.Backoff {
				t.Fatalf("failure %d: Get() error = %v, want a load failure", i+1, err)
			}
			if got := ue.RetryAt.Sub(time.Now()); got != want {
				t.Errorf("failure %d: retry in %v, want %v", i+1, got, want)
			}
			// Inside the window: an immediate error, no load.
			time.Sleep(want - time.Nanosecond)
			loads := f.loads.Load()
			_, err = c.Get(context.Background())
			if !errors.As(err, &ue) || !ue.Backoff {
				t.Errorf("in backoff: Get() error = %v, want a Backoff UnavailableError", err)
			}
			if f.loads.Load() != loads {
				t.Errorf("in backoff: a load ran")
			}
			time.Sleep(time.Nanosecond)
		}
		// Success resets the backoff.
		f.down.Store(false)
		mustGet(t, c)
		f.down.Store(true)
		time.Sleep(ttl)
		_, err := c.Get(context.Background())
		var ue *cache.UnavailableError
		if !errors.As(err, &ue) || ue.RetryAt.Sub(time.Now()) != 250*time.Millisecond {
			t.Errorf("after a success the backoff should start over at 250ms, got %v", err)
		}
		if got := c.Stats(); got.Rejected != 7 || got.LoadErrors != 8 {
			t.Errorf("Stats() = %+v, want 7 rejected, 8 load errors", got)
		}
	})
}

// TestCache_OutageLoadRateIsBounded: however many callers hammer a dead
// source, it sees at most one load per backoff window.
func TestCache_OutageLoadRateIsBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &failing{}
		f.down.Store(true)
		const minBackoff = 250 * time.Millisecond
		c := cache.New[int](f, cache.Options{TTL: ttl})
		const callers, period = 50, 30 * time.Second
		var wg sync.WaitGroup
		for range callers {
			wg.Go(func() {
				for end := time.Now().Add(period); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
					c.Get(context.Background())
				}
			})
		}
		wg.Wait()
		// Jitter shortens a wait to no less than half of it.
		if max := int64(period/(minBackoff/2)) + 1; f.loads.Load() > max {
			t.Errorf("%d loads in %v with %d callers, want at most %d", f.loads.Load(), period, callers, max)
		}
		// Without jitter: 0, 0.25, 0.75, 1.75, 3.75, 7.75, then every 5s.
		if f.loads.Load() < 10 {
			t.Errorf("%d loads in %v: the cache stopped trying", f.loads.Load(), period)
		}
	})
}

func TestCache_HonoursRetryAfter(t *testing.T) {
	errSlowDown := errors.New("429")
	tests := []struct {
		name       string
		retryAfter time.Duration
		want       time.Duration
	}{
		{"longer than the backoff", 10 * time.Second, 10 * time.Second},
		{"capped", time.Hour, 30 * time.Second},
		// The source's word, not the cache's own backoff on top: replicas
		// sharing a backoff end it together, when the source said.
		{"shorter than the backoff", time.Millisecond, time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := &failing{err: errSlowDown}
				f.down.Store(true)
				c := cache.New[int](f, cache.Options{TTL: ttl, Rand: func() float64 { return 0 },
					RetryAfter: func(err error) time.Duration {
						if errors.Is(err, errSlowDown) {
							return tt.retryAfter
						}
						return 0
					}})
				_, err := c.Get(context.Background())
				var ue *cache.UnavailableError
				if !errors.As(err, &ue) {
					t.Fatalf("Get() error = %v", err)
				}
				if got := ue.RetryAt.Sub(time.Now()); got != tt.want {
					t.Errorf("retry in %v, want %v", got, tt.want)
				}
			})
		})
	}
}

func TestCache_Jitter(t *testing.T) {
	for _, r := range []float64{0, 0.5, 0.999} {
		synctest.Test(t, func(t *testing.T) {
			f := &failing{}
			f.down.Store(true)
			c := cache.New[int](f, cache.Options{TTL: ttl, Rand: func() float64 { return r }})
			_, err := c.Get(context.Background())
			var ue *cache.UnavailableError
			if !errors.As(err, &ue) {
				t.Fatalf("Get() error = %v, want an *UnavailableError", err)
			}
			got := ue.RetryAt.Sub(time.Now())
			const first = 250 * time.Millisecond
			if want := first - time.Duration(r*float64(first/2)); got != want || got < first/2 {
				t.Errorf("Rand()=%v: retry in %v, want %v (never under half the backoff)", r, got, want)
			}
		})
	}
}

func TestCache_StaleIfError(t *testing.T) {
	const stale = 30 * time.Second
	tests := []struct {
		name      string
		opts      cache.Options
		wait      time.Duration // after the good load
		wantStale bool
	}{
		{"off by default", cache.Options{}, ttl, false},
		{"within the stale window", cache.Options{StaleIfError: stale}, ttl + stale - time.Nanosecond, true},
		{"past the stale window", cache.Options{StaleIfError: stale}, ttl + stale, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := &failing{}
				opts := tt.opts
				opts.TTL = ttl
				c := cache.New[int](f, opts)
				good := mustGet(t, c)
				f.down.Store(true)
				time.Sleep(tt.wait)
				// The load fails, then a second call falls in the backoff:
				// both answer the same way.
				for _, phase := range []string{"failed load", "backoff"} {
					s, err := c.Get(context.Background())
					if tt.wantStale {
						if err != nil || !s.Stale || s.Value != 1 || !s.Fetched.Equal(good.Fetched) {
							t.Errorf("%s: Get() = %+v, %v; want the last value marked stale", phase, s, err)
						}
					} else if err == nil {
						t.Errorf("%s: Get() = %+v, nil; want an error, nothing past the promise", phase, s)
					}
				}
				wantStale := uint64(0)
				if tt.wantStale {
					wantStale = 2
				}
				if got := c.Stats().Stale; got != wantStale {
					t.Errorf("Stats().Stale = %d, want %d", got, wantStale)
				}
				// A fresh value is never marked stale.
				f.down.Store(false)
				time.Sleep(5 * time.Second)
				if s := mustGet(t, c); s.Stale {
					t.Errorf("fresh Get() = %+v marked stale", s)
				}
			})
		})
	}
}

// slowLoader takes d of virtual time per load and can be made to fail.
type slowLoader struct {
	d     time.Duration
	fail  atomic.Bool
	loads atomic.Int64
}

func (l *slowLoader) Load(ctx context.Context, started time.Time) (time.Time, error) {
	l.loads.Add(1)
	time.Sleep(l.d)
	if l.fail.Load() {
		return time.Time{}, errors.New("down")
	}
	return started, nil
}

// TestCache_RefreshAhead_NobodyWaitsUnderSteadyTraffic: with traffic in the
// refresh window, loads happen in the background and no caller waits
// after the first.
func TestCache_RefreshAhead_NobodyWaitsUnderSteadyTraffic(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ttl, loadTime = 2 * time.Second, 200 * time.Millisecond
		l := &slowLoader{d: loadTime}
		c := cache.New[time.Time](l, cache.Options{TTL: ttl, RefreshAhead: true})
		mustGet(t, c) // cold: waits for the first load
		for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
			start := time.Now()
			s := mustGet(t, c)
			if waited := time.Since(start); waited > 0 {
				t.Fatalf("Get() waited %v at %v", waited, start)
			}
			if s.Age(start) >= ttl {
				t.Fatalf("Get() returned a value %v old", s.Age(start))
			}
		}
		c.Close()
		st := c.Stats()
		if st.Misses != 1 || st.Early == 0 {
			t.Errorf("Stats() = %+v, want 1 miss and early refreshes", st)
		}
		// Window: 4 × 200ms, at least 2s, at most half the 2s TTL: 1s, so
		// a load about every second: the cost of never waiting is bounded.
		if max := int64(20*time.Second/(ttl-time.Second)) + 2; l.loads.Load() > max {
			t.Errorf("%d loads in 20s, want at most %d", l.loads.Load(), max)
		}
	})
}

func TestCache_RefreshAhead_IdleLoadsNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := &slowLoader{d: 100 * time.Millisecond}
		c := cache.New[time.Time](l, cache.Options{TTL: 2 * time.Second, RefreshAhead: true})
		mustGet(t, c)
		time.Sleep(time.Hour)
		synctest.Wait()
		if got := l.loads.Load(); got != 1 {
			t.Errorf("%d loads after an idle hour, want 1", got)
		}
	})
}

func TestCache_RefreshAhead_OneBackgroundLoadPerBurst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := &slowLoader{d: 100 * time.Millisecond}
		c := cache.New[time.Time](l, cache.Options{TTL: 2 * time.Second, RefreshAhead: true})
		mustGet(t, c)
		time.Sleep(1800 * time.Millisecond) // age 1.8s: inside the window (half the 2s TTL)
		for range 100 {
			mustGet(t, c)
		}
		time.Sleep(time.Second) // the refresh takes 100ms
		synctest.Wait()
		if st := c.Stats(); st.Early != 1 || l.loads.Load() != 2 {
			t.Errorf("Stats() = %+v, loads %d; want 1 early refresh, 2 loads", st, l.loads.Load())
		}
		if s := mustGet(t, c); s.Age(time.Now()) >= 1500*time.Millisecond {
			t.Errorf("after the refresh the value is %v old, want the new one", s.Age(time.Now()))
		}
		c.Close() // that hit is in the new value's window too: end its refresh
	})
}

// TestCache_RefreshAhead_FailureServesNothingStale: a failed early refresh
// leaves the value to expire at its TTL like any other.
func TestCache_RefreshAhead_FailureServesNothingStale(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ttl = 2 * time.Second
		l := &slowLoader{d: 100 * time.Millisecond}
		c := cache.New[time.Time](l, cache.Options{TTL: ttl, RefreshAhead: true})
		first := mustGet(t, c)
		l.fail.Store(true)
		var served, failed int
		for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
			s, err := c.Get(context.Background())
			if err != nil {
				failed++
				continue
			}
			served++
			if s.Value != first.Value || s.Age(time.Now()) >= ttl {
				t.Fatalf("Get() = value from %v, %v old; want only the first, fresh", s.Value, s.Age(time.Now()))
			}
		}
		c.Close()
		if served == 0 || failed == 0 {
			t.Errorf("served %d, failed %d: want the fresh value until the TTL, errors after", served, failed)
		}
	})
}

// TestCache_CloseEndsLoads: a load nobody waits for any more (an early
// refresh, or one whose callers gave up) ends at Close, and Close waits for it.
func TestCache_CloseEndsLoads(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var sawCancel atomic.Bool
		l := cache.LoaderFunc[int](func(ctx context.Context, _ time.Time) (int, error) {
			<-ctx.Done()
			sawCancel.Store(errors.Is(ctx.Err(), context.Canceled))
			return 0, ctx.Err()
		})
		c := cache.New[int](l, cache.Options{TTL: ttl})
		ctx, cancel := context.WithCancel(context.Background())
		go c.Get(ctx)
		synctest.Wait()
		cancel() // the only caller gives up; the load goes on
		synctest.Wait()
		start := time.Now()
		c.Close()
		if !sawCancel.Load() || time.Since(start) != 0 {
			t.Errorf("load cancelled %v after %v, want cancelled by Close at once", sawCancel.Load(), time.Since(start))
		}
		if _, err := c.Get(context.Background()); !errors.Is(err, context.Canceled) {
			t.Errorf("Get() after Close = %v, want a cancelled load", err)
		}
	})
}

// dated is a DatedLoader whose values are already some age old, as one
// another process shared.
type dated struct{ age time.Duration }

func (d dated) Load(context.Context, time.Time) (int, error) { panic("Load called on a SharedLoader") }

func (d dated) LoadShared(_ context.Context, r cache.Request[int]) (cache.Snapshot[int], error) {
	return cache.Snapshot[int]{Value: 7, Fetched: r.Started.Add(-d.age), Version: 1}, nil
}

// TestCache_SharedLoaderAgesFromItsFetch: a value shared by another process
// expires one TTL after that process's fetch, not after this load.
func TestCache_SharedLoaderAgesFromItsFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cache.New[int](dated{age: 40 * time.Second}, cache.Options{TTL: ttl})
		s := mustGet(t, c)
		if got := s.Age(time.Now()); got != 40*time.Second {
			t.Errorf("Age() = %v, want the 40s it had when shared", got)
		}
		time.Sleep(20 * time.Second)
		mustGet(t, c)
		if st := c.Stats(); st.Loads != 2 {
			t.Errorf("Stats() = %+v, want a second load exactly one TTL after the first fetch", st)
		}
		// Already past the TTL when shared: never served.
		old := cache.New[int](dated{age: ttl}, cache.Options{TTL: ttl})
		if _, err := old.Get(context.Background()); !errors.Is(err, cache.ErrExpired) {
			t.Errorf("Get() of a value shared past its TTL = %v, want ErrExpired", err)
		}
	})
}

// versions is a SharedLoader: a load returns the next local version; an
// adoption returns the version it was asked for, unless nothing newer
// than have is "in the fleet" (shared).
type versions struct {
	mu      sync.Mutex
	next    uint64 // what a load (a fetch) produces next
	shared  uint64 // the newest version another process made
	release chan struct{}
	loads   []cache.Request[int64]
}

func (v *versions) Load(context.Context, time.Time) (int64, error) {
	panic("Load called on a SharedLoader")
}

func (v *versions) LoadShared(_ context.Context, r cache.Request[int64]) (cache.Snapshot[int64], error) {
	if v.release != nil && r.Adopt == 0 {
		<-v.release
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.loads = append(v.loads, r)
	if r.Adopt != 0 {
		if v.shared < r.Adopt || (r.Have != nil && r.Have.Version >= v.shared) {
			return cache.Snapshot[int64]{}, cache.ErrNotNewer
		}
		return cache.Snapshot[int64]{Value: int64(v.shared), Fetched: r.Started, Version: v.shared}, nil
	}
	v.next++
	return cache.Snapshot[int64]{Value: int64(v.next), Fetched: r.Started, Version: v.next}, nil
}

// TestCache_AdoptTakesANewerVersionOnce: news of a newer version replaces
// the value without a Get, and news of one the cache holds costs nothing.
func TestCache_AdoptTakesANewerVersionOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := &versions{}
		c := cache.New[int64](v, cache.Options{TTL: ttl})
		defer c.Close()
		mustGet(t, c) // version 1
		v.mu.Lock()
		v.shared = 5
		v.mu.Unlock()
		c.Adopt(5)
		synctest.Wait()
		// Taken at once, served from the switch: a second before the
		// served one's deadline.
		if s := mustGet(t, c); s.Version != 1 {
			t.Fatalf("Get() right after Adopt(5) = version %d, want 1 until the switch", s.Version)
		}
		time.Sleep(ttl - time.Second)
		if s := mustGet(t, c); s.Version != 5 {
			t.Fatalf("Get() at the switch = version %d, want 5", s.Version)
		}
		for range 3 {
			c.Adopt(5)
			c.Adopt(4)
			synctest.Wait()
		}
		if len(v.loads) != 2 {
			t.Errorf("loads = %d, want 2: news of a version held must not load", len(v.loads))
		}
		if st := c.Stats(); st.Loads != 1 || st.Adopted != 1 || st.Hits != 2 {
			t.Errorf("Stats() = %+v, want 1 load, 1 adoption, 2 hits", st)
		}
	})
}

// TestCache_AdoptJoinsARunningLoad: news that arrives while a load runs
// (the leader hears its own commit before it finished preparing) joins
// that load rather than preparing the version a second time.
func TestCache_AdoptJoinsARunningLoad(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := &versions{release: make(chan struct{})}
		c := cache.New[int64](v, cache.Options{TTL: ttl})
		defer c.Close()
		go func() {
			if _, err := c.Get(context.Background()); err != nil {
				t.Error(err)
			}
		}()
		synctest.Wait() // the load runs, and waits
		c.Adopt(1)      // its own version, announced
		synctest.Wait()
		close(v.release)
		synctest.Wait()
		if len(v.loads) != 1 {
			t.Errorf("loads = %d (%+v), want 1: the adoption joins the running load", len(v.loads), v.loads)
		}
	})
}

// TestCache_AnAdoptionThatFindsNothingIsNoFailure: an adoption that finds
// nothing newer starts no backoff, and a miss that joined it loads.
func TestCache_AnAdoptionThatFindsNothingIsNoFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := &versions{}
		c := cache.New[int64](v, cache.Options{TTL: ttl})
		defer c.Close()
		c.Adopt(9) // nothing shared: ErrNotNewer
		synctest.Wait()
		s := mustGet(t, c)
		if s.Version != 1 {
			t.Errorf("Get() = version %d, want 1 loaded after a fruitless adoption", s.Version)
		}
		if st := c.Stats(); st.LoadErrors != 0 || st.Rejected != 0 {
			t.Errorf("Stats() = %+v, want no failure and no backoff", st)
		}
	})
}

// TestCache_AdoptionEndsABackoff: a replica in backoff after an outage
// takes a fresh value another replica announced, and serves it at once
// rather than answering errors until its own backoff ends.
func TestCache_AdoptionEndsABackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fail := true
		v := &versions{}
		l := &failingVersions{versions: v, fail: &fail}
		c := cache.New[int64](l, cache.Options{TTL: ttl, RetryAfter: func(error) time.Duration { return 10 * time.Second }})
		defer c.Close()
		if _, err := c.Get(context.Background()); err == nil {
			t.Fatal("Get() during the outage succeeded")
		}
		v.mu.Lock()
		v.shared = 3
		v.mu.Unlock()
		c.Adopt(3)
		synctest.Wait()
		s, err := c.Get(context.Background())
		if err != nil || s.Version != 3 {
			t.Fatalf("Get() after the adoption = %+v, %v; want version 3 during the backoff", s, err)
		}
	})
}

// TestCache_AnAdoptionLeavesTheRetryAfterToFetches: a value another
// process made is served during a Retry-After, but once it expires this
// process still fetches nothing before the source's wait ends: its loads
// are asked only to take what others made (Request.Hold), and when there is
// nothing, Get answers with the source's failure and its end, as a lone
// process would have (seed 87943: a replica fetched 7 s into the 30 s the
// upstream had asked of it, once another replica's snapshot had ended its
// backoff). After the wait it fetches again.
func TestCache_AnAdoptionLeavesTheRetryAfterToFetches(t *testing.T) {
	const ttl = 4 * time.Second // shorter than the wait
	synctest.Test(t, func(t *testing.T) {
		var (
			mu      sync.Mutex
			shared  int64 // what another process made, 0 for nothing
			fetches int
			holds   []time.Time
		)
		errSlowDown := errors.New("503, Retry-After: 10")
		fail := true
		c := cache.New[int64](sharedVersions(func(r cache.Request[int64]) (cache.Snapshot[int64], error) {
			mu.Lock()
			defer mu.Unlock()
			if r.Adopt != 0 || !r.Hold.IsZero() {
				holds = append(holds, r.Hold)
				if shared == 0 || (r.Have != nil && r.Have.Version >= uint64(shared)) {
					return cache.Snapshot[int64]{}, cache.ErrNotNewer
				}
				return cache.Snapshot[int64]{Value: shared, Version: uint64(shared), Fetched: time.Now()}, nil
			}
			fetches++
			if fail {
				return cache.Snapshot[int64]{}, errSlowDown
			}
			return cache.Snapshot[int64]{Value: 100, Version: 100}, nil
		}), cache.Options{TTL: ttl, RetryAfter: func(err error) time.Duration {
			if errors.Is(err, errSlowDown) {
				return 10 * time.Second
			}
			return 0
		}})
		defer c.Close()
		asked := time.Now()
		if _, err := c.Get(context.Background()); !errors.Is(err, errSlowDown) {
			t.Fatalf("Get() = %v, want the source's Retry-After", err)
		}
		mu.Lock()
		shared, fail = 3, false
		mu.Unlock()
		c.Adopt(3)
		synctest.Wait()
		if s, err := c.Get(context.Background()); err != nil || s.Value != 3 {
			t.Fatalf("Get() after the adoption = %+v, %v; want what the other process made", s, err)
		}
		time.Sleep(ttl) // it expires, 10 s not yet over
		_, err := c.Get(context.Background())
		var ue *cache.UnavailableError
		if !errors.As(err, &ue) || !errors.Is(err, errSlowDown) || !ue.RetryAt.Equal(asked.Add(10*time.Second)) {
			t.Fatalf("Get() after it expired = %v; want the source's failure until %v", err, asked.Add(10*time.Second))
		}
		mu.Lock()
		if fetches != 1 || len(holds) < 2 || !holds[len(holds)-1].Equal(asked.Add(10*time.Second)) {
			t.Errorf("fetches %d, holds %v: want the one fetch that met the Retry-After, and a load told to hold until %v", fetches, holds, asked.Add(10*time.Second))
		}
		mu.Unlock()
		time.Sleep(time.Until(asked.Add(10 * time.Second)))
		if s, err := c.Get(context.Background()); err != nil || s.Value != 100 {
			t.Fatalf("Get() once the wait ended = %+v, %v; want a fetch of its own", s, err)
		}
	})
}

// sharedVersions is a SharedLoader of int64 from a func.
type sharedVersions func(cache.Request[int64]) (cache.Snapshot[int64], error)

func (f sharedVersions) Load(context.Context, time.Time) (int64, error) { panic("not a Loader") }
func (f sharedVersions) LoadShared(_ context.Context, r cache.Request[int64]) (cache.Snapshot[int64], error) {
	return f(r)
}

type failingVersions struct {
	*versions
	fail *bool
}

func (f *failingVersions) LoadShared(ctx context.Context, r cache.Request[int64]) (cache.Snapshot[int64], error) {
	if *f.fail && r.Adopt == 0 {
		return cache.Snapshot[int64]{}, errors.New("upstream down")
	}
	return f.versions.LoadShared(ctx, r)
}

// TestCache_VersionsDecideWhatIsNewer: a load that returns an older
// version than the one held (a read that lagged) does not replace it.
func TestCache_VersionsDecideWhatIsNewer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var n atomic.Int64
		vers := []uint64{5, 3}
		l := sharedFunc(func(_ context.Context, r cache.Request[int]) (cache.Snapshot[int], error) {
			i := n.Add(1) - 1
			// The second is fetched later (a later deadline) but is an
			// older version: versions decide, not deadlines.
			return cache.Snapshot[int]{Value: int(vers[i]), Fetched: r.Started, Version: vers[i]}, nil
		})
		c := cache.New[int](l, cache.Options{TTL: ttl, RefreshAhead: true})
		defer c.Close()
		mustGet(t, c)
		time.Sleep(ttl - time.Second) // in the refresh window
		mustGet(t, c)
		synctest.Wait()
		if s := mustGet(t, c); s.Version != 5 {
			t.Errorf("Get() = version %d, want 5 kept over the older 3", s.Version)
		}
	})
}

type sharedFunc func(context.Context, cache.Request[int]) (cache.Snapshot[int], error)

func (f sharedFunc) Load(context.Context, time.Time) (int, error) { panic("not a Loader") }
func (f sharedFunc) LoadShared(ctx context.Context, r cache.Request[int]) (cache.Snapshot[int], error) {
	return f(ctx, r)
}

// TestCache_ReplicasSwitchTogether: a newer value loaded ahead (an early
// refresh, or news) is served from one instant computed from the old
// value's deadline, switchBefore before it, not from whenever each
// replica happened to load it; a value that comes later than that instant
// is served at once. A switch any earlier would let replicas that load at
// different moments disagree; any later would leave readers a value that
// caches downstream cannot keep (less than a whole second left).
func TestCache_ReplicasSwitchTogether(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := &versions{}
		c := cache.New[int64](v, cache.Options{TTL: ttl, RefreshAhead: true})
		defer c.Close()
		first := mustGet(t, c)
		time.Sleep(ttl - 2*time.Second) // the refresh window opens
		mustGet(t, c)                   // starts the early refresh
		synctest.Wait()
		switchAt := first.Fetched.Add(ttl - time.Second)
		time.Sleep(time.Until(switchAt) - time.Nanosecond)
		if s := mustGet(t, c); s.Version != 1 {
			t.Fatalf("Get() just before the switch = version %d, want 1", s.Version)
		}
		time.Sleep(time.Nanosecond)
		if s := mustGet(t, c); s.Version != 2 {
			t.Fatalf("Get() at the switch = version %d, want 2", s.Version)
		}
		if st := c.Stats(); st.Loads != 2 || st.Early != 1 {
			t.Errorf("Stats() = %+v, want 2 loads, one of them early", st)
		}
		// News after the switch instant is served at once.
		v.mu.Lock()
		v.shared = 9
		v.mu.Unlock()
		time.Sleep(ttl - 1500*time.Millisecond) // past version 2's switch point, before its deadline
		c.Adopt(9)
		synctest.Wait()
		if s := mustGet(t, c); s.Version != 9 {
			t.Errorf("Get() after late news = version %d, want 9 at once", s.Version)
		}
	})
}

// steps answers an adoption, while the cache holds less than 4, with
// version 4 (the one a fleet serves until its switch, as pkg/fleet's
// previous snapshot), then with 5; it counts the loads.
type steps struct {
	mu    sync.Mutex
	loads int
	none  bool // every adoption finds nothing
}

func (s *steps) Load(context.Context, time.Time) (int64, error) {
	panic("Load called on a SharedLoader")
}

func (s *steps) LoadShared(_ context.Context, r cache.Request[int64]) (cache.Snapshot[int64], error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loads++
	switch {
	case s.none:
		return cache.Snapshot[int64]{}, cache.ErrNotNewer
	case r.Have == nil || r.Have.Version < 4:
		return cache.Snapshot[int64]{Value: 4, Fetched: r.Started, Version: 4}, nil
	case r.Have.Version < 5:
		return cache.Snapshot[int64]{Value: 5, Fetched: r.Started, Version: 5}, nil
	}
	return cache.Snapshot[int64]{}, cache.ErrNotNewer
}

// TestCache_AdoptKeepsGoingPastAnOlderVersion: news of 5 to a cache that
// holds nothing loads 4 (what the fleet serves until its switch), then 5,
// served from 4's switch; an adoption that finds nothing is not retried.
func TestCache_AdoptKeepsGoingPastAnOlderVersion(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &steps{}
		c := cache.New[int64](s, cache.Options{TTL: ttl})
		defer c.Close()
		c.Adopt(5)
		synctest.Wait()
		if got := mustGet(t, c); got.Version != 4 {
			t.Fatalf("Get() after Adopt(5) = version %d, want 4 until its switch", got.Version)
		}
		time.Sleep(ttl - time.Second)
		if got := mustGet(t, c); got.Version != 5 || s.loads != 2 {
			t.Errorf("Get() at the switch = version %d after %d loads, want 5 after 2", got.Version, s.loads)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		s := &steps{none: true}
		c := cache.New[int64](s, cache.Options{TTL: ttl})
		defer c.Close()
		c.Adopt(5)
		synctest.Wait()
		if s.loads != 1 {
			t.Errorf("an adoption that found nothing loaded %d times, want 1", s.loads)
		}
	})
}

// TestCache_AServedValueNamesItsSuccessor: a shared value that says the
// others serve a newer one from its switch (Snapshot.Newer) is served now,
// and the newer one is adopted, through the flight, to serve from the
// switch: a process that had nothing switches with the others.
func TestCache_AServedValueNamesItsSuccessor(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		var adoptions []uint64
		loader := sharedFunc(func(_ context.Context, r cache.Request[int]) (cache.Snapshot[int], error) {
			if r.Adopt != 0 {
				adoptions = append(adoptions, r.Adopt)
				return cache.Snapshot[int]{Value: 2, Fetched: time.Now(), Version: 2}, nil
			}
			return cache.Snapshot[int]{Value: 1, Fetched: start, Version: 1, Newer: 2}, nil
		})
		c := cache.New[int](loader, cache.Options{TTL: ttl})
		defer c.Close()
		if s := mustGet(t, c); s.Version != 1 {
			t.Fatalf("Get() = version %d, want 1: what the others serve now", s.Version)
		}
		synctest.Wait()
		if !slices.Equal(adoptions, []uint64{2}) {
			t.Fatalf("adoptions = %v, want the successor, 2, once", adoptions)
		}
		time.Sleep(ttl - time.Second - time.Nanosecond) // just before the switch
		if s := mustGet(t, c); s.Version != 1 {
			t.Errorf("Get() before the switch = version %d, want 1", s.Version)
		}
		time.Sleep(time.Nanosecond)
		if s := mustGet(t, c); s.Version != 2 {
			t.Errorf("Get() at the switch = version %d, want 2", s.Version)
		}
	})
}
