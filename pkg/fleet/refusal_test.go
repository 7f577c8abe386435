package fleet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The minimal ACL rule docs/fleet.md gives operators: a change here is a
// change there.
const minimalACL = "~movies:* &movies:* -@all +evalsha +eval +get +set +del +rename +type +strlen +getrange +pttl +pexpire +publish +subscribe +ping"

// lockedBuffer is a log destination safe for the tier's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestTier_ARefusalIsSaidOnceAndChangesNothing: whatever Redis refuses
// (a permission the ACL denies, memory it will not free), every load is
// served alone at once, no lock is left behind to wait out, the WARN names
// the cause once, the fallbacks are counted under it, and the breaker
// stays closed (Redis answers, quickly). With the documented ACL rule the
// fleet shares.
func TestTier_ARefusalIsSaidOnceAndChangesNothing(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	admin := r.Client()
	defer admin.Close()
	for _, tt := range []struct {
		name, rule string
		setup      func() error
		cause      string
		words      string // in the WARN
	}{
		{name: "the minimal rule shares", rule: minimalACL},
		{name: "no DEL", rule: strings.Replace(minimalACL, " +del", "", 1), cause: "noperm", words: "DEL"},
		{name: "no PUBLISH", rule: strings.Replace(minimalACL, " +publish", "", 1), cause: "noperm", words: "PUBLISH"},
		{name: "no EVAL", rule: strings.Replace(strings.Replace(minimalACL, " +evalsha", "", 1), " +eval", "", 1), cause: "noperm", words: "eval"},
		{name: "out of memory", rule: minimalACL, cause: "oom", words: "OOM",
			setup: func() error { return admin.ConfigSet(bg(), "maxmemory", "1").Err() }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			defer admin.ConfigSet(bg(), "maxmemory", "0")
			user := "u" + fmt.Sprint(time.Now().UnixNano())
			args := []any{"ACL", "SETUSER", user, "on", ">pw", "resetkeys", "resetchannels"}
			for _, f := range strings.Fields(tt.rule) {
				args = append(args, f)
			}
			if err := admin.Do(bg(), args...).Err(); err != nil {
				t.Fatal(err)
			}
			if err := admin.FlushAll(bg()).Err(); err != nil {
				t.Fatal(err)
			}
			if tt.setup != nil {
				if err := tt.setup(); err != nil {
					t.Fatal(err)
				}
			}
			var log lockedBuffer
			url := strings.Replace(r.URL, "redis://", "redis://"+user+":pw@", 1)
			a := newTier(t, url, func(o *Options[string]) {
				o.Namespace = "movies:{t}"
				o.Log = slog.New(slog.NewTextHandler(&log, nil))
			})
			b := newTier(t, url, func(o *Options[string]) { o.Namespace = "movies:{t}" })
			f := &fetcher{delay: 100 * time.Millisecond}
			var wg sync.WaitGroup
			var slowest time.Duration
			var mu sync.Mutex
			for _, tier := range []*Tier[string]{a, b, a, b} {
				wg.Go(func() {
					start := time.Now()
					if _, err := tier.Load(bg(), Entry[string]{}, f.fetch); err != nil {
						t.Error(err)
					}
					mu.Lock()
					slowest = max(slowest, time.Since(start))
					mu.Unlock()
				})
			}
			wg.Wait()
			st := a.Stats()
			if tt.cause == "" {
				if f.n.Load() != 1 || st.Fallbacks() != 0 {
					t.Errorf("fetches = %d, fallbacks %d; want one fetch shared", f.n.Load(), st.Fallbacks())
				}
				return
			}
			// Alone, each load is one fetch: no lease is waited out for a
			// commit that cannot happen.
			if f.n.Load() != 4 || slowest > 100*time.Millisecond+leaseTerm/2 {
				t.Errorf("fetches = %d, slowest load %v; want 4 fetched alone, none waiting a lease", f.n.Load(), slowest)
			}
			if st.Fallbacks() != 2 || a.BreakerOpen() {
				t.Errorf("fallbacks = %d, breaker open %v; want 2, closed", st.Fallbacks(), a.BreakerOpen())
			}
			if got := fallbacksBy(st, tt.cause); got != 2 {
				t.Errorf("fallbacks for %s = %d, want 2 (%+v)", tt.cause, got, st)
			}
			if n, err := admin.Exists(bg(), "movies:{t}:lock", "movies:{t}:snapshot").Result(); err != nil || n != 0 {
				t.Errorf("keys left = %d (%v), want none: a refused script must change nothing", n, err)
			}
			warns := strings.Count(log.String(), "level=WARN")
			if warns != 1 || !strings.Contains(log.String(), "cause="+tt.cause) || !strings.Contains(log.String(), tt.words) {
				t.Errorf("log has %d WARN lines, want 1 naming %s and %s:\n%s", warns, tt.cause, tt.words, log.String())
			}
		})
	}
}

// fallbacksBy returns the fallbacks counted under cause.
func fallbacksBy(st Stats, cause string) uint64 {
	st2 := st
	for _, c := range []struct {
		name string
		n    *uint64
	}{{"noperm", &st2.FallbackNoPerm}, {"oom", &st2.FallbackOOM}, {"readonly", &st2.FallbackReadOnly}, {"tls", &st2.FallbackTLS}} {
		if c.name == cause {
			return *c.n
		}
	}
	return 0
}

// TestCauseOf names Redis's refusals and failures as the fleet counts them.
func TestCauseOf(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{errOpen, "breaker"},
		{fmt.Errorf("%w: x", ErrInvalid), "invalid"},
		{redisErr("READONLY You can't write against a read only replica."), "readonly"},
		{redisErr("ERR Error running script (call to f_1): @user_script:1: -READONLY You can't write"), "readonly"},
		{redisErr("CROSSSLOT Keys in request don't hash to the same slot"), "crossslot"},
		{redisErr("MOVED 3999 127.0.0.1:6381"), "moved"},
		{redisErr("OOM command not allowed when used memory > 'maxmemory'."), "oom"},
		{redisErr("NOPERM User u has no permissions to run the 'evalsha' command"), "noperm"},
		{redisErr("ERR The user executing the script can't run this command or subcommand script: x"), "noperm"},
		{redisErr("WRONGPASS invalid username-password pair or user is disabled."), "auth"},
		{redisErr("LOADING Redis is loading the dataset in memory"), "loading"},
		{errors.New("dial tcp 127.0.0.1:1: connect: connection refused"), "error"},
		{&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, "down"},
		{context.DeadlineExceeded, "timeout"},
		{fmt.Errorf("%w: %w", errStarved, context.DeadlineExceeded), "starved"},
		// A server requiring a client certificate, as Go reports its alert.
		{&net.OpError{Op: "remote error", Err: errors.New("tls: certificate required")}, "tls"},
	} {
		if got := causeOf(tt.err).name; got != tt.want {
			t.Errorf("causeOf(%v) = %s, want %s", tt.err, got, tt.want)
		}
	}
}

// redisErr is an error reply, as go-redis returns one.
type redisErr string

func (e redisErr) Error() string { return string(e) }
func (redisErr) RedisError()     {}

// TestTier_AFlappingRedisWarnsOnceAMinute: a timeout, a success, a
// timeout again within rewarnAfter: one WARN and one INFO "back", the
// second blip at DEBUG; a new cause is said at once. Pins rewarnAfter.
func TestTier_AFlappingRedisWarnsOnceAMinute(t *testing.T) {
	t.Parallel()
	var log lockedBuffer
	tier := newTier(t, "redis://127.0.0.1:1", func(o *Options[string]) {
		o.Log = slog.New(slog.NewTextHandler(&log, nil))
		// The pool dials at once; a refused dial would name its own
		// cause (down), and whether it came first would be a race.
		o.Dialer = func(context.Context, string, string) (net.Conn, error) { return nil, context.DeadlineExceeded }
	})
	ctx := bg()
	tier.trouble(ctx, "load", context.DeadlineExceeded)
	tier.fine(ctx)
	tier.trouble(ctx, "load", context.DeadlineExceeded)
	tier.fine(ctx)
	tier.trouble(ctx, "load", redisErr("OOM command not allowed when used memory > 'maxmemory'."))
	got := log.String()
	if n := strings.Count(got, "level=WARN"); n != 2 || !strings.Contains(got, "cause=timeout") || !strings.Contains(got, "cause=oom") {
		t.Errorf("%d WARN lines, want 2 (the first timeout, then OOM):\n%s", n, got)
	}
	if n := strings.Count(got, `msg="shared tier back"`); n != 1 {
		t.Errorf("%d INFO lines 'back', want 1 (the blip within a minute is not said):\n%s", n, got)
	}
	// A minute on, the same cause is said again.
	tier.fine(ctx)
	tier.condMu.Lock()
	tier.lastWarn["timeout"] = time.Now().Add(-rewarnAfter)
	tier.condMu.Unlock()
	tier.trouble(ctx, "load", context.DeadlineExceeded)
	if n := strings.Count(log.String(), "level=WARN"); n != 3 {
		t.Errorf("%d WARN lines after a minute, want 3", n)
	}
}
