package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
)

// TestScripts_MiniredisConformsToRedis runs the protocol's scripts through
// one sequence of steps against a real redis-server and against miniredis
// (what the simulator in package web runs them on), and requires the same
// transcript from both: the simulator's verdicts are about the real thing
// only if its Redis answers as the real one does.
func TestScripts_MiniredisConformsToRedis(t *testing.T) {
	t.Parallel()
	real := startRedis(t)
	mini := miniredis.RunT(t)
	want := transcript(t, real.URL)
	got := transcript(t, "redis://"+mini.Addr())
	if !slices.Equal(got, want) {
		t.Errorf("miniredis's transcript differs from redis-server's:\n%s", diffLines(want, got))
	}
	// And the transcript says what the protocol means.
	for _, line := range []string{
		"acquire by a: lock gen=G1",
		"acquire by b: held by G1, lease within 1s",
		"commit by a: ok",
		"lock after commit: absent",
		"acquire by b: newer gen=G1",
		"read by b: found gen=G1 source=shared",
		"acquire by b holding G1: lock gen=G2",
		"release by b, failed with Retry-After 3s: done",
		"acquire by a holding G1: backoff cause=status_503 within 3s",
		"failure record for G2: cause=status_503 retry=3s",
		"renew of a lock not held: 0",
		"commit of G1 again: fenced by G1",
		"acquire over a bogus generation: lock gen=G3",
		"acquire over a wrong-typed key: error",
		"read of a wrong-typed snapshot: error",
		"release of an unknown lock by b: done",
	} {
		if !slices.Contains(want, line) {
			t.Errorf("redis-server's transcript lacks %q:\n%s", line, strings.Join(want, "\n"))
		}
	}
}

// transcript runs the steps against the Redis at url, with generations
// written relative to the first one issued (G1, G2...), since they are
// seeded from the clock.
func transcript(t *testing.T, url string) []string {
	ctx := context.Background()
	ns := fmt.Sprintf("conf%d", time.Now().UnixNano())
	mk := func() *Tier[string] {
		return newTier(t, url, func(o *Options[string]) {
			o.Namespace = ns
			o.RetryAfter = func(error) time.Duration { return 3 * time.Second }
			o.Cause = func(error) string { return "status_503" }
		})
	}
	a, b := mk(), mk()
	c := a.client
	var out []string
	gens := map[uint64]string{}
	name := func(g uint64) string {
		if n, ok := gens[g]; ok {
			return n
		}
		gens[g] = fmt.Sprintf("G%d", len(gens)+1)
		return gens[g]
	}
	say := func(step string, a acquired, err error) {
		switch {
		case err != nil:
			out = append(out, step+": error")
		case a.kind == acquiredLock:
			out = append(out, fmt.Sprintf("%s: lock gen=%s", step, name(a.gen)))
		case a.kind == acquiredNewer:
			out = append(out, fmt.Sprintf("%s: newer gen=%s", step, name(a.gen)))
		case a.kind == acquiredHeld:
			out = append(out, fmt.Sprintf("%s: held by %s, lease within %v", step, name(a.gen), leaseTerm))
			if a.left > leaseTerm {
				out = append(out, "lease too long")
			}
		case a.kind == acquiredBackoff:
			out = append(out, fmt.Sprintf("%s: backoff cause=%s within 3s", step, a.cause))
			if a.left > 3*time.Second {
				out = append(out, "backoff too long")
			}
		}
	}
	a1, err := a.acquire(ctx, 0)
	say("acquire by a", a1, err)
	h, err := b.acquire(ctx, 0)
	say("acquire by b", h, err)

	start := time.Now()
	env := fmt.Sprintf(`{"v":2,"gen":%d,"start_ms":%d,"data":"\"x\""}`, a1.gen, a.opts.Now().UnixMilli())
	res, err := commitScript.Run(ctx, c, []string{a.k.snap, a.k.snapGen, a.k.lock, a.k.channel, a.k.prev, a.k.prevGen}, a1.gen, env, testTTL.Milliseconds(), lockValue(a1.gen, a.token)).Int64Slice()
	out = append(out, fmt.Sprintf("commit by a: %s", map[bool]string{true: "ok", false: fmt.Sprint(res, err)}[err == nil && slices.Equal(res, []int64{1, 0})]))
	n, _ := c.Exists(ctx, a.k.lock).Result()
	out = append(out, fmt.Sprintf("lock after commit: %s", map[bool]string{true: "absent", false: "present"}[n == 0]))

	nw, err := b.acquire(ctx, 0)
	say("acquire by b", nw, err)
	e, found, err := b.Read(ctx, 0)
	out = append(out, fmt.Sprintf("read by b: found=%v gen=%s source=%s err=%v", found, name(e.Gen), e.Source, err))
	out[len(out)-1] = strings.Replace(out[len(out)-1], "found=true ", "found ", 1)
	out[len(out)-1] = strings.TrimSuffix(out[len(out)-1], " err=<nil>")
	if left := time.Until(e.Deadline); left > testTTL-time.Since(start) || left < testTTL-time.Since(start)-time.Second {
		out = append(out, fmt.Sprintf("read's deadline %v away", left))
	}

	b2, err := b.acquire(ctx, a1.gen)
	say("acquire by b holding G1", b2, err)
	b.release(ctx, b2.gen, errors.New("503"))
	out = append(out, "release by b, failed with Retry-After 3s: done")
	bo, err := a.acquire(ctx, a1.gen)
	say("acquire by a holding G1", bo, err)
	if fe, ok := a.failure(ctx, b2.gen); ok {
		out = append(out, fmt.Sprintf("failure record for %s: cause=%s retry=%v", name(b2.gen), fe.Cause, fe.RetryAfter))
	} else {
		out = append(out, "failure record: none")
	}
	c.Del(ctx, a.k.failed)

	ok, err := renewScript.Run(ctx, c, []string{a.k.lock}, "1 nobody", 1000).Int64()
	out = append(out, fmt.Sprintf("renew of a lock not held: %d%v", ok, errString(err)))

	res, err = commitScript.Run(ctx, c, []string{a.k.snap, a.k.snapGen, a.k.lock, a.k.channel, a.k.prev, a.k.prevGen}, a1.gen, env, testTTL.Milliseconds(), "x").Int64Slice()
	if err == nil && len(res) == 2 && res[0] == 0 {
		out = append(out, fmt.Sprintf("commit of G1 again: fenced by %s", name(uint64(res[1]))))
	} else {
		out = append(out, fmt.Sprintf("commit of G1 again: %v %v", res, err))
	}

	c.Set(ctx, a.k.gen, "99999999999999999999", 0)
	time.Sleep(2 * time.Millisecond) // a clock-seeded generation above the last
	g3, err := a.acquire(ctx, a1.gen)
	say("acquire over a bogus generation", g3, err)
	if err == nil && g3.gen <= b2.gen {
		out = append(out, "generation went back")
	}
	c.Del(ctx, a.k.lock)

	c.Del(ctx, a.k.gen)
	c.RPush(ctx, a.k.gen, "x")
	w, err := a.acquire(ctx, 0)
	say("acquire over a wrong-typed key", w, err)
	if n, _ := c.Exists(ctx, a.k.lock).Result(); n != 0 {
		out = append(out, "a failed script left a lock behind")
	}
	c.Del(ctx, a.k.snap)
	c.RPush(ctx, a.k.snap, "x")
	_, _, err = a.Read(ctx, 0)
	out = append(out, fmt.Sprintf("read of a wrong-typed snapshot: %s", map[bool]string{true: "error", false: "no error"}[err != nil]))

	c.Set(ctx, a.k.lock, lockValue(77, b.token), time.Second)
	err = releaseScript.Run(ctx, c, []string{a.k.lock, a.k.channel, a.k.failed}, b.token, "r", 0, "", 0).Err()
	n, _ = c.Exists(ctx, a.k.lock).Result()
	out = append(out, fmt.Sprintf("release of an unknown lock by b: %s%v", map[bool]string{true: "done", false: "lock kept"}[n == 0], errString(err)))
	return out
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return " " + err.Error()
}

func diffLines(want, got []string) string {
	var b strings.Builder
	for i := range max(len(want), len(got)) {
		var w, g string
		if i < len(want) {
			w = want[i]
		}
		if i < len(got) {
			g = got[i]
		}
		mark := " "
		if w != g {
			mark = "!"
		}
		fmt.Fprintf(&b, "%s redis-server: %-60s miniredis: %s\n", mark, w, g)
	}
	return b.String()
}
