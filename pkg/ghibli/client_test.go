package ghibli_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/movies-dev/movies/pkg/ghibli"
	"github.com/movies-dev/movies/pkg/ghibli/ghiblitest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newClient(baseURL string) *ghibli.Client {
	hc := ghibli.NewHTTPClient(5 * time.Second)
	return &ghibli.Client{BaseURL: baseURL, HTTPClient: hc}
}

// closeIdle lets goleak see a clean slate: keep-alive connections hold
// goroutines until closed.
func closeIdle(t *testing.T, c *ghibli.Client) {
	t.Cleanup(c.HTTPClient.CloseIdleConnections)
}

func TestClient_AsksForEveryRecordAndOnlyNeededFields(t *testing.T) {
	srv := ghiblitest.NewServer(ghiblitest.Bundled())
	defer srv.Close()
	var mu sync.Mutex
	queries := map[string]string{}
	srv.OnRequest(func(r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		queries[r.URL.Path] = r.URL.RawQuery
	})
	c := newClient(srv.URL + "/") // a trailing slash in the flag must not matter
	closeIdle(t, c)
	people, err := c.People(context.Background())
	if err != nil {
		t.Fatalf("People() error = %v", err)
	}
	if len(people) != 57 {
		t.Errorf("len(People()) = %d, want all 57 (the upstream's default limit is 50)", len(people))
	}
	if _, err := c.Films(context.Background()); err != nil {
		t.Fatalf("Films() error = %v", err)
	}
	want := map[string]string{
		"/films":  "fields=id%2Ctitle%2Crelease_date%2Cdirector%2Cpeople&limit=250",
		"/people": "fields=id%2Cname%2Cfilms&limit=250",
	}
	for path, q := range want {
		if queries[path] != q {
			t.Errorf("query for %s = %q, want %q", path, queries[path], q)
		}
	}
}

func TestClient_Failures(t *testing.T) {
	tests := []struct {
		name      string
		behavior  ghiblitest.Behavior
		data      func(*ghiblitest.Data)
		timeout   time.Duration
		wantCause string
		check     func(t *testing.T, err error)
	}{
		{name: "500", behavior: ghiblitest.Behavior{Status: 500}, wantCause: "status_5xx",
			check: func(t *testing.T, err error) {
				var se *ghibli.StatusError
				if !errors.As(err, &se) || se.StatusCode != 500 || se.Endpoint != ghibli.EndpointFilms {
					t.Errorf("error = %#v, want *StatusError{/films, 500}", err)
				}
			}},
		{name: "429 with Retry-After", behavior: ghiblitest.Behavior{Status: 429, RetryAfter: "7"}, wantCause: "status_4xx",
			check: func(t *testing.T, err error) {
				var se *ghibli.StatusError
				if !errors.As(err, &se) || se.RetryAfter != 7*time.Second {
					t.Errorf("error = %#v, want RetryAfter 7s", err)
				}
			}},
		{name: "404 after a move", behavior: ghiblitest.Behavior{Status: 404}, wantCause: "status_4xx"},
		{name: "hang", behavior: ghiblitest.Behavior{Hang: true}, timeout: 200 * time.Millisecond, wantCause: "timeout"},
		{name: "slower than the deadline", behavior: ghiblitest.Behavior{Latency: time.Minute}, timeout: 200 * time.Millisecond, wantCause: "timeout"},
		{name: "not JSON", behavior: ghiblitest.Behavior{Malformed: true}, wantCause: "malformed"},
		{name: "truncated JSON", behavior: ghiblitest.Behavior{Truncated: true}, wantCause: "malformed"},
		{name: "huge body", behavior: ghiblitest.Behavior{HugeBytes: ghibli.DefaultMaxBodyBytes + 1<<20}, wantCause: "too_large",
			check: func(t *testing.T, err error) {
				if !errors.Is(err, ghibli.ErrTooLarge) {
					t.Errorf("error = %v, want ErrTooLarge", err)
				}
			}},
		{name: "connection reset", behavior: ghiblitest.Behavior{ResetConn: true}, wantCause: "network"},
		{name: "no films", data: func(d *ghiblitest.Data) { d.Films = nil }, wantCause: "empty"},
		{name: "wrong JSON shape", data: func(d *ghiblitest.Data) { d.Films = []map[string]any{{"id": 5}} }, wantCause: "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := ghiblitest.NewServer(ghiblitest.Bundled())
			defer srv.Close()
			srv.SetBehavior(ghibli.EndpointFilms, tt.behavior)
			if tt.data != nil {
				srv.Update(tt.data)
			}
			var mu sync.Mutex
			observed := map[string]string{}
			c := newClient(srv.URL)
			closeIdle(t, c)
			c.Observe = func(endpoint, cause string, d time.Duration) {
				mu.Lock()
				defer mu.Unlock()
				observed[endpoint] = cause
			}
			ctx := context.Background()
			if tt.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.timeout)
				defer cancel()
			}
			movies, err := c.Movies(ctx)
			if err == nil {
				t.Fatalf("Movies() = %d movies, nil error; want a %s error", len(movies), tt.wantCause)
			}
			if got := ghibli.Cause(err); got != tt.wantCause {
				t.Errorf("Cause(%v) = %q, want %q", err, got, tt.wantCause)
			}
			mu.Lock()
			if got := observed[ghibli.EndpointFilms]; got != tt.wantCause {
				t.Errorf("Observe saw /films %q, want %q", got, tt.wantCause)
			}
			mu.Unlock()
			if tt.check != nil {
				tt.check(t, err)
			}
		})
	}
}

func TestClient_UpstreamGone(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now: connection refused
	c := newClient("http://" + addr)
	closeIdle(t, c)
	_, err = c.Movies(context.Background())
	if got := ghibli.Cause(err); got != "network" {
		t.Errorf("Cause(%v) = %q, want network", err, got)
	}
}

func TestCause(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{nil, "ok"},
		{&ghibli.StatusError{StatusCode: 503}, "status_5xx"},
		{&ghibli.StatusError{StatusCode: 302}, "status_other"},
		{context.DeadlineExceeded, "timeout"},
		{context.Canceled, "canceled"},
		{errors.New("dial tcp: refused"), "network"},
	}
	for _, tt := range tests {
		if got := ghibli.Cause(tt.err); got != tt.want {
			t.Errorf("Cause(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

func TestClient_RetriesOnceOnTransientFailure(t *testing.T) {
	tests := []struct {
		name        string
		behavior    ghiblitest.Behavior
		recovers    bool
		wantFilms   int64
		wantOK      bool
		wantOutcome []string
	}{
		{"5xx then ok", ghiblitest.Behavior{Status: 502}, true, 2, true, []string{"status_5xx", "ok"}},
		{"reset then ok", ghiblitest.Behavior{ResetConn: true}, true, 2, true, []string{"network", "ok"}},
		{"5xx twice gives up", ghiblitest.Behavior{Status: 500}, false, 2, false, []string{"status_5xx", "status_5xx"}},
		{"503 with Retry-After is not retried", ghiblitest.Behavior{Status: 503, RetryAfter: "3"}, true, 1, false, []string{"status_5xx"}},
		{"4xx is not retried", ghiblitest.Behavior{Status: 404}, true, 1, false, []string{"status_4xx"}},
		{"garbage is not retried", ghiblitest.Behavior{Malformed: true}, true, 1, false, []string{"malformed"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := ghiblitest.NewServer(ghiblitest.Bundled())
			defer srv.Close()
			srv.SetBehavior(ghibli.EndpointFilms, tt.behavior)
			if tt.recovers {
				srv.OnRequest(func(r *http.Request) {
					if r.URL.Path == ghibli.EndpointFilms {
						srv.SetBehavior(ghibli.EndpointFilms, ghiblitest.Behavior{}) // from the next request on
					}
				})
			}
			c := newClient(srv.URL)
			closeIdle(t, c)
			var mu sync.Mutex
			var outcomes []string
			c.Observe = func(endpoint, cause string, d time.Duration) {
				mu.Lock()
				defer mu.Unlock()
				if endpoint == ghibli.EndpointFilms {
					outcomes = append(outcomes, cause)
				}
			}
			_, err := c.Films(context.Background())
			if (err == nil) != tt.wantOK {
				t.Errorf("Films() error = %v, want ok=%v", err, tt.wantOK)
			}
			if got := srv.Requests(ghibli.EndpointFilms); got != tt.wantFilms {
				t.Errorf("upstream saw %d /films requests, want %d", got, tt.wantFilms)
			}
			mu.Lock()
			defer mu.Unlock()
			if !slices.Equal(outcomes, tt.wantOutcome) {
				t.Errorf("observed %v, want %v", outcomes, tt.wantOutcome)
			}
		})
	}
}

func TestClient_NoRetryPastTheDeadline(t *testing.T) {
	srv := ghiblitest.NewServer(ghiblitest.Bundled())
	defer srv.Close()
	// The first attempt uses up all but 50ms of the deadline: less than
	// twice the shortest retry wait, so no retry may start.
	srv.SetBehavior(ghibli.EndpointFilms, ghiblitest.Behavior{Status: 500, Latency: 950 * time.Millisecond})
	c := newClient(srv.URL)
	closeIdle(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := c.Films(ctx); err == nil {
		t.Fatal("Films() succeeded against a 500")
	}
	if got := srv.Requests(ghibli.EndpointFilms); got != 1 {
		t.Errorf("upstream saw %d requests, want 1: no retry fits in the deadline", got)
	}
}

func TestClient_RedirectIsAnErrorNamingTheTarget(t *testing.T) {
	srv := httptest.NewServer(http.RedirectHandler("https://new.example/api/films", http.StatusMovedPermanently))
	defer srv.Close()
	c := newClient(srv.URL)
	closeIdle(t, c)
	_, err := c.Films(context.Background())
	var se *ghibli.StatusError
	if !errors.As(err, &se) || se.StatusCode != 301 || !strings.Contains(err.Error(), "https://new.example/api/films") {
		t.Errorf("Films() error = %v, want a 301 StatusError naming where it points", err)
	}
}
