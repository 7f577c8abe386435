package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// call runs one Redis operation under the breaker and the call timeout.
func (t *Tier[V]) call(parent context.Context, op string, f func(context.Context) error) error {
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
	t.checkScript(parent, op, err)
	if err != nil && parent.Err() != nil {
		// The caller gave up (its request ended): that says nothing
		// about Redis, so it must not open the breaker.
		t.breaker.abandon(probe)
		return err
	}
	late := err != nil && !reply(err) && time.Since(start) > t.opts.CallTimeout+t.opts.CallTimeout/starvedAfter
	if !late {
		t.starvedRun.Store(0)
	} else if t.starvedRun.Add(1) <= maxStarvedRun {
		// The call's own timer ran late: this process, not Redis, was
		// slow (see starvedAfter).
		t.breaker.abandon(probe)
		return fmt.Errorf("%w: %w", errStarved, err)
	}
	// A reply, even an error, is Redis answering, and quickly: a refusal
	// (READONLY, OOM, NOPERM...) costs a round trip, which the breaker
	// must not save at the price of hiding the refusal's cause.
	if opened := t.breaker.record(time.Now(), err == nil || reply(err), probe); opened {
		atomic.AddUint64(&t.stats.BreakerOpened, 1)
		t.opts.Log.Info("circuit breaker open: Redis keeps failing", "redis", t.redacted, "err", err)
	}
	return err
}

// callRead is call for an operation that only reads, which is safe to
// run twice: a call this process starved (a pause it just woke from,
// which is also when a late timer fires, see starvedAfter) is asked
// again, once, rather than taken for a Redis in trouble, which would
// have the caller fetch alone, not knowing what the fleet knows (a
// snapshot, a Retry-After). begin, which takes a lock, asks again by
// itself, with a new token (see (*load).begin).
func (t *Tier[V]) callRead(ctx context.Context, op string, f func(context.Context) error) error {
	err := t.call(ctx, op, f)
	if errors.Is(err, errStarved) {
		err = t.call(ctx, op, f)
	}
	return err
}

// checkScript says so when one of the protocol's scripts failed as it
// ran (a Lua error, not a refusal the script returns): that is a bug in
// this version, never Redis's state or the operator's, and the call's
// caller falls back as for any error, so without this line it would pass
// for a Redis in trouble.
func (t *Tier[V]) checkScript(ctx context.Context, op string, err error) {
	if scriptFailed(err) {
		t.warnOnce(ctx, "script", "fleet script failed: a bug in this version's protocol, please report it", "op", op, "redis", t.redacted, "err", err)
	}
}

// scriptFailed reports whether err is Redis saying a script raised an
// error of its own as it ran (Lua's, or a compile error), not that a
// command the script ran was refused. Redis 7 and later say
// "ERR user_script:<line>: <Lua's words>" for the first and give a
// command's refusal its own code (OOM, NOPERM...). Redis 6 ("ERR Error
// running script") and miniredis ("ERR Error compiling script", which
// the simulator runs) wrap both alike, a refusal going on with its code
// after the line: "...:<line>: OOM ...".
func scriptFailed(err error) bool {
	if !reply(err) {
		return false
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "ERR user_script:") && !strings.HasPrefix(msg, "ERR Error running script") && !strings.HasPrefix(msg, "ERR Error compiling script") {
		return false
	}
	return !refusedInScript.MatchString(msg)
}

// refusedInScript is a command's refusal raised inside a script: its
// error code after the script's line.
var refusedInScript = regexp.MustCompile(`:\d+: [A-Z][A-Z_]+ `)

// reply reports whether err is Redis answering with an error: Redis is
// there and quick, so the breaker must not take it for a sick Redis.
func reply(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && !errors.Is(err, redis.Nil)
}

// redisLogger sends go-redis's own messages to the tier's logger.
type redisLogger struct{ log *slog.Logger }

// A failure is said once, in the tier's own WARN with its cause (see
// trouble), not on every dial or every sentinel asked (go-redis retries
// those every 100 ms while they fail); the client's other messages (a
// sentinel naming a new master) are worth an INFO.
func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	level := slog.LevelInfo
	if strings.Contains(msg, "failed") || strings.Contains(msg, "error") {
		level = slog.LevelDebug
	}
	l.log.Log(ctx, level, "redis client", "msg", msg)
}
