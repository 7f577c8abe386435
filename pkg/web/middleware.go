package web

import (
	"fmt"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
	"go.opentelemetry.io/otel/trace"

	"github.com/movies-dev/movies/metrics"
)

// securityHeaders are set on every response, built once. A slice, not a
// map: ranging over a map costs a hit more than the assignments.
var securityHeaders = []struct {
	key   string
	value []string
}{
	{"Content-Security-Policy", []string{contentSecurityPolicy()}},
	{"X-Content-Type-Options", []string{"nosniff"}},
	{"Referrer-Policy", []string{"no-referrer"}},
	{"X-Frame-Options", []string{"DENY"}},
	// The page opens no windows and nothing here is meant to be embedded
	// by another origin: no cross-origin window keeps a handle on ours,
	// and no other site may load our responses as its subresources.
	{"Cross-Origin-Opener-Policy", []string{"same-origin"}},
	{"Cross-Origin-Resource-Policy", []string{"same-origin"}},
}

var allowGetHead = []string{"GET, HEAD"}

// otherRoute is the metric's handler label for every path no route serves.
const otherRoute = "other"

// middleware wraps every request: an id, the security headers, a metric,
// panic recovery, and GET/HEAD only. It is one function rather than five
// because echo builds each middleware's closure anew on every request.
func (s *Server) middleware(next echo.HandlerFunc) echo.HandlerFunc {
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
		for _, f := range securityHeaders {
			h[f.key] = f.value
		}
		var span trace.Span
		if s.traced {
			span = s.startSpan(c)
		}
		if err := s.serve(next, c); err != nil {
			c.Error(err) // run the error handler now so the status is final
		}
		route, status := c.Path(), c.Response().Status
		if route == "" || status == http.StatusNotFound {
			route = otherRoute // unknown paths must not become label values
		}
		if span != nil {
			if sc := endRequestSpan(span, c, route, status); sc.IsSampled() {
				s.routeMetric(route).ObserveTraced(status, time.Since(start), sc.TraceID().String())
				return nil
			}
		}
		if m := s.routeMetrics[route]; m != nil {
			m.Observe(status, time.Since(start))
		} else {
			s.metrics.ObserveHTTP(route, status, time.Since(start))
		}
		return nil
	}
}

// routeMetric is route's recorder (every route has one; otherRoute's
// stands in for any other).
func (s *Server) routeMetric(route string) *metrics.HTTPRoute {
	if m := s.routeMetrics[route]; m != nil {
		return m
	}
	return s.routeMetrics[otherRoute]
}

// serve runs next, answering 405 to any method but GET and HEAD on a
// known path (echo would answer OPTIONS itself with a 204 and list it in
// Allow; this server has no use for it), and turning a panic into a 500
// instead of a dead connection.
func (s *Server) serve(next echo.HandlerFunc, c echo.Context) (err error) {
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
