package web

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dunglas/httpsfv"

	"github.com/movies-dev/movies/pkg/fleet/fleettest"
	"github.com/movies-dev/movies/pkg/ghibli/ghiblitest"
)

// cacheStatusMember is one parsed member of Cache-Status.
type cacheStatusMember struct {
	name   string
	params map[string]any
}

// parseCacheStatus parses a Cache-Status field as RFC 9211 defines it, an
// RFC 8941 List, with a Structured Fields parser, and checks the grammar
// the RFC adds: each member an sf-token or sf-string naming a cache, each
// parameter of the type the RFC gives it.
func parseCacheStatus(tb testing.TB, h http.Header) []cacheStatusMember {
	tb.Helper()
	values := h.Values("Cache-Status")
	if len(values) == 0 {
		tb.Fatal("no Cache-Status")
	}
	list, err := httpsfv.UnmarshalList(values)
	if err != nil {
		tb.Fatalf("Cache-Status %q is not a Structured Field list: %v", values, err)
	}
	var out []cacheStatusMember
	for _, m := range list {
		item, ok := m.(httpsfv.Item)
		if !ok {
			tb.Fatalf("Cache-Status %q has an inner list", values)
		}
		var name string
		switch v := item.Value.(type) {
		case httpsfv.Token:
			name = string(v)
		case string:
			name = v
		default:
			tb.Fatalf("Cache-Status %q: member %v is neither a token nor a string", values, item.Value)
		}
		params := map[string]any{}
		for _, k := range item.Params.Names() {
			v, _ := item.Params.Get(k)
			var typeOK bool
			switch k {
			case "hit", "stored", "collapsed":
				_, typeOK = v.(bool)
			case "fwd":
				_, typeOK = v.(httpsfv.Token)
			case "fwd-status", "ttl":
				_, typeOK = v.(int64)
			case "key":
				_, typeOK = v.(string)
			case "detail":
				switch v.(type) {
				case httpsfv.Token, string:
					typeOK = true
				}
			default:
				typeOK = true // extensions are allowed
			}
			if !typeOK {
				tb.Errorf("Cache-Status %q: parameter %s=%v (%T) has the wrong type", values, k, v, v)
			}
			params[k] = v
		}
		out = append(out, cacheStatusMember{name, params})
	}
	return out
}

// ours returns this server's member, which must be the last (the one
// nearest the client that this server added).
func ours(tb testing.TB, h http.Header) cacheStatusMember {
	tb.Helper()
	ms := parseCacheStatus(tb, h)
	for _, m := range ms {
		if m.name == cacheStatusName {
			return m
		}
	}
	tb.Fatalf("Cache-Status %q has no member %q", h.Values("Cache-Status"), cacheStatusName)
	return cacheStatusMember{}
}

// kind is how a member says its request was served.
func (m cacheStatusMember) kind() string {
	switch {
	case m.params["hit"] == true:
		return "hit"
	case m.params["fwd"] == httpsfv.Token("miss") && m.params["collapsed"] == true:
		return "collapsed"
	case m.params["fwd"] == httpsfv.Token("miss"):
		return "miss"
	case m.params["fwd"] == httpsfv.Token("stale"):
		return "stale"
	}
	return "?"
}

// TestServer_CacheStatus: each catalogue response says how it was served.
// Of a burst of cold requests that coalesce on one fetch, exactly one says
// it missed and led the fetch, the rest that it joined the fetch (or hit,
// if they came after it); then a hit says so, with the seconds left that
// s-maxage gives; a 304 says the same; without -redis there is no detail.
func TestServer_CacheStatus(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	up.SetBehavior("", ghiblitest.Behavior{Latency: 300 * time.Millisecond})
	in := mustStart(t, Config{Upstream: up.URL, TTL: 30 * time.Second})
	t.Cleanup(testClient.CloseIdleConnections)

	const n = 32
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		kinds = map[string]int{}
	)
	for i := range n {
		path := "/movies/"
		if i%2 == 1 {
			path = "/api/v1/movies"
		}
		wg.Go(func() {
			resp, err := testClient.Get(in.URL + path)
			if err != nil {
				t.Errorf("GET: %v", err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			m := ours(t, resp.Header)
			if k := m.kind(); k != "hit" && m.params["fwd-status"] != int64(200) {
				t.Errorf("%s: %v without fwd-status=200", k, m.params)
			}
			if ttl, _ := m.params["ttl"].(int64); ttl < 0 || ttl > 30 {
				t.Errorf("ttl = %v, want 0 to 30", m.params["ttl"])
			}
			if _, ok := m.params["detail"]; ok {
				t.Errorf("detail %v without -redis", m.params["detail"])
			}
			mu.Lock()
			kinds[m.kind()]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if up.Requests("") != 2 {
		t.Fatalf("upstream saw %d requests, want one fetch (2)", up.Requests(""))
	}
	if kinds["miss"] != 1 || kinds["collapsed"] == 0 || kinds["miss"]+kinds["collapsed"]+kinds["hit"] != n {
		t.Errorf("cold burst of %d: %v, want 1 miss, some collapsed, the rest hits", n, kinds)
	}

	hit := doWith(t, in.URL+"/movies/", nil)
	m := ours(t, hit.header)
	if m.kind() != "hit" {
		t.Fatalf("warm request: Cache-Status %q, want a hit", hit.header.Values("Cache-Status"))
	}
	if want := "s-maxage=" + strconv.FormatInt(m.params["ttl"].(int64), 10) + ","; !strings.Contains(hit.header.Get("Cache-Control"), want) {
		t.Errorf("hit ttl=%v, Cache-Control %q: want the same seconds left", m.params["ttl"], hit.header.Get("Cache-Control"))
	}
	revalidated := doWith(t, in.URL+"/movies/", map[string]string{"If-None-Match": hit.header.Get("ETag")})
	if revalidated.status != http.StatusNotModified || ours(t, revalidated.header).kind() != "hit" {
		t.Errorf("revalidation: status %d, Cache-Status %q; want 304 and a hit", revalidated.status, revalidated.header.Values("Cache-Status"))
	}
}

// TestServer_CacheStatusWhenStaleOrFailing: a snapshot served past its TTL
// (-stale-if-error) says fwd=stale with a negative ttl; a 503, which the
// server made up itself, has no member (RFC 9211 asks none).
func TestServer_CacheStatusWhenStaleOrFailing(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	in := mustStart(t, Config{Upstream: up.URL, TTL: time.Second, UpstreamTimeout: 500 * time.Millisecond, StaleIfError: 3 * time.Second})
	t.Cleanup(testClient.CloseIdleConnections)
	mustAPI(t, in.URL)
	up.SetBehavior("", ghiblitest.Behavior{Status: 500})
	time.Sleep(2100 * time.Millisecond) // a second past the TTL

	for _, path := range []string{"/movies/", "/api/v1/movies"} {
		r := mustGet(t, in.URL+path)
		m := ours(t, r.header)
		if ttl, _ := m.params["ttl"].(int64); r.status != 200 || m.kind() != "stale" || ttl > -1 {
			t.Errorf("%s: status %d, Cache-Status %q; want 200, fwd=stale and ttl at most -1", path, r.status, r.header.Values("Cache-Status"))
		}
	}
	waitUntil(t, 10*time.Second, "a 503 past stale-if-error", func() bool {
		r := mustGet(t, in.URL+"/api/v1/movies")
		if r.status == http.StatusServiceUnavailable && len(r.header.Values("Cache-Status")) != 0 {
			t.Errorf("503 with Cache-Status %q", r.header.Values("Cache-Status"))
		}
		return r.status == http.StatusServiceUnavailable
	})
}

// TestFleet_CacheStatusSaysWhereTheSnapshotCameFrom: in a fleet, the
// replica that fetched says detail=lead, one that read the snapshot from
// Redis detail=fleet, on its miss and on its later hits alike.
func TestFleet_CacheStatusSaysWhereTheSnapshotCameFrom(t *testing.T) {
	t.Parallel()
	r := fleettest.Start(t)
	up := startFake(t)
	cfg := fleetConfig(up, r)
	a, b := mustStart(t, cfg), mustStart(t, cfg)
	t.Cleanup(testClient.CloseIdleConnections)
	// b hears of a's commit and may be adopting it when its first request
	// comes: that request joins the adoption (collapsed), or comes after
	// it (a hit).
	for _, c := range []struct {
		in    *instance
		kinds string
		from  string
	}{{a, "miss", "lead"}, {a, "hit", "lead"}, {b, "miss collapsed hit", "fleet"}, {b, "hit", "fleet"}} {
		resp := mustGet(t, c.in.URL+"/api/v1/movies")
		m := ours(t, resp.header)
		if !strings.Contains(c.kinds, m.kind()) || m.params["detail"] != httpsfv.Token(c.from) {
			t.Errorf("Cache-Status %q, want %s with detail=%s", resp.header.Values("Cache-Status"), c.kinds, c.from)
		}
	}
	if up.Requests("") != 2 {
		t.Errorf("upstream saw %d requests, want one fetch (2)", up.Requests(""))
	}
}
