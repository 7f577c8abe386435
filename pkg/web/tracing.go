package web

import (
	"context"

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

// nameSpan names the request's span by its route, once routed (otelhttp
// starts it before echo knows the route), and gives it the request id,
// so a trace and a log line find each other both ways.
// It returns the span's context, for the request's exemplar.
func nameSpan(c echo.Context, route string) trace.SpanContext {
	span := trace.SpanFromContext(c.Request().Context())
	if !span.IsRecording() {
		return span.SpanContext()
	}
	span.SetName(c.Request().Method + " " + route)
	span.SetAttributes(attribute.String("http.route", route))
	if id := c.Response().Header()[requestIDHeaderKey]; len(id) > 0 {
		span.SetAttributes(attribute.String("request.id", id[0]))
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
