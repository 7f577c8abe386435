package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/movies-dev/movies/pkg/fleet/fleettest"
	"github.com/movies-dev/movies/pkg/ghibli/ghiblitest"
)

// jaegerBinary is Jaeger (all in one, v2), built from tools/jaeger by the
// test command into $MOVIES_E2E_JAEGER, or found on the PATH.
func jaegerBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("MOVIES_E2E_JAEGER"); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return mustLookPath(t, "jaeger")
}

// startJaeger runs Jaeger with an in-memory store, receiving OTLP over
// HTTP, and returns the OTLP endpoint, the query API's base URL and the
// process.
func startJaeger(t *testing.T) (otlp, query string, p *process) {
	t.Helper()
	bin := jaegerBinary(t)
	otlpAddr, queryAddr, grpcAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	conf := fmt.Sprintf(`service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: %s
    grpc:
      endpoint: %s
receivers:
  otlp:
    protocols:
      http:
        endpoint: %s
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
`, queryAddr, grpcAddr, otlpAddr)
	path := filepath.Join(t.TempDir(), "jaeger.yaml")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	p = startProcess(t, "jaeger", bin, "--config", path)
	query = "http://" + queryAddr
	waitFor(t, 60*time.Second, "jaeger serving", func() error {
		if p.exited() {
			return fmt.Errorf("%w: exited: %v", errStop, p.err)
		}
		return wantStatus(query+"/api/services", http.StatusOK)
	})
	return "http://" + otlpAddr, query, p
}

// jaegerSpan is a span as Jaeger's query API returns it.
type jaegerSpan struct {
	TraceID       string `json:"traceID"`
	SpanID        string `json:"spanID"`
	OperationName string `json:"operationName"`
	References    []struct {
		RefType string `json:"refType"`
		TraceID string `json:"traceID"`
		SpanID  string `json:"spanID"`
	} `json:"references"`
	ProcessID string `json:"processID"`
	Tags      []struct {
		Key   string `json:"key"`
		Value any    `json:"value"`
	} `json:"tags"`
}

func (s jaegerSpan) tag(key string) string {
	for _, t := range s.Tags {
		if t.Key == key {
			return fmt.Sprint(t.Value)
		}
	}
	return ""
}

// refersTo reports whether s names span id of trace as its parent or a
// link.
func (s jaegerSpan) refersTo(trace, id string) bool {
	for _, r := range s.References {
		if r.TraceID == trace && r.SpanID == id {
			return true
		}
	}
	return false
}

// jaegerSpans returns every span Jaeger holds for service, with the
// instance (host) each came from.
func jaegerSpans(query, service string) ([]jaegerSpan, error) {
	resp, err := http.Get(query + "/api/traces?" + url.Values{"service": {service}, "limit": {"1000"}, "lookback": {"1h"}}.Encode())
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("jaeger query: %d %v: %.200s", resp.StatusCode, err, b)
	}
	var doc struct {
		Data []struct {
			Spans []jaegerSpan `json:"spans"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	var out []jaegerSpan
	for _, tr := range doc.Data {
		out = append(out, tr.Spans...)
	}
	return out, nil
}

// TestTraces_InJaeger runs the binary traced into a real Jaeger, alone and
// as three replicas on Redis, sends 64 concurrent cold requests, and
// checks from Jaeger's own query API: one fetch span, whose children are
// the upstream's two requests; 64 request spans, each referring to that
// fetch (the leader as its parent and by a link, the others by a link),
// across replicas in the fleet case.
func TestTraces_InJaeger(t *testing.T) {
	otlp, query, _ := startJaeger(t)
	for _, c := range []struct {
		name     string
		replicas int
	}{{"alone", 1}, {"fleet", 3}} {
		t.Run(c.name, func(t *testing.T) {
			service := "movies-e2e-" + c.name
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
			t.Setenv("OTEL_SERVICE_NAME", service)
			t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
			up := startFake(t)
			// A slow upstream keeps the fetch open while all 64 arrive.
			up.SetBehavior("", ghiblitest.Behavior{Latency: 700 * time.Millisecond})
			args := []string{"-upstream", up.URL}
			if c.replicas > 1 {
				args = append(args, "-redis", fleettest.Start(t).URL)
			}
			var urls []string
			for i := range c.replicas {
				_, u := startMovies(t, fmt.Sprintf("%s-%d", service, i), args...)
				urls = append(urls, u)
			}
			var prom *promAPI
			if c.replicas == 1 {
				prom = startExemplarPrometheus(t, strings.TrimPrefix(urls[0], "http://"))
			}

			const n = 64
			client, tr := loopbackClient(n)
			defer tr.CloseIdleConnections()
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					resp, err := client.Get(urls[i%len(urls)] + "/movies/")
					if err != nil {
						t.Errorf("GET: %v", err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						t.Errorf("status %d", resp.StatusCode)
					}
				})
			}
			wg.Wait()
			if got := up.Requests(""); got != 2 {
				t.Fatalf("the upstream saw %d requests, want one fetch (2)", got)
			}

			var spans []jaegerSpan
			var fetches, requests, upstream, redisSpans []jaegerSpan
			waitFor(t, 30*time.Second, "every span in Jaeger", func() error {
				var err error
				if spans, err = jaegerSpans(query, service); err != nil {
					return err
				}
				fetches, requests, upstream, redisSpans = nil, nil, nil, nil
				for _, s := range spans {
					switch {
					case s.OperationName == "fetch":
						fetches = append(fetches, s)
					case s.OperationName == "GET /movies/":
						requests = append(requests, s)
					case s.tag("db.system") != "" || s.tag("db.system.name") != "":
						redisSpans = append(redisSpans, s) // redisotel's, checked below
					case s.tag("span.kind") == "client":
						upstream = append(upstream, s)
					}
				}
				if len(fetches) < 1 || len(requests) < n || len(upstream) < 2 {
					return fmt.Errorf("%d fetch, %d request and %d upstream spans so far", len(fetches), len(requests), len(upstream))
				}
				return nil
			})
			if len(fetches) != 1 || len(requests) != n || len(upstream) != 2 {
				t.Fatalf("Jaeger holds %d fetch, %d request and %d upstream spans; want 1, %d, 2", len(fetches), len(requests), len(upstream), n)
			}
			f := fetches[0]
			for _, u := range upstream {
				if !u.refersTo(f.TraceID, f.SpanID) {
					t.Errorf("upstream span %s is not a child of the fetch", u.OperationName)
				}
			}
			served := map[string]int{}
			for _, r := range requests {
				served[r.tag("movies.served")+"/"+r.tag("movies.source")]++
				if !r.refersTo(f.TraceID, f.SpanID) {
					t.Errorf("request span %s (served %s) does not refer to the fetch %s/%s: %+v", r.SpanID, r.tag("movies.served"), f.TraceID, f.SpanID, r.References)
				}
			}
			t.Logf("%s: 1 fetch span (trace %s, %s requests waiting), %d request spans all referring to it, served %v; %d Redis command spans",
				c.name, f.TraceID, f.tag("movies.requests_waiting"), len(requests), served, len(redisSpans))
			// In the fleet, each Redis command a traced request or fetch
			// sent is a span of its trace, never a trace of its own.
			if c.replicas > 1 && len(redisSpans) == 0 {
				t.Errorf("no Redis command spans in Jaeger")
			}
			for _, r := range redisSpans {
				if len(r.References) == 0 {
					t.Errorf("Redis span %s is a trace of its own", r.OperationName)
				}
			}
			if c.replicas > 1 && served["miss/fleet"]+served["collapsed/fleet"] == 0 {
				t.Errorf("no request was served from the fleet: %v", served)
			}
			if prom != nil {
				traced := map[string]bool{}
				for _, r := range requests {
					traced[r.TraceID] = true
				}
				checkExemplars(t, prom, traced)
			}
		})
	}
}

// startExemplarPrometheus runs a real Prometheus that stores exemplars,
// scraping target every second.
func startExemplarPrometheus(t *testing.T, target string) *promAPI {
	t.Helper()
	bin := mustLookPath(t, "prometheus")
	dir := t.TempDir()
	conf := fmt.Sprintf("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: movies\n    static_configs:\n      - targets: [%q]\n", target)
	path := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	startProcess(t, "prometheus", bin, "--config.file="+path, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--enable-feature=exemplar-storage", "--log.level=warn")
	prom := &promAPI{base: "http://" + addr}
	waitFor(t, 30*time.Second, "prometheus scraping", func() error {
		res, err := prom.query(`up{job="movies"} == 1`)
		if err == nil && len(res) == 0 {
			err = fmt.Errorf("target not up yet")
		}
		return err
	})
	return prom
}

// checkExemplars requires Prometheus's exemplar API to return, for the
// request-duration histogram, an exemplar whose trace id Jaeger holds.
func checkExemplars(t *testing.T, prom *promAPI, traced map[string]bool) {
	t.Helper()
	var found string
	waitFor(t, 20*time.Second, "an exemplar with a trace id Jaeger holds", func() error {
		var data []struct {
			Exemplars []struct {
				Labels map[string]string `json:"labels"`
			} `json:"exemplars"`
		}
		now := time.Now()
		q := url.Values{"query": {`movies_http_request_duration_seconds_bucket{handler="/movies/"}`},
			"start": {fmt.Sprint(now.Add(-10 * time.Minute).Unix())}, "end": {fmt.Sprint(now.Add(time.Minute).Unix())}}
		if err := prom.get("/api/v1/query_exemplars?"+q.Encode(), &data); err != nil {
			return err
		}
		n := 0
		for _, series := range data {
			for _, e := range series.Exemplars {
				n++
				if traced[e.Labels["trace_id"]] {
					found = e.Labels["trace_id"]
					return nil
				}
			}
		}
		return fmt.Errorf("%d exemplars, none with a trace id Jaeger holds", n)
	})
	t.Logf("Prometheus holds an exemplar of trace %s, which Jaeger holds", found)
}
