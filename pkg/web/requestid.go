package web

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"log/slog"
	"strings"
	"sync"

	"github.com/labstack/echo/v4"
	"go.opentelemetry.io/otel/trace"
)

// requestIDKey's context value is a *string, pointing at the id in the
// response's X-Request-Id header: a pointer goes into a context without an
// allocation, and the id exists once.
type requestIDKey struct{}

// requestContext is the request's context carrying its id for the logs:
// of the request, and of the fetch it may lead (the fetch keeps the
// leader's values).
func requestContext(c echo.Context) context.Context {
	ctx := c.Request().Context()
	if v := c.Response().Header()[requestIDHeaderKey]; len(v) > 0 {
		return context.WithValue(ctx, requestIDKey{}, &v[0])
	}
	return ctx
}

// idBatch is how many request ids are made at a time.
const idBatch = 256

// idSource hands out unique request ids as ready-made header values. Ids
// are made in batches, one string and one slice per batch, so generating
// an id costs a request no allocation; each is this process's random
// prefix and a counter, unique across replicas with overwhelming odds.
// It is safe for concurrent use.
type idSource struct {
	prefix string

	mu    sync.Mutex
	n     uint64   // ids made
	batch []string // ready ids; each handed out as a one-element slice
}

func newIDSource() *idSource {
	var b [10]byte
	rand.Read(b[:])
	return &idSource{prefix: strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))}
}

// next returns a header value holding a new id. The slice has len == cap,
// so an append by anyone else copies instead of touching the batch.
func (s *idSource) next() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.batch) == 0 {
		const width = 16 + 1 + 16 // prefix, dash, 16 hex digits of counter
		b := make([]byte, 0, idBatch*width)
		for i := range uint64(idBatch) {
			b = append(b, s.prefix...)
			b = append(b, '-')
			n := s.n + i
			for shift := 60; shift >= 0; shift -= 4 {
				b = append(b, "0123456789abcdef"[n>>shift&0xf])
			}
		}
		s.n += idBatch
		ids, all := make([]string, idBatch), string(b)
		for i := range ids {
			ids[i] = all[i*width : (i+1)*width]
		}
		s.batch = ids
	}
	v := s.batch[0:1:1]
	s.batch = s.batch[1:]
	return v
}

// NewLogHandler wraps h so each record logged with a request's context
// (while serving it, and by the fetch it led) carries its request_id, and
// when traced its trace_id and span_id.
func NewLogHandler(h slog.Handler) slog.Handler { return requestIDHandler{h} }

// requestIDHandler adds the request id found in a record's context.
type requestIDHandler struct{ slog.Handler }

func (h requestIDHandler) Handle(ctx context.Context, r slog.Record) error {
	if id, ok := ctx.Value(requestIDKey{}).(*string); ok {
		r.AddAttrs(slog.String("request_id", *id))
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

func (h requestIDHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return requestIDHandler{h.Handler.WithAttrs(attrs)}
}

func (h requestIDHandler) WithGroup(name string) slog.Handler {
	return requestIDHandler{h.Handler.WithGroup(name)}
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
