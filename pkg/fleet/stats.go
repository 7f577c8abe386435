package fleet

import (
	"reflect"
	"sync/atomic"
)

// Stats are the tier's counters. Their tags name the Prometheus counters
// they are exported as (see package metrics); a metric's help is on its
// first field.
type Stats struct {
	ReadHits   uint64 `metric:"fleet_reads_total" labels:"result=hit" help:"Reads of the shared snapshot, by result: hit (a usable snapshot), miss (none, or none newer than ours), error."`
	ReadMisses uint64 `metric:"fleet_reads_total" labels:"result=miss"`
	ReadErrors uint64 `metric:"fleet_reads_total" labels:"result=error"`
	Invalid    uint64 `metric:"fleet_invalid_values_total" help:"Values in Redis rejected as malformed, of the wrong type, too large or hostile; the replica fetched for itself."`

	LockWon  uint64 `metric:"fleet_locks_total" labels:"result=won" help:"Attempts to take the fetch lock, by result: won (this replica fetches for the fleet), lost (another holds it: wait)."`
	LockLost uint64 `metric:"fleet_locks_total" labels:"result=lost"`

	WaitCommitted uint64 `metric:"fleet_waits_total" labels:"result=committed" help:"Waits for another replica's fetch, by how they ended: committed (its snapshot), released (it shut down: ask again), failed (its fetch failed), rechecked (its lease was due: ask again), hedged (it was late: fetch beside it)."`
	WaitReleased  uint64 `metric:"fleet_waits_total" labels:"result=released"`
	WaitFailed    uint64 `metric:"fleet_waits_total" labels:"result=failed"`
	WaitRechecked uint64 `metric:"fleet_waits_total" labels:"result=rechecked"`
	WaitHedged    uint64 `metric:"fleet_waits_total" labels:"result=hedged"`

	HedgeWon    uint64 `metric:"fleet_hedges_total" labels:"result=won" help:"Fetches a waiter made beside a late or failed leader, by result: won (its answer came first and was shared), lost (the fleet's came first: cancelled), failed."`
	HedgeLost   uint64 `metric:"fleet_hedges_total" labels:"result=lost"`
	HedgeFailed uint64 `metric:"fleet_hedges_total" labels:"result=failed"`
	LateFetches uint64 `metric:"fleet_late_fetches_total" help:"Fetches of this replica's that were late (twice the slowest recent fetch) and got a second fetch beside them, on another connection."`

	CommitOK     uint64 `metric:"fleet_commits_total" labels:"result=ok" help:"Snapshots written to Redis after a fetch, by result: ok, fenced (a newer one was there), error."`
	CommitFenced uint64 `metric:"fleet_commits_total" labels:"result=fenced"`
	CommitErrors uint64 `metric:"fleet_commits_total" labels:"result=error"`

	FallbackBreaker   uint64 `metric:"fleet_fallbacks_total" labels:"cause=breaker" help:"Loads that fetched without the shared tier, by cause: breaker (open), timeout, down, tls, auth, noperm (ACL), oom, readonly (a replica), crossslot, moved (Cluster), loading, invalid (a value not ours), starved (this process waited for CPU), error."`
	FallbackTimeout   uint64 `metric:"fleet_fallbacks_total" labels:"cause=timeout"`
	FallbackDown      uint64 `metric:"fleet_fallbacks_total" labels:"cause=down"`
	FallbackTLS       uint64 `metric:"fleet_fallbacks_total" labels:"cause=tls"`
	FallbackAuth      uint64 `metric:"fleet_fallbacks_total" labels:"cause=auth"`
	FallbackNoPerm    uint64 `metric:"fleet_fallbacks_total" labels:"cause=noperm"`
	FallbackOOM       uint64 `metric:"fleet_fallbacks_total" labels:"cause=oom"`
	FallbackReadOnly  uint64 `metric:"fleet_fallbacks_total" labels:"cause=readonly"`
	FallbackCrossSlot uint64 `metric:"fleet_fallbacks_total" labels:"cause=crossslot"`
	FallbackMoved     uint64 `metric:"fleet_fallbacks_total" labels:"cause=moved"`
	FallbackLoading   uint64 `metric:"fleet_fallbacks_total" labels:"cause=loading"`
	FallbackInvalid   uint64 `metric:"fleet_fallbacks_total" labels:"cause=invalid"`
	FallbackStarved   uint64 `metric:"fleet_fallbacks_total" labels:"cause=starved"`
	FallbackError     uint64 `metric:"fleet_fallbacks_total" labels:"cause=error"`

	BreakerOpened  uint64 `metric:"fleet_breaker_opens_total" help:"Times the circuit breaker opened after consecutive Redis failures."`
	NewsReceived   uint64 `metric:"fleet_news_total" help:"Announcements of a snapshot committed to Redis (hints, checked with Redis before use)."`
	LeaderFailures uint64 `metric:"fleet_leader_failures_total" help:"Fetches that failed while this replica held the lock (the waiters were told at once)."`
	Backoffs       uint64 `metric:"fleet_backoffs_total" help:"Loads that did not fetch because the upstream had asked the fleet to wait (Retry-After, capped as a lone replica caps it)."`
	LeasesLost     uint64 `metric:"fleet_leases_lost_total" help:"Fetch locks that vanished or were taken over while this replica still held them: Redis evicted or lost them, or this process was paused past its lease."`
}

// fallbackCounter is the counter of each cause's fallbacks.
var fallbackCounter = map[string]func(*Stats) *uint64{
	"breaker": func(s *Stats) *uint64 { return &s.FallbackBreaker }, "timeout": func(s *Stats) *uint64 { return &s.FallbackTimeout },
	"down": func(s *Stats) *uint64 { return &s.FallbackDown }, "tls": func(s *Stats) *uint64 { return &s.FallbackTLS },
	"auth": func(s *Stats) *uint64 { return &s.FallbackAuth }, "noperm": func(s *Stats) *uint64 { return &s.FallbackNoPerm },
	"oom": func(s *Stats) *uint64 { return &s.FallbackOOM }, "readonly": func(s *Stats) *uint64 { return &s.FallbackReadOnly },
	"crossslot": func(s *Stats) *uint64 { return &s.FallbackCrossSlot }, "moved": func(s *Stats) *uint64 { return &s.FallbackMoved },
	"loading": func(s *Stats) *uint64 { return &s.FallbackLoading }, "invalid": func(s *Stats) *uint64 { return &s.FallbackInvalid },
	"starved": func(s *Stats) *uint64 { return &s.FallbackStarved }, "error": func(s *Stats) *uint64 { return &s.FallbackError },
}

// countFallback counts a fallback under its cause.
func (s *Stats) countFallback(c cause) {
	p, ok := fallbackCounter[c.name]
	if !ok {
		p = fallbackCounter["error"]
	}
	atomic.AddUint64(p(s), 1)
}

// Fallbacks is the number of loads that fetched without the shared tier,
// whatever the cause.
func (s Stats) Fallbacks() uint64 {
	var n uint64
	for _, p := range fallbackCounter {
		n += *p(&s)
	}
	return n
}

// loadStats copies every counter of s with atomic loads, whatever fields
// Stats has.
func loadStats(s *Stats) Stats {
	var out Stats
	src, dst := reflect.ValueOf(s).Elem(), reflect.ValueOf(&out).Elem()
	for i := range src.NumField() {
		dst.Field(i).SetUint(atomic.LoadUint64(src.Field(i).Addr().Interface().(*uint64)))
	}
	return out
}
