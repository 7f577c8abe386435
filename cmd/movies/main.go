// Command movies serves every Studio Ghibli film and the people who appear
// in it at /movies/, from the public Ghibli API, never showing data older
// than its TTL (one minute at most).
//
// Each request reads a read-through cache; when the snapshot has expired the
// requests that need it share one upstream fetch. There is no background job.
// Run it with -h for its flags; each has a MOVIES_* environment fallback.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/movies-dev/movies/metrics"
	"github.com/movies-dev/movies/pkg/cache"
	"github.com/movies-dev/movies/pkg/ghibli"
	"github.com/movies-dev/movies/pkg/ghibli/ghiblitest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first signal starts a graceful shutdown, a second one
	// should kill the process, not be swallowed: restore the default.
	context.AfterFunc(ctx, stop)
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "movies:", err)
		os.Exit(exitCode(err))
	}
}

// errUnhealthy marks a failed -healthcheck probe.
var errUnhealthy = errors.New("healthcheck")

// exitCode is 1 for a failed health check (what HEALTHCHECK expects) and
// 2 for anything else that stops the program.
func exitCode(err error) int {
	if errors.Is(err, errUnhealthy) {
		return 1
	}
	return 2
}

// run is the whole program: it serves until ctx ends, then shuts down
// gracefully and returns nil, or returns the error that stopped it.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	cfg, err := parseConfig(args, getenv, stdout)
	if err != nil {
		return err
	}
	if cfg.healthcheck {
		return probe(ctx, cfg.addr)
	}
	log := newLogger(cfg, stdout)

	baseURL := cfg.upstream
	if cfg.upstream == builtinUpstream {
		// The offline upstream is a loopback server, so the demo runs the
		// very same client code as production: HTTP, JSON, limits and all.
		stopBuiltin, url, err := startBuiltin(log)
		if err != nil {
			return err
		}
		defer stopBuiltin()
		baseURL = url
	}

	reg := prometheus.NewRegistry()
	s := &server{log: log, ids: newIDSource(), securityHeaders: newSecurityHeaders()}
	// The collector reads the cache at scrape time, after it is built below.
	m, err := metrics.New(reg, func() metrics.CacheStats { return cacheStats(s.cache) })
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	s.metrics = m
	client := &ghibli.Client{
		BaseURL:    baseURL,
		HTTPClient: ghibli.NewHTTPClient(cfg.upstreamTimeout),
		Observe:    m.ObserveUpstream,
	}
	defer client.HTTPClient.CloseIdleConnections()
	s.cache = cache.New[*page](s.load(client), cache.Options{
		TTL:          cfg.ttl,
		LoadTimeout:  cfg.upstreamTimeout,
		StaleIfError: cfg.staleIfError,
		RefreshAhead: true,
		RetryAfter: func(err error) time.Duration {
			var se *ghibli.StatusError
			if errors.As(err, &se) {
				return se.RetryAfter
			}
			return 0
		},
	})
	metricsHandler := promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelError),
	})

	// One listener, or two with -metrics-addr.
	type endpoint struct {
		flag, addr string
		handler    http.Handler
	}
	endpoints := []endpoint{{"addr", cfg.addr, s.routes(metricsHandler)}}
	if cfg.metricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", metricsHandler)
		endpoints = []endpoint{{"addr", cfg.addr, s.routes(nil)}, {"metrics-addr", cfg.metricsAddr, mux}}
	}
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for _, ep := range endpoints {
		ln, err := net.Listen("tcp", ep.addr)
		if err != nil {
			return fmt.Errorf("listen on -%s %s: %w", ep.flag, ep.addr, err)
		}
		lns = append(lns, ln)
	}

	s.ready.Store(true)
	servers := make([]*http.Server, len(endpoints))
	serveErr := make(chan error, len(servers))
	for i, ep := range endpoints {
		servers[i] = newHTTPServer(cfg, ep.handler, log)
		go func() { serveErr <- servers[i].Serve(lns[i]) }()
	}
	attrs := []any{"addr", lns[0].Addr().String(), "upstream", cfg.upstream, "ttl", cfg.ttl}
	if len(lns) > 1 {
		attrs = append(attrs, "metrics_addr", lns[1].Addr().String())
	}
	log.Info("listening", attrs...)

	// Until a signal, or a listener fails; either way, shut everything
	// down the same way so nothing is left running.
	var failed error
	select {
	case err := <-serveErr:
		failed = fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
		// Readiness goes first so load balancers stop sending new
		// requests, then in-flight ones get shutdownTimeout to finish.
		s.ready.Store(false)
		log.Info("shutting down", "drain_delay", cfg.drainDelay, "timeout", cfg.shutdownTimeout)
		drain := time.NewTimer(cfg.drainDelay)
		select {
		case <-drain.C:
		case err := <-serveErr:
			drain.Stop()
			failed = fmt.Errorf("serve: %w", err)
		}
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.shutdownTimeout)
	defer cancel()
	var errs []error
	for _, srv := range servers {
		errs = append(errs, srv.Shutdown(sctx))
	}
	// Requests are done (or out of time): a fetch still running now, an
	// early refresh or one whose waiters left, serves nobody. End it rather
	// than let it hold the exit for up to -upstream-timeout.
	s.cache.Close()
	s.cache.Wait()
	if failed != nil {
		return failed
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("stopped")
	return nil
}

// newHTTPServer bounds what any one client can hold: slow headers
// (slowloris), slow bodies, a client that never reads its response, idle
// keep-alives and oversized headers each end that client's connection
// without touching anyone else's.
func newHTTPServer(cfg config, h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		// A miss waits for the upstream, so writes get the fetch's budget
		// on top of their own.
		WriteTimeout:   cfg.upstreamTimeout + 10*time.Second,
		IdleTimeout:    120 * time.Second,
		MaxHeaderBytes: 32 << 10,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

func cacheStats(c *cache.Cache[*page]) metrics.CacheStats {
	st := c.Stats()
	out := metrics.CacheStats{
		Hits: st.Hits, Misses: st.Misses, Coalesced: st.Coalesced,
		Loads: st.Loads, LoadErrors: st.LoadErrors, Rejected: st.Rejected, Stale: st.Stale, Early: st.Early,
		TTL: c.TTL(),
	}
	if snap, ok := c.Peek(); ok {
		out.HasSnapshot, out.SnapshotAge = true, snap.Age(time.Now())
	}
	return out
}

// startBuiltin serves the bundled API data on a loopback port.
func startBuiltin(log *slog.Logger) (stop func(), baseURL string, err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", fmt.Errorf("-upstream builtin: %w", err)
	}
	h := ghiblitest.NewHandler(ghiblitest.Bundled())
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("builtin upstream stopped", "err", err)
		}
	}()
	return func() {
		h.Close()
		srv.Close()
		<-done
	}, "http://" + ln.Addr().String(), nil
}

// probe asks the server listening on addr for /healthz.
func probe(ctx context.Context, addr string) error {
	host, port, _ := net.SplitHostPort(addr) // validated by parseConfig
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(host, port)+"/healthz", nil)
	if err != nil {
		return fmt.Errorf("%w: %w", errUnhealthy, err)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %w", errUnhealthy, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: /healthz answered %s", errUnhealthy, resp.Status)
	}
	return nil
}
