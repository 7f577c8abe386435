package web

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/movies-dev/movies/pkg/fleet/fleettest"
	"github.com/movies-dev/movies/pkg/ghibli/ghiblitest"
)

// spanAttr returns a span's string attribute.
func spanAttr(s sdktrace.ReadOnlySpan, key string) string {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value.Emit()
		}
	}
	return ""
}

// TestServer_TracesLinkEveryWaiterToItsFetch: traced, a cold burst makes
// one fetch span, a child of the request that led it, with a child per
// upstream request; every request that waited on it links to it; the
// render is traced; the fetch's log line carries its trace and span ids.
func TestServer_TracesLinkEveryWaiterToItsFetch(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithSampler(sdktrace.AlwaysSample()))
	t.Cleanup(func() { tp.Shutdown(t.Context()) })
	up := startFake(t)
	up.SetBehavior("", ghiblitest.Behavior{Latency: 300 * time.Millisecond})
	in := mustStart(t, Config{Upstream: up.URL, Tracer: tp})
	t.Cleanup(testClient.CloseIdleConnections)

	const n = 16
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			resp, err := testClient.Get(in.URL + "/movies/")
			if err != nil {
				t.Errorf("GET: %v", err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		})
	}
	wg.Wait()

	var fetches, requests, renders, upstream []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		switch {
		case s.Name() == "fetch":
			fetches = append(fetches, s)
		case s.Name() == "render":
			renders = append(renders, s)
		case s.Name() == "GET /movies/":
			requests = append(requests, s)
		case s.SpanKind() == trace.SpanKindClient:
			upstream = append(upstream, s)
		}
	}
	if len(fetches) != 1 || len(renders) != 1 || len(requests) != n {
		t.Fatalf("spans: %d fetch, %d render, %d requests; want 1, 1, %d", len(fetches), len(renders), len(requests), n)
	}
	fetch := fetches[0].SpanContext()
	waiting, _ := strconv.Atoi(spanAttr(fetches[0], "movies.requests_waiting"))
	if len(upstream) != 2 {
		t.Errorf("%d upstream request spans, want 2 (/films and /people)", len(upstream))
	}
	for _, u := range upstream {
		if u.Parent().SpanID() != fetch.SpanID() {
			t.Errorf("upstream span %q is not a child of the fetch", u.Name())
		}
	}
	if renders[0].Parent().SpanID() != fetches[0].Parent().SpanID() {
		t.Errorf("the render is not beside the fetch, in the leader's request")
	}
	kinds := map[string]int{}
	for _, r := range requests {
		served := spanAttr(r, "movies.served")
		kinds[served]++
		linked := false
		for _, l := range r.Links() {
			linked = linked || l.SpanContext.Equal(fetch)
		}
		if waited := served == "miss" || served == "collapsed"; linked != waited {
			t.Errorf("request span served %q: linked to the fetch %v, want %v", served, linked, waited)
		}
		if served == "miss" && r.SpanContext().SpanID() != fetches[0].Parent().SpanID() {
			t.Errorf("the request that led the fetch is not the fetch's parent")
		}
		if spanAttr(r, "http.route") != "/movies/" || spanAttr(r, "request.id") == "" {
			t.Errorf("request span without its route or request id: %v", r.Attributes())
		}
	}
	if kinds["miss"] != 1 || kinds["collapsed"] == 0 {
		t.Errorf("request spans served %v, want one miss and some collapsed", kinds)
	}
	// Those that came while the fetch ran (a request may join during the
	// render, after it).
	if waited := kinds["miss"] + kinds["collapsed"]; waiting < 1 || waiting > waited {
		t.Errorf("the fetch span says %d requests waited on it, want 1 to the %d that did", waiting, waited)
	}

	line := ""
	for _, l := range strings.Split(in.log.String(), "\n") {
		if strings.Contains(l, `"msg":"upstream fetch"`) {
			line = l
		}
	}
	if !strings.Contains(line, `"trace_id":"`+fetch.TraceID().String()+`"`) || !strings.Contains(line, `"span_id":"`+fetch.SpanID().String()+`"`) {
		t.Errorf("fetch log line %s lacks the fetch span's trace_id and span_id", line)
	}
}

// TestServer_TracesContinueTheCallersTrace: a request with a W3C
// traceparent (from a load balancer) is served in that trace, as a child
// of the caller's span.
func TestServer_TracesContinueTheCallersTrace(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { tp.Shutdown(t.Context()) })
	in := mustStart(t, Config{Upstream: startFake(t).URL, Tracer: tp})
	t.Cleanup(testClient.CloseIdleConnections)
	const traceID, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	req, _ := http.NewRequest(http.MethodGet, in.URL+"/api/v1/movies", nil)
	req.Header.Set("Traceparent", "00-"+traceID+"-"+parent+"-01")
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	for _, s := range rec.Ended() {
		if s.Name() == "GET /api/v1/movies" {
			if s.SpanContext().TraceID().String() != traceID || s.Parent().SpanID().String() != parent || !s.Parent().IsRemote() {
				t.Errorf("request span in trace %s under %s, want trace %s under the caller's %s", s.SpanContext().TraceID(), s.Parent().SpanID(), traceID, parent)
			}
			return
		}
	}
	t.Errorf("no request span among %d", len(rec.Ended()))
}

// TestServer_ExemplarsNameSampledTraces: traced, the request-duration
// histogram carries the trace id of sampled requests as an exemplar in
// the OpenMetrics exposition (what Prometheus asks for), and only there.
func TestServer_ExemplarsNameSampledTraces(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { tp.Shutdown(t.Context()) })
	in := mustStart(t, Config{Upstream: startFake(t).URL, Tracer: tp})
	t.Cleanup(testClient.CloseIdleConnections)
	mustGet(t, in.URL+"/movies/")
	traced := map[string]bool{}
	for _, s := range rec.Ended() {
		traced[s.SpanContext().TraceID().String()] = true
	}

	req, _ := http.NewRequest(http.MethodGet, in.URL+"/metrics", nil)
	req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0")
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/openmetrics-text") {
		t.Fatalf("Content-Type %q, want OpenMetrics", ct)
	}
	re := regexp.MustCompile(`(?m)^movies_http_request_duration_seconds_bucket\{handler="/movies/",le="[^"]+"\} \d+ # \{trace_id="([0-9a-f]{32})"\} [0-9.e+-]+`)
	m := re.FindStringSubmatch(string(b))
	if m == nil {
		t.Fatalf("no exemplar on /movies/'s duration buckets:\n%s", grepLines(string(b), "movies_http_request_duration_seconds_bucket"))
	}
	if !traced[m[1]] {
		t.Errorf("exemplar trace_id %s is no trace the server recorded", m[1])
	}
	if plain := mustGet(t, in.URL+"/metrics"); strings.Contains(plain.body, "trace_id") {
		t.Errorf("the text exposition carries exemplars")
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestFleet_TracesLinkToTheFetchAcrossReplicas: in a fleet, the fetch's
// span context travels with the snapshot in Redis, so a request on
// replica b, served what replica a fetched, links to a's fetch span: one
// trace view shows the fleet's refresh.
func TestFleet_TracesLinkToTheFetchAcrossReplicas(t *testing.T) {
	t.Parallel()
	r := fleettest.Start(t)
	up := startFake(t)
	recA, recB := tracetest.NewSpanRecorder(), tracetest.NewSpanRecorder()
	tpA := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(recA))
	tpB := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(recB))
	t.Cleanup(func() { tpA.Shutdown(t.Context()); tpB.Shutdown(t.Context()) })
	cfgA, cfgB := fleetConfig(up, r), fleetConfig(up, r)
	cfgA.Tracer, cfgB.Tracer = tpA, tpB
	a := mustStart(t, cfgA)
	mustGet(t, a.URL+"/api/v1/movies")
	b := mustStart(t, cfgB) // starts after a's commit: its first request misses and reads it
	mustGet(t, b.URL+"/api/v1/movies")
	if got := up.Requests(""); got != 2 {
		t.Fatalf("upstream saw %d requests, want one fetch (2)", got)
	}

	var fetch trace.SpanContext
	for _, s := range recA.Ended() {
		if s.Name() == "fetch" {
			fetch = s.SpanContext()
		}
	}
	if !fetch.IsValid() {
		t.Fatal("replica a recorded no fetch span")
	}
	for _, s := range recB.Ended() {
		if s.Name() == "fetch" {
			t.Errorf("replica b fetched")
		}
		if s.Name() != "GET /api/v1/movies" {
			continue
		}
		if spanAttr(s, "movies.source") != "fleet" {
			t.Errorf("b's request source %q, want fleet", spanAttr(s, "movies.source"))
		}
		for _, l := range s.Links() {
			if l.SpanContext.TraceID() == fetch.TraceID() && l.SpanContext.SpanID() == fetch.SpanID() {
				return
			}
		}
		t.Errorf("b's request links to %v, want a's fetch span %s/%s", s.Links(), fetch.TraceID(), fetch.SpanID())
		return
	}
	t.Error("replica b recorded no request span")
}

// TestFleet_TracesRedisCommandsInsideTheirRequest: each Redis command a
// traced request or fetch sends is a span in that trace (redisotel),
// without the command's arguments (a commit's are the catalogue); the
// tier's background calls (its subscription) start no trace of their own.
func TestFleet_TracesRedisCommandsInsideTheirRequest(t *testing.T) {
	t.Parallel()
	r := fleettest.Start(t)
	up := startFake(t)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { tp.Shutdown(t.Context()) })
	cfg := fleetConfig(up, r)
	cfg.Tracer = tp
	s := mustStart(t, cfg)
	mustGet(t, s.URL+"/api/v1/movies")

	var request trace.SpanContext
	var commands []sdktrace.ReadOnlySpan
	for _, sp := range rec.Ended() {
		if sp.Name() == "GET /api/v1/movies" {
			request = sp.SpanContext()
		}
		for _, a := range sp.Attributes() {
			if a.Key == "db.system" || a.Key == "db.system.name" {
				commands = append(commands, sp)
				break
			}
		}
	}
	if !request.IsValid() || len(commands) == 0 {
		t.Fatalf("request span %v, %d Redis command spans: want both", request, len(commands))
	}
	for _, c := range commands {
		if !c.Parent().IsValid() || c.SpanContext().TraceID() != request.TraceID() {
			t.Errorf("Redis span %q is in trace %s (parent %v), want the request's %s", c.Name(), c.SpanContext().TraceID(), c.Parent().SpanID(), request.TraceID())
		}
		for _, a := range c.Attributes() {
			if a.Key == "db.statement" || a.Key == "db.query.text" {
				t.Errorf("Redis span %q carries its statement (%.60s)", c.Name(), a.Value.Emit())
			}
		}
	}
	names := map[string]int{}
	for _, c := range commands {
		names[c.Name()]++
	}
	t.Logf("%d Redis command spans in the request's trace: %v", len(commands), names)
}
