package ghiblitest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// waitLimit bounds every wait on a channel so a broken fake fails the test
// instead of hanging it; it is never what makes a test pass.
const waitLimit = 10 * time.Second

func mustServer(tb testing.TB) *Server {
	tb.Helper()
	s := NewServer(Bundled())
	tb.Cleanup(s.Close)
	return s
}

type response struct {
	status int
	header http.Header
	body   []byte
	length int64 // resp.ContentLength
}

func do(c *http.Client, method, url string) (response, error) {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return response{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, fmt.Errorf("read body: %w", err)
	}
	return response{resp.StatusCode, resp.Header, body, resp.ContentLength}, nil
}

func mustDo(tb testing.TB, c *http.Client, method, url string) response {
	tb.Helper()
	got, err := do(c, method, url)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, url, err)
	}
	return got
}

func mustGet(tb testing.TB, s *Server, path string) response {
	tb.Helper()
	return mustDo(tb, s.Client(), http.MethodGet, s.URL+path)
}

func mustDecodeList(tb testing.TB, body []byte) []map[string]any {
	tb.Helper()
	var list []map[string]any
	if err := json.Unmarshal(body, &list); err != nil {
		tb.Fatalf("decode list %.200q: %v", body, err)
	}
	return list
}

func keys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func TestHandler_ServesLikeUpstream(t *testing.T) {
	s := mustServer(t)
	allFilmKeys := keys(Bundled().Films[0])

	tests := []struct {
		name     string
		method   string
		path     string
		status   int
		count    int      // objects in the list; -1 if not a list
		keys     []string // keys of every object, if set
		errorish bool     // a JSON error object body
	}{
		{name: "films", path: "/films", status: 200, count: 22, keys: allFilmKeys},
		{name: "films trailing slash", path: "/films/", status: 200, count: 22},
		{name: "people default limit", path: "/people", status: 200, count: DefaultLimit},
		{name: "people limit 250", path: "/people?limit=250", status: 200, count: 57},
		{name: "people limit 3", path: "/people?limit=3", status: 200, count: 3},
		{name: "limit above max clamps", path: "/people?limit=1000", status: 200, count: 57},
		{name: "limit abc", path: "/people?limit=abc", status: 400, count: -1, errorish: true},
		{name: "limit 0", path: "/films?limit=0", status: 400, count: -1, errorish: true},
		{name: "limit negative", path: "/films?limit=-2", status: 400, count: -1, errorish: true},
		{name: "fields", path: "/films?fields=id,title", status: 200, count: 22, keys: []string{"id", "title"}},
		{name: "fields unknown omitted", path: "/people?fields=name,nope&limit=5", status: 200, count: 5, keys: []string{"name"}},
		{name: "fields only unknown", path: "/films?fields=nope", status: 200, count: 22, keys: []string{}},
		{name: "film by id", path: "/films/2baf70d1-42bb-4437-b551-e5fed5a87abe?fields=title", status: 200, count: -1},
		{name: "film unknown id", path: "/films/nope", status: 404, count: -1, errorish: true},
		{name: "unknown path", path: "/nope", status: 404, count: -1, errorish: true},
		{name: "endpoint prefix", path: "/filmsx", status: 404, count: -1, errorish: true},
		{name: "root", path: "/", status: 404, count: -1, errorish: true},
		{name: "post", method: http.MethodPost, path: "/films", status: 405, count: -1, errorish: true},
		{name: "delete", method: http.MethodDelete, path: "/people", status: 405, count: -1, errorish: true},
		{name: "head", method: http.MethodHead, path: "/films", status: 200, count: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = http.MethodGet
			}
			got := mustDo(t, s.Client(), method, s.URL+tt.path)
			if got.status != tt.status {
				t.Fatalf("status = %d, want %d (body %.200q)", got.status, tt.status, got.body)
			}
			if ct, want := got.header.Get("Content-Type"), "application/json; charset=utf-8"; ct != want {
				t.Errorf("Content-Type = %q, want %q", ct, want)
			}
			if tt.errorish {
				var e struct {
					Code    int    `json:"code"`
					Message string `json:"message"`
				}
				if err := json.Unmarshal(got.body, &e); err != nil || e.Code != tt.status || e.Message == "" {
					t.Errorf("error body = %q (err %v), want JSON with code %d and a message", got.body, err, tt.status)
				}
			}
			if tt.status == 405 {
				if allow := got.header.Get("Allow"); allow != "GET, HEAD" {
					t.Errorf("Allow = %q, want %q", allow, "GET, HEAD")
				}
			}
			if tt.count < 0 {
				return
			}
			list := mustDecodeList(t, got.body)
			if len(list) != tt.count {
				t.Fatalf("len(list) = %d, want %d", len(list), tt.count)
			}
			if tt.keys == nil {
				return
			}
			for i, obj := range list {
				if k := keys(obj); !slices.Equal(k, tt.keys) && !(len(k) == 0 && len(tt.keys) == 0) {
					t.Fatalf("keys(list[%d]) = %v, want %v", i, k, tt.keys)
				}
			}
		})
	}
}

func TestHandler_FilmByID(t *testing.T) {
	s := mustServer(t)
	got := mustGet(t, s, "/films/2baf70d1-42bb-4437-b551-e5fed5a87abe?fields=title,id")
	var film map[string]any
	if err := json.Unmarshal(got.body, &film); err != nil {
		t.Fatalf("decode %q: %v", got.body, err)
	}
	want := map[string]any{"id": "2baf70d1-42bb-4437-b551-e5fed5a87abe", "title": "Castle in the Sky"}
	if len(film) != len(want) || film["id"] != want["id"] || film["title"] != want["title"] {
		t.Errorf("GET /films/{id} = %v, want %v", film, want)
	}
}

func TestHandler_Head(t *testing.T) {
	s := mustServer(t)
	get := mustGet(t, s, "/films")
	head := mustDo(t, s.Client(), http.MethodHead, s.URL+"/films")
	if len(head.body) != 0 {
		t.Errorf("HEAD body = %d bytes, want 0", len(head.body))
	}
	if head.length != int64(len(get.body)) {
		t.Errorf("HEAD Content-Length = %d, want %d", head.length, len(get.body))
	}
}

func TestHandler_Behaviors(t *testing.T) {
	normal := func() []byte {
		s := mustServer(t)
		return mustGet(t, s, "/films").body
	}()

	tests := []struct {
		name  string
		b     Behavior
		check func(t *testing.T, got response)
	}{
		{
			name: "status with retry-after",
			b:    Behavior{Status: 503, RetryAfter: "7"},
			check: func(t *testing.T, got response) {
				if got.status != 503 {
					t.Errorf("status = %d, want 503", got.status)
				}
				if ra := got.header.Get("Retry-After"); ra != "7" {
					t.Errorf("Retry-After = %q, want %q", ra, "7")
				}
				if !json.Valid(got.body) {
					t.Errorf("body %q is not JSON", got.body)
				}
			},
		},
		{
			name: "status 500",
			b:    Behavior{Status: 500},
			check: func(t *testing.T, got response) {
				if got.status != 500 {
					t.Errorf("status = %d, want 500", got.status)
				}
				if ra := got.header.Get("Retry-After"); ra != "" {
					t.Errorf("Retry-After = %q, want none", ra)
				}
			},
		},
		{
			name: "status 200 is normal",
			b:    Behavior{Status: 200},
			check: func(t *testing.T, got response) {
				if got.status != 200 || string(got.body) != string(normal) {
					t.Errorf("status = %d, body %d bytes; want 200 and the normal %d bytes", got.status, len(got.body), len(normal))
				}
			},
		},
		{
			name: "malformed",
			b:    Behavior{Malformed: true},
			check: func(t *testing.T, got response) {
				if got.status != 200 {
					t.Errorf("status = %d, want 200", got.status)
				}
				if len(got.body) == 0 || json.Valid(got.body) {
					t.Errorf("body %q: want non-empty, not JSON", got.body)
				}
			},
		},
		{
			name: "truncated",
			b:    Behavior{Truncated: true},
			check: func(t *testing.T, got response) {
				if got.status != 200 {
					t.Errorf("status = %d, want 200", got.status)
				}
				if json.Valid(got.body) {
					t.Errorf("truncated body is valid JSON")
				}
				if len(got.body) == 0 || len(got.body) >= len(normal) {
					t.Errorf("len(body) = %d, want in (0, %d)", len(got.body), len(normal))
				}
				if got.length != int64(len(got.body)) {
					t.Errorf("Content-Length = %d, want %d", got.length, len(got.body))
				}
			},
		},
		{
			name: "huge",
			b:    Behavior{HugeBytes: 1 << 20},
			check: func(t *testing.T, got response) {
				if got.status != 200 {
					t.Errorf("status = %d, want 200", got.status)
				}
				if len(got.body) < 1<<20 {
					t.Errorf("len(body) = %d, want >= %d", len(got.body), 1<<20)
				}
				if got.length != -1 {
					t.Errorf("ContentLength = %d, want -1 (unknown)", got.length)
				}
				if !json.Valid(got.body) {
					t.Errorf("huge body is not valid JSON")
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustServer(t)
			s.SetBehavior(Films, tt.b)
			tt.check(t, mustGet(t, s, "/films"))

			// The other endpoint is untouched.
			if got := mustGet(t, s, "/people?limit=1"); got.status != 200 || len(mustDecodeList(t, got.body)) != 1 {
				t.Errorf("GET /people?limit=1 = %d %q, want 200 with one person", got.status, got.body)
			}
		})
	}
}

func TestHandler_BehaviorForBothEndpoints(t *testing.T) {
	s := mustServer(t)
	s.SetBehavior("", Behavior{Status: 502})
	for _, path := range []string{"/films", "/people", "/films/2baf70d1-42bb-4437-b551-e5fed5a87abe"} {
		if got := mustGet(t, s, path); got.status != 502 {
			t.Errorf("GET %s status = %d, want 502", path, got.status)
		}
	}
	s.SetBehavior("", Behavior{})
	if got := mustGet(t, s, "/films"); got.status != 200 {
		t.Errorf("after reset, GET /films status = %d, want 200", got.status)
	}
}

func TestHandler_NextBehaviorIsOneRequestOnly(t *testing.T) {
	s := mustServer(t)
	s.SetBehavior(Films, Behavior{Status: 500})
	first := s.SetNextBehavior(Films, Behavior{Status: 503, RetryAfter: "3600"})
	second := s.SetNextBehavior(Films, Behavior{Status: 502})
	people := s.SetNextBehavior(People, Behavior{Status: 504})
	for i, want := range []struct {
		path   string
		status int
		retry  string
	}{
		{"/films", 503, "3600"},
		{"/people?limit=1", 504, ""},
		{"/films/2baf70d1-42bb-4437-b551-e5fed5a87abe", 502, ""}, // a lookup is the endpoint's too
		{"/films", 500, ""},                                      // the endpoint's own Behavior again
		{"/people?limit=1", 200, ""},
	} {
		got := mustGet(t, s, want.path)
		if got.status != want.status || got.header.Get("Retry-After") != want.retry {
			t.Errorf("request %d, GET %s = %d with Retry-After %q, want %d with %q",
				i+1, want.path, got.status, got.header.Get("Retry-After"), want.status, want.retry)
		}
	}
	for _, tt := range []struct {
		taken <-chan *http.Request
		path  string
	}{{first, "/films"}, {second, "/films/2baf70d1-42bb-4437-b551-e5fed5a87abe"}, {people, "/people"}} {
		if r := receive(t, tt.taken, "the request "+tt.path+" was taken by"); r.URL.Path != tt.path {
			t.Errorf("the behaviour queued for %s was applied to %s", tt.path, r.URL.Path)
		}
	}
}

func TestHandler_NextBehaviorHangsOnlyThatRequest(t *testing.T) {
	s := mustServer(t)
	taken := s.SetNextBehavior(Films, Behavior{Hang: true})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hung := getAsync(ctx, s.Client(), s.URL+"/films")
	receive(t, taken, "the hanging request to arrive")
	// While it hangs, the next request is served.
	if got := mustGet(t, s, "/films"); got.status != 200 {
		t.Errorf("GET /films beside the hanging one = %d, want 200", got.status)
	}
	select {
	case r := <-hung:
		t.Fatalf("the hanging request ended (%d, %v) before its client went away", r.status, r.err)
	default:
	}
	cancel()
	if got := receive(t, hung, "the hanging request to end with its client"); !errors.Is(got.err, context.Canceled) {
		t.Errorf("hanging GET error = %v, want context.Canceled", got.err)
	}
}

func TestHandler_SetNextBehaviorOfNoOneEndpointPanics(t *testing.T) {
	h := NewHandler(Data{})
	defer func() {
		if recover() == nil {
			t.Error("SetNextBehavior(\"\") did not panic")
		}
	}()
	h.SetNextBehavior("", Behavior{Hang: true})
}

func TestHandler_SetBehaviorUnknownEndpointPanics(t *testing.T) {
	h := NewHandler(Data{})
	defer func() {
		if recover() == nil {
			t.Error("SetBehavior(\"/species\") did not panic")
		}
	}()
	h.SetBehavior("/species", Behavior{Hang: true})
}

func TestHandler_Latency(t *testing.T) {
	const latency = 50 * time.Millisecond
	s := mustServer(t)
	s.SetBehavior(People, Behavior{Latency: latency})
	start := time.Now()
	got := mustGet(t, s, "/people")
	if elapsed := time.Since(start); elapsed < latency {
		t.Errorf("GET /people took %v, want >= %v", elapsed, latency)
	}
	if got.status != 200 || len(mustDecodeList(t, got.body)) != DefaultLimit {
		t.Errorf("GET /people = %d, want 200 with %d people after the latency", got.status, DefaultLimit)
	}
}

// arrivals returns a channel receiving each request as it reaches h.
func arrivals(h *Handler) <-chan *http.Request {
	ch := make(chan *http.Request, 16)
	h.OnRequest(func(r *http.Request) { ch <- r })
	return ch
}

func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitLimit):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

type result struct {
	status int
	err    error
}

// getAsync issues GET url in the background and reports how it ended.
func getAsync(ctx context.Context, c *http.Client, url string) <-chan result {
	ch := make(chan result, 1)
	go func() {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			ch <- result{err: err}
			return
		}
		resp, err := c.Do(req)
		if err != nil {
			ch <- result{err: err}
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		ch <- result{status: resp.StatusCode}
	}()
	return ch
}

func TestHandler_WaitsReleasedByClose(t *testing.T) {
	tests := []struct {
		name string
		b    Behavior
	}{
		{"hang", Behavior{Hang: true}},
		{"latency", Behavior{Latency: time.Hour}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustServer(t)
			s.SetBehavior(Films, tt.b)
			arrived := arrivals(s.Handler)
			done := getAsync(context.Background(), s.Client(), s.URL+"/films")
			receive(t, arrived, "request to arrive")

			s.Handler.Close()
			if got := receive(t, done, "response after Close"); got.err != nil || got.status != 503 {
				t.Errorf("GET after Close = %d, %v; want 503", got.status, got.err)
			}

			// Later waits end at once, and Close stays idempotent.
			s.Handler.Close()
			if got := mustGet(t, s, "/films"); got.status != 503 {
				t.Errorf("GET on closed handler = %d, want 503", got.status)
			}
			// Requests without waits are still served.
			if got := mustGet(t, s, "/people"); got.status != 200 {
				t.Errorf("GET /people on closed handler = %d, want 200", got.status)
			}
		})
	}
}

func TestHandler_WaitsReleasedByClientCancel(t *testing.T) {
	tests := []struct {
		name string
		b    Behavior
	}{
		{"hang", Behavior{Hang: true}},
		{"latency", Behavior{Latency: time.Hour}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := NewHandler(Bundled())
			t.Cleanup(h.Close)
			h.SetBehavior(People, tt.b)
			// Wrapped to see the handler itself return, not just the client.
			returned := make(chan struct{}, 1)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				h.ServeHTTP(w, r)
				returned <- struct{}{}
			}))
			t.Cleanup(srv.Close)
			arrived := arrivals(h)

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := getAsync(ctx, srv.Client(), srv.URL+"/people")
			receive(t, arrived, "request to arrive")
			cancel()

			if got := receive(t, done, "client to give up"); !errors.Is(got.err, context.Canceled) {
				t.Errorf("GET error = %v, want context.Canceled", got.err)
			}
			receive(t, returned, "handler to return after the client left")
		})
	}
}

func TestHandler_ResetConn(t *testing.T) {
	s := mustServer(t)
	s.SetBehavior(Films, Behavior{ResetConn: true})
	resp, err := s.Client().Get(s.URL + "/films")
	if err == nil {
		resp.Body.Close()
		t.Fatalf("GET /films = %d, want a connection error", resp.StatusCode)
	}
	if got := mustGet(t, s, "/people?limit=1"); got.status != 200 {
		t.Errorf("GET /people after a reset = %d, want 200", got.status)
	}
}

// stallWriter reports each Write as it starts and ends, so a test can see
// the handler stuck writing to a client that stopped reading.
type stallWriter struct {
	http.ResponseWriter
	started, ended chan struct{}
}

func (w *stallWriter) Write(p []byte) (int, error) {
	w.started <- struct{}{}
	defer func() { w.ended <- struct{}{} }()
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the real connection.
func (w *stallWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func TestHandler_HugeReleasedByCloseWhenClientStopsReading(t *testing.T) {
	h := NewHandler(Bundled())
	h.SetBehavior(Films, Behavior{HugeBytes: 1 << 40})
	sw := &stallWriter{started: make(chan struct{}), ended: make(chan struct{})}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw.ResponseWriter = w
		h.ServeHTTP(sw, r)
		close(sw.started)
	}))
	s := &Server{Handler: h, URL: srv.URL, srv: srv}
	t.Cleanup(s.Close)

	resp, err := s.Client().Get(s.URL + "/films")
	if err != nil {
		t.Fatalf("GET /films: %v", err)
	}
	defer resp.Body.Close()

	// The client holds the body without reading, so the socket buffers fill
	// and a Write blocks. No channel can say a write is stuck rather than
	// slow, so a write still running after stallAfter counts as stuck; if it
	// was merely slow, the test passes without having proved much.
	const stallAfter = 100 * time.Millisecond
	for stalled := false; !stalled; {
		receive(t, sw.started, "a write to start")
		select {
		case <-sw.ended:
		case <-time.After(stallAfter):
			stalled = true
		}
	}

	closed := make(chan struct{})
	go func() {
		s.Close()
		close(closed)
	}()
	// The stuck write ends once Close unblocks it; drain its report.
	receive(t, sw.ended, "the stuck write to end")
	receive(t, closed, "Server.Close")
}

func TestHandler_Requests(t *testing.T) {
	s := mustServer(t)
	s.SetBehavior(People, Behavior{Status: 500})
	for _, path := range []string{"/films", "/films?limit=abc", "/films/nope", "/people", "/people", "/nope"} {
		mustGet(t, s, path)
	}
	mustDo(t, s.Client(), http.MethodPost, s.URL+"/films")

	tests := []struct {
		endpoint string
		want     int64
	}{
		{Films, 4},
		{People, 2},
		{"", 7},
		{"/species", 0},
	}
	for _, tt := range tests {
		if got := s.Requests(tt.endpoint); got != tt.want {
			t.Errorf("Requests(%q) = %d, want %d", tt.endpoint, got, tt.want)
		}
	}

	s.ResetCounts()
	for _, tt := range tests {
		if got := s.Requests(tt.endpoint); got != 0 {
			t.Errorf("after ResetCounts, Requests(%q) = %d, want 0", tt.endpoint, got)
		}
	}
}

func TestHandler_UpdateAndSetData(t *testing.T) {
	s := mustServer(t)
	if v := s.Version(); v != 0 {
		t.Fatalf("initial Version() = %d, want 0", v)
	}

	tests := []struct {
		name      string
		change    func(*Server)
		wantFilms int
	}{
		{
			name: "update keeps two films",
			change: func(s *Server) {
				s.Update(func(d *Data) { d.Films = d.Films[:2] })
			},
			wantFilms: 2,
		},
		{
			name: "update renames",
			change: func(s *Server) {
				s.Update(func(d *Data) { d.Films[0]["title"] = "Renamed" })
			},
			wantFilms: 2,
		},
		{
			name:      "set data empty",
			change:    func(s *Server) { s.SetData(Data{}) },
			wantFilms: 0,
		},
		{
			name:      "set data bundled",
			change:    func(s *Server) { s.SetData(Bundled()) },
			wantFilms: 22,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := s.Version()
			tt.change(s)
			if v := s.Version(); v != before+1 {
				t.Errorf("Version() = %d, want %d", v, before+1)
			}
			got := mustGet(t, s, "/films")
			if films := mustDecodeList(t, got.body); len(films) != tt.wantFilms {
				t.Errorf("GET /films = %d films, want %d", len(films), tt.wantFilms)
			}
			if h, want := got.header.Get(VersionHeader), strconv.FormatInt(before+1, 10); h != want {
				t.Errorf("%s = %q, want %q", VersionHeader, h, want)
			}
		})
	}
}

func TestHandler_UpdateVisibleInBody(t *testing.T) {
	s := mustServer(t)
	s.Update(func(d *Data) { d.Films[0]["title"] = "Renamed" })
	films := mustDecodeList(t, mustGet(t, s, "/films?fields=title&limit=1").body)
	if len(films) != 1 || films[0]["title"] != "Renamed" {
		t.Errorf("GET /films = %v, want the renamed film", films)
	}
}

func TestHandler_OwnsItsData(t *testing.T) {
	d := Bundled()
	s := NewServer(d)
	t.Cleanup(s.Close)
	d.Films[0]["title"] = "Mutated after NewServer"
	d.Films = d.Films[:1]

	films := mustDecodeList(t, mustGet(t, s, "/films?fields=title").body)
	if len(films) != 22 || films[0]["title"] != "Castle in the Sky" {
		t.Errorf("GET /films = %d films, first %v; want 22, Castle in the Sky", len(films), films[0])
	}
}

func TestBundled_FreshCopy(t *testing.T) {
	a, b := Bundled(), Bundled()
	if len(a.Films) != 22 || len(a.People) != 57 {
		t.Fatalf("Bundled() = %d films, %d people; want 22, 57", len(a.Films), len(a.People))
	}
	a.Films[0]["title"] = "Mutated"
	if b.Films[0]["title"] != "Castle in the Sky" {
		t.Errorf("mutating one Bundled() changed another: title = %v", b.Films[0]["title"])
	}
	if c := Bundled(); c.Films[0]["title"] != "Castle in the Sky" {
		t.Errorf("mutating Bundled() changed later calls: title = %v", c.Films[0]["title"])
	}
}

// TestHandler_ConsistentUnderConcurrentUpdates has readers race writers: each
// response must be one whole generation, where every film's title names the
// version in the response header.
func TestHandler_ConsistentUnderConcurrentUpdates(t *testing.T) {
	s := mustServer(t)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 25 {
				got, err := do(s.Client(), http.MethodGet, s.URL+"/films?fields=title&limit=5")
				var films []map[string]any
				if err == nil {
					err = json.Unmarshal(got.body, &films)
				}
				if err != nil {
					t.Errorf("GET /films: %v", err)
					return
				}
				v := got.header.Get(VersionHeader)
				if v == "0" {
					continue
				}
				for _, f := range films {
					if f["title"] != "v"+v {
						t.Errorf("version %s served title %v", v, f["title"])
						return
					}
				}
			}
		})
	}
	for i := range 50 {
		s.Update(func(d *Data) {
			for _, f := range d.Films {
				f["title"] = "v" + strconv.Itoa(i+1)
			}
		})
	}
	wg.Wait()
}

func TestServer_ClosePromptWithHangingRequest(t *testing.T) {
	s := NewServer(Bundled())
	s.SetBehavior("", Behavior{Hang: true})
	arrived := arrivals(s.Handler)
	done := getAsync(context.Background(), s.Client(), s.URL+"/people")
	receive(t, arrived, "request to arrive")

	closed := make(chan struct{})
	go func() {
		s.Close()
		close(closed)
	}()
	receive(t, closed, "Server.Close")
	if got := receive(t, done, "hanging request to end"); got.err == nil && got.status != 503 {
		t.Errorf("hanging GET ended with %d, want 503 or an error", got.status)
	}
	s.Close() // idempotent
}
