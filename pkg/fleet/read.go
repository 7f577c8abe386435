package fleet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"
)

// Read returns the shared snapshot if one is there, newer than version
// have, valid and with time left. If the fleet still serves the previous
// snapshot (newer than have, before its switch), that one comes back, with
// the newest as its Newer.
func (t *Tier[V]) Read(ctx context.Context, have uint64) (Entry[V], bool, error) {
	asked, wall := time.Now(), t.opts.Now()
	status, snap, prev, err := t.read(ctx, have)
	if err != nil {
		atomic.AddUint64(&t.stats.ReadErrors, 1)
		return Entry[V]{}, false, err
	}
	e, ok, err := t.decode(status, snap, prev, asked, wall, have)
	switch {
	case err != nil:
		atomic.AddUint64(&t.stats.Invalid, 1)
		atomic.AddUint64(&t.stats.ReadErrors, 1)
		t.opts.Log.ErrorContext(ctx, "rejected the shared snapshot", "redis", t.redacted, "err", err)
		return Entry[V]{}, false, fmt.Errorf("%w: %w", ErrInvalid, err)
	case !ok:
		atomic.AddUint64(&t.stats.ReadMisses, 1)
	default:
		atomic.AddUint64(&t.stats.ReadHits, 1)
	}
	return e, ok, nil
}

// header is what precedes a snapshot's data in Redis: its version, its
// fetch's start on the writer's wall clock and how long the fetch took,
// in ms, and the W3C traceparent of the fetch's span when it was traced
// (see ShareTrace). The scripts read the version from it without the data.
func header(version uint64, start time.Time, took time.Duration, trace string) []byte {
	if validTraceparent(trace) {
		return fmt.Appendf(nil, "%d %d %d %s\n", version, start.UnixMilli(), took.Milliseconds(), trace)
	}
	return fmt.Appendf(nil, "%d %d %d\n", version, start.UnixMilli(), took.Milliseconds())
}

// storedHeader is a stored snapshot's header, parsed.
type storedHeader struct {
	version         uint64
	startMS, tookMS int64
	trace           string // "" if the writer's fetch was not traced
}

// parseHeader splits a stored snapshot into its header's fields and data.
func parseHeader(v string) (h storedHeader, data []byte, err error) {
	line, rest, ok := bytes.Cut([]byte(v), []byte("\n"))
	if !ok || len(line) >= headerMax {
		return h, nil, errors.New("a snapshot without its header")
	}
	f := bytes.Fields(line)
	if len(f) != 3 && (len(f) != 4 || !validTraceparent(string(f[3]))) {
		return h, nil, fmt.Errorf("a header %.64q not ours", line)
	}
	var err1, err2, err3 error
	h.version, err1 = strconv.ParseUint(string(f[0]), 10, 64)
	h.startMS, err2 = strconv.ParseInt(string(f[1]), 10, 64)
	h.tookMS, err3 = strconv.ParseInt(string(f[2]), 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil || h.version == 0 || h.version >= maxVersion || h.tookMS < 0 {
		return storedHeader{}, nil, fmt.Errorf("a header %.64q not ours", line)
	}
	if len(f) == 4 {
		h.trace = string(f[3])
	}
	if len(rest) == 0 {
		return storedHeader{}, nil, errors.New("a snapshot without data")
	}
	return h, rest, nil
}

// validTraceparent reports whether s has a W3C traceparent's shape
// (version 00): "00-" 32 hex "-" 16 hex "-" 2 hex, lower case. What it
// names is for people (a link between spans), never for the protocol.
func validTraceparent(s string) bool {
	if len(s) != 55 || s[:3] != "00-" || s[35] != '-' || s[52] != '-' {
		return false
	}
	for i, c := range []byte(s) {
		if i == 2 || i == 35 || i == 52 {
			continue
		}
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// decode checks what read returned: ok false, no error, for no snapshot,
// one not newer than have, or one with no time left.
func (t *Tier[V]) decode(status int, snap, prev stored, asked, wall time.Time, have uint64) (e Entry[V], ok bool, err error) {
	switch status {
	case readNone:
		return e, false, nil
	case readWrongType:
		return e, false, errors.New("the snapshot key holds a value of the wrong type")
	case readTooBig:
		return e, false, fmt.Errorf("the snapshot is over %d bytes", maxValueBytes)
	}
	e, ok, err = t.decodeOne(snap, asked, wall, have)
	if !ok || err != nil || !prev.ok || t.opts.SwitchBefore <= 0 {
		return e, ok, err
	}
	p, pok, perr := t.decodeOne(prev, asked, wall, have)
	if perr == nil && pok && p.Version < e.Version && time.Now().Before(p.Deadline.Add(-t.opts.SwitchBefore)) {
		p.Newer = e.Version
		return p, true, nil
	}
	return e, ok, err
}

// decodeOne checks one stored snapshot.
func (t *Tier[V]) decodeOne(s stored, asked, wall time.Time, have uint64) (e Entry[V], ok bool, err error) {
	h, data, err := parseHeader(s.value)
	version, startMS, tookMS := h.version, h.startMS, h.tookMS
	switch {
	case err != nil:
		return e, false, err
	case s.pttl == -1:
		return e, false, errors.New("the snapshot has no expiry")
	case s.pttl <= 1:
		// Gone, or expiring as we speak: a miss, not a wrong value.
		return e, false, nil
	case version <= have:
		return e, false, nil
	}
	// Two estimates of the deadline, from two clocks; the earlier wins.
	// Redis's: asked is before Redis measured the PTTL, which counts
	// whole ms (up to 1 generous): less one, it errs early. More than a
	// TTL means Redis's clock stepped back, or Redis ran the commit late:
	// a TTL is the most it can be.
	byRedis := asked.Add(min(time.Duration(s.pttl-1)*time.Millisecond, t.opts.TTL))
	// The writer's: its fetch start plus the TTL, on our clock.
	byWriter := asked.Add(time.UnixMilli(startMS).Add(t.opts.TTL).Sub(wall))
	deadline := byRedis
	if byWriter.Before(deadline) {
		deadline = byWriter
	}
	if !time.Now().Before(deadline) {
		return e, false, nil
	}
	v, err := t.opts.Decode(data)
	if err != nil {
		return e, false, fmt.Errorf("invalid data: %w", err)
	}
	// How long the writer's fetch took: what this replica judges a late
	// leader by (a value past FetchTimeout is no fetch that happened).
	t.fetches.add(min(time.Duration(tookMS)*time.Millisecond, t.opts.FetchTimeout))
	return Entry[V]{Value: v, Version: version, Deadline: deadline, Source: FromFleet, Trace: h.trace}, true, nil
}
