// Package ghiblitest is a real fake of the public Studio Ghibli REST API for
// tests, in the spirit of net/http/httptest.
//
// A [Handler] serves GET /films and GET /people (and /films/{id},
// /people/{id}) the way the upstream json-server app does, including its
// ?fields= and ?limit= query parameters, from an embedded copy of the
// upstream dataset or any [Data] a test supplies. Per-endpoint [Behavior]s
// make it misbehave the ways a real upstream does: errors, slowness, hangs,
// broken or oversized bodies and dropped connections. A [Server] puts a
// Handler on a loopback listener.
package ghiblitest

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Endpoints the fake serves, as accepted by [Handler.SetBehavior] and
// [Handler.Requests].
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
// JSON; the fake serves them with sorted keys.
type Data struct {
	Films  []map[string]any
	People []map[string]any
}

// Bundled returns the dataset captured from the upstream (22 films,
// 57 people). Each call decodes it afresh, so callers may mutate the result.
func Bundled() Data {
	var d Data
	if err := json.Unmarshal(bundled, &d); err != nil {
		panic("ghiblitest: embedded data.json: " + err.Error())
	}
	return d
}

// clone deep-copies d through JSON, which also normalises whatever value
// types a test put in (ints become float64, structs become maps) to exactly
// what a client decoding the upstream would see.
func (d Data) clone() Data {
	b, err := json.Marshal(d)
	if err != nil {
		panic("ghiblitest: data is not JSON-encodable: " + err.Error())
	}
	var c Data
	if err := json.Unmarshal(b, &c); err != nil {
		panic("ghiblitest: clone data: " + err.Error())
	}
	return c
}

// Behavior is how the fake answers one endpoint; the zero value answers
// normally. When several fields are set, Latency is waited out first, then
// the first of Hang, ResetConn, Status, Malformed, Truncated and HugeBytes
// that is set decides the answer.
type Behavior struct {
	// Status, if non-zero and not 200, is sent with a small JSON error body.
	Status int
	// RetryAfter, if set, is sent as the Retry-After header (with Status).
	RetryAfter string
	// Latency is waited before answering. The wait ends early if the
	// request's context ends (nothing is sent) or the handler is closed
	// (503 is sent).
	Latency time.Duration
	// Hang never answers: the request blocks until the client goes away or
	// the handler is closed, after which it gets 503 at once.
	Hang bool
	// Malformed answers 200 with an HTML error page. It keeps the JSON
	// Content-Type, as misconfigured proxies do, so a client cannot rely on
	// the header to notice.
	Malformed bool
	// Truncated answers 200 with the first half of the real JSON body and a
	// Content-Length matching that half, so the HTTP exchange is complete
	// but the JSON is not.
	Truncated bool
	// HugeBytes, if positive, answers 200 by streaming a valid JSON array of
	// real records repeated to at least this many bytes, without a
	// Content-Length, to exercise a client's body size limit.
	HugeBytes int64
	// ResetConn drops the connection without answering; the client sees a
	// connection reset or EOF.
	ResetConn bool
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

// Handler is an http.Handler serving [Data] like the upstream. It is safe for
// concurrent use; the data, behaviours and hook may be changed while requests
// are in flight, and each request sees one consistent data generation.
type Handler struct {
	mu        sync.RWMutex
	gen       *generation
	behaviors map[string]Behavior
	onRequest func(*http.Request)

	films, people, total atomic.Int64

	// closed ends every wait; a context rather than a bare channel so
	// streaming answers can hook it with context.AfterFunc.
	closed context.Context
	close  context.CancelFunc
}

// NewHandler returns a Handler serving a copy of d at [Handler.Version] 0.
func NewHandler(d Data) *Handler {
	ctx, cancel := context.WithCancel(context.Background())
	return &Handler{
		gen:       &generation{data: d.clone()},
		behaviors: make(map[string]Behavior),
		closed:    ctx,
		close:     cancel,
	}
}

// SetBehavior sets how endpoint ([Films] or [People]; "" means both) is
// answered from now on, including /{id} lookups under it. It panics on any
// other endpoint.
func (h *Handler) SetBehavior(endpoint string, b Behavior) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch endpoint {
	case Films, People:
		h.behaviors[endpoint] = b
	case "":
		h.behaviors[Films] = b
		h.behaviors[People] = b
	default:
		panic(fmt.Sprintf("ghiblitest: SetBehavior: unknown endpoint %q", endpoint))
	}
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
func (h *Handler) Version() int64 {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.gen.version
}

// OnRequest sets a hook called synchronously at the start of each request,
// before its behaviour is applied, so tests can observe when requests
// arrive. nil clears it.
func (h *Handler) OnRequest(f func(r *http.Request)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.onRequest = f
}

// Requests reports how many requests arrived for endpoint ([Films] or
// [People], each including its /{id} lookups and requests answered badly on
// purpose) since the last ResetCounts; "" counts every request, whatever the
// path. Other endpoints report 0.
func (h *Handler) Requests(endpoint string) int64 {
	switch endpoint {
	case Films:
		return h.films.Load()
	case People:
		return h.people.Load()
	case "":
		return h.total.Load()
	}
	return 0
}

// ResetCounts sets every [Handler.Requests] count to zero.
func (h *Handler) ResetCounts() {
	h.films.Store(0)
	h.people.Store(0)
	h.total.Store(0)
}

// Close releases every request waiting out a Hang or Latency, and makes
// later Hang requests answer 503 at once, so a server in front of h can shut
// down. Other requests are still served. Close is idempotent.
func (h *Handler) Close() { h.close() }

// ServeHTTP answers r like the upstream, as altered by the endpoint's
// Behavior.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	endpoint, id, ok := route(r.URL.Path)
	h.total.Add(1)
	switch endpoint {
	case Films:
		h.films.Add(1)
	case People:
		h.people.Add(1)
	}

	h.mu.RLock()
	gen, b, hook := h.gen, h.behaviors[endpoint], h.onRequest
	h.mu.RUnlock()
	if hook != nil {
		hook(r)
	}

	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	if !ok {
		writeError(w, http.StatusNotFound, "not found")
		return
	}

	if b.Latency > 0 {
		t := time.NewTimer(b.Latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		case <-h.closed.Done():
			t.Stop()
			writeError(w, http.StatusServiceUnavailable, "ghiblitest: handler closed")
			return
		}
	}

	switch {
	case b.Hang:
		select {
		case <-r.Context().Done():
		case <-h.closed.Done():
			writeError(w, http.StatusServiceUnavailable, "ghiblitest: handler closed")
		}
		return
	case b.ResetConn:
		resetConn(w)
		return
	case b.Status != 0 && b.Status != http.StatusOK:
		if b.RetryAfter != "" {
			w.Header().Set("Retry-After", b.RetryAfter)
		}
		writeError(w, b.Status, http.StatusText(b.Status))
		return
	case b.Malformed:
		writeBody(w, gen.version, []byte(malformedPage))
		return
	}

	fields := parseFields(r.URL.Query()["fields"])
	limit, err := parseLimit(r.URL.Query())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}

	records := gen.records(endpoint)
	if b.HugeBytes > 0 {
		h.streamHuge(w, gen.version, records, b.HugeBytes)
		return
	}

	var body []byte
	if id != "" {
		rec := find(records, id)
		if rec == nil {
			writeError(w, http.StatusNotFound, "not found")
			return
		}
		body = mustMarshal(project(rec, fields))
	} else {
		body = gen.list(endpoint, records, fields, limit)
	}
	if b.Truncated {
		body = body[:len(body)/2]
	}
	writeBody(w, gen.version, body)
}

// route splits a path into its endpoint and optional id; ok is false for
// paths the upstream does not serve.
func route(path string) (endpoint, id string, ok bool) {
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
			// /films/x/y: counted as the endpoint but not served.
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

func mustMarshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Data is normalised by clone, so this cannot happen.
		panic("ghiblitest: encode: " + err.Error())
	}
	return b
}

func writeBody(w http.ResponseWriter, version int64, body []byte) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.Header().Set(VersionHeader, strconv.FormatInt(version, 10))
	w.WriteHeader(http.StatusOK)
	w.Write(body) //nolint:errcheck // the client may be gone; nothing to do
}

func writeError(w http.ResponseWriter, status int, msg string) {
	body := mustMarshal(map[string]any{"code": status, "message": msg})
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body) //nolint:errcheck // the client may be gone; nothing to do
}

const malformedPage = `<!DOCTYPE html>
<html><head><title>502 Bad Gateway</title></head>
<body><h1>Bad Gateway</h1><p>The upstream application is not responding.</p></body></html>
`

// resetConn drops the connection under w without a response. A hijacked TCP
// connection is closed with linger 0 so the client sees a real reset; where
// hijacking is impossible (HTTP/2), aborting the handler drops the stream.
func resetConn(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0) //nolint:errcheck // best effort: a plain close is an EOF, also fine
	}
	conn.Close()
}

// streamHuge writes a valid JSON array of records, repeated, of at least n
// bytes. It stops early if the client goes away or the handler is closed;
// a closed handler also unblocks a write stuck on a client that stopped
// reading, so Server.Close does not wait for it.
func (h *Handler) streamHuge(w http.ResponseWriter, version int64, records []map[string]any, n int64) {
	var chunk bytes.Buffer
	for chunk.Len() < 32<<10 {
		if len(records) == 0 {
			if chunk.Len() > 0 {
				chunk.WriteByte(',')
			}
			chunk.WriteString("{}")
			continue
		}
		for _, rec := range records {
			if chunk.Len() > 0 {
				chunk.WriteByte(',')
			}
			chunk.Write(mustMarshal(rec))
		}
	}

	rc := http.NewResponseController(w)
	unblocked := make(chan struct{})
	stop := context.AfterFunc(h.closed, func() {
		defer close(unblocked)
		rc.SetWriteDeadline(time.Now()) //nolint:errcheck // best effort
	})
	defer func() {
		// If the unblocking already started, let it finish before the
		// response (and its connection) can be reused.
		if !stop() {
			<-unblocked
		}
	}()

	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set(VersionHeader, strconv.FormatInt(version, 10))
	w.WriteHeader(http.StatusOK)
	// Send the headers now, as a slow upstream would, so the client sees a
	// 200 before the body starts to pile up.
	if err := rc.Flush(); err != nil {
		return
	}
	if _, err := w.Write([]byte{'['}); err != nil {
		return
	}
	written := int64(1)
	for written < n {
		if written > 1 {
			if _, err := w.Write([]byte{','}); err != nil {
				return
			}
			written++
		}
		m, err := w.Write(chunk.Bytes())
		written += int64(m)
		if err != nil || h.closed.Err() != nil {
			return
		}
	}
	w.Write([]byte{']'}) //nolint:errcheck // the client may be gone; nothing to do
}

// Server is a [Handler] on a real loopback listener, like httptest.Server.
// Its Handler methods are promoted, except Close, which also stops the
// listener.
type Server struct {
	*Handler
	// URL is the base URL, http://127.0.0.1:port, with no trailing slash.
	URL string

	srv *httptest.Server
}

// NewServer starts a Server serving a copy of d on 127.0.0.1 on a free port.
// Callers must Close it.
func NewServer(d Data) *Server {
	h := NewHandler(d)
	srv := httptest.NewServer(h)
	return &Server{Handler: h, URL: srv.URL, srv: srv}
}

// Client returns an HTTP client for the server whose idle connections are
// closed by Close, so tests checking for goroutine leaks stay clean.
func (s *Server) Client() *http.Client { return s.srv.Client() }

// Close releases hanging requests and shuts the server down, waiting for
// in-flight requests. The Handler is closed first because
// httptest.Server.Close would otherwise wait on hanging requests forever.
// Close is idempotent.
func (s *Server) Close() {
	s.Handler.Close()
	s.srv.Close() // idempotent itself
}
