// Package ghibli reads films and people from the Studio Ghibli API (a
// json-server app) and joins them into movies with their people.
//
// Every way an HTTP upstream can fail (refused connections, hangs, error
// statuses, garbage, truncated or huge bodies) comes back as an error whose
// Cause names it; none of them panics.
package ghibli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
)

// DefaultBaseURL is where the public API lives today. It has moved before.
const DefaultBaseURL = "https://ghibliapi.vercel.app"

// DefaultMaxBodyBytes caps one response body. The real /people answer with
// the fields we ask for is about 20 KiB; 4 MiB leaves room for growth while
// keeping a misbehaving upstream from eating memory.
const DefaultMaxBodyBytes = 4 << 20

// The upstream's documented default limit is 50 and there are 57 people:
// always ask for the documented maximum.
const pageLimit = "250"

// Endpoints, as they appear in errors, logs and metrics labels.
const (
	EndpointFilms  = "/films"
	EndpointPeople = "/people"
)

var (
	// ErrTooLarge is returned when a body exceeds the client's cap.
	ErrTooLarge = errors.New("response body too large")
	// ErrMalformed is returned when a body is not the JSON array expected.
	ErrMalformed = errors.New("malformed JSON")
	// ErrEmpty is returned when a collection lists nothing.
	ErrEmpty = errors.New("empty list")
)

// StatusError is returned when the upstream answers with a status other
// than 200.
type StatusError struct {
	Endpoint   string
	StatusCode int
	// RetryAfter is the upstream's Retry-After, in seconds form or as a
	// date, converted to a duration; zero when absent or unparseable.
	RetryAfter time.Duration
	// Location is where a redirect pointed: the API has moved before, and
	// the log should say where to.
	Location string
}

func (e *StatusError) Error() string {
	msg := fmt.Sprintf("ghibli: get %s: status %d %s", e.Endpoint, e.StatusCode, http.StatusText(e.StatusCode))
	if e.Location != "" {
		msg += " to " + strconv.Quote(e.Location)
	}
	return msg
}

// Client fetches from the API. Its zero value is not usable: set BaseURL and
// HTTPClient (see NewHTTPClient). A Client is safe for concurrent use.
type Client struct {
	BaseURL    string
	HTTPClient *http.Client
	// MaxBodyBytes caps each response body; zero means DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// Observe, if set, is told of every upstream request: its endpoint,
	// its Cause ("ok" on success) and how long it took.
	Observe func(endpoint, cause string, d time.Duration)
	// Jitter, if set, returns a number in [0, 1) for the retry's jitter in
	// place of math/rand (a simulation replays its seeds with it).
	Jitter func() float64
}

// NewHTTPClient returns an http.Client suitable for the upstream: bounded
// connect, TLS and header waits, and pooled keep-alive connections. The
// whole fetch is bounded by the caller's context.
func NewHTTPClient(timeout time.Duration) *http.Client {
	step := min(timeout, 5*time.Second)
	return &http.Client{
		Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			DialContext:         (&net.Dialer{Timeout: step, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout: step,
			MaxIdleConnsPerHost: 4,
			IdleConnTimeout:     90 * time.Second,
			ForceAttemptHTTP2:   true,
		},
		Timeout: timeout,
		// The API answers directly; a redirect would be a move we want to see
		// in the logs, not follow to an unknown host. Report it as a status.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// Movies fetches films and people concurrently and joins them. Both must
// succeed: a page is one consistent snapshot, never half of one.
func (c *Client) Movies(ctx context.Context) ([]Movie, error) {
	var (
		films  []Film
		people []Person
	)
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() (err error) {
		films, err = c.Films(ctx)
		return err
	})
	g.Go(func() (err error) {
		people, err = c.People(ctx)
		return err
	})
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return Join(films, people), nil
}

// Films fetches every film.
func (c *Client) Films(ctx context.Context) ([]Film, error) {
	return fetch[Film](ctx, c, EndpointFilms, "id,title,release_date,director,people")
}

// People fetches every person.
func (c *Client) People(ctx context.Context) ([]Person, error) {
	return fetch[Person](ctx, c, EndpointPeople, "id,name,films")
}

// retryWait is the mean pause before the one retry a fetch may make.
const retryWait = 100 * time.Millisecond

// fetch gets one collection, retrying once after a connection reset or a
// 5xx (both often transient: a keep-alive connection closed under us, an
// instance restarting) if the context leaves time for it. A 5xx with a
// Retry-After is not retried: the upstream said when, and the cache's
// backoff honours it.
func fetch[T any](ctx context.Context, c *Client, endpoint, fields string) ([]T, error) {
	list, err := fetchOnce[T](ctx, c, endpoint, fields)
	if err == nil || !retryable(err) {
		return list, err
	}
	jitter := rand.Float64
	if c.Jitter != nil {
		jitter = c.Jitter
	}
	wait := retryWait/2 + time.Duration(jitter()*float64(retryWait)) // jittered so replicas do not retry in step
	if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < 2*wait {
		return nil, err // no time left for a useful retry
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return nil, err
	case <-t.C:
	}
	return fetchOnce[T](ctx, c, endpoint, fields)
}

// retryable reports whether err is worth one more try of an idempotent GET.
func retryable(err error) bool {
	var se *StatusError
	if errors.As(err, &se) {
		return se.StatusCode >= 500 && se.RetryAfter == 0
	}
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// fetchOnce gets one collection and tells Observe how it went.
func fetchOnce[T any](ctx context.Context, c *Client, endpoint, fields string) ([]T, error) {
	start := time.Now()
	var list []T
	err := c.do(ctx, endpoint, fields, &list)
	if err == nil && len(list) == 0 {
		// The catalogue is never empty: an empty answer is a broken upstream,
		// and serving it would present an empty list as the catalogue.
		err = c.fail(endpoint, ErrEmpty)
	}
	if c.Observe != nil {
		c.Observe(endpoint, Cause(err), time.Since(start))
	}
	if err != nil {
		return nil, err
	}
	return list, nil
}

func (c *Client) do(ctx context.Context, endpoint, fields string, into any) error {
	u := strings.TrimRight(c.BaseURL, "/") + endpoint + "?" + url.Values{"fields": {fields}, "limit": {pageLimit}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return c.fail(endpoint, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.HTTPClient.Do(req)
	if err != nil {
		return c.fail(endpoint, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		// Drain a little so the connection can be reused, but no more.
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return &StatusError{
			Endpoint:   endpoint,
			StatusCode: resp.StatusCode,
			RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
			Location:   resp.Header.Get("Location"),
		}
	}
	limit := c.MaxBodyBytes
	if limit <= 0 {
		limit = DefaultMaxBodyBytes
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return c.fail(endpoint, err)
	}
	if int64(len(body)) > limit {
		return c.fail(endpoint, fmt.Errorf("%w (over %d bytes)", ErrTooLarge, limit))
	}
	if err := json.Unmarshal(body, into); err != nil {
		return c.fail(endpoint, fmt.Errorf("%w: %w", ErrMalformed, err))
	}
	return nil
}

func (c *Client) fail(endpoint string, err error) error {
	return fmt.Errorf("ghibli: get %s: %w", endpoint, err)
}

// parseRetryAfter reads a Retry-After header in either of its forms.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
		if s < 0 {
			return 0
		}
		return time.Duration(min(s, 86400)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// Cause names the class of an error from this package in a few fixed words,
// for metrics labels and logs: ok, timeout, canceled, network, status_4xx,
// status_5xx, status_other, too_large, malformed, empty.
func Cause(err error) string {
	var se *StatusError
	var ne net.Error
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &se):
		switch {
		case se.StatusCode >= 500 && se.StatusCode < 600:
			return "status_5xx"
		case se.StatusCode >= 400 && se.StatusCode < 500:
			return "status_4xx"
		}
		return "status_other"
	case errors.Is(err, ErrTooLarge):
		return "too_large"
	case errors.Is(err, ErrMalformed):
		return "malformed"
	case errors.Is(err, ErrEmpty):
		return "empty"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	return "network"
}
