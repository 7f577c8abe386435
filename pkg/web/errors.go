package web

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/movies-dev/movies/pkg/cache"
	"github.com/movies-dev/movies/pkg/render"
)

// errUnavailable is the message of every failure to get fresh data.
const errUnavailable = "The Ghibli API could not be reached, so there is no fresh list of films to show. Please retry in a few seconds."

// handleError is the one place errors become responses. Failures to get
// fresh data are 503 with Retry-After: the request may well work shortly,
// and a 503 is what browsers, clients and load balancers treat as such.
// Internal errors are logged; upstream ones were logged once by the fetch.
func (s *Server) handleError(err error, c echo.Context) {
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
