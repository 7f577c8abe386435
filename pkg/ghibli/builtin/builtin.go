// Package builtin serves a bundled copy of the public Studio Ghibli API's
// data the way the upstream json-server app does: GET /films and /people
// (and /{id} under each) with their ?fields= and ?limit= parameters. It is
// the offline upstream of `movies -upstream builtin`, the one cmd/ghiblifake
// runs for load tests, and the base that ghiblitest adds faults to.
//
// It is served over a real listener rather than called in-process, so the
// offline server runs the very same client code as production: HTTP, JSON,
// size limits and all.
package builtin

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Endpoints the handler serves.
const (
	Films  = "/films"
	People = "/people"
)

// Limits of the upstream's ?limit= parameter.
const (
	DefaultLimit = 50
	MaxLimit     = 250
)

// VersionHeader is the response header carrying the [Handler.Version] of the
// data generation a response was built from, so a test can tell which
// generation a client saw.
const VersionHeader = "X-Ghiblitest-Version"

//go:embed data.json
var bundled []byte

// Data is the upstream's dataset. Each object keeps the keys of the upstream
// JSON; the handler serves them with sorted keys.
type Data struct {
	Films  []map[string]any
	People []map[string]any
}

// Bundled returns the dataset captured from the upstream (22 films,
// 57 people; MIT-licensed). Each call decodes it afresh, so callers may
// mutate the result.
func Bundled() Data {
	var d Data
	if err := json.Unmarshal(bundled, &d); err != nil {
		panic("builtin: embedded data.json: " + err.Error())
	}
	return d
}

// clone deep-copies d through JSON, which also normalises whatever value
// types a caller put in (ints become float64, structs become maps) to
// exactly what a client decoding the upstream would see.
func (d Data) clone() Data {
	b, err := json.Marshal(d)
	if err != nil {
		panic("builtin: data is not JSON-encodable: " + err.Error())
	}
	var c Data
	if err := json.Unmarshal(b, &c); err != nil {
		panic("builtin: clone data: " + err.Error())
	}
	return c
}

// generation is one immutable version of the served data. Its bodies are
// memoised because the data cannot change under it.
type generation struct {
	version int64
	data    Data
	bodies  sync.Map // cache key -> []byte
	nbodies atomic.Int64
}

// maxCachedBodies bounds the memo, since ?fields= lets clients make up
// arbitrarily many keys.
const maxCachedBodies = 1024

// Handler is an http.Handler serving [Data] like the upstream. It is safe
// for concurrent use; the data may be replaced while requests are in
// flight, and each request sees one consistent generation.
type Handler struct {
	mu  sync.RWMutex
	gen *generation
}

// NewHandler returns a Handler serving a copy of d at [Handler.Version] 0.
func NewHandler(d Data) *Handler {
	return &Handler{gen: &generation{data: d.clone()}}
}

// SetData replaces the served data with a copy of d and bumps the version.
func (h *Handler) SetData(d Data) {
	c := d.clone() // outside the lock: readers need not wait for it
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gen = &generation{version: h.gen.version + 1, data: c}
}

// Update calls f on a copy of the served data and serves the result as a new
// version, so readers see either all of f's changes or none. f runs under
// the handler's lock: it must not call h's methods or keep d's contents
// after it returns.
func (h *Handler) Update(f func(d *Data)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d := h.gen.data.clone()
	f(&d)
	h.gen = &generation{version: h.gen.version + 1, data: d}
}

// Version is the number of SetData and Update calls so far; responses carry
// the version they were built from in [VersionHeader].
func (h *Handler) Version() int64 { return h.current().version }

func (h *Handler) current() *generation {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.gen
}

// Records returns the current version and the records of endpoint ([Films]
// or [People]), for a caller that answers with them in its own way. The
// records are shared: callers must not modify them.
func (h *Handler) Records(endpoint string) (version int64, records []map[string]any) {
	g := h.current()
	return g.version, g.records(endpoint)
}

// ServeHTTP answers r like the upstream.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		WriteError(w, http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	endpoint, id, ok := Route(r.URL.Path)
	if !ok {
		WriteError(w, http.StatusNotFound, "not found")
		return
	}
	version, body, status := h.Body(r.URL.Query(), endpoint, id)
	if status != http.StatusOK {
		WriteError(w, status, string(body))
		return
	}
	WriteJSON(w, version, body)
}

// Body is the answer to a request for endpoint (and id, if not empty) with
// query q, built from one generation: its version, and the encoded JSON and
// 200, or an error message and its status.
func (h *Handler) Body(q map[string][]string, endpoint, id string) (version int64, body []byte, status int) {
	g := h.current()
	fields := parseFields(q["fields"])
	limit, err := parseLimit(q)
	if err != nil {
		return g.version, []byte(err.Error()), http.StatusBadRequest
	}
	records := g.records(endpoint)
	if id == "" {
		return g.version, g.list(endpoint, records, fields, limit), http.StatusOK
	}
	rec := find(records, id)
	if rec == nil {
		return g.version, []byte("not found"), http.StatusNotFound
	}
	return g.version, mustMarshal(project(rec, fields)), http.StatusOK
}

// Route splits a path into its endpoint and optional id; ok is false for
// paths the upstream does not serve.
func Route(path string) (endpoint, id string, ok bool) {
	for _, e := range []string{Films, People} {
		rest, found := strings.CutPrefix(path, e)
		if !found {
			continue
		}
		switch {
		case rest == "" || rest == "/":
			return e, "", true
		case rest[0] != '/':
			return "", "", false // e.g. /filmsx
		case !strings.Contains(rest[1:], "/"):
			return e, rest[1:], true
		default:
			// /films/x/y: of the endpoint but not served.
			return e, "", false
		}
	}
	return "", "", false
}

func (g *generation) records(endpoint string) []map[string]any {
	if endpoint == Films {
		return g.data.Films
	}
	return g.data.People
}

// list returns the encoded list answer, memoised per generation.
func (g *generation) list(endpoint string, records []map[string]any, fields []string, limit int) []byte {
	key := endpoint + "\x00" + strconv.Itoa(limit) + "\x00" + strings.Join(fields, ",")
	if b, ok := g.bodies.Load(key); ok {
		return b.([]byte)
	}
	records = records[:min(limit, len(records))]
	out := make([]map[string]any, len(records)) // never nil: an empty list is [], not null
	for i, rec := range records {
		out[i] = project(rec, fields)
	}
	body := mustMarshal(out)
	if g.nbodies.Add(1) <= maxCachedBodies {
		g.bodies.Store(key, body)
	}
	return body
}

func find(records []map[string]any, id string) map[string]any {
	for _, rec := range records {
		if s, ok := rec["id"].(string); ok && s == id {
			return rec
		}
	}
	return nil
}

// project keeps only fields of rec, or all of it if fields is empty. Unknown
// fields are left out rather than rejected, as upstream does.
func project(rec map[string]any, fields []string) map[string]any {
	if len(fields) == 0 {
		return rec
	}
	out := make(map[string]any, len(fields))
	for _, f := range fields {
		if v, ok := rec[f]; ok {
			out[f] = v
		}
	}
	return out
}

// parseFields flattens ?fields=a,b&fields=c into a sorted, deduplicated list
// so equivalent queries share a memoised body.
func parseFields(values []string) []string {
	var fields []string
	for _, v := range values {
		for f := range strings.SplitSeq(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				fields = append(fields, f)
			}
		}
	}
	slices.Sort(fields)
	return slices.Compact(fields)
}

func parseLimit(q map[string][]string) (int, error) {
	v, ok := q["limit"]
	if !ok || len(v) == 0 {
		return DefaultLimit, nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(v[0]))
	if err != nil || n < 1 {
		return 0, fmt.Errorf("limit must be a positive integer, got %q", v[0])
	}
	return min(n, MaxLimit), nil
}

// MarshalRecord encodes one record as the upstream would.
func MarshalRecord(rec map[string]any) []byte { return mustMarshal(rec) }

func mustMarshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Data is normalised by clone, so this cannot happen.
		panic("builtin: encode: " + err.Error())
	}
	return b
}

// WriteJSON answers 200 with body, tagged with the data version.
func WriteJSON(w http.ResponseWriter, version int64, body []byte) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.Header().Set(VersionHeader, strconv.FormatInt(version, 10))
	w.WriteHeader(http.StatusOK)
	w.Write(body) //nolint:errcheck // the client may be gone; nothing to do
}

// WriteError answers status with the upstream's JSON error shape.
func WriteError(w http.ResponseWriter, status int, msg string) {
	body := mustMarshal(map[string]any{"code": status, "message": msg})
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body) //nolint:errcheck // the client may be gone; nothing to do
}

// Server is a handler on a listener, started by [Start]. It is the one way
// the bundled data is served over the network, by movies and ghiblifake.
type Server struct {
	// URL is the base URL, http://host:port, with no trailing slash.
	URL string

	srv  *http.Server
	done chan struct{}
	err  error // Serve's error other than ErrServerClosed; read after done
}

// Start serves h on addr ("127.0.0.1:0" picks a free loopback port) until
// Shutdown.
func Start(addr string, h http.Handler) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &Server{
		URL:  "http://" + ln.Addr().String(),
		srv:  &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second},
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			s.err = err
		}
	}()
	return s, nil
}

// Done is closed when the server stops serving, by Shutdown or because its
// listener failed ([Server.Err] then says why).
func (s *Server) Done() <-chan struct{} { return s.done }

// Err is why the server stopped on its own, once Done is closed; nil after
// Shutdown.
func (s *Server) Err() error {
	<-s.done
	return s.err
}

// Shutdown stops the server, letting in-flight requests finish until ctx
// ends, and then closing what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if err != nil {
		s.srv.Close()
	}
	<-s.done
	return err
}
