package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/movies-dev/movies/metrics"
	"github.com/movies-dev/movies/pkg/cache"
	"github.com/movies-dev/movies/pkg/ghibli"
	"github.com/movies-dev/movies/pkg/render"
)

// page is one snapshot rendered once, so a cache hit does no rendering.
type page struct {
	html, json []byte
}

// server holds the handlers' dependencies.
type server struct {
	cache   *cache.Cache[*page]
	metrics *metrics.Metrics
	log     *slog.Logger
	ready   atomic.Bool // false once shutdown has begun
}

// load fetches a new snapshot and renders it; it runs inside the cache's
// flight, so once per TTL however many requests wait.
func (s *server) load(client *ghibli.Client) cache.LoaderFunc[*page] {
	return func(ctx context.Context, started time.Time) (*page, error) {
		movies, err := client.Movies(ctx)
		attrs := []any{"duration", time.Since(started).Round(time.Millisecond), "outcome", ghibli.Cause(err)}
		if err != nil {
			s.log.Error("upstream fetch failed", append(attrs, "err", err)...)
			return nil, err
		}
		view := toView(movies, started)
		s.log.Info("upstream fetch", append(attrs, "films", len(view.Movies), "links", countPeople(view))...)
		html, err := render.Page(view)
		if err == nil {
			var js []byte
			if js, err = render.JSON(view); err == nil {
				return &page{html: html, json: js}, nil
			}
		}
		s.log.Error("render failed", "err", err)
		return nil, fmt.Errorf("render: %w", err)
	}
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

// routes builds the HTTP handler.
func (s *server) routes(reg *prometheus.Registry) *echo.Echo {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = s.handleError
	e.Use(s.observe, s.recover)

	getHead := []string{http.MethodGet, http.MethodHead}
	e.Match(getHead, "/movies/", s.movies(func(p *page) []byte { return p.html }, "text/html; charset=utf-8"))
	e.Match(getHead, "/movies", func(c echo.Context) error {
		target := "/movies/"
		if q := c.Request().URL.RawQuery; q != "" {
			target += "?" + q
		}
		return c.Redirect(http.StatusPermanentRedirect, target)
	})
	e.Match(getHead, "/api/v1/movies", s.movies(func(p *page) []byte { return p.json }, "application/json"))
	e.Match(getHead, "/metrics", echo.WrapHandler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelError),
	})))
	e.Match(getHead, "/healthz", func(c echo.Context) error { return c.String(http.StatusOK, "ok\n") })
	e.Match(getHead, "/readyz", func(c echo.Context) error {
		if !s.ready.Load() {
			return c.String(http.StatusServiceUnavailable, "shutting down\n")
		}
		return c.String(http.StatusOK, "ok\n")
	})
	return e
}

// movies serves one rendering of the current snapshot.
func (s *server) movies(body func(*page) []byte, contentType string) echo.HandlerFunc {
	return func(c echo.Context) error {
		snap, err := s.cache.Get(c.Request().Context())
		if err != nil {
			if c.Request().Context().Err() != nil {
				return err // the client gave up; not the upstream's fault
			}
			return &unavailableError{err}
		}
		b := body(snap.Value)
		h := c.Response().Header()
		h.Set(echo.HeaderContentType, contentType)
		h.Set(echo.HeaderContentLength, strconv.Itoa(len(b)))
		// A downstream copy must not outlive the promise either: it may be
		// reused only for what is left of this snapshot's TTL.
		left := (s.cache.TTL() - snap.Age(time.Now())) / time.Second
		h.Set("Cache-Control", "public, max-age="+strconv.Itoa(int(max(left, 0)))+", must-revalidate")
		h.Set("Last-Modified", snap.Fetched.UTC().Format(http.TimeFormat))
		c.Response().WriteHeader(http.StatusOK)
		_, err = c.Response().Write(b)
		return err
	}
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
	status, title, msg := http.StatusInternalServerError, "Internal error", "Something went wrong on our side."
	var he *echo.HTTPError
	switch {
	case errors.As(err, &he):
		status = he.Code
		title = http.StatusText(status)
		msg = fmt.Sprint(he.Message)
	case c.Request().Context().Err() != nil:
		// The client went away; nobody reads this answer.
		status, title, msg = 499, "Client closed request", "The request was cancelled."
	case errors.As(err, new(*unavailableError)):
		status, title, msg = http.StatusServiceUnavailable, "Films unavailable", errUnavailable
		c.Response().Header().Set("Retry-After", "5")
	default:
		s.log.Error("request failed", "path", c.Request().URL.Path, "err", err)
	}
	if status == 499 {
		c.Response().WriteHeader(status)
		return
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

// unavailableError means no fresh snapshot could be had. The cause was
// logged once by the fetch that failed, not once per waiting request.
type unavailableError struct{ err error }

func (e *unavailableError) Error() string { return "no fresh data: " + e.err.Error() }
func (e *unavailableError) Unwrap() error { return e.err }

// recover turns a handler panic into a 500 instead of a dead connection.
func (s *server) recover(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) (err error) {
		defer func() {
			if r := recover(); r != nil {
				if r == http.ErrAbortHandler {
					panic(r)
				}
				s.log.Error("handler panic", "path", c.Request().URL.Path, "panic", r)
				err = fmt.Errorf("panic: %v", r)
			}
		}()
		return next(c)
	}
}

// observe records every request's route, status and duration.
func (s *server) observe(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		if err := next(c); err != nil {
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
