package web

import (
	"strconv"
	"time"

	"github.com/movies-dev/movies/pkg/cache"
	"github.com/movies-dev/movies/pkg/fleet"
)

// cacheStatusName identifies this server's member of Cache-Status (RFC
// 9211), a list each cache on the way appends its own member to. The
// server is a cache in front of the Ghibli API, so it says how it handled
// each request for the catalogue:
//
//	movies; hit; ttl=37                                 fresh in memory
//	movies; fwd=miss; fwd-status=200; ttl=60            waited for its own load
//	movies; fwd=miss; fwd-status=200; collapsed; ttl=60 joined another's load
//	movies; fwd=stale; ttl=-12                          -stale-if-error
//
// ttl is the whole seconds the snapshot has left, as Cache-Control's
// s-maxage says (negative once stale). With -redis, detail says where the
// snapshot came from: fleet (read from Redis, another replica fetched it),
// lead (this replica fetched it for the fleet), hedge (fetched beside a
// late leader) or alone (Redis failed). Errors carry no member: the RFC
// asks none of a response the cache made up itself.
const cacheStatusName = "movies"

// sources are the values of cache.Snapshot.Origin: fleet.Source's, and ""
// for a replica without -redis.
var sources = []fleet.Source{"", fleet.FromFleet, fleet.FromLead, fleet.FromHedge, fleet.FromAlone}

// hitStatus holds the Cache-Status value of a hit for each of sources and
// whole second left (0 to MaxTTL), formatted once: a hit assigns it.
var hitStatus = func() [][][]string {
	m := make([][][]string, len(sources))
	for j, src := range sources {
		t := make([][]string, int(MaxTTL/time.Second)+1)
		for i := range t {
			t[i] = []string{cacheStatus(cache.Hit, string(src), i)}
		}
		m[j] = t
	}
	return m
}()

// cacheStatusFor returns the Cache-Status value of a fresh snapshot with
// left whole seconds to live.
func cacheStatusFor(served cache.Served, origin string, left int) []string {
	if served == cache.Hit && left >= 0 && left <= int(MaxTTL/time.Second) {
		for j, src := range sources {
			if string(src) == origin {
				return hitStatus[j][left]
			}
		}
	}
	return []string{cacheStatus(served, origin, left)}
}

// cacheStatus formats one member: parameters in the RFC's order.
func cacheStatus(served cache.Served, origin string, ttl int) string {
	b := []byte(cacheStatusName)
	switch served {
	case cache.Hit:
		b = append(b, "; hit"...)
	case cache.Missed:
		b = append(b, "; fwd=miss; fwd-status=200"...)
	case cache.Collapsed:
		b = append(b, "; fwd=miss; fwd-status=200; collapsed"...)
	}
	b = append(b, "; ttl="...)
	b = strconv.AppendInt(b, int64(ttl), 10)
	return string(appendDetail(b, origin))
}

// staleCacheStatus is the value for a snapshot served past its TTL,
// expired for expired (so ttl is negative, in whole seconds).
func staleCacheStatus(origin string, expired time.Duration) []string {
	b := append([]byte(cacheStatusName), "; fwd=stale; ttl="...)
	b = strconv.AppendInt(b, -int64(expired/time.Second), 10)
	return []string{string(appendDetail(b, origin))}
}

// appendDetail appends the snapshot's source. Origin is one of sources
// (sf-tokens); anything else is dropped rather than risk a malformed
// field.
func appendDetail(b []byte, origin string) []byte {
	if origin == "" {
		return b
	}
	for _, src := range sources {
		if string(src) == origin {
			return append(append(b, "; detail="...), origin...)
		}
	}
	return b
}
