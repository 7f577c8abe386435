package tracing

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestEnabled(t *testing.T) {
	for _, c := range []struct {
		name string
		env  map[string]string
		want bool
		err  bool
	}{
		{"nothing configured", nil, false, false},
		{"an endpoint", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, true, false},
		{"a traces endpoint", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, true, false},
		{"disabled", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, false, false},
		{"exporter none", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, false, false},
		{"exporter otlp", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "otlp"}, true, false},
		{"exporter zipkin", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "zipkin"}, false, true},
		{"grpc", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, false, true},
		{"http/protobuf", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, true, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := Enabled(func(k string) string { return c.env[k] })
			if got != c.want || (err != nil) != c.err {
				t.Errorf("Enabled() = %v, %v; want %v, error %v", got, err, c.want, c.err)
			}
		})
	}
}

// TestStart_ExportsToTheConfiguredEndpoint: the provider Start builds from
// the environment sends spans as OTLP over HTTP to a loopback endpoint,
// with the service name the environment gives.
func TestStart_ExportsToTheConfiguredEndpoint(t *testing.T) {
	var (
		mu     sync.Mutex
		bodies [][]byte
		paths  []string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies, paths = append(bodies, b), append(paths, r.URL.Path+" "+r.Header.Get("Content-Type"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	defer srv.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)
	t.Setenv("OTEL_SERVICE_NAME", "movies-test-replica")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tp, err := Start(ctx, "v1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	_, span := tp.Tracer("test").Start(ctx, "a span")
	span.End()
	if err := tp.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(bodies) != 1 || paths[0] != "/v1/traces application/x-protobuf" {
		t.Fatalf("endpoint got %d requests %v, want one POST of /v1/traces in protobuf", len(bodies), paths)
	}
	// The protobuf carries its strings as they are.
	for _, want := range []string{"a span", "movies-test-replica", "v1.2.3"} {
		if !bytes.Contains(bodies[0], []byte(want)) {
			t.Errorf("the export does not carry %q", want)
		}
	}
}

// TestStart_ABackendThatHangsCostsNoRequestAndBoundedMemory: with the OTLP
// endpoint hung, ending spans never waits on it; past the queue's size
// (OTEL_BSP_MAX_QUEUE_SIZE) each span ended is dropped and counted, so
// what is held stays bounded; once the backend answers, the queue drains.
func TestStart_ABackendThatHangsCostsNoRequestAndBoundedMemory(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		<-release
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	defer srv.Close()
	defer unblock()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)
	t.Setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "60000")
	t.Setenv("OTEL_BSP_MAX_QUEUE_SIZE", "10")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tp, err := Start(ctx, "test")
	if err != nil {
		t.Fatal(err)
	}
	// Every End returns while the backend hangs: were one to wait on it,
	// this loop would never end.
	for range 100 {
		_, span := tp.Tracer("test").Start(ctx, "s")
		span.End()
	}
	if s := tp.Stats(); s.Dropped != 90 || s.Exported != 0 {
		t.Errorf("with the backend hung: %+v, want 90 dropped (10 held) and none exported", s)
	}
	unblock()
	if err := tp.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if s := tp.Stats(); s.Exported != 10 || s.Dropped != 90 || s.Failed != 0 {
		t.Errorf("after the backend answered: %+v, want the 10 held exported", s)
	}
}
