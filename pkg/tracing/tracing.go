// Package tracing turns on OpenTelemetry traces when the standard OTEL_*
// environment asks for them, and otherwise stays out of the way: with no
// exporter configured nothing is set up, and the server adds no tracing
// code to any request.
//
// It exports OTLP over HTTP (otlptracehttp), which reads the rest of the
// standard environment itself (OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, _HEADERS, _TIMEOUT, _CERTIFICATE,
// _COMPRESSION), through the SDK's batch span processor (OTEL_BSP_*: a
// bounded queue that drops when the exporter cannot keep up, so a trace
// backend that is down or slow never holds a request). The sampler is the
// SDK's, from OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG
// (parentbased_always_on unless set); the service name is movies unless
// OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES) says otherwise.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"strings"

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
func Start(ctx context.Context, version string) (*sdktrace.TracerProvider, error) {
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
	return sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res)), nil
}
