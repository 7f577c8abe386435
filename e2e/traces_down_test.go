package e2e

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestTraces_BackendDownUnderLoad traces every request of the real binary
// into a real Jaeger under a steady load of hits, then stops Jaeger
// (SIGSTOP: the kernel still accepts its connections, nobody answers, the
// worst a backend does), then kills it (connections refused), and judges
// each phase from the clients' side: every request answered 200 within a
// second, the median no more than a few times the one measured with
// Jaeger up in the same run; the spans that could not go out dropped and
// counted, not held: movies_trace_spans_total{result="dropped"} grows (and
// "failed", once connections are refused) and the peak RSS grows by less
// than the bound below.
func TestTraces_BackendDownUnderLoad(t *testing.T) {
	otlp, _, jaeger := startJaeger(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
	t.Setenv("OTEL_SERVICE_NAME", "movies-e2e-down")
	t.Setenv("OTEL_TRACES_SAMPLER", "always_on")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
	p, base := startMovies(t, "movies-traced")
	client, tr := loopbackClient(16)
	defer tr.CloseIdleConnections()
	if err := wantStatus(base+"/movies/", http.StatusOK); err != nil {
		t.Fatal(err)
	}

	// load sends hits from 8 clients for d and returns their latencies.
	load := func(d time.Duration) (lat []time.Duration) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		end := time.Now().Add(d)
		for range 8 {
			wg.Go(func() {
				var mine []time.Duration
				for time.Now().Before(end) {
					start := time.Now()
					resp, err := client.Get(base + "/movies/")
					if err != nil {
						t.Errorf("GET: %v", err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						t.Errorf("status %d", resp.StatusCode)
					}
					mine = append(mine, time.Since(start))
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			})
		}
		wg.Wait()
		slices.Sort(lat)
		return lat
	}
	quantile := func(lat []time.Duration, q float64) time.Duration { return lat[int(q*float64(len(lat)-1))] }
	// lost counts the spans that did not go out: dropped (the queue was
	// full) or failed (the backend refused them, or never answered).
	count := func(result string) float64 {
		v, err := scrapeCounter(base, "movies_trace_spans_total", "result", result)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	dropped := func() float64 { return count("dropped") }

	const phase = 4 * time.Second
	up := load(phase)
	rssUp, err := p.peakRSS()
	if err != nil {
		t.Fatal(err)
	}
	droppedUp := dropped()

	if err := jaeger.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	hung := load(phase)
	droppedHung := dropped()

	_ = jaeger.cmd.Process.Signal(syscall.SIGCONT)
	_ = syscall.Kill(-jaeger.cmd.Process.Pid, syscall.SIGKILL)
	<-jaeger.done
	gone := load(phase)
	droppedGone, failedGone := dropped(), count("failed")
	rssAfter, err := p.peakRSS()
	if err != nil {
		t.Fatal(err)
	}

	report := func(name string, lat []time.Duration) string {
		return fmt.Sprintf("%s: %d requests, p50 %v (%.2f× up), p99 %v, max %v", name, len(lat),
			quantile(lat, 0.5), float64(quantile(lat, 0.5))/float64(quantile(up, 0.5)), quantile(lat, 0.99), lat[len(lat)-1])
	}
	t.Log(report("Jaeger up", up))
	t.Log(report("Jaeger stopped (SIGSTOP)", hung))
	t.Log(report("Jaeger killed", gone))
	t.Logf("spans dropped: %.0f with Jaeger up, %.0f after it stopped, %.0f after it was killed (and %.0f failed); peak RSS %d MiB with Jaeger up, %d MiB at the end",
		droppedUp, droppedHung, droppedGone, failedGone, rssUp>>20, rssAfter>>20)

	for _, ph := range []struct {
		name string
		lat  []time.Duration
	}{{"stopped", hung}, {"killed", gone}} {
		if len(ph.lat) == 0 {
			t.Fatalf("Jaeger %s: no request answered", ph.name)
		}
		if m := ph.lat[len(ph.lat)-1]; m > time.Second {
			t.Errorf("Jaeger %s: a request took %v; a trace backend must never hold a request", ph.name, m)
		}
		// Loose on purpose: a shared 2-core machine. What it catches is a
		// request waiting on the exporter (a timeout of 10 s), not jitter.
		if p50, ref := quantile(ph.lat, 0.5), quantile(up, 0.5); p50 > 5*ref+5*time.Millisecond {
			t.Errorf("Jaeger %s: median %v, against %v with Jaeger up", ph.name, p50, ref)
		}
	}
	if droppedHung <= droppedUp {
		t.Errorf("with Jaeger stopped, no span was dropped (%.0f before, %.0f after): the queue is not bounded, or nothing was traced", droppedUp, droppedHung)
	}
	if droppedGone+failedGone <= droppedHung {
		t.Errorf("with Jaeger killed, no span was dropped or failed (%.0f dropped before, %.0f dropped and %.0f failed after)", droppedHung, droppedGone, failedGone)
	}
	if growth := rssAfter - rssUp; growth > maxTraceQueueGrowth {
		t.Errorf("peak RSS grew by %d MiB with the backend down, want under %d MiB: the queue to it is not bounded", growth>>20, maxTraceQueueGrowth>>20)
	}
}

// maxTraceQueueGrowth bounds what a backend that is down may cost in
// memory: the exporter's queue (2,048 spans by default, each well under a
// KiB) and one batch in flight, with room for the allocator's slack. A
// queue that held every span of the load (tens of thousands a second)
// would pass it within a few seconds.
const maxTraceQueueGrowth = 32 << 20
