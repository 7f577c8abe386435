package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/movies-dev/movies/metrics"
	"github.com/movies-dev/movies/pkg/cache"
	"github.com/movies-dev/movies/pkg/ghibli"
	"github.com/movies-dev/movies/pkg/render"
)

// page is one snapshot rendered once, so a cache hit does no rendering.
type page struct {
	html, json *representation
	view       render.View // kept for the rare stale renderings

	staleOnce sync.Once
	staleHTML []byte
}

// stalePage is the page with the stale banner, rendered at most once per
// snapshot: it only ever shows the fetch time, which does not change.
func (p *page) stalePage() []byte {
	p.staleOnce.Do(func() {
		v := p.view
		v.Stale = true
		b, err := render.Page(v)
		if err != nil {
			// The same view rendered fine without the banner; failing here
			// would be a template bug. Serve the error page rather than
			// stale data without its warning.
			b = render.ErrorPage(http.StatusServiceUnavailable, "Films unavailable", errUnavailable)
		}
		p.staleHTML = b
	})
	return p.staleHTML
}

// server holds the handlers' dependencies.
type server struct {
	cache   *cache.Cache[*page]
	metrics *metrics.Metrics
	log     *slog.Logger
	ready   atomic.Bool // false once shutdown has begun
	ids     *idSource
	// Header values set on every response, built once.
	securityHeaders map[string][]string
}

// load fetches a new snapshot and renders it; it runs inside the cache's
// flight, so once per TTL however many requests wait. It logs once per
// fetch, so an outage logs once per attempt, not once per request.
func (s *server) load(client *ghibli.Client) cache.LoaderFunc[*page] {
	return func(ctx context.Context, started time.Time) (*page, error) {
		movies, err := client.Movies(ctx)
		attrs := []any{"duration", time.Since(started).Round(time.Millisecond), "outcome", ghibli.Cause(err)}
		if err != nil {
			s.log.ErrorContext(ctx, "upstream fetch failed", append(attrs, "err", err)...)
			return nil, err
		}
		view := toView(movies, started)
		s.log.InfoContext(ctx, "upstream fetch", append(attrs, "films", len(view.Movies), "links", countPeople(view))...)
		var prev time.Time
		if last, ok := s.cache.Peek(); ok {
			prev = last.Fetched
		}
		p, err := newPage(view, started, prev)
		if err != nil {
			s.log.ErrorContext(ctx, "render failed", "err", err)
			return nil, fmt.Errorf("render: %w", err)
		}
		return p, nil
	}
}

// newPage renders a snapshot in every form it is served in. prevFetched
// is when the previous snapshot's fetch started (zero if none).
func newPage(view render.View, fetched, prevFetched time.Time) (*page, error) {
	html, err := render.Page(view)
	if err != nil {
		return nil, err
	}
	js, err := render.JSON(view)
	if err != nil {
		return nil, err
	}
	p := &page{view: view}
	if p.html, err = newRepresentation(html, "text/html; charset=utf-8", fetched, prevFetched); err != nil {
		return nil, err
	}
	if p.json, err = newRepresentation(js, "application/json", fetched, prevFetched); err != nil {
		return nil, err
	}
	return p, nil
}

func toView(movies []ghibli.Movie, fetched time.Time) render.View {
	v := render.View{FetchedAt: fetched, Movies: make([]render.Movie, len(movies))}
	for i, m := range movies {
		people := make([]render.Person, len(m.People))
		for j, p := range m.People {
			people[j] = render.Person{ID: p.ID, Name: p.Name}
		}
		v.Movies[i] = render.Movie{ID: m.ID, Title: m.Title, ReleaseDate: m.ReleaseDate, Director: m.Director, People: people}
	}
	return v
}

func countPeople(v render.View) int {
	n := 0
	for _, m := range v.Movies {
		n += len(m.People)
	}
	return n
}

// routes builds the HTTP handler. metricsHandler, if not nil, is served at
// /metrics on this listener.
func (s *server) routes(metricsHandler http.Handler) *echo.Echo {
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
	if metricsHandler != nil {
		e.Match(getHead, "/metrics", echo.WrapHandler(metricsHandler))
	}
	e.Match(getHead, "/healthz", func(c echo.Context) error { return c.String(http.StatusOK, "ok\n") })
	e.Match(getHead, "/readyz", func(c echo.Context) error {
		if !s.ready.Load() {
			return c.String(http.StatusServiceUnavailable, "shutting down\n")
		}
		return c.String(http.StatusOK, "ok\n")
	})
	return e
}

func (s *server) moviesPage(c echo.Context) error {
	snap, err := s.cache.Get(requestContext(c))
	if err != nil {
		return err
	}
	if snap.Stale {
		return s.writeStale(c, snap, snap.Value.stalePage(), "text/html; charset=utf-8")
	}
	return s.write(c, snap, snap.Value.html)
}

func (s *server) moviesAPI(c echo.Context) error {
	snap, err := s.cache.Get(requestContext(c))
	if err != nil {
		return err
	}
	if snap.Stale {
		// The age changes every second, so a stale document is rendered per
		// request; stale serving is the rare, degraded path.
		v := snap.Value.view
		v.Stale, v.Age = true, snap.Age(time.Now())
		b, err := render.JSON(v)
		if err != nil {
			return err
		}
		return s.writeStale(c, snap, b, "application/json")
	}
	return s.write(c, snap, snap.Value.json)
}

// write serves a fresh snapshot: the hit path. Everything it sends was
// prepared when the snapshot was loaded.
//
// The caching headers tell downstream caches the truth: max-age is the
// whole seconds left of the TTL and Age the whole seconds since the fetch
// started. A cache that honours Age (RFC 9111) then drops its copy early,
// one that ignores it drops it at the TTL; neither can outlive the promise.
func (s *server) write(c echo.Context, snap cache.Snapshot[*page], r *representation) error {
	req := c.Request()
	v := r.negotiate(req.Header[echo.HeaderAcceptEncoding])
	age := snap.Age(time.Now())
	left := max(s.cache.TTL()-age, 0) / time.Second
	h := c.Response().Header()
	h["Vary"] = varyAcceptEncoding
	h["Etag"] = v.etagHeader
	h["Last-Modified"] = r.lastModified
	h["Cache-Control"] = cacheControlValues[min(int(left), len(cacheControlValues)-1)]
	h["Age"] = ageValues[min(int(max(age, 0)/time.Second), len(ageValues)-1)]
	if notModified(req.Header, r, v) {
		c.Response().WriteHeader(http.StatusNotModified)
		return nil
	}
	h["Content-Type"] = r.contentType
	h["Content-Length"] = v.contentLength
	if v.encoding != nil {
		h["Content-Encoding"] = v.encoding
	}
	c.Response().WriteHeader(http.StatusOK)
	_, err := c.Response().Write(v.body)
	return err
}

// writeStale serves a snapshot past its TTL (-stale-if-error): rare and
// degraded, so rendered on demand, uncompressed, and never to be cached.
func (s *server) writeStale(c echo.Context, snap cache.Snapshot[*page], body []byte, contentType string) error {
	h := c.Response().Header()
	h.Set(echo.HeaderContentType, contentType)
	h.Set(echo.HeaderContentLength, strconv.Itoa(len(body)))
	h.Set("Last-Modified", snap.Fetched.UTC().Format(http.TimeFormat))
	h.Set("Cache-Control", "no-store")
	c.Response().WriteHeader(http.StatusOK)
	_, err := c.Response().Write(body)
	return err
}

// errUnavailable is the message of every failure to get fresh data.
const errUnavailable = "The Ghibli API could not be reached, so there is no fresh list of films to show. Please retry in a few seconds."

// handleError is the one place errors become responses. Failures to get
// fresh data are 503 with Retry-After: the request may well work shortly,
// and a 503 is what browsers, clients and load balancers treat as such.
// Internal errors are logged; upstream ones were logged once by the fetch.
func (s *server) handleError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	ctx := requestContext(c)
	status, title, msg := http.StatusInternalServerError, "Internal error", "Something went wrong on our side."
	var (
		he *echo.HTTPError
		ue *cache.UnavailableError
	)
	switch {
	case errors.As(err, &he):
		status = he.Code
		title = http.StatusText(status)
		msg = fmt.Sprint(he.Message)
	case ctx.Err() != nil:
		// The client went away; nobody reads this answer. 499 is nginx's
		// convention, so the metric tells it apart from our failures.
		c.Response().WriteHeader(499)
		return
	case errors.As(err, &ue):
		// No fresh snapshot could be had. The cause was logged once by
		// the fetch that failed, not once per waiting request. Retry-After
		// is when the cache's backoff lets the next fetch start.
		status, title, msg = http.StatusServiceUnavailable, "Films unavailable", errUnavailable
		retry := max(1, int(math.Ceil(time.Until(ue.RetryAt).Seconds())))
		c.Response().Header().Set("Retry-After", strconv.Itoa(retry))
	default:
		s.log.ErrorContext(ctx, "request failed", "path", c.Request().URL.Path, "err", err)
	}
	c.Response().Header().Set("Cache-Control", "no-store")
	if strings.HasPrefix(c.Request().URL.Path, "/api/") {
		_ = c.JSON(status, map[string]any{"error": msg, "status": status})
		return
	}
	b := render.ErrorPage(status, title, msg)
	c.Response().Header().Set(echo.HeaderContentType, "text/html; charset=utf-8")
	c.Response().WriteHeader(status)
	_, _ = c.Response().Write(b)
}

// middleware wraps every request: an id, the security headers, a metric,
// panic recovery, and GET/HEAD only. It is one function rather than five
// because echo builds each middleware's closure anew on every request.
func (s *server) middleware(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		h := c.Response().Header()
		// A client's id is kept only if it is short and plain, so it
		// cannot forge log lines or bloat them.
		if id := c.Request().Header[requestIDHeaderKey]; len(id) == 1 && validRequestID(id[0]) {
			h[requestIDHeaderKey] = id
		} else {
			h[requestIDHeaderKey] = s.ids.next()
		}
		for k, v := range s.securityHeaders {
			h[k] = v
		}
		if err := s.serve(next, c); err != nil {
			c.Error(err) // run the error handler now so the status is final
		}
		route := c.Path()
		if route == "" || c.Response().Status == http.StatusNotFound {
			route = "other" // unknown paths must not become label values
		}
		s.metrics.ObserveHTTP(route, c.Response().Status, time.Since(start))
		return nil
	}
}

// serve runs next, answering 405 to any method but GET and HEAD on a
// known path (echo would answer OPTIONS itself with a 204 and list it in
// Allow; this server has no use for it), and turning a panic into a 500
// instead of a dead connection.
func (s *server) serve(next echo.HandlerFunc, c echo.Context) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if r == http.ErrAbortHandler {
				panic(r)
			}
			s.log.ErrorContext(requestContext(c), "handler panic", "path", c.Request().URL.Path, "panic", r)
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	if m := c.Request().Method; m != http.MethodGet && m != http.MethodHead && c.Path() != "" {
		c.Response().Header()[echo.HeaderAllow] = allowGetHead
		return echo.ErrMethodNotAllowed
	}
	return next(c)
}

var allowGetHead = []string{"GET, HEAD"}

// newSecurityHeaders are the headers every response carries. The CSP
// allows exactly what the page uses: one inline style block, by hash.
func newSecurityHeaders() map[string][]string {
	return map[string][]string{
		"Content-Security-Policy": {contentSecurityPolicy()},
		"X-Content-Type-Options":  {"nosniff"},
		"Referrer-Policy":         {"no-referrer"},
		"X-Frame-Options":         {"DENY"},
	}
}

// contentSecurityPolicy is the policy for every response.
func contentSecurityPolicy() string {
	return "default-src 'none'; style-src " + render.StyleHash() +
		"; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
}

// requestIDHeaderKey is X-Request-ID in the canonical form header maps use.
const requestIDHeaderKey = "X-Request-Id"

func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.:", r)) {
			return false
		}
	}
	return true
}
