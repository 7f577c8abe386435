package web

import (
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/movies-dev/movies/metrics"
	"github.com/movies-dev/movies/pkg/cache"
	"github.com/movies-dev/movies/pkg/render"
	"github.com/movies-dev/movies/pkg/snapshot"
)

// getHead is the methods every route answers; the middleware answers any
// other with 405.
var getHead = []string{http.MethodGet, http.MethodHead}

// newRouter is an echo router behind the server's one middleware and
// error handler: whatever listener it serves, every response carries a
// request id and the security headers, and other methods get 405.
func (s *Server) newRouter() *echo.Echo {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = s.handleError
	e.Use(s.middleware)
	return e
}

// routes builds the routers of the two listeners, the main one and the
// metrics one (-metrics-addr), and the metric recorder of each route
// (s.routeMetrics). exposition is the Prometheus handler: on the main
// router unless Config.SeparateMetrics, always on the metrics one.
func (s *Server) routes(exposition http.Handler) (main, metricsOnly *echo.Echo) {
	e := s.newRouter()
	e.Match(getHead, "/movies/", s.moviesPage)
	e.Match(getHead, "/movies", func(c echo.Context) error {
		target := "/movies/"
		if q := c.Request().URL.RawQuery; q != "" {
			target += "?" + q
		}
		return c.Redirect(http.StatusPermanentRedirect, target)
	})
	e.Match(getHead, "/api/v1/movies", s.moviesAPI)
	if !s.cfg.SeparateMetrics {
		e.Match(getHead, "/metrics", echo.WrapHandler(exposition))
	}
	// Every browser asks for a favicon and every crawler for robots.txt:
	// constant answers, cacheable for a day, rather than a 404 per visit.
	e.Match(getHead, "/robots.txt", asset(render.RobotsTxtContentType, render.RobotsTxt))
	e.Match(getHead, "/favicon.ico", asset(render.FaviconContentType, render.Favicon))
	// Probes must read the replica's state now, never a copy: a cache that
	// kept /readyz (Varnish's builtin VCL did, for 120 s) would report
	// "ready" through a drain.
	e.Match(getHead, "/healthz", func(c echo.Context) error {
		c.Response().Header()["Cache-Control"] = noStore
		return c.String(http.StatusOK, "ok\n")
	})
	e.Match(getHead, "/readyz", func(c echo.Context) error {
		c.Response().Header()["Cache-Control"] = noStore
		if !s.ready.Load() {
			return c.String(http.StatusServiceUnavailable, "shutting down\n")
		}
		return c.String(http.StatusOK, "ok\n")
	})

	m := s.newRouter()
	m.Match(getHead, "/metrics", echo.WrapHandler(exposition))

	s.routeMetrics = map[string]*metrics.HTTPRoute{otherRoute: s.metrics.HTTPRoute(otherRoute)}
	for _, r := range append(e.Routes(), m.Routes()...) {
		if s.routeMetrics[r.Path] == nil {
			s.routeMetrics[r.Path] = s.metrics.HTTPRoute(r.Path)
		}
	}
	return e, m
}

// noStore is the Cache-Control value of responses no cache may keep: the
// probes and the metrics, which describe this replica at this moment.
var noStore = []string{"no-store"}

// asset answers with constant bytes.
func asset(contentType string, body []byte) echo.HandlerFunc {
	return func(c echo.Context) error {
		c.Response().Header().Set("Cache-Control", render.AssetCacheControl)
		return c.Blob(http.StatusOK, contentType, body)
	}
}

func (s *Server) moviesPage(c echo.Context) error {
	ctx := requestContext(c)
	snap, err := s.cache.Get(ctx)
	if err != nil {
		return err
	}
	if s.traced {
		linkFetch(ctx, snap)
	}
	if snap.Stale {
		b, err := snap.Value.StalePage()
		if err != nil {
			return err
		}
		s.countServed(snap)
		return writeStale(c, snap, s.cfg.TTL, b, "text/html; charset=utf-8")
	}
	return s.write(c, snap, snap.Value.HTML)
}

func (s *Server) moviesAPI(c echo.Context) error {
	ctx := requestContext(c)
	snap, err := s.cache.Get(ctx)
	if err != nil {
		return err
	}
	if s.traced {
		linkFetch(ctx, snap)
	}
	if snap.Stale {
		b, err := snap.Value.StaleJSON(time.Now())
		if err != nil {
			return err
		}
		s.countServed(snap)
		return writeStale(c, snap, s.cfg.TTL, b, "application/json")
	}
	return s.write(c, snap, snap.Value.JSON)
}

// varyAcceptEncoding is the Vary value of every catalogue response, shared
// by all of them: the slice has len == cap, so anyone appending to a
// response's header gets a copy, never our array.
var varyAcceptEncoding = []string{"Accept-Encoding"}

// cacheControlValues holds the Cache-Control value for every whole second
// a snapshot can have left (TTL is at most MaxTTL), formatted once. Each directive is there for a
// cache that was seen to need it (docs/caching.md, "Behind a cache or CDN"):
//
//   - max-age=0, must-revalidate: browsers revalidate on every use. A
//     browser behind nginx is sent the stored response's headers with a
//     fresh Date and an Age nginx never updates, so any browser lifetime
//     would be counted from the wrong moment; revalidating costs a 304.
//   - s-maxage: shared caches (Varnish, CDNs, any RFC 9111 cache) keep the
//     copy for the whole seconds the snapshot has left, counted from when
//     they receive it. No Age header goes with it: an origin's response is
//     not aged (RFC 9111 section 5.1), and Age with a lifetime that is
//     already the time left would count the age twice.
//   - stale-while-revalidate=0, stale-if-error=0: no grace. Varnish
//     otherwise serves an expired copy for 10 s while it refetches, and
//     nginx honours non-zero values even without proxy_cache_use_stale.
var cacheControlValues = func() [][]string {
	t := make([][]string, int(MaxTTL/time.Second)+1)
	for i := range t {
		t[i] = []string{"public, max-age=0, s-maxage=" + strconv.Itoa(i) +
			", must-revalidate, stale-while-revalidate=0, stale-if-error=0"}
	}
	return t
}()

// accelExpires is the X-Accel-Expires value of one snapshot: nginx's own
// lifetime header, which overrides Cache-Control and, unlike it, is read
// from a 304 (a 304 without a lifetime makes nginx re-apply its stored
// copy's lifetime from now: the copy would outlive the snapshot). nginx
// hides it from clients. It is absolute, "@" and the Unix second, and nginx
// keeps a copy until one whole second past it, so it names the second
// before the one in which the snapshot's TTL ends. That needs nginx's
// clock to agree with ours to within that margin, as NTP keeps them.
type accelExpires struct {
	fetched time.Time
	value   []string
}

// accelExpiresFor returns the header value for the snapshot fetched at
// fetched, formatted once per snapshot.
func (s *Server) accelExpiresFor(fetched time.Time) []string {
	if p := s.accel.Load(); p != nil && p.fetched.Equal(fetched) {
		return p.value
	}
	end := fetched.Add(s.cfg.TTL).Unix() - 1 // Unix() rounds down
	p := &accelExpires{fetched: fetched, value: []string{"@" + strconv.FormatInt(end, 10)}}
	s.accel.Store(p)
	return p.value
}

// servedFrom is a snapshot requests are served from, and its source.
type servedFrom struct {
	snap   *snapshot.Snapshot
	origin string
}

// countServed counts a request served from snap, and when snap is not the
// one served last, observes how many requests that one served
// (movies_snapshot_requests): snapshots only move forward, so the first
// request served from the next one retires it. A request still being
// served from it after that is not counted: a few, against thousands.
// A hit pays one atomic add and one atomic load.
func (s *Server) countServed(snap cache.Snapshot[*snapshot.Snapshot]) {
	snap.Value.CountRequest()
	last := s.serving.Load()
	if last != nil && last.snap == snap.Value {
		return
	}
	if s.serving.CompareAndSwap(last, &servedFrom{snap.Value, snap.Origin}) && last != nil {
		s.metrics.ObserveSnapshot(last.origin, last.snap.Requests())
	}
}

// write serves a fresh snapshot: the hit path. Everything it sends was
// prepared when the snapshot was loaded, or once per snapshot.
//
// The caching headers let no copy, in any cache between here and the
// reader, outlive the snapshot's TTL: see cacheControlValues and
// accelExpires. A 304 carries them too, so a cache revalidating its copy
// learns the new snapshot's lifetime; the validators are over the data, so
// unchanged data revalidates across snapshots.
func (s *Server) write(c echo.Context, snap cache.Snapshot[*snapshot.Snapshot], r *snapshot.Representation) error {
	req := c.Request()
	v := r.Negotiate(req.Header[echo.HeaderAcceptEncoding])
	left := max(s.cfg.TTL-snap.Age(time.Now()), 0) / time.Second
	h := c.Response().Header()
	h["Vary"] = varyAcceptEncoding
	h["Etag"] = v.ETagHeader
	h["Last-Modified"] = r.LastModified
	h["Cache-Control"] = cacheControlValues[min(int(left), len(cacheControlValues)-1)]
	h["X-Accel-Expires"] = s.accelExpiresFor(snap.Fetched)
	h["Cache-Status"] = cacheStatusFor(snap.Served, snap.Origin, int(left))
	s.countServed(snap)
	if r.NotModified(req.Header, v) {
		c.Response().WriteHeader(http.StatusNotModified)
		return nil
	}
	h["Content-Type"] = r.ContentType
	h["Content-Length"] = v.ContentLength
	if v.Encoding != nil {
		h["Content-Encoding"] = v.Encoding
	}
	c.Response().WriteHeader(http.StatusOK)
	_, err := c.Response().Write(v.Body)
	return err
}

// writeStale serves a snapshot past its TTL (-stale-if-error): rare and
// degraded, so rendered on demand, uncompressed, and never to be cached.
func writeStale(c echo.Context, snap cache.Snapshot[*snapshot.Snapshot], ttl time.Duration, body []byte, contentType string) error {
	h := c.Response().Header()
	h.Set(echo.HeaderContentType, contentType)
	h.Set(echo.HeaderContentLength, strconv.Itoa(len(body)))
	h.Set("Last-Modified", snap.Fetched.UTC().Format(http.TimeFormat))
	h.Set("Cache-Control", "no-store")
	h["Cache-Status"] = staleCacheStatus(snap.Origin, snap.Age(time.Now())-ttl)
	c.Response().WriteHeader(http.StatusOK)
	_, err := c.Response().Write(body)
	return err
}

// contentSecurityPolicy is the policy for every response: the page has no
// script and one style block, admitted by hash.
func contentSecurityPolicy() string {
	return "default-src 'none'; style-src " + render.StyleHash() +
		"; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
}
