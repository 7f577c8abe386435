package fleet

import (
	"context"

	"github.com/redis/go-redis/extra/redisotel/v9"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/embedded"
)

// traceCommands makes each Redis command a span (go-redis's redisotel)
// in the trace of the request or fetch that made it. Commands only: no
// statement (a commit's would hold the whole catalogue), no dial.
func traceCommands(c redis.UniversalClient, tp trace.TracerProvider) error {
	return redisotel.InstrumentTracing(c, redisotel.WithTracerProvider(childrenOnly{tp: tp}),
		redisotel.WithDBStatement(false), redisotel.WithDialFilter(true))
}

// childrenOnly starts spans only inside a trace: the calls the tier makes
// in the background (its subscription's, a release after a timeout) would
// each be a trace of its own, one every few seconds, saying nothing.
type childrenOnly struct {
	embedded.TracerProvider
	tp trace.TracerProvider
}

func (c childrenOnly) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	return childTracer{t: c.tp.Tracer(name, opts...)}
}

type childTracer struct {
	embedded.Tracer
	t trace.Tracer
}

func (c childTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx, trace.SpanFromContext(ctx) // a span that records nothing
	}
	return c.t.Start(ctx, name, opts...)
}
