package web

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/movies-dev/movies/pkg/ghibli/ghiblitest"
)

func TestMain(m *testing.M) {
	flag.Parse()
	// These tests mostly wait on timers and loopback sockets, not on the
	// CPU: unless -parallel was given, run more of them at once than the
	// default GOMAXPROCS (2 on the CI machine).
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.parallel" })
	if !explicit {
		flag.Set("test.parallel", "8")
	}
	goleak.VerifyTestMain(m)
}

// logSink collects the server's JSON log lines.
type logSink struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	lines []map[string]any
}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	for {
		line, err := l.buf.ReadBytes('\n')
		if err != nil {
			l.buf.Write(line) // incomplete: keep for the next write
			break
		}
		var rec map[string]any
		if json.Unmarshal(line, &rec) == nil {
			l.lines = append(l.lines, rec)
		}
	}
	return len(p), nil
}

// String is every line logged so far, for a failing test's message.
func (l *logSink) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	for _, r := range l.lines {
		j, _ := json.Marshal(r)
		b.Write(j)
		b.WriteByte('\n')
	}
	return b.String()
}

// count returns how many log lines have the given message.
func (l *logSink) count(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.lines {
		if r["msg"] == msg {
			n++
		}
	}
	return n
}

// instance is a Server serving on loopback listeners, as cmd/movies runs it.
type instance struct {
	URL        string
	MetricsURL string // with Config.SeparateMetrics
	log        *logSink
	srv        *Server
	cancel     context.CancelFunc
	done       chan struct{} // closed when Serve returns
	err        error         // what Serve returned; read after done
}

// stop does what SIGTERM does and waits for Serve to return.
func (in *instance) stop(t testing.TB) error {
	t.Helper()
	in.cancel()
	select {
	case <-in.done:
		return in.err
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return 30s after its context ended")
		return nil
	}
}

// mustListen listens on a free loopback port.
func mustListen(tb testing.TB) net.Listener {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	return ln
}

// waitUntil polls cond every 5ms until it holds, failing the test with
// what if it does not within d: for what a server does on its own
// goroutines (adoptions, refreshes), which a test can only observe.
func waitUntil(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			tb.Fatalf("not within %v: %s", d, what)
		}
	}
}

// mustStart builds a Server from cfg, logging JSON to a sink, and serves
// it until the test ends.
func mustStart(tb testing.TB, cfg Config) *instance {
	tb.Helper()
	in := &instance{log: &logSink{}, done: make(chan struct{})}
	cfg.Log = slog.New(NewLogHandler(slog.NewJSONHandler(in.log, nil)))
	srv, err := New(cfg)
	if err != nil {
		tb.Fatalf("New() error = %v", err)
	}
	in.srv = srv
	ln := mustListen(tb)
	in.URL = "http://" + ln.Addr().String()
	var metricsLn net.Listener
	if cfg.SeparateMetrics {
		metricsLn = mustListen(tb)
		in.MetricsURL = "http://" + metricsLn.Addr().String()
	}
	ctx, cancel := context.WithCancel(context.Background())
	in.cancel = cancel
	go func() {
		defer close(in.done)
		in.err = srv.Serve(ctx, ln, metricsLn)
	}()
	tb.Cleanup(func() {
		cancel()
		<-in.done
	})
	return in
}

// startFake starts a fake upstream over the bundled data.
func startFake(tb testing.TB) *ghiblitest.Server {
	tb.Helper()
	up := ghiblitest.NewServer(ghiblitest.Bundled())
	tb.Cleanup(up.Close)
	return up
}

type response struct {
	status int
	header http.Header
	body   string
}

var testClient = &http.Client{
	Timeout: 30 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

func mustDo(tb testing.TB, method, url string) response {
	tb.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		tb.Fatal(err)
	}
	resp, err := testClient.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return response{resp.StatusCode, resp.Header, string(b)}
}

func mustGet(tb testing.TB, url string) response { tb.Helper(); return mustDo(tb, http.MethodGet, url) }
