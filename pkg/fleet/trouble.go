package fleet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"
)

// A cause names why a load fetched without the shared tier: the label of
// movies_fleet_fallbacks_total, and the word the log's WARN leads with.
// A refusal is Redis answering that it will not do what the fleet asks
// (a configuration to fix); a failure is Redis not answering.
type cause struct {
	name    string
	refusal bool
	hint    string // what the operator can do
}

var (
	causeBreaker   = cause{"breaker", false, "Redis kept failing: the circuit breaker keeps calls away until a probe succeeds"}
	causeTimeout   = cause{"timeout", false, "Redis did not answer within the call timeout"}
	causeDown      = cause{"down", false, "Redis refused or dropped the connection, or its host does not resolve"}
	causeTLS       = cause{"tls", true, "the TLS handshake failed: trust the server's CA with -redis-ca; a server that requires client certificates needs -redis-cert and -redis-key"}
	causeAuth      = cause{"auth", true, "Redis refused the user or password in -redis"}
	causeNoPerm    = cause{"noperm", true, "the ACL user may not run a command the fleet needs: grant the rule in docs/fleet.md (Redis deployments)"}
	causeOOM       = cause{"oom", true, "Redis is out of memory and will not evict (maxmemory-policy noeviction or volatile-*): raise maxmemory, free memory, or use allkeys-lru"}
	causeReadOnly  = cause{"readonly", true, "-redis is a read-only replica (a failover moved the master?): use -redis-mode sentinel, or a proxy that follows the master"}
	causeCrossSlot = cause{"crossslot", true, "this Redis is a Cluster: use -redis-mode cluster"}
	causeMoved     = cause{"moved", true, "a Cluster slot is moving or this Redis is a Cluster (use -redis-mode cluster)"}
	causeLoading   = cause{"loading", true, "Redis is loading its dataset"}
	causeInvalid   = cause{"invalid", true, "Redis holds a value this protocol did not write (see the ERROR line before)"}
	causeStarved   = cause{"starved", false, "this replica waited for CPU during the Redis call, which ran out of time on this side: the machine is saturated (Redis itself is not judged)"}
	causeError     = cause{"error", false, "see err"}
)

// causeOf names what went wrong with a Redis call.
func causeOf(err error) cause {
	var (
		unknownCA  x509.UnknownAuthorityError
		invalidCrt x509.CertificateInvalidError
		hostname   x509.HostnameError
		verify     *tls.CertificateVerificationError
		alert      tls.AlertError
		record     tls.RecordHeaderError
		netErr     net.Error
		opErr      *net.OpError
	)
	switch {
	case errors.Is(err, errOpen):
		return causeBreaker
	case errors.Is(err, errStarved):
		return causeStarved
	case errors.Is(err, ErrInvalid), errors.Is(err, errSpin):
		return causeInvalid
	case errors.As(err, &unknownCA), errors.As(err, &invalidCrt), errors.As(err, &hostname),
		errors.As(err, &verify), errors.As(err, &alert), errors.As(err, &record),
		// A server's alert (a client certificate required) comes back
		// over TCP as a *net.OpError "remote error: tls: ...".
		!reply(err) && strings.Contains(err.Error(), "tls: "):
		return causeTLS
	}
	if reply(err) {
		// Redis's own words: a script's error carries the command's
		// reply inside it ("ERR Error running script ... -READONLY ...").
		msg := err.Error()
		for _, c := range []struct {
			words []string
			c     cause
		}{
			{[]string{"NOPERM", "can't run this command", "no permissions"}, causeNoPerm},
			{[]string{"WRONGPASS", "NOAUTH", "invalid username-password"}, causeAuth},
			{[]string{"OOM "}, causeOOM},
			{[]string{"READONLY"}, causeReadOnly},
			{[]string{"CROSSSLOT"}, causeCrossSlot},
			{[]string{"MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN"}, causeMoved},
			{[]string{"LOADING", "MASTERDOWN"}, causeLoading},
			{[]string{"WRONGTYPE"}, causeInvalid},
		} {
			for _, w := range c.words {
				if strings.Contains(msg, w) {
					return c.c
				}
			}
		}
		return causeError
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return causeTimeout
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed), errors.As(err, &opErr):
		return causeDown
	}
	return causeError
}

// rewarnAfter spaces the WARNs of one cause: a Redis that flaps (a timeout
// now and then on a busy host) says so once a minute, not on every blip,
// while a new cause, or the same one a minute later, is said at once.
const rewarnAfter = time.Minute

// condition is why the shared tier is not being used.
type condition struct {
	cause  cause
	warned bool // said at WARN (else within rewarnAfter of the last WARN of its cause)
}

// trouble records that the shared tier could not be used for op, and
// says so once per condition: one WARN when it starts and whenever its
// cause changes (at most one a minute per cause), so a fleet running alone
// for good is never silent, and a Redis failing for an hour, or flapping,
// does not fill the log. It returns the cause.
func (t *Tier[V]) trouble(ctx context.Context, op string, err error) cause {
	c := causeOf(err)
	if c == causeBreaker {
		return c // the breaker only repeats a cause already told
	}
	if c == causeTimeout || c == causeError || c == causeDown {
		// A call that waited on a dial reports its own timeout, and a
		// TLS alert comes back as a dropped connection; the dial's
		// error says why.
		if derr := t.dials.failed(); derr != nil {
			err = fmt.Errorf("%w (last dial: %w)", err, derr)
			if dc := causeOf(derr); dc != causeError && dc != causeTimeout {
				c = dc
			}
		}
	}
	t.condMu.Lock()
	defer t.condMu.Unlock()
	if prev := t.condition.Load(); prev != nil && prev.cause.name == c.name {
		return c
	}
	now := time.Now()
	last, seen := t.lastWarn[c.name]
	warn := !seen || now.Sub(last) >= rewarnAfter
	t.condition.Store(&condition{cause: c, warned: warn})
	if !warn {
		t.opts.Log.DebugContext(ctx, "shared tier off again", "cause", c.name, "op", op, "err", err)
		return c
	}
	t.lastWarn[c.name] = now
	msg := "shared tier off: serving as a lone replica"
	if c.refusal {
		msg = "shared tier refused: serving as a lone replica"
	}
	t.opts.Log.WarnContext(ctx, msg, "cause", c.name, "op", op, "hint", c.hint, "redis", t.redacted, "err", err)
	return c
}

// fine records that the shared tier worked: the end of any condition,
// said at INFO if its start was said at WARN.
func (t *Tier[V]) fine(ctx context.Context) {
	if t.condition.Load() == nil {
		return
	}
	t.condMu.Lock()
	defer t.condMu.Unlock()
	switch prev := t.condition.Swap(nil); {
	case prev == nil:
	case prev.warned:
		t.opts.Log.InfoContext(ctx, "shared tier back", "after", prev.cause.name, "redis", t.redacted)
	default:
		t.opts.Log.DebugContext(ctx, "shared tier back", "after", prev.cause.name, "redis", t.redacted)
	}
}

// warnOnce logs msg at WARN at most once a minute per key (rewarnAfter),
// at DEBUG otherwise: a condition that repeats is said, not shouted.
func (t *Tier[V]) warnOnce(ctx context.Context, key, msg string, attrs ...any) {
	t.condMu.Lock()
	last, seen := t.lastWarn[key]
	now := time.Now()
	warn := !seen || now.Sub(last) >= rewarnAfter
	if warn {
		t.lastWarn[key] = now
	}
	t.condMu.Unlock()
	if warn {
		t.opts.Log.WarnContext(ctx, msg, attrs...)
	} else {
		t.opts.Log.DebugContext(ctx, msg, attrs...)
	}
}
