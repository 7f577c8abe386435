package cache_test

import (
	"context"
	"errors"
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
		for range n {
			wg.Go(func() {
				s, err := c.Get(context.Background())
				if err == nil && s.Value != "v" {
					err = errors.New("wrong value " + s.Value)
				}
				errs <- err
			})
		}
		synctest.Wait() // every caller is now blocked in Get
		close(release)
		wg.Wait()
		close(errs)
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
					if err := <-errs; !tt.wantErr(err) {
						t.Errorf("Get() error = %v, want the %s", err, tt.name)
					}
				}
				if _, ok := c.Peek(); ok {
					t.Errorf("Peek() found a value after a failed load")
				}
				// Nothing was cached and the key is not stuck: the next Get loads.
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
