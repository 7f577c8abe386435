package web

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/movies-dev/movies/pkg/fleet/fleettest"
	"github.com/movies-dev/movies/pkg/ghibli"
	"github.com/movies-dev/movies/pkg/ghibli/builtin"
	"github.com/movies-dev/movies/pkg/ghibli/ghiblitest"
)

// fleetConfig is a replica of a fleet on r over up, with a 10s TTL. Its
// Redis calls may take up to 2s: these tests count fetches, and a loaded
// machine running them under -race must not turn a slow call into a
// fallback fetch (the fleet package's tests pin the 100ms bound).
func fleetConfig(up *ghiblitest.Server, r *fleettest.Redis) Config {
	return Config{Upstream: up.URL, Redis: r.URL, TTL: 10 * time.Second, redisCallTimeout: 2 * time.Second}
}

// TestFleet_ReplicasShareOneFetch: replicas on one Redis make one upstream
// fetch between them, serve the same snapshot, and a replica that starts
// later takes it from Redis instead of the upstream.
func TestFleet_ReplicasShareOneFetch(t *testing.T) {
	t.Parallel()
	r := fleettest.Start(t)
	up := startFake(t)
	cfg := fleetConfig(up, r)
	a, b := mustStart(t, cfg), mustStart(t, cfg)
	t.Cleanup(testClient.CloseIdleConnections)
	pageA, pageB := mustGet(t, a.URL+"/api/v1/movies"), mustGet(t, b.URL+"/api/v1/movies")
	late := mustStart(t, cfg)
	pageLate := mustGet(t, late.URL+"/api/v1/movies")
	if got := up.Requests(""); got != 2 {
		t.Errorf("3 replicas made %d upstream requests, want 2 (one fetch: /films and /people)", got)
	}
	if n := strings.Count(pageA.body, `"title"`); pageA.status != 200 || n != 22 {
		t.Fatalf("replica a: status %d with %d films, want 200 with 22", pageA.status, n)
	}
	for name, page := range map[string]response{"b": pageB, "late": pageLate} {
		if page.status != 200 || page.body != pageA.body || page.header.Get("ETag") != pageA.header.Get("ETag") {
			t.Errorf("replica %s: status %d, ETag %s, want a's page (ETag %s)", name, page.status, page.header.Get("ETag"), pageA.header.Get("ETag"))
		}
	}
	if m := mustMetrics(t, late.URL); m[`movies_fleet_reads_total{result="hit"}`] != 1 {
		t.Errorf("late replica: shared hits = %v, want 1", m[`movies_fleet_reads_total{result="hit"}`])
	}
}

// TestFleet_NewsReplacesAnOlderSnapshot: when one replica fetches a newer
// snapshot, the others take it at once and serve it from the switch (a
// second before their own snapshot's deadline), all at the same instant,
// not at their own expiry and not whenever each heard of it.
func TestFleet_NewsReplacesAnOlderSnapshot(t *testing.T) {
	t.Parallel()
	r := fleettest.Start(t)
	up := startFake(t)
	cfg := fleetConfig(up, r)
	cfg.TTL = 4 * time.Second
	a, b := mustStart(t, cfg), mustStart(t, cfg)
	t.Cleanup(testClient.CloseIdleConnections)
	mustAPI(t, a.URL)
	mustAPI(t, b.URL)
	held, _ := b.srv.cache.Peek()
	// A new replica finds no shared snapshot (the key is gone, as after a
	// Redis restart) and fetches changed data.
	up.Update(func(d *builtin.Data) { d.Films[0]["title"] = "Castle in the Sky (new)" })
	c := r.Client()
	defer c.Close()
	c.Del(t.Context(), namespace(a.srv.cfg)+":snapshot")
	third := mustStart(t, cfg)
	const newTitle = "Castle in the Sky (new)"
	if got := mustAPI(t, third.URL).Movies[0].Title; got != newTitle {
		t.Fatalf("third replica served %q, want its own new fetch", got)
	}
	switchAt := held.Fetched.Add(cfg.TTL - time.Second)
	waitUntil(t, 5*time.Second, "replica b serves the newer snapshot", func() bool {
		return mustAPI(t, b.URL).Movies[0].Title == newTitle
	})
	if d := time.Since(switchAt); d < 0 || d > 250*time.Millisecond {
		t.Errorf("replica b switched %v from its switch point, want at it (within 250ms)", d)
	}
	if st := b.srv.cache.Stats(); st.Adopted == 0 {
		t.Errorf("replica b's cache stats %+v, want the snapshot adopted from the news", st)
	}
}

// TestDecodeShared_RejectsWhatWeNeverWrite: data in Redis is checked like
// upstream data, and more strictly: only what this program writes passes.
func TestDecodeShared_RejectsWhatWeNeverWrite(t *testing.T) {
	good, _ := json.Marshal([]ghibli.Movie{{ID: "1", Title: "Totoro", People: []ghibli.Cast{{ID: "p", Name: "Mei"}}}})
	if _, err := decodeShared(good); err != nil {
		t.Fatalf("decodeShared(our own) = %v", err)
	}
	for name, b := range map[string]string{
		"invalid UTF-8":   "[{\"ID\":\"1\",\"Title\":\"\xff\"}]",
		"markup":          `[{"ID":"1","Title":"<script>alert(1)</script>"}]`,
		"control":         `[{"ID":"1","Title":"a\u0007b"}]`,
		"unknown field":   `[{"ID":"1","Title":"x","Evil":true}]`,
		"wrong type":      `{"ID":"1"}`,
		"empty":           `[]`,
		"no title":        `[{"ID":"1"}]`,
		"trailing":        `[{"ID":"1","Title":"x"}] []`,
		"person no id":    `[{"ID":"1","Title":"x","People":[{"Name":"y"}]}]`,
		"not JSON at all": `PONG`,
	} {
		if _, err := decodeShared([]byte(b)); err == nil {
			t.Errorf("decodeShared(%s) accepted it", name)
		}
	}
}

// TestFleet_HitsStayLocal: with the shared tier on, a hit reads nothing
// from Redis.
func TestFleet_HitsStayLocal(t *testing.T) {
	t.Parallel()
	r := fleettest.Start(t)
	up := startFake(t)
	in := mustStart(t, fleetConfig(up, r))
	t.Cleanup(testClient.CloseIdleConnections)
	mustAPI(t, in.URL)
	reads := func() float64 {
		m := mustMetrics(t, in.URL)
		return m[`movies_fleet_reads_total{result="hit"}`] + m[`movies_fleet_reads_total{result="miss"}`] + m[`movies_fleet_reads_total{result="error"}`]
	}
	before := reads()
	for range 200 {
		if r := mustGet(t, in.URL+"/movies/"); r.status != 200 {
			t.Fatalf("status %d", r.status)
		}
	}
	if after := reads(); after != before {
		t.Errorf("200 hits made %v shared reads, want 0", after-before)
	}
}

// TestFleet_AWritersClockIsNotTrusted: the fetch time in a shared snapshot
// is on its writer's clock, which may run ahead of ours: it must not make a
// Last-Modified in the future (a cache would then answer 304 to an
// If-Modified-Since sent after later data).
func TestFleet_AWritersClockIsNotTrusted(t *testing.T) {
	t.Parallel()
	r := fleettest.Start(t)
	up := startFake(t)
	cfg := fleetConfig(up, r)
	a := mustStart(t, cfg)
	t.Cleanup(testClient.CloseIdleConnections)
	mustAPI(t, a.URL)
	// Rewrite the snapshot as a writer an hour ahead would have.
	c := r.Client()
	defer c.Close()
	// The header is "<version> <fetch start ms> <took ms>\n" (pkg/fleet).
	head, data, _ := strings.Cut(c.Get(t.Context(), namespace(a.srv.cfg)+":snapshot").Val(), "\n")
	f := strings.Fields(head)
	if len(f) != 3 {
		t.Fatalf("the shared snapshot's header is %q, want three fields", head)
	}
	f[1] = strconv.FormatInt(time.Now().Add(time.Hour).UnixMilli(), 10)
	b := strings.Join(f, " ") + "\n" + data
	if err := c.SetArgs(t.Context(), namespace(a.srv.cfg)+":snapshot", b, redis.SetArgs{KeepTTL: true}).Err(); err != nil {
		t.Fatal(err)
	}
	late := mustStart(t, cfg)
	page := mustGet(t, late.URL+"/movies/")
	if got := up.Requests(""); got != 2 {
		t.Fatalf("the replicas made %d upstream requests, want 2: the late one should take the shared snapshot; its log:\n%s", got, late.log)
	}
	lm, err1 := http.ParseTime(page.header.Get("Last-Modified"))
	date, err2 := http.ParseTime(page.header.Get("Date"))
	if err1 != nil || err2 != nil {
		t.Fatalf("Last-Modified %q, Date %q: %v %v", page.header.Get("Last-Modified"), page.header.Get("Date"), err1, err2)
	}
	if lm.After(date) {
		t.Errorf("Last-Modified %v is after Date %v: the writer's clock leaked into it", lm, date)
	}
}

// TestFleet_FleetsKeepToTheirOwnNamespace: two fleets on one Redis with
// different upstreams, or one fleet whose -ttl is being changed, never
// serve each other's snapshots nor reject them as invalid.
func TestFleet_FleetsKeepToTheirOwnNamespace(t *testing.T) {
	t.Parallel()
	r := fleettest.Start(t)
	up1, up2 := startFake(t), startFake(t)
	up2.Update(func(d *builtin.Data) { d.Films[0]["title"] = "Only upstream 2" })
	t.Cleanup(testClient.CloseIdleConnections)
	one := mustStart(t, fleetConfig(up1, r))
	two := mustStart(t, fleetConfig(up2, r))
	cfg3 := fleetConfig(up1, r)
	cfg3.TTL = 4 * time.Second // a rolling change of -ttl
	three := mustStart(t, cfg3)
	mustAPI(t, one.URL)
	if got := mustAPI(t, two.URL).Movies[0].Title; got != "Only upstream 2" {
		t.Errorf("the second fleet served %q, want its own upstream's data", got)
	}
	mustAPI(t, three.URL)
	if got := two.log.count("upstream fetch"); got != 1 {
		t.Errorf("the second fleet made %d fetches, want its own 1", got)
	}
	if got := one.log.count("upstream fetch") + three.log.count("upstream fetch"); got != 2 {
		t.Errorf("the first upstream's replicas made %d fetches, want 2: one per TTL's namespace", got)
	}
	for _, in := range []*instance{one, two, three} {
		if n := in.log.count("rejected the shared snapshot"); n != 0 {
			t.Errorf("a replica logged %d rejections of another fleet's snapshot", n)
		}
	}
}
