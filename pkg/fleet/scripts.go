package fleet

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The protocol's Redis side. Each script is declared once, with the keys
// and arguments it takes by name: a prologue binds them to Lua locals, so
// the Lua never says KEYS[n]. The protocol's constants and reply codes are
// Go constants filled into the Lua, and each script has one Go function
// that passes its keys and arguments in the declared order and parses its
// reply. Every script reads what it needs before it writes anything, so a
// script that fails (a permission the ACL denies, a Redis out of memory
// refusing its first write) fails having changed nothing.

// A key is one of the fleet's keys, named in a script's declaration.
type key int

const (
	// keySnapshot is the shared snapshot: a header, then the data (see
	// header), expiring when its TTL ends.
	keySnapshot key = iota
	// keyPrevious is the snapshot the last commit replaced, with its
	// expiry: what the fleet serves until the switch (see Entry.Newer).
	keyPrevious
	// keyCounter is the last version issued. It has no expiry.
	keyCounter
	// keyLock is "<version> <token>", held by the replica fetching for
	// the fleet, expiring when its lease does; the token is the begin
	// call's own, so a lock taken by a call nobody heard back from can
	// be freed without freeing another.
	keyLock
	// keyFailed is "<version> <retry ms> <cause>": the last failed fetch,
	// expiring when the backoff it asks the fleet for ends.
	keyFailed
	// keyNews is the channel commits, releases and failures are
	// announced on. It is passed with the keys, so a Cluster routes the
	// script to its slot and the ACL check can name it.
	keyNews
	numKeys
)

var keyNames = [numKeys]string{"snapshot", "previous", "counter", "lock", "failed", "news"}

// keySuffix is what each key adds to the namespace.
var keySuffix = [numKeys]string{":snapshot", ":previous", ":counter", ":lock", ":failed", ":news"}

// Reply codes of begin, and what read says of the snapshot key.
const (
	beganNewer   = 1 // a newer snapshot is there: read it
	beganLock    = 2 // the lock is ours, with a new version
	beganHeld    = 3 // another replica holds the lock: wait
	beganBackoff = 4 // a failed fetch asked the fleet to wait
	beganSpent   = 5 // versions are spent (a counter at maxVersion): not ours

	readNone      = 0 // no snapshot
	readFound     = 1
	readWrongType = -1
	readTooBig    = -2
)

// Commit outcomes, and what a commit found of the lock.
const (
	committed = 1
	fenced    = 0

	lockOurs    = 1  // ours, and freed
	lockTheirs  = 0  // another replica's: left alone
	lockMissing = -1 // nobody's: our lease lapsed, or Redis lost the key
)

// headerMax bounds a snapshot's header: "<version> <start ms> <took ms>",
// then " <traceparent>" (55 bytes) when the fetch was traced, and "\n".
const headerMax = 128

// constants fills the protocol's constants into the Lua: one definition,
// in Go, for both sides.
var constants = strings.NewReplacer(
	"{{MAX_VERSION}}", strconv.FormatInt(maxVersion, 10),
	"{{HEADER_MAX}}", strconv.Itoa(headerMax-1),
	"{{NEWER}}", strconv.Itoa(beganNewer), "{{LOCK}}", strconv.Itoa(beganLock),
	"{{HELD}}", strconv.Itoa(beganHeld), "{{BACKOFF}}", strconv.Itoa(beganBackoff),
	"{{SPENT}}", strconv.Itoa(beganSpent),
	"{{NONE}}", strconv.Itoa(readNone), "{{FOUND}}", strconv.Itoa(readFound),
	"{{WRONGTYPE}}", strconv.Itoa(readWrongType), "{{TOOBIG}}", strconv.Itoa(readTooBig),
	"{{COMMITTED}}", strconv.Itoa(committed), "{{FENCED}}", strconv.Itoa(fenced),
	"{{OURS}}", strconv.Itoa(lockOurs), "{{THEIRS}}", strconv.Itoa(lockTheirs), "{{MISSING}}", strconv.Itoa(lockMissing),
)

// luaHead reads a snapshot key's header without transferring the data:
// its version and its fetch's start (writer's ms), or nil for a missing
// key, one of another type, or a header not ours.
const luaHead = `
local function head(k)
  if redis.call('TYPE', k).ok ~= 'string' then return nil end
  local v, start = string.match(redis.call('GETRANGE', k, 0, {{HEADER_MAX}}), '^(%d+) (%d+) %d+[ \n]')
  v = tonumber(v)
  if not v or v <= 0 or v >= {{MAX_VERSION}} then return nil end
  return v, tonumber(start)
end
`

// luaNextVersion issues a version above every one issued (the counter),
// the snapshot's, the caller's, and the caller's clock in ms: versions keep
// rising across a Redis restarted empty, a counter evicted, and a replica
// holding a version Redis no longer knows. nil when spent.
const luaNextVersion = `
local function next_version()
  local c = 0
  if redis.call('TYPE', counter).ok == 'string' then c = tonumber(redis.call('GET', counter)) or 0 end
  if c < 0 or c >= {{MAX_VERSION}} then c = 0 end
  local v = math.max(c + 1, (head(snapshot) or 0) + 1, tonumber(have) + 1, tonumber(now_ms))
  if v >= {{MAX_VERSION}} then return nil end
  redis.call('SET', counter, string.format('%d', v))
  return v
end
`

// luaBackoff reads the failure record (see failureRecord), the one reader
// of its shape: the version whose fetch failed, its cause, and the ms left
// of the wait it asks of the fleet (0 for a failure without a Retry-After,
// which asks for none; as for a snapshot, 0-1 ms left is none), or nil if
// there is no record of ours. What is left is read from two clocks, and
// the earlier end wins, as for a snapshot's deadline: the key's expiry on
// Redis's clock, which a step back of that clock stretches, and the end
// the writer recorded on the replicas' clock, which the caller's now_ms
// reads. The fleet never waits longer than the replica that failed was
// asked to. backoff is the wait alone: its cause and ms, nil for none.
const luaBackoff = `
local function failure()
  if redis.call('TYPE', failed).ok ~= 'string' then return nil end
  local v, ms, ends, cause = string.match(redis.call('GET', failed), '^(%d+) (%d+) (%d+) (%S*)$')
  if not v then return nil end
  local left = 0
  if tonumber(ms) > 0 then
    left = math.min(redis.call('PTTL', failed), tonumber(ends) - tonumber(now_ms))
    if left <= 1 then left = 0 end
  end
  return v, cause, left
end
local function backoff()
  local _, cause, left = failure()
  if not cause or left == 0 then return nil end
  return cause, left
end
`

// ---- begin -----------------------------------------------------------------

// begin takes every key, so its check of every command the protocol runs
// can name each.
var beginScript = newScript("begin",
	[]key{keySnapshot, keyPrevious, keyCounter, keyLock, keyFailed, keyNews},
	[]string{"have", "now_ms", "ttl_ms", "lease_ms", "token"},
	[]need{
		needs("type", keySnapshot), needs("getrange", keySnapshot), needs("pttl", keySnapshot),
		needs("type", keyCounter), needs("get", keyCounter), needs("set", keyCounter),
		needs("type", keyFailed), needs("get", keyFailed), needs("pttl", keyFailed),
		needs("type", keyLock), needs("get", keyLock), needs("pttl", keyLock), needs("set", keyLock),
	}, checkAll, luaHead+luaBackoff+luaNextVersion+`
local v, start = head(snapshot)
if v and v > tonumber(have) and redis.call('PTTL', snapshot) > 1 and start + tonumber(ttl_ms) > tonumber(now_ms) then
  return {{{NEWER}}, v}
end
local cause, left = backoff()
if cause then return {{{BACKOFF}}, cause, left} end
local t = redis.call('TYPE', lock).ok
if t ~= 'none' then
  local l = ''
  if t == 'string' then l = redis.call('GET', lock) end
  return {{{HELD}}, l, redis.call('PTTL', lock)}
end
local nv = next_version()
if not nv then return {{{SPENT}}} end
redis.call('SET', lock, string.format('%d', nv) .. ' ' .. token, 'PX', lease_ms)
return {{{LOCK}}, nv}
`)

// began is what begin found.
type began struct {
	kind    int
	version uint64        // beganNewer: the snapshot's; beganLock: ours; beganHeld: the holder's
	left    time.Duration // beganHeld: the lease; beganBackoff: the wait
	cause   string        // beganBackoff
	holder  string        // beganHeld: the lock's value
}

// begin asks Redis what a load holding version have should do, and takes
// the lock, as token, if nobody holds it and nothing newer is there.
func (t *Tier[V]) begin(ctx context.Context, have uint64, token string) (began, error) {
	var res []any
	err := t.call(ctx, "begin", func(ctx context.Context) (err error) {
		res, err = beginScript.lua.Run(ctx, t.client, t.k.of(beginScript),
			have, t.opts.Now().UnixMilli(), t.opts.TTL.Milliseconds(), leaseTerm.Milliseconds(), token).Slice()
		return err
	})
	if err != nil {
		return began{}, err
	}
	return t.parseBegan(res)
}

// parseBegan reads begin's (and ticket's) reply.
func (t *Tier[V]) parseBegan(res []any) (began, error) {
	kind, _ := at[int64](res, 0)
	switch kind {
	case beganNewer, beganLock:
		v, _ := at[int64](res, 1)
		if v <= 0 || v >= maxVersion {
			break
		}
		return began{kind: int(kind), version: uint64(v)}, nil
	case beganHeld:
		val, _ := at[string](res, 1)
		pttl, _ := at[int64](res, 2)
		version, ok := parseLock(val)
		if !ok || pttl <= 0 || time.Duration(pttl)*time.Millisecond > leaseTerm {
			return began{}, fmt.Errorf("%w: a lock %.40q with %d ms left, not one of ours", ErrInvalid, val, pttl)
		}
		return began{kind: beganHeld, version: version, holder: val, left: time.Duration(pttl) * time.Millisecond}, nil
	case beganBackoff:
		cause, _ := at[string](res, 1)
		pttl, _ := at[int64](res, 2)
		return began{kind: beganBackoff, left: t.capBackoff(time.Duration(pttl) * time.Millisecond), cause: sanitize(cause)}, nil
	case beganSpent:
		return began{}, fmt.Errorf("%w: versions are spent (a counter at 2^52)", ErrInvalid)
	}
	return began{}, fmt.Errorf("%w: unexpected reply to begin: %v", ErrInvalid, res)
}

// ---- ticket ----------------------------------------------------------------

var ticketScript = newScript("ticket",
	[]key{keySnapshot, keyCounter, keyFailed},
	[]string{"have", "now_ms"},
	[]need{needs("type", keySnapshot), needs("getrange", keySnapshot), needs("type", keyCounter), needs("get", keyCounter), needs("set", keyCounter),
		needs("type", keyFailed), needs("get", keyFailed), needs("pttl", keyFailed)},
	checkOwn, luaHead+luaBackoff+luaNextVersion+`
local cause, left = backoff()
if cause then return {{{BACKOFF}}, cause, left} end
local v = next_version()
if not v then return {{{SPENT}}} end
return {{{LOCK}}, v}
`)

// ticket issues a version for a fetch this replica makes beside the
// leader's (a hedge): above every version issued, so that whichever of the
// two commits last, the newer fetch is what the fleet keeps; or, if a
// failed fetch asked the fleet to wait meanwhile, beganBackoff.
func (t *Tier[V]) ticket(ctx context.Context, have uint64) (began, error) {
	var res []any
	err := t.call(ctx, "ticket", func(ctx context.Context) (err error) {
		res, err = ticketScript.lua.Run(ctx, t.client, t.k.of(ticketScript), have, t.opts.Now().UnixMilli()).Slice()
		return err
	})
	if err != nil {
		return began{}, err
	}
	return t.parseBegan(res)
}

// ---- renew -----------------------------------------------------------------

var renewScript = newScript("renew",
	[]key{keyLock},
	[]string{"lock_value", "lease_ms"},
	[]need{needs("type", keyLock), needs("get", keyLock), needs("pexpire", keyLock)},
	checkOwn, `
if redis.call('TYPE', lock).ok ~= 'string' then return {{MISSING}} end
if redis.call('GET', lock) ~= lock_value then return {{THEIRS}} end
redis.call('PEXPIRE', lock, lease_ms)
return {{OURS}}
`)

// renew extends the lease of lock: lockOurs, lockTheirs (another replica
// took it over) or lockMissing (it lapsed, or Redis lost it).
func (t *Tier[V]) renew(ctx context.Context, lock string) (int, error) {
	var n int64
	err := t.call(ctx, "renew", func(ctx context.Context) (err error) {
		n, err = renewScript.lua.Run(ctx, t.client, t.k.of(renewScript), lock, leaseTerm.Milliseconds()).Int64()
		return err
	})
	return int(n), err
}

// ---- commit ----------------------------------------------------------------

var commitScript = newScript("commit",
	[]key{keySnapshot, keyPrevious, keyLock, keyNews},
	[]string{"version", "have", "held_ms", "value", "px", "lock_value", "switch_ms"},
	[]need{
		needs("type", keySnapshot), needs("getrange", keySnapshot), needs("pttl", keySnapshot),
		needs("type", keyLock), needs("get", keyLock), needs("del", keyLock),
		needs("type", keyPrevious), needs("getrange", keyPrevious), needs("pttl", keyPrevious),
		needs("rename", keySnapshot, keyPrevious), needs("del", keyPrevious), needs("set", keySnapshot),
		needs("publish", keyNews),
	}, checkOwn, luaHead+`
local cur = head(snapshot)
local l = {{MISSING}}
if redis.call('TYPE', lock).ok == 'string' then
  l = {{THEIRS}}
  if lock_value ~= '' and redis.call('GET', lock) == lock_value then l = {{OURS}} end
end
-- A snapshot that ends no later than what this load holds is no newer than
-- it, whatever its version says (set by hand, by a fleet whose counter ran
-- ahead): it fences nothing, and this fetch, which is newer, goes above it.
local pttl = cur and redis.call('PTTL', snapshot)
local stale = cur and pttl <= tonumber(held_ms)
if stale and cur >= tonumber(version) then
  if cur + 1 >= {{MAX_VERSION}} then
    stale = false
  else
    version = string.format('%d', cur + 1)
    local sp = string.find(value, ' ', 1, true)
    value = version .. string.sub(value, sp)
  end
end
if cur and not stale and (cur >= tonumber(version) or (cur > tonumber(have) and pttl > 1)) then
  if l == {{OURS}} then redis.call('DEL', lock) end
  redis.call('PUBLISH', news, 'c:' .. string.format('%d', cur))
  return {{{FENCED}}, cur, l}
end
if cur and redis.call('PTTL', snapshot) > 0 then
  local pv = head(previous)
  if not (pv and pv < cur and redis.call('PTTL', previous) > tonumber(switch_ms)) then
    redis.call('RENAME', snapshot, previous)
  end
  -- else the fleet still serves the previous one, before its switch: the
  -- snapshot replaced here was fetched ahead and never served, and the
  -- previous stays what a replica with nothing serves until the switch.
else
  redis.call('DEL', previous)
end
redis.call('SET', snapshot, value, 'PX', px)
if l == {{OURS}} then redis.call('DEL', lock) end
redis.call('PUBLISH', news, 'c:' .. version)
return {{{COMMITTED}}, tonumber(version), l}
`)

// committedAs is what a commit did.
type committedAs struct {
	ok      bool   // written; else fenced by a snapshot at least as new
	version uint64 // written: its own (see commit); fenced: the snapshot's
	lock    int    // lockOurs, lockTheirs, lockMissing
}

// commit writes value (header and data) as the snapshot of version, for px
// ms, unless one at least as new is there, or one newer than have (what
// the load began from) committed meanwhile: the first commit of a round
// wins, so replicas that each fetched for a miss (a leader and its
// hedges) all serve one snapshot, not each its own. A stored snapshot
// whose PTTL is within heldMS (see (*load).heldFor) is no newer than what the load
// holds, whatever its version: it fences nothing, and value goes above it,
// its header's version rewritten (committedAs.version). Commit keeps the snapshot it replaces
// as the previous one if the fleet serves that one now (it is past the
// previous one's switch); frees lock if it is still lockValue ("" for a
// fetch that held no lock), and announces the snapshot the fleet now has.
func (t *Tier[V]) commit(ctx context.Context, version, have uint64, heldMS int64, value []byte, px int64, lockValue string) (committedAs, error) {
	var res []int64
	err := t.call(ctx, "commit", func(ctx context.Context) (err error) {
		res, err = commitScript.lua.Run(ctx, t.client, t.k.of(commitScript), version, have, heldMS, value, px, lockValue, t.opts.SwitchBefore.Milliseconds()).Int64Slice()
		return err
	})
	if err != nil {
		return committedAs{}, err
	}
	if len(res) != 3 || res[1] <= 0 || res[1] >= maxVersion {
		return committedAs{}, fmt.Errorf("%w: unexpected reply to commit: %v", ErrInvalid, res)
	}
	return committedAs{ok: res[0] == committed, version: uint64(res[1]), lock: int(res[2])}, nil
}

// ---- release ---------------------------------------------------------------

var releaseScript = newScript("release",
	[]key{keyLock, keyNews, keyFailed},
	[]string{"token", "kind", "version", "record", "px", "now_ms"},
	[]need{needs("type", keyLock), needs("get", keyLock), needs("del", keyLock),
		needs("type", keyFailed), needs("get", keyFailed), needs("pttl", keyFailed), needs("set", keyFailed), needs("publish", keyNews)},
	checkOwn, luaBackoff+`
local v = version
if kind ~= 'n' and redis.call('TYPE', lock).ok == 'string' then
  local lv, tok = string.match(redis.call('GET', lock), '^(%d+) (%w+)$')
  if tok == token and (v == '0' or v == lv) then
    redis.call('DEL', lock)
    v = lv
  end
end
if v == '0' then return 0 end
if kind == 'f' or kind == 'n' then
  -- A wait the upstream asked of the fleet is never cut short by a later
  -- failure that asks for less.
  local _, left = backoff()
  if not left or left < tonumber(px) then redis.call('SET', failed, record, 'PX', px) end
end
if kind ~= 'n' then redis.call('PUBLISH', news, kind .. ':' .. v) end
return 1
`)

// release frees the lock of version taken as token (version 0: whatever
// lock token holds, taken by a call that timed out), records a failure
// for px ms (kind 'f'; unless the fleet already waits longer) and
// announces kind:version. Kind 'n' only notes a failure: no lock, no
// message.
func (t *Tier[V]) release(ctx context.Context, token string, kind byte, version uint64, record string, px int64) error {
	return t.call(ctx, "release", func(ctx context.Context) error {
		return t.releaseCall(ctx, token, kind, version, record, px)
	})
}

// releaseCall is release without the breaker.
func (t *Tier[V]) releaseCall(ctx context.Context, token string, kind byte, version uint64, record string, px int64) error {
	return releaseScript.lua.Run(ctx, t.client, t.k.of(releaseScript), token, string(kind), version, record, px, t.opts.Now().UnixMilli()).Err()
}

// ---- failure ---------------------------------------------------------------

var failureScript = newScript("failure",
	[]key{keyFailed},
	[]string{"now_ms"},
	[]need{needs("type", keyFailed), needs("get", keyFailed), needs("pttl", keyFailed)},
	checkNone, luaBackoff+`
local v, cause, left = failure()
if not v then return {} end
return {v, cause, left}
`)

// failure reads the failure record: the version whose fetch failed, and
// its cause and the wait it asks of the fleet from now (capped; 0 for
// none); ok false if Redis holds no record of ours.
func (t *Tier[V]) failure(ctx context.Context) (version uint64, fe *FailedError, ok bool, err error) {
	var res []any
	err = t.callRead(ctx, "failure", func(ctx context.Context) (err error) {
		res, err = failureScript.lua.Run(ctx, t.client, t.k.of(failureScript), t.opts.Now().UnixMilli()).Slice()
		return err
	})
	if err != nil || len(res) == 0 {
		return 0, nil, false, err
	}
	vs, _ := at[string](res, 0)
	cause, _ := at[string](res, 1)
	left, lok := at[int64](res, 2)
	version, perr := strconv.ParseUint(vs, 10, 64)
	if perr != nil || !lok || left < 0 {
		return 0, nil, false, fmt.Errorf("%w: unexpected reply to failure: %v", ErrInvalid, res)
	}
	return version, &FailedError{Cause: sanitize(cause), RetryAfter: t.capBackoff(time.Duration(left) * time.Millisecond)}, true, nil
}

// ---- read ------------------------------------------------------------------

var readScript = newScript("read",
	[]key{keySnapshot, keyPrevious},
	[]string{"max_bytes", "have"},
	[]need{
		needs("type", keySnapshot), needs("strlen", keySnapshot), needs("get", keySnapshot), needs("pttl", keySnapshot),
		needs("type", keyPrevious), needs("getrange", keyPrevious), needs("strlen", keyPrevious), needs("get", keyPrevious), needs("pttl", keyPrevious),
	}, checkNone, luaHead+`
local t = redis.call('TYPE', snapshot).ok
if t == 'none' then return {{{NONE}}} end
if t ~= 'string' then return {{{WRONGTYPE}}} end
if redis.call('STRLEN', snapshot) > tonumber(max_bytes) then return {{{TOOBIG}}} end
local out = {{{FOUND}}, redis.call('GET', snapshot), redis.call('PTTL', snapshot)}
local pv = head(previous)
if pv and pv > tonumber(have) and redis.call('STRLEN', previous) <= tonumber(max_bytes) then
  out[4], out[5] = redis.call('GET', previous), redis.call('PTTL', previous)
end
return out
`)

// read returns the snapshot, its PTTL, and the previous snapshot if it is
// newer than have (nil otherwise), each value at most maxValueBytes
// (larger ones are never transferred).
func (t *Tier[V]) read(ctx context.Context, have uint64) (status int, snap, prev stored, err error) {
	var res []any
	err = t.callRead(ctx, "read", func(ctx context.Context) (err error) {
		res, err = readScript.lua.Run(ctx, t.client, t.k.of(readScript), maxValueBytes, have).Slice()
		return err
	})
	if err != nil {
		return 0, snap, prev, err
	}
	s, _ := at[int64](res, 0)
	if s != readFound {
		if s != readNone && s != readWrongType && s != readTooBig {
			return 0, snap, prev, fmt.Errorf("unexpected reply to read: %v", res)
		}
		return int(s), snap, prev, nil
	}
	var ok bool
	if snap, ok = storedAt(res, 1); !ok || (len(res) != 3 && len(res) != 5) {
		return 0, snap, prev, fmt.Errorf("unexpected reply to read")
	}
	if len(res) == 5 {
		if prev, ok = storedAt(res, 3); !ok {
			return 0, snap, prev, fmt.Errorf("unexpected reply to read")
		}
	}
	return readFound, snap, prev, nil
}

// stored is a value read from Redis and its PTTL.
type stored struct {
	value string
	pttl  int64
	ok    bool
}

func storedAt(res []any, i int) (stored, bool) {
	v, ok1 := at[string](res, i)
	p, ok2 := at[int64](res, i+1)
	return stored{value: v, pttl: p, ok: ok1 && ok2}, ok1 && ok2
}

// ---- peek ----------------------------------------------------------------

// peek returns up to maxBytes of key k ("" if it is missing): a plain
// GETRANGE, which never transfers more, and answers WRONGTYPE for a key
// of another type.
func (t *Tier[V]) peek(ctx context.Context, op string, k key, maxBytes int) (string, error) {
	var s string
	err := t.callRead(ctx, op, func(ctx context.Context) (err error) {
		s, err = t.client.GetRange(ctx, t.k[k], 0, int64(maxBytes)-1).Result()
		return err
	})
	return s, err
}

// at returns res[i] as a T, if it is one.
func at[T any](res []any, i int) (v T, ok bool) {
	if i < len(res) {
		v, ok = res[i].(T)
	}
	return v, ok
}
