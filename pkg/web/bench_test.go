package web

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"

	"github.com/labstack/echo/v4"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/movies-dev/movies/pkg/fleet/fleettest"
	"github.com/movies-dev/movies/pkg/ghibli/ghiblitest"
)

// discardWriter is a ResponseWriter that keeps nothing, so a benchmark
// measures the handler, not a recorder's buffering.
type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(int)             {}

// benchEncodings are the Accept-Encoding cases the benchmarks run: none,
// and gzip alone (what bench.sh's wrk sends).
var benchEncodings = []struct{ name, acceptEncoding string }{
	{"identity", ""},
	{"gzip", "gzip"},
}

// mustWarmServer is the real server, built as main builds it, over the
// bundled data, after one Get so that every benchmarked request is a hit.
func mustWarmServer(tb testing.TB, options ...func(*Config)) *Server {
	tb.Helper()
	up := ghiblitest.NewServer(ghiblitest.Bundled())
	tb.Cleanup(up.Close)
	cfg := Config{Upstream: up.URL}
	for _, o := range options {
		o(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(srv.Close)
	if _, err := srv.cache.Get(context.Background()); err != nil {
		tb.Fatal(err)
	}
	return srv
}

func newBenchRequest(acceptEncoding string) *http.Request {
	req := httptest.NewRequest(http.MethodGet, "/movies/", nil)
	if acceptEncoding != "" {
		req.Header.Set("Accept-Encoding", acceptEncoding)
	}
	return req
}

func benchHandler(b *testing.B, h http.Handler, acceptEncoding string) {
	req := newBenchRequest(acceptEncoding)
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		h.ServeHTTP(w, req)
	}
}

// BenchmarkHit is a cache hit through the whole handler chain: echo, the
// middleware (request id, security headers, metric, recovery, 405) and
// the handler.
func BenchmarkHit(b *testing.B) {
	h := mustWarmServer(b).Handler()
	for _, enc := range benchEncodings {
		b.Run(enc.name, func(b *testing.B) { benchHandler(b, h, enc.acceptEncoding) })
	}
}

// BenchmarkHitTraced is BenchmarkHit traced, through the SDK's batch
// processor into an exporter that drops what it gets: the cost of tracing
// on the hit path, with 1 % of requests sampled and with all of them.
func BenchmarkHitTraced(b *testing.B) {
	for _, c := range []struct {
		name    string
		sampler sdktrace.Sampler
	}{{"sampled-1pct", sdktrace.TraceIDRatioBased(0.01)}, {"sampled-all", sdktrace.AlwaysSample()}} {
		b.Run(c.name, func(b *testing.B) {
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(c.sampler), sdktrace.WithBatcher(tracetest.NewNoopExporter()))
			b.Cleanup(func() { tp.Shutdown(context.Background()) })
			h := mustWarmServer(b, tracedWith(tp)).Handler()
			benchHandler(b, h, "gzip")
		})
	}
}

// BenchmarkHitSharedTier is BenchmarkHit with -redis on: a hit must stay
// a local read, whatever the shared tier does.
func BenchmarkHitSharedTier(b *testing.B) {
	url := fleettest.Start(b).URL
	h := mustWarmServer(b, func(c *Config) { c.Redis = url }).Handler()
	for _, enc := range benchEncodings {
		b.Run(enc.name, func(b *testing.B) { benchHandler(b, h, enc.acceptEncoding) })
	}
}

// headerField is one response header line, as the floor writes it.
type headerField struct {
	key   string
	value []string
}

// BenchmarkEchoBaseline is bare echo writing the very response a hit
// writes (same headers, same body) from memory: the floor against which
// BenchmarkHit's extra cost is read.
func BenchmarkEchoBaseline(b *testing.B) {
	srv := mustWarmServer(b)
	for _, enc := range benchEncodings {
		rec := httptest.NewRecorder()
		srv.Handler().ServeHTTP(rec, newBenchRequest(enc.acceptEncoding))
		if rec.Code != http.StatusOK {
			b.Fatalf("warm GET /movies/ = %d, want 200", rec.Code)
		}
		var fields []headerField
		for k, v := range rec.Header() {
			fields = append(fields, headerField{k, slices.Clip(v)})
		}
		body := rec.Body.Bytes()
		e := echo.New()
		e.GET("/movies/", func(c echo.Context) error {
			h := c.Response().Header()
			for _, f := range fields {
				h[f.key] = f.value
			}
			c.Response().WriteHeader(http.StatusOK)
			_, err := c.Response().Write(body)
			return err
		})
		b.Run(enc.name, func(b *testing.B) { benchHandler(b, e, enc.acceptEncoding) })
	}
}

// tracedWith configures a server traced by tp.
func tracedWith(tp trace.TracerProvider) func(*Config) {
	return func(c *Config) { c.Tracer = tp }
}
