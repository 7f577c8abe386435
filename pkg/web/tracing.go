package web

import (
	"context"
	"net/http"

	"github.com/labstack/echo/v4"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/movies-dev/movies/pkg/cache"
	"github.com/movies-dev/movies/pkg/snapshot"
)

// tracerName is the instrumentation scope of the server's own spans.
const tracerName = "github.com/movies-dev/movies/pkg/web"

// tracerOf returns the server's tracer: tp's, or one that records nothing.
func tracerOf(tp trace.TracerProvider) trace.Tracer {
	if tp == nil {
		return noop.NewTracerProvider().Tracer(tracerName)
	}
	return tp.Tracer(tracerName)
}

// startSpan starts the request's span, continuing the caller's W3C
// traceparent (a load balancer's), and puts it in the request's context.
// It is written here rather than taken from otelhttp's handler, which cost
// a hit about 30 allocations when the request is not even sampled
// (BenchmarkHitTraced): until the span is known to record, this costs its
// context and little else. The name and attributes come at the end, and
// only when it records.
func (s *Server) startSpan(c echo.Context) trace.Span {
	r := c.Request()
	ctx := propagation.TraceContext{}.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	ctx, span := s.tracer.Start(ctx, "HTTP request", trace.WithSpanKind(trace.SpanKindServer))
	c.SetRequest(r.WithContext(ctx))
	return span
}

// endRequestSpan names the request's span by its route, gives it the
// request id (so a trace and a log line find each other both ways) and
// the status, and ends it. It returns the span's context, for the
// request's exemplar.
func endRequestSpan(span trace.Span, c echo.Context, route string, status int) trace.SpanContext {
	defer span.End()
	if !span.IsRecording() {
		return span.SpanContext()
	}
	r := c.Request()
	span.SetName(r.Method + " " + route)
	span.SetAttributes(
		attribute.String("http.request.method", r.Method),
		attribute.String("http.route", route),
		attribute.String("url.path", r.URL.Path),
		attribute.Int("http.response.status_code", status),
	)
	if id := c.Response().Header()[requestIDHeaderKey]; len(id) > 0 {
		span.SetAttributes(attribute.String("request.id", id[0]))
	}
	if status >= 500 {
		span.SetStatus(codes.Error, http.StatusText(status))
	}
	return span.SpanContext()
}

// linkFetch links the span of a request that waited on a fetch to that
// fetch's span, and says how it was served: the span of a request that
// joined a fetch another request started is in another trace, or beside
// the leader's in the same one, and the link is what ties the many
// requests to their one fetch.
func linkFetch(ctx context.Context, snap cache.Snapshot[*snapshot.Snapshot]) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(attribute.String("movies.served", servedName(snap)))
	if snap.Origin != "" {
		span.SetAttributes(attribute.String("movies.source", snap.Origin))
	}
	if snap.Served == cache.Hit || snap.Stale {
		return
	}
	if fc := snap.Value.Fetch; fc.IsValid() {
		span.AddLink(trace.Link{SpanContext: fc, Attributes: []attribute.KeyValue{attribute.String("movies.link", "waited on this fetch")}})
	}
}

func servedName(snap cache.Snapshot[*snapshot.Snapshot]) string {
	switch {
	case snap.Stale:
		return "stale"
	case snap.Served == cache.Missed:
		return "miss"
	case snap.Served == cache.Collapsed:
		return "collapsed"
	}
	return "hit"
}

// endSpan ends span with err's status.
func endSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// traceparent is sc as a W3C traceparent header value.
func traceparent(sc trace.SpanContext) string {
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(trace.ContextWithSpanContext(context.Background(), sc), carrier)
	return carrier["traceparent"]
}

// spanOf is the span a W3C traceparent names (remote), or an invalid one.
func spanOf(traceparent string) trace.SpanContext {
	if traceparent == "" {
		return trace.SpanContext{}
	}
	ctx := propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{"traceparent": traceparent})
	return trace.SpanContextFromContext(ctx)
}
