package web

import (
	"encoding/json"
	"net/http"
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
// snapshot, the others serve it within moments, not at their own expiry.
func TestFleet_NewsReplacesAnOlderSnapshot(t *testing.T) {
	t.Parallel()
	r := fleettest.Start(t)
	up := startFake(t)
	cfg := fleetConfig(up, r)
	a, b := mustStart(t, cfg), mustStart(t, cfg)
	t.Cleanup(testClient.CloseIdleConnections)
	mustAPI(t, a.URL)
	mustAPI(t, b.URL)
	// A new replica finds no shared snapshot (the key is gone, as after a
	// Redis restart) and fetches changed data.
	up.Update(func(d *builtin.Data) { d.Films[0]["title"] = "Castle in the Sky (new)" })
	c := r.Client()
	defer c.Close()
	c.Del(t.Context(), "movies:snapshot")
	third := mustStart(t, cfg)
	const newTitle = "Castle in the Sky (new)"
	if got := mustAPI(t, third.URL).Movies[0].Title; got != newTitle {
		t.Fatalf("third replica served %q, want its own new fetch", got)
	}
	committed := time.Now()
	for {
		got := mustAPI(t, b.URL).Movies[0].Title
		if got == newTitle {
			if d := time.Since(committed); d > 250*time.Millisecond {
				t.Errorf("replica b took %v to adopt the newer snapshot, want under 250ms", d)
			}
			break
		}
		if time.Since(committed) > time.Second {
			t.Fatalf("replica b still serves %q a second after the newer snapshot was committed", got)
		}
		time.Sleep(10 * time.Millisecond)
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

// TestFleet_ALoadOvertakenByNewsFetchesNothing: a load the cache started
// for its old snapshot (an early refresh) that news overtakes, bringing a
// newer one another replica fetched, returns that one: asking the shared
// tier for something newer still would make a second fleet fetch moments
// after the first.
func TestFleet_ALoadOvertakenByNewsFetchesNothing(t *testing.T) {
	t.Parallel()
	r := fleettest.Start(t)
	up := startFake(t)
	cfg := fleetConfig(up, r)
	a, b := mustStart(t, cfg), mustStart(t, cfg)
	t.Cleanup(testClient.CloseIdleConnections)
	mustAPI(t, a.URL)
	started := time.Now() // a's cache starts a load for the snapshot it has
	// b fetches a newer one (the shared one is gone, as if it expired)
	// and a hears of it.
	c := r.Client()
	defer c.Close()
	c.Del(t.Context(), "movies:snapshot")
	mustAPI(t, b.URL)
	l := a.srv.adopter.loader
	waitUntil(t, 5*time.Second, "a adopts b's snapshot", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return !l.last.adopted.IsZero()
	})
	fetches := up.Requests(builtin.Films)
	s, _, err := l.LoadDated(t.Context(), started)
	if err != nil {
		t.Fatal(err)
	}
	if got := up.Requests(builtin.Films) - fetches; got != 0 {
		t.Errorf("the overtaken load made %d upstream fetches, want none", got)
	}
	if cached, _ := a.srv.cache.Peek(); s != cached.Value {
		t.Errorf("the overtaken load returned a snapshot other than the adopted one")
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
	var env map[string]any
	if err := json.Unmarshal([]byte(c.Get(t.Context(), "movies:snapshot").Val()), &env); err != nil {
		t.Fatal(err)
	}
	env["fetched_at_ms"] = time.Now().Add(time.Hour).UnixMilli()
	b, _ := json.Marshal(env)
	if err := c.SetArgs(t.Context(), "movies:snapshot", b, redis.SetArgs{KeepTTL: true}).Err(); err != nil {
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

// TestFleet_ABogusGenerationDoesNotStopAdoptions: the generations news
// carries come from Redis unchecked. A huge one (a key set by hand, a
// buggy writer) is settled like any other, and must not make the replica
// deaf to the real generations after it.
func TestFleet_ABogusGenerationDoesNotStopAdoptions(t *testing.T) {
	t.Parallel()
	r := fleettest.Start(t)
	up := startFake(t)
	cfg := fleetConfig(up, r)
	a, b := mustStart(t, cfg), mustStart(t, cfg)
	t.Cleanup(testClient.CloseIdleConnections)
	mustAPI(t, a.URL)
	mustAPI(t, b.URL)
	c := r.Client()
	defer c.Close()
	const bogus = 9_000_000_000_000_000_000
	was := c.Get(t.Context(), "movies:snapshot:gen").Val()
	c.Set(t.Context(), "movies:snapshot:gen", uint64(bogus), 0)
	waitUntil(t, 5*time.Second, "replica b hears of the bogus generation", func() bool { return b.srv.adopter.settled.Load() == bogus })
	// The key is put right, and a third replica commits changed data.
	c.Set(t.Context(), "movies:snapshot:gen", was, 0)
	c.Del(t.Context(), "movies:snapshot")
	up.Update(func(d *builtin.Data) { d.Films[0]["title"] = "Castle in the Sky (new)" })
	if got := mustAPI(t, mustStart(t, cfg).URL).Movies[0].Title; got != "Castle in the Sky (new)" {
		t.Fatalf("third replica served %q, want its own new fetch", got)
	}
	waitUntil(t, 2*time.Second, "replica b adopts the newer snapshot (else the bogus generation silenced it)", func() bool {
		return mustAPI(t, b.URL).Movies[0].Title == "Castle in the Sky (new)"
	})
}

// TestFleet_AnAdoptionRedisFailedIsTriedAgain: news the adopter could not
// act on because Redis failed is not settled, so the next poll's repeat of
// it is acted on; news acted on is settled, so repeats cost nothing.
func TestFleet_AnAdoptionRedisFailedIsTriedAgain(t *testing.T) {
	t.Parallel()
	r := fleettest.Start(t)
	up := startFake(t)
	b := mustStart(t, fleetConfig(up, r))
	t.Cleanup(testClient.CloseIdleConnections)
	mustAPI(t, b.URL)
	ad := b.srv.adopter
	idle := func() bool { return !ad.busy.Load() }
	const gen = 1 << 62 // news of a generation nobody committed
	waitUntil(t, 5*time.Second, "no adoption running", idle)
	readErrors := b.srv.tier.Stats().ReadErrors
	r.Stop() // connections open, no answers
	ad.news(gen)
	waitUntil(t, 5*time.Second, "the adoption's read gives up", idle)
	r.Cont()
	if b.srv.tier.Stats().ReadErrors == readErrors {
		t.Fatal("the adoption's read did not fail: the test did not put Redis out of reach")
	}
	if got := ad.settled.Load(); got == gen {
		t.Fatal("news the adopter could not read Redis for was settled: its repeats would be ignored")
	}
	// Redis answers again: a repeat of the news is acted on, and settled.
	waitUntil(t, 10*time.Second, "the repeated news acted on after Redis came back", func() bool {
		ad.news(gen)
		return ad.settled.Load() == gen
	})
}
