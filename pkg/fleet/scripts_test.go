package fleet

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// scriptCase is one conformance case of one script: the keys before, the
// call, and what the case means (a substring of the outcome).
type scriptCase struct {
	script, name string
	setup        func(c *redis.Client, k *keys)
	run          func(t *Tier[string]) string
	want         string
}

// failedRecord is a failure record of version 3 that asks for ms of wait
// from conformanceNow, with a 503 as its cause.
func failedRecord(ms int64) string {
	return fmt.Sprintf("3 %d %d status_503", ms, conformanceNow.UnixMilli()+ms)
}

// conformanceNow is the clock the cases run at, so versions seeded from
// it are the same on both servers.
var conformanceNow = time.UnixMilli(1_000_000_000)

// conformanceTrace is the traceparent the stored snapshots carry: every
// script reads a header with one, as a traced fleet writes it (the
// simulator's, untraced, read headers without).
const conformanceTrace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// stored writes a snapshot as commit would, fetched startedAgo before
// conformanceNow.
func storedSnapshot(version uint64, startedAgo time.Duration, data string) string {
	return string(header(version, conformanceNow.Add(-startedAgo), 5*time.Millisecond, conformanceTrace)) + data
}

var scriptCases = []scriptCase{
	{script: "begin", name: "nothing there: the lock, above the clock",
		run: func(t *Tier[string]) string { return beginString(t.begin(bg(), 0, conformanceToken)) }, want: "lock 1000000000"},
	{script: "begin", name: "a newer snapshot: read it",
		setup: func(c *redis.Client, k *keys) { c.Set(bg(), k[keySnapshot], storedSnapshot(5, 0, `"x"`), testTTL) },
		run:   func(t *Tier[string]) string { return beginString(t.begin(bg(), 0, conformanceToken)) }, want: "newer 5"},
	{script: "begin", name: "a snapshot no newer than the caller's: the lock",
		setup: func(c *redis.Client, k *keys) { c.Set(bg(), k[keySnapshot], storedSnapshot(5, 0, `"x"`), testTTL) },
		run:   func(t *Tier[string]) string { return beginString(t.begin(bg(), 5, conformanceToken)) }, want: "lock 1000000000"},
	{script: "begin", name: "a snapshot its writer's clock says expired: the lock",
		setup: func(c *redis.Client, k *keys) {
			c.Set(bg(), k[keySnapshot], storedSnapshot(5, 2*testTTL, `"x"`), testTTL)
		},
		run: func(t *Tier[string]) string { return beginString(t.begin(bg(), 0, conformanceToken)) }, want: "lock 1000000000"},
	{script: "begin", name: "a lock held: wait",
		setup: func(c *redis.Client, k *keys) { c.Set(bg(), k[keyLock], "7 abc", leaseTerm) },
		run:   func(t *Tier[string]) string { return beginString(t.begin(bg(), 0, conformanceToken)) }, want: "held 7"},
	{script: "begin", name: "a lock of another type: refused",
		setup: func(c *redis.Client, k *keys) {
			c.HSet(bg(), k[keyLock], "a", "b")
			c.PExpire(bg(), k[keyLock], leaseTerm)
		},
		run: func(t *Tier[string]) string { return beginString(t.begin(bg(), 0, conformanceToken)) }, want: "error"},
	{script: "begin", name: "a failure with a Retry-After: back off",
		setup: func(c *redis.Client, k *keys) { c.Set(bg(), k[keyFailed], failedRecord(3000), 3*time.Second) },
		run:   func(t *Tier[string]) string { return beginString(t.begin(bg(), 0, conformanceToken)) }, want: "backoff status_503"},
	{script: "begin", name: "a failure recorded for an hour: capped",
		setup: func(c *redis.Client, k *keys) { c.Set(bg(), k[keyFailed], failedRecord(3600000), time.Hour) },
		run:   func(t *Tier[string]) string { return beginString(t.begin(bg(), 0, conformanceToken)) }, want: "backoff status_503 capped"},
	{script: "begin", name: "a failure without a Retry-After: the lock",
		setup: func(c *redis.Client, k *keys) {
			c.Set(bg(), k[keyFailed], fmt.Sprintf("3 0 %d timeout", conformanceNow.UnixMilli()), leaseTerm)
		},
		run: func(t *Tier[string]) string { return beginString(t.begin(bg(), 0, conformanceToken)) }, want: "lock 1000000000"},
	{script: "begin", name: "a counter ahead of the clock: above it",
		setup: func(c *redis.Client, k *keys) { c.Set(bg(), k[keyCounter], "5000000000000", 0) },
		run:   func(t *Tier[string]) string { return beginString(t.begin(bg(), 0, conformanceToken)) }, want: "lock 5000000000001"},
	{script: "begin", name: "a caller ahead of Redis: above it",
		run: func(t *Tier[string]) string { return beginString(t.begin(bg(), 9000000000000, conformanceToken)) }, want: "lock 9000000000001"},
	{script: "begin", name: "a counter of another type: overwritten",
		setup: func(c *redis.Client, k *keys) { c.RPush(bg(), k[keyCounter], "a") },
		run:   func(t *Tier[string]) string { return beginString(t.begin(bg(), 0, conformanceToken)) }, want: "lock 1000000000"},
	{script: "begin", name: "a snapshot past 2^52: not ours",
		setup: func(c *redis.Client, k *keys) { c.Set(bg(), k[keySnapshot], storedSnapshot(1<<60, 0, `"x"`), testTTL) },
		run:   func(t *Tier[string]) string { return beginString(t.begin(bg(), 0, conformanceToken)) }, want: "lock 1000000000"},
	{script: "begin", name: "versions spent: refused",
		setup: func(c *redis.Client, k *keys) { c.Set(bg(), k[keyCounter], maxVersion-1, 0) },
		run:   func(t *Tier[string]) string { return beginString(t.begin(bg(), 0, conformanceToken)) }, want: "error"},

	{script: "ticket", name: "above the lock's version",
		setup: func(c *redis.Client, k *keys) {
			c.Set(bg(), k[keyCounter], "1000000005", 0)
			c.Set(bg(), k[keyLock], "1000000005 abc", leaseTerm)
		},
		run: func(t *Tier[string]) string { return beginString(t.ticket(bg(), 0)) }, want: "lock 1000000006"},
	{script: "ticket", name: "none while the fleet backs off",
		setup: func(c *redis.Client, k *keys) { c.Set(bg(), k[keyFailed], failedRecord(3000), 3*time.Second) },
		run:   func(t *Tier[string]) string { return beginString(t.ticket(bg(), 0)) }, want: "backoff status_503"},

	{script: "renew", name: "ours",
		setup: func(c *redis.Client, k *keys) { c.Set(bg(), k[keyLock], "7 abc", 100*time.Millisecond) },
		run: func(t *Tier[string]) string {
			n, err := t.renew(bg(), "7 abc")
			return fmt.Sprintf("renew %d %v", n, err)
		}, want: "renew 1 <nil>"},
	{script: "renew", name: "another's",
		setup: func(c *redis.Client, k *keys) { c.Set(bg(), k[keyLock], "8 def", leaseTerm) },
		run: func(t *Tier[string]) string {
			n, err := t.renew(bg(), "7 abc")
			return fmt.Sprintf("renew %d %v", n, err)
		}, want: "renew 0 <nil>"},
	{script: "renew", name: "gone",
		run: func(t *Tier[string]) string {
			n, err := t.renew(bg(), "7 abc")
			return fmt.Sprintf("renew %d %v", n, err)
		}, want: "renew -1 <nil>"},

	{script: "commit", name: "over nothing, freeing our lock",
		setup: func(c *redis.Client, k *keys) { c.Set(bg(), k[keyLock], "7 abc", leaseTerm) },
		run: func(t *Tier[string]) string {
			return commitString(t.commit(bg(), 7, 6, 0, []byte(storedSnapshot(7, 0, `"x"`)), 4000, "7 abc"))
		},
		want: "committed 7 lock=1"},
	{script: "commit", name: "over an older snapshot, which becomes the previous",
		setup: func(c *redis.Client, k *keys) { c.Set(bg(), k[keySnapshot], storedSnapshot(6, 0, `"old"`), testTTL) },
		run: func(t *Tier[string]) string {
			return commitString(t.commit(bg(), 7, 6, 0, []byte(storedSnapshot(7, 0, `"x"`)), 4000, ""))
		},
		want: "committed 7 lock=-1"},
	{script: "commit", name: "over a snapshot fetched ahead, never served: the previous stays",
		setup: func(c *redis.Client, k *keys) {
			c.Set(bg(), k[keySnapshot], storedSnapshot(6, 0, `"ahead"`), testTTL)
			c.Set(bg(), k[keyPrevious], storedSnapshot(5, 0, `"served"`), testTTL/2) // well before its switch
		},
		run: func(t *Tier[string]) string {
			return commitString(t.commit(bg(), 7, 6, 0, []byte(storedSnapshot(7, 0, `"x"`)), 4000, ""))
		},
		want: `previous="5 `},
	{script: "commit", name: "over a served snapshot, past the previous one's switch: it becomes the previous",
		setup: func(c *redis.Client, k *keys) {
			c.Set(bg(), k[keySnapshot], storedSnapshot(6, 0, `"served"`), testTTL)
			c.Set(bg(), k[keyPrevious], storedSnapshot(5, 0, `"old"`), 200*time.Millisecond) // past its switch
		},
		run: func(t *Tier[string]) string {
			return commitString(t.commit(bg(), 7, 6, 0, []byte(storedSnapshot(7, 0, `"x"`)), 4000, ""))
		},
		want: `previous="6 `},
	{script: "commit", name: "fenced by a sibling that committed first: the first commit of a round wins",
		setup: func(c *redis.Client, k *keys) {
			c.Set(bg(), k[keySnapshot], storedSnapshot(8, 0, `"sibling"`), testTTL)
		},
		run: func(t *Tier[string]) string {
			return commitString(t.commit(bg(), 9, 6, 0, []byte(storedSnapshot(9, 0, `"x"`)), 4000, ""))
		},
		want: "fenced 8 lock=-1"},
	{script: "commit", name: "fenced by a newer, freeing our lock",
		setup: func(c *redis.Client, k *keys) {
			c.Set(bg(), k[keySnapshot], storedSnapshot(9, 0, `"new"`), testTTL)
			c.Set(bg(), k[keyLock], "7 abc", leaseTerm)
		},
		run: func(t *Tier[string]) string {
			return commitString(t.commit(bg(), 7, 6, 0, []byte(storedSnapshot(7, 0, `"x"`)), 4000, "7 abc"))
		},
		want: "fenced 9 lock=1"},
	{script: "commit", name: "a hedge leaves the leader's lock",
		setup: func(c *redis.Client, k *keys) { c.Set(bg(), k[keyLock], "7 abc", leaseTerm) },
		run: func(t *Tier[string]) string {
			return commitString(t.commit(bg(), 8, 0, 0, []byte(storedSnapshot(8, 0, `"x"`)), 4000, ""))
		},
		want: "committed 8 lock=0"},
	{script: "commit", name: "over a snapshot without expiry, which is dropped",
		setup: func(c *redis.Client, k *keys) { c.Set(bg(), k[keySnapshot], storedSnapshot(6, 0, `"old"`), 0) },
		run: func(t *Tier[string]) string {
			return commitString(t.commit(bg(), 7, 6, 0, []byte(storedSnapshot(7, 0, `"x"`)), 4000, ""))
		},
		want: "committed 7 lock=-1"},
	{script: "commit", name: "over a version far ahead that ends within what the load holds: above it",
		setup: func(c *redis.Client, k *keys) {
			c.Set(bg(), k[keySnapshot], storedSnapshot(90000, 0, `"held"`), 2*time.Second)
		},
		run: func(t *Tier[string]) string {
			return commitString(t.commit(bg(), 7, 6, 2100, []byte(storedSnapshot(7, 0, `"x"`)), 4000, ""))
		},
		want: `committed 90001 lock=-1 | snapshot="90001 1000000000 5 00-`},
	{script: "commit", name: "fenced by a version far ahead that ends after what the load holds",
		setup: func(c *redis.Client, k *keys) {
			c.Set(bg(), k[keySnapshot], storedSnapshot(90000, 0, `"newer"`), 3*time.Second)
		},
		run: func(t *Tier[string]) string {
			return commitString(t.commit(bg(), 7, 6, 2100, []byte(storedSnapshot(7, 0, `"x"`)), 4000, ""))
		},
		want: "fenced 90000 lock=-1"},

	{script: "release", name: "failed: the record, and the lock freed",
		setup: func(c *redis.Client, k *keys) { c.Set(bg(), k[keyLock], "7 "+conformanceToken, leaseTerm) },
		run: func(t *Tier[string]) string {
			return fmt.Sprint("release ", t.release(bg(), conformanceToken, 'f', 7, "7 3000 1000003000 status_503", 3000))
		},
		want: "release <nil>"},
	releaseOverRecord("failed while the fleet waits longer: that record is kept", 3600000, time.Hour, failedRecord(3600000)),
	releaseOverRecord("failed while the fleet waits less: the new record", 1000, time.Second, "7 3000 1000003000 status_503"),
	{script: "release", name: "a lock of ours taken unknowingly",
		setup: func(c *redis.Client, k *keys) { c.Set(bg(), k[keyLock], "7 "+conformanceToken, leaseTerm) },
		run: func(t *Tier[string]) string {
			return fmt.Sprint("release ", t.release(bg(), conformanceToken, 'r', 0, "", 0))
		},
		want: "release <nil>"},
	{script: "release", name: "another's lock is left",
		setup: func(c *redis.Client, k *keys) { c.Set(bg(), k[keyLock], "7 def", leaseTerm) },
		run: func(t *Tier[string]) string {
			return fmt.Sprint("release ", t.release(bg(), conformanceToken, 'r', 7, "", 0))
		},
		want: "release <nil>"},

	{script: "failure", name: "none", run: failureString, want: "no record"},
	{script: "failure", name: "a wait, to its recorded end",
		setup: func(c *redis.Client, k *keys) { c.Set(bg(), k[keyFailed], failedRecord(3000), time.Hour) },
		run:   failureString, want: "record of 3: status_503, wait 3s"},
	{script: "failure", name: "a wait, to the key's expiry when that ends first",
		setup: func(c *redis.Client, k *keys) { c.Set(bg(), k[keyFailed], failedRecord(3000), 2*time.Second) },
		run:   failureString, want: "record of 3: status_503, wait 2s"},
	{script: "failure", name: "no Retry-After: a record that asks for no wait",
		setup: func(c *redis.Client, k *keys) { c.Set(bg(), k[keyFailed], "3 0 1000000000 status_500", leaseTerm) },
		run:   failureString, want: "record of 3: status_500, wait 0s"},
	{script: "failure", name: "past the end its writer recorded: no wait",
		setup: func(c *redis.Client, k *keys) { c.Set(bg(), k[keyFailed], "3 3000 999999000 status_503", time.Hour) },
		run:   failureString, want: "record of 3: status_503, wait 0s"},
	{script: "failure", name: "not one of ours",
		setup: func(c *redis.Client, k *keys) { c.Set(bg(), k[keyFailed], "hello world", time.Hour) },
		run:   failureString, want: "no record"},

	{script: "read", name: "nothing",
		run: readString(0), want: "read 0"},
	{script: "read", name: "another type",
		setup: func(c *redis.Client, k *keys) { c.RPush(bg(), k[keySnapshot], "a") },
		run:   readString(0), want: "read -1"},
	{script: "read", name: "too big, never transferred",
		setup: func(c *redis.Client, k *keys) {
			c.Set(bg(), k[keySnapshot], storedSnapshot(5, 0, strings.Repeat("x", maxValueBytes)), testTTL)
		},
		run: readString(0), want: "read -2"},
	{script: "read", name: "the snapshot and the previous one",
		setup: func(c *redis.Client, k *keys) {
			c.Set(bg(), k[keySnapshot], storedSnapshot(6, 0, `"new"`), testTTL)
			c.Set(bg(), k[keyPrevious], storedSnapshot(5, 0, `"old"`), testTTL)
		},
		run: readString(0), want: `read 1 "new" with previous "old"`},
	{script: "read", name: "a previous one no newer than the caller's is left out",
		setup: func(c *redis.Client, k *keys) {
			c.Set(bg(), k[keySnapshot], storedSnapshot(6, 0, `"new"`), testTTL)
			c.Set(bg(), k[keyPrevious], storedSnapshot(5, 0, `"old"`), testTTL)
		},
		run: readString(5), want: `read 1 "new"|`},
}

// conformanceToken is the token of the conformance cases' tiers.
const conformanceToken = "c0ffee"

func beginString(b began, err error) string {
	if err != nil {
		return "error"
	}
	switch b.kind {
	case beganNewer:
		return fmt.Sprintf("newer %d", b.version)
	case beganLock:
		return fmt.Sprintf("lock %d", b.version)
	case beganHeld:
		return fmt.Sprintf("held %d (lease %v)", b.version, b.left > 0 && b.left <= leaseTerm)
	case beganBackoff:
		s := "backoff " + b.cause
		if b.left == 30*time.Second {
			s += " capped"
		}
		return s
	}
	return fmt.Sprint("unknown ", b.kind)
}

func commitString(c committedAs, err error) string {
	switch {
	case err != nil:
		return "error " + err.Error()
	case c.ok:
		return fmt.Sprintf("committed %d lock=%d", c.version, c.lock)
	}
	return fmt.Sprintf("fenced %d lock=%d", c.version, c.lock)
}

func failureString(t *Tier[string]) string {
	v, fe, ok, err := t.failure(bg())
	switch {
	case err != nil:
		return "error " + err.Error()
	case !ok:
		return "no record"
	}
	return fmt.Sprintf("record of %d: %s, wait %v", v, fe.Cause, fe.RetryAfter.Round(time.Second))
}

func readString(have uint64) func(t *Tier[string]) string {
	return func(t *Tier[string]) string {
		status, snap, prev, err := t.read(bg(), have)
		if err != nil {
			return "error " + err.Error()
		}
		s := fmt.Sprintf("read %d", status)
		if snap.ok {
			_, data, _ := parseHeader(snap.value)
			s += " " + string(data)
		}
		if prev.ok {
			_, data, _ := parseHeader(prev.value)
			s += " with previous " + string(data)
		}
		return s + "|"
	}
}

// TestScripts_ConformOnRedisAndMiniredis runs each script's cases on a
// real redis-server and on miniredis (what the simulator in package web
// runs them on) and requires the outcome each case states, and the same
// outcome, keys and messages from both: the simulator's verdicts are about
// the real thing only if its Redis answers as the real one does.
func TestScripts_ConformOnRedisAndMiniredis(t *testing.T) {
	t.Parallel()
	servers := map[string]string{"redis-server": startRedis(t).URL, "miniredis": "redis://" + miniredis.RunT(t).Addr()}
	for i, sc := range scriptCases {
		t.Run(sc.script+"/"+sc.name, func(t *testing.T) {
			outs := map[string]string{}
			for name, url := range servers {
				ns := fmt.Sprintf("conf%d", i)
				tier := newTier(t, url, func(o *Options[string]) {
					o.Namespace = ns
					o.Now = func() time.Time { return conformanceNow }
					o.SwitchBefore = time.Second
				})
				tier.token = conformanceToken
				c := redis.NewClient(&redis.Options{Addr: strings.TrimPrefix(url, "redis://")})
				t.Cleanup(func() { c.Close() })
				c.FlushAll(bg())
				ps := c.Subscribe(bg(), tier.k[keyNews])
				if _, err := ps.Receive(bg()); err != nil {
					t.Fatal(err)
				}
				if sc.setup != nil {
					sc.setup(c, tier.k)
				}
				out := sc.run(tier)
				outs[name] = out + " | " + keyState(c, tier.k) + " | " + messages(ps)
				ps.Close()
			}
			if outs["redis-server"] != outs["miniredis"] {
				t.Errorf("redis-server: %s\nminiredis:    %s", outs["redis-server"], outs["miniredis"])
			}
			if !strings.Contains(outs["redis-server"], sc.want) {
				t.Errorf("outcome %q, want %q in it", outs["redis-server"], sc.want)
			}
		})
	}
	for _, s := range scripts {
		if !slices.ContainsFunc(scriptCases, func(c scriptCase) bool { return c.script == s.name }) {
			t.Errorf("script %s has no conformance case", s.name)
		}
	}
}

// keyState is every key of the fleet: its type, value and whether it
// expires.
func keyState(c *redis.Client, k *keys) string {
	var b strings.Builder
	for i := range numKeys - 1 { // the channel is no key
		typ, _ := c.Type(bg(), k[i]).Result()
		if typ == "none" {
			continue
		}
		v := typ
		if typ == "string" {
			v, _ = c.Get(bg(), k[i]).Result()
			v = fmt.Sprintf("%.40q", v)
		}
		ttl, _ := c.PTTL(bg(), k[i]).Result()
		fmt.Fprintf(&b, "%s=%s(expires %v) ", keyNames[i], v, ttl > 0)
	}
	return b.String()
}

// messages are what the channel carried, as far as ps heard them within
// a short while.
func messages(ps *redis.PubSub) string {
	var out []string
	for {
		ctx, cancel := context.WithTimeout(bg(), 50*time.Millisecond)
		m, err := ps.ReceiveMessage(ctx)
		cancel()
		if err != nil {
			return "news [" + strings.Join(out, " ") + "]"
		}
		out = append(out, m.Payload)
	}
}

// TestScripts_EveryConstantIsFilledIn: no script reaches Redis with a
// placeholder Go left unfilled, and each binds every key and argument it
// declares.
func TestScripts_EveryConstantIsFilledIn(t *testing.T) {
	t.Parallel()
	for _, s := range scripts {
		if s.lua == nil {
			t.Errorf("script %s was not loaded", s.name)
		}
		if body := strings.Replace(s.src, "{{ALL_NEEDS}}", "", 1); strings.Contains(body, "{{") {
			t.Errorf("script %s: a placeholder is left: %s", s.name, body)
		}
		for i, k := range s.keys {
			if !strings.Contains(s.src, fmt.Sprintf("local %s = KEYS[%d]", keyNames[k], i+1)) {
				t.Errorf("script %s does not bind key %s", s.name, keyNames[k])
			}
		}
	}
}

// TestScripts_AFailingScriptIsSaid: a script that raises an error as it
// runs (a bug, as release calling backoff without its clock was) is told
// from a refusal a script returns (NOPERM) on both servers, and said in
// the tier's log, so neither an operator nor the simulator in package web
// takes it for a Redis in trouble.
func TestScripts_AFailingScriptIsSaid(t *testing.T) {
	t.Parallel()
	servers := map[string]string{"redis-server": startRedis(t).URL, "miniredis": "redis://" + miniredis.RunT(t).Addr()}
	for name, url := range servers {
		t.Run(name, func(t *testing.T) {
			var logs lockedBuffer
			tier := newTier(t, url, func(o *Options[string]) {
				o.Log = slog.New(slog.NewTextHandler(&logs, nil))
			})
			run := func(src string) error {
				return tier.call(bg(), "test", func(ctx context.Context) error {
					return redis.NewScript(src).Run(ctx, tier.client, []string{tier.k[keySnapshot]}).Err()
				})
			}
			if err := run("return redis.error_reply('NOPERM not this one')"); err == nil || scriptFailed(err) {
				t.Errorf("a refusal the script returns: %v, taken for a failing script: %v", err, scriptFailed(err))
			}
			// A command the script runs, refused (as OOM is).
			if err := run("redis.call('SET', KEYS[1], 'x'); return redis.call('LPUSH', KEYS[1], 'a')"); err == nil || scriptFailed(err) {
				t.Errorf("a command refused inside the script: %v, taken for a failing script: %v", err, scriptFailed(err))
			}
			if err := run("local x = nil; return x + 1"); !scriptFailed(err) {
				t.Errorf("a script raising an error: %v, not taken for one", err)
			}
			if !strings.Contains(logs.String(), "fleet script failed") {
				t.Errorf("nothing said of the failing script; the log:\n%s", logs.String())
			}
		})
	}
}

// TestScriptFailed_TellsLuaFromARefusal: the messages each server gives a
// script's own error and a command's refusal inside one (Redis 6's from
// its source: it is not what the tests run on).
func TestScriptFailed_TellsLuaFromARefusal(t *testing.T) {
	for msg, want := range map[string]bool{
		"ERR user_script:1: attempt to perform arithmetic on local 'x' (a nil value) script: 104a, on @user_script:1.": true,
		"OOM command not allowed when used memory > 'maxmemory'. script: 116d, on @user_script:43.":                    false,
		"ERR Wrong number of args calling Redis command from script script: 7227, on @user_script:1.":                  false,
		"ERR Error running script (call to f_104a): @user_script:1: user_script:1: attempt to compare nil with number": true,
		"ERR Error running script (call to f_116d): @user_script:43: OOM command not allowed when used memory":         false,
		"ERR Error compiling script (new function): :22: cannot perform sub operation between number and nil":          true,
		"ERR Error compiling script (new function): :1: WRONGTYPE Operation against a key holding the wrong kind":      false,
		"ERR Error compiling script (new function): user_script at EOF:   parse error ":                                true,
		"NOPERM the fleet needs SET on movies:lock":                                                                    false,
	} {
		if got := scriptFailed(replyError(msg)); got != want {
			t.Errorf("scriptFailed(%q) = %v, want %v", msg, got, want)
		}
	}
}

// replyError is an error reply as go-redis gives it (a redis.Error).
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

// releaseOverRecord is a release case: version 7's fetch fails, asking for
// 3 s, over a record asking for recordMS that expires after ttl; want is
// the record left.
func releaseOverRecord(name string, recordMS int64, ttl time.Duration, want string) scriptCase {
	return scriptCase{script: "release", name: name,
		setup: func(c *redis.Client, k *keys) {
			c.Set(bg(), k[keyLock], "7 "+conformanceToken, leaseTerm)
			c.Set(bg(), k[keyFailed], failedRecord(recordMS), ttl)
		},
		run: func(t *Tier[string]) string {
			err := t.release(bg(), conformanceToken, 'f', 7, "7 3000 1000003000 status_503", 3000)
			rec, _ := t.peek(bg(), "failure", keyFailed, 128)
			return fmt.Sprint("release ", err, " ", rec)
		},
		want: "release <nil> " + want}
}
