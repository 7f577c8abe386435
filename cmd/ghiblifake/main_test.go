package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// addrWriter is run's stdout: it hands over the address from the first
// line.
type addrWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	addr chan string
}

func (w *addrWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if line, ok := strings.CutPrefix(w.buf.String(), "listening on "); ok {
		if url, _, ok := strings.Cut(line, "\n"); ok {
			select {
			case w.addr <- url:
			default:
			}
		}
	}
	return len(p), nil
}

// mustStart runs the program with args on a free loopback port and returns
// its base URL; it is stopped, and must have stopped cleanly, at cleanup.
func mustStart(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := &addrWriter{addr: make(chan string, 1)}
	done := make(chan error, 1)
	go func() { done <- run(ctx, append([]string{"-addr", "127.0.0.1:0"}, args...), out) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run() = %v after its context ended, want nil", err)
		}
	})
	select {
	case url := <-out.addr:
		return url
	case err := <-done:
		done <- err // for the cleanup
		t.Fatalf("run() = %v before listening", err)
	case <-time.After(10 * time.Second):
		t.Fatal("run did not start listening within 10s")
	}
	return ""
}

func TestRun_ServesBundledFilmsAfterLatency(t *testing.T) {
	const latency = 50 * time.Millisecond
	base := mustStart(t, "-latency", latency.String())
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()

	start := time.Now()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(base + "/films")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if elapsed := time.Since(start); elapsed < latency {
		t.Errorf("GET /films answered after %v, want at least -latency %v", elapsed, latency)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /films status = %d, want 200", resp.StatusCode)
	}
	var films []map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&films); err != nil {
		t.Fatalf("decode /films: %v", err)
	}
	if len(films) != 22 {
		t.Errorf("GET /films = %d films, want 22", len(films))
	}
}

func TestRun_RejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-latency", "-1s"},
		{"-latency", "soon"},
		{"-addr", "nowhere"},
		{"extra"},
	} {
		var out bytes.Buffer
		if err := run(context.Background(), args, &out); err == nil {
			t.Errorf("run(%q) = nil, want an error", args)
		}
	}
}
