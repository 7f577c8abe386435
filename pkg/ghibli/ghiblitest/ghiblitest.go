// Package ghiblitest is a real fake of the public Studio Ghibli REST API for
// tests, in the spirit of net/http/httptest.
//
// A [Handler] is the production [builtin.Handler] (the upstream's routes,
// ?fields= and ?limit=, over the bundled dataset or any [Data] a test
// supplies) with fault injection on top. Per-endpoint [Behavior]s, for
// every request or only the next one, make it misbehave the ways a real
// upstream does: errors, slowness, hangs, broken or oversized bodies and
// dropped connections. A [Server] puts a Handler on a loopback listener.
package ghiblitest

import (
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/movies-dev/movies/pkg/ghibli/builtin"
)

// Endpoints the fake serves, as accepted by [Handler.SetBehavior] and
// [Handler.Requests].
const (
	Films  = builtin.Films
	People = builtin.People
)

// Limits of the upstream's ?limit= parameter.
const (
	DefaultLimit = builtin.DefaultLimit
	MaxLimit     = builtin.MaxLimit
)

// VersionHeader is the response header carrying the [Handler.Version] of the
// data generation a response was built from.
const VersionHeader = builtin.VersionHeader

// Data is the upstream's dataset.
type Data = builtin.Data

// Bundled returns the dataset captured from the upstream (22 films,
// 57 people). Each call decodes it afresh, so callers may mutate the result.
func Bundled() Data { return builtin.Bundled() }

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

// nextBehavior is a Behavior for one request, and who gets it.
type nextBehavior struct {
	b     Behavior
	taken chan *http.Request
}

// Handler is a [builtin.Handler] that can misbehave: per-endpoint
// Behaviors, request counts and a hook. It is safe for concurrent use; the
// data, behaviours and hook may be changed while requests are in flight.
// The data methods (SetData, Update, Version) are the builtin handler's.
type Handler struct {
	*builtin.Handler

	mu        sync.Mutex
	behaviors map[string]Behavior
	next      map[string][]nextBehavior // one-request faults, in order
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
		Handler:   builtin.NewHandler(d),
		behaviors: make(map[string]Behavior),
		next:      make(map[string][]nextBehavior),
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

// SetNextBehavior makes only the next request to endpoint ([Films] or
// [People]) behave as b; the requests after it are answered by the
// endpoint's Behavior again. Each call queues one more, in order. It is the
// fault of one request or one connection while the rest of the upstream is
// fine: a half-open keep-alive that hangs, one bad backend behind a
// balancer, one 503 with a long Retry-After. The channel returned receives
// the request b was applied to, as it is applied, so a test can tell who
// met the fault (its RemoteAddr) and when. It panics on any other
// endpoint, "" included: one request is to one endpoint.
func (h *Handler) SetNextBehavior(endpoint string, b Behavior) <-chan *http.Request {
	if endpoint != Films && endpoint != People {
		panic(fmt.Sprintf("ghiblitest: SetNextBehavior: unknown endpoint %q", endpoint))
	}
	taken := make(chan *http.Request, 1)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.next[endpoint] = append(h.next[endpoint], nextBehavior{b, taken})
	return taken
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
	endpoint, id, ok := builtin.Route(r.URL.Path)
	h.total.Add(1)
	switch endpoint {
	case Films:
		h.films.Add(1)
	case People:
		h.people.Add(1)
	}

	h.mu.Lock()
	b, hook := h.behaviors[endpoint], h.onRequest
	if q := h.next[endpoint]; len(q) > 0 {
		b, h.next[endpoint] = q[0].b, q[1:]
		q[0].taken <- r // buffered for this one request
	}
	h.mu.Unlock()
	if hook != nil {
		hook(r)
	}

	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		builtin.WriteError(w, http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	if !ok {
		builtin.WriteError(w, http.StatusNotFound, "not found")
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
			builtin.WriteError(w, http.StatusServiceUnavailable, "ghiblitest: handler closed")
			return
		}
	}

	switch {
	case b.Hang:
		select {
		case <-r.Context().Done():
		case <-h.closed.Done():
			builtin.WriteError(w, http.StatusServiceUnavailable, "ghiblitest: handler closed")
		}
		return
	case b.ResetConn:
		resetConn(w)
		return
	case b.Status != 0 && b.Status != http.StatusOK:
		if b.RetryAfter != "" {
			w.Header().Set("Retry-After", b.RetryAfter)
		}
		builtin.WriteError(w, b.Status, http.StatusText(b.Status))
		return
	case b.Malformed:
		builtin.WriteJSON(w, h.Version(), []byte(malformedPage))
		return
	case b.HugeBytes > 0:
		version, records := h.Records(endpoint)
		h.streamHuge(w, version, records, b.HugeBytes)
		return
	case b.Truncated:
		version, body, status := h.Body(r.URL.Query(), endpoint, id)
		if status != http.StatusOK {
			builtin.WriteError(w, status, string(body))
			return
		}
		builtin.WriteJSON(w, version, body[:len(body)/2])
		return
	}
	h.Handler.ServeHTTP(w, r)
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
			chunk.Write(builtin.MarshalRecord(rec))
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
