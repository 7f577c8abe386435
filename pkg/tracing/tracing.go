// Package tracing turns on OpenTelemetry traces when the standard OTEL_*
// environment asks for them, and otherwise stays out of the way: with no
// exporter configured nothing is set up, and the server adds no tracing
// code to any request.
//
// It exports OTLP over HTTP (otlptracehttp), which reads the rest of the
// standard environment itself (OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, _HEADERS, _TIMEOUT, _CERTIFICATE,
// _COMPRESSION), through the SDK's batch span processor (OTEL_BSP_*). Its
// queue is bounded (OTEL_BSP_MAX_QUEUE_SIZE, 2048 spans): a span ended
// while that many wait for a backend that is down or slow is dropped and
// counted (Stats), so the backend never holds a request or grows memory
// without bound. The sampler is the
// SDK's, from OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG
// (parentbased_always_on unless set); the service name is movies unless
// OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES) says otherwise.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Enabled reports whether the environment (read through getenv) asks for
// traces: an OTLP endpoint is set, and neither OTEL_SDK_DISABLED=true nor
// OTEL_TRACES_EXPORTER=none turns them off. An OTEL_TRACES_EXPORTER other
// than otlp or none is an error: this server exports nothing else.
func Enabled(getenv func(string) string) (bool, error) {
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		return false, nil
	}
	switch e := strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")); e {
	case "none":
		return false, nil
	case "", "otlp":
	default:
		return false, fmt.Errorf("OTEL_TRACES_EXPORTER=%q: only otlp (over HTTP) and none are supported", e)
	}
	if p := strings.TrimSpace(firstSet(getenv, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")); p != "" && p != "http/protobuf" {
		return false, fmt.Errorf("OTLP protocol %q: only http/protobuf is supported (Jaeger and the Collector take it on port 4318)", p)
	}
	return getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "", nil
}

func firstSet(getenv func(string) string, names ...string) string {
	for _, n := range names {
		if v := getenv(n); v != "" {
			return v
		}
	}
	return ""
}

// Start builds the tracer provider the environment configures. version
// names the build (service.version). The caller must Shutdown the
// provider when it stops serving, which sends what is still queued, within
// its context's deadline.
func Start(ctx context.Context, version string) (*Provider, error) {
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, fmt.Errorf("tracing: OTLP exporter: %w", err)
	}
	// Later sources override earlier ones: the environment wins over our
	// defaults.
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", "movies"), attribute.String("service.version", version)),
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(),
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("tracing: resource: %w", err)
	}
	p := &Provider{limit: queueSize(os.Getenv)}
	bsp := sdktrace.NewBatchSpanProcessor(countingExporter{exp, p}, sdktrace.WithMaxQueueSize(int(p.limit)))
	p.TracerProvider = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(gate{bsp, p}), sdktrace.WithResource(res))
	return p, nil
}

// Provider is the tracer provider Start builds, with its counts.
type Provider struct {
	*sdktrace.TracerProvider
	limit    int64        // spans ended and not yet exported, at most
	inflight atomic.Int64 // spans ended and not yet exported
	stats    Stats        // only through sync/atomic
}

// Stats are what became of the spans ended (see metrics.RegisterCounters).
type Stats struct {
	Exported uint64 `metric:"trace_spans_total" labels:"result=exported" help:"Sampled spans ended, by what became of them: exported to the OTLP endpoint, dropped because the queue to it was full (it is down or slow), or failed (it refused them or did not answer in time)."`
	Dropped  uint64 `metric:"trace_spans_total" labels:"result=dropped"`
	Failed   uint64 `metric:"trace_spans_total" labels:"result=failed"`
}

// Stats returns the provider's counts.
func (p *Provider) Stats() Stats {
	return Stats{
		Exported: atomic.LoadUint64(&p.stats.Exported),
		Dropped:  atomic.LoadUint64(&p.stats.Dropped),
		Failed:   atomic.LoadUint64(&p.stats.Failed),
	}
}

// defaultQueue is the batch span processor's queue, as the SDK's default.
const defaultQueue = 2048

// queueSize is OTEL_BSP_MAX_QUEUE_SIZE, or the SDK's default.
func queueSize(getenv func(string) string) int64 {
	if n, err := strconv.ParseInt(getenv("OTEL_BSP_MAX_QUEUE_SIZE"), 10, 64); err == nil && n > 0 {
		return n
	}
	return defaultQueue
}

// gate admits an ended span to the batch processor only while fewer than
// the queue's size are waiting to be exported, and counts the rest as
// dropped. The processor would drop them too, silently; here a request
// never waits on an exporter, and the metric says what was lost.
type gate struct {
	sdktrace.SpanProcessor
	p *Provider
}

func (g gate) OnEnd(s sdktrace.ReadOnlySpan) {
	if !s.SpanContext().IsSampled() {
		return // the processor exports only sampled spans
	}
	if g.p.inflight.Add(1) > g.p.limit {
		g.p.inflight.Add(-1)
		atomic.AddUint64(&g.p.stats.Dropped, 1)
		return
	}
	g.SpanProcessor.OnEnd(s)
}

// countingExporter counts what the exporter sent or failed to send.
type countingExporter struct {
	sdktrace.SpanExporter
	p *Provider
}

func (e countingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	err := e.SpanExporter.ExportSpans(ctx, spans)
	e.p.inflight.Add(-int64(len(spans)))
	if err != nil {
		atomic.AddUint64(&e.p.stats.Failed, uint64(len(spans)))
	} else {
		atomic.AddUint64(&e.p.stats.Exported, uint64(len(spans)))
	}
	return err
}
