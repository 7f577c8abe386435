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

// routes builds the echo router over the server's handlers, and the
// metric recorder of each route (s.routeMetrics).
func (s *Server) routes() *echo.Echo {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = s.handleError
	e.Use(s.middleware)

	getHead := []string{http.MethodGet, http.MethodHead}
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
		e.Match(getHead, "/metrics", echo.WrapHandler(s.metricsHandler))
	}
	// Every browser asks for a favicon and every crawler for robots.txt:
	// constant answers, cacheable for a day, rather than a 404 per visit.
	e.Match(getHead, "/robots.txt", asset(render.RobotsTxtContentType, render.RobotsTxt))
	e.Match(getHead, "/favicon.ico", asset(render.FaviconContentType, render.Favicon))
	e.Match(getHead, "/healthz", func(c echo.Context) error { return c.String(http.StatusOK, "ok\n") })
	e.Match(getHead, "/readyz", func(c echo.Context) error {
		if !s.ready.Load() {
			return c.String(http.StatusServiceUnavailable, "shutting down\n")
		}
		return c.String(http.StatusOK, "ok\n")
	})
	s.routeMetrics = map[string]*metrics.HTTPRoute{otherRoute: s.metrics.HTTPRoute(otherRoute)}
	for _, r := range e.Routes() {
		if s.routeMetrics[r.Path] == nil {
			s.routeMetrics[r.Path] = s.metrics.HTTPRoute(r.Path)
		}
	}
	return e
}

// asset answers with constant bytes.
func asset(contentType string, body []byte) echo.HandlerFunc {
	return func(c echo.Context) error {
		c.Response().Header().Set("Cache-Control", render.AssetCacheControl)
		return c.Blob(http.StatusOK, contentType, body)
	}
}

func (s *Server) moviesPage(c echo.Context) error {
	snap, err := s.cache.Get(requestContext(c))
	if err != nil {
		return err
	}
	if snap.Stale {
		b, err := snap.Value.StalePage()
		if err != nil {
			return err
		}
		return writeStale(c, snap, b, "text/html; charset=utf-8")
	}
	return s.write(c, snap, snap.Value.HTML)
}

func (s *Server) moviesAPI(c echo.Context) error {
	snap, err := s.cache.Get(requestContext(c))
	if err != nil {
		return err
	}
	if snap.Stale {
		b, err := snap.Value.StaleJSON(time.Now())
		if err != nil {
			return err
		}
		return writeStale(c, snap, b, "application/json")
	}
	return s.write(c, snap, snap.Value.JSON)
}

// Header values shared by every response. Each slice has len == cap, so
// anyone appending to a response's header gets a copy, never our array.
var varyAcceptEncoding = []string{"Accept-Encoding"}

// Cache-Control and Age values for every whole second a snapshot can live
// (TTL is at most MaxTTL), formatted once.
var (
	cacheControlValues = secondTable(func(n int) string {
		return "public, max-age=" + strconv.Itoa(n) + ", must-revalidate"
	})
	ageValues = secondTable(strconv.Itoa)
)

func secondTable(f func(int) string) [][]string {
	t := make([][]string, int(MaxTTL/time.Second)+1)
	for i := range t {
		t[i] = []string{f(i)}
	}
	return t
}

// write serves a fresh snapshot: the hit path. Everything it sends was
// prepared when the snapshot was loaded.
//
// The caching headers tell downstream caches the truth: max-age is the
// whole seconds left of the TTL and Age the whole seconds since the fetch
// started. A cache that honours Age (RFC 9111) then drops its copy early,
// one that ignores it drops it at the TTL; neither can outlive the promise.
func (s *Server) write(c echo.Context, snap cache.Snapshot[*snapshot.Snapshot], r *snapshot.Representation) error {
	req := c.Request()
	v := r.Negotiate(req.Header[echo.HeaderAcceptEncoding])
	age := snap.Age(time.Now())
	left := max(s.cfg.TTL-age, 0) / time.Second
	h := c.Response().Header()
	h["Vary"] = varyAcceptEncoding
	h["Etag"] = v.ETagHeader
	h["Last-Modified"] = r.LastModified
	h["Cache-Control"] = cacheControlValues[min(int(left), len(cacheControlValues)-1)]
	h["Age"] = ageValues[min(int(max(age, 0)/time.Second), len(ageValues)-1)]
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
func writeStale(c echo.Context, snap cache.Snapshot[*snapshot.Snapshot], body []byte, contentType string) error {
	h := c.Response().Header()
	h.Set(echo.HeaderContentType, contentType)
	h.Set(echo.HeaderContentLength, strconv.Itoa(len(body)))
	h.Set("Last-Modified", snap.Fetched.UTC().Format(http.TimeFormat))
	h.Set("Cache-Control", "no-store")
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
