// Package web serves the Ghibli catalogue over HTTP: it wires the upstream
// client, the read-through cache of prepared snapshots and the metrics
// behind echo routes, and runs the listeners through a graceful shutdown.
//
// [New] is the one constructor: it returns a ready [Server], used alike by
// cmd/movies, the benchmarks and the tests. Files: web.go wires and serves,
// load.go fetches and prepares a snapshot, handlers.go answers the routes,
// errors.go turns errors into responses, middleware.go wraps every request,
// requestid.go makes request ids and carries them into the logs.
package web

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/movies-dev/movies/metrics"
	"github.com/movies-dev/movies/pkg/cache"
	"github.com/movies-dev/movies/pkg/fleet"
	"github.com/movies-dev/movies/pkg/ghibli"
	"github.com/movies-dev/movies/pkg/render"
	"github.com/movies-dev/movies/pkg/snapshot"
	"github.com/movies-dev/movies/pkg/tracing"
)

// MaxTTL is the product's promise: no page shows data older than a minute.
// A Config may tighten it, never loosen it.
const MaxTTL = time.Minute

// Config is what a Server needs. Zero durations take the defaults noted.
type Config struct {
	// Upstream is the base URL of the Ghibli API. Required.
	Upstream string
	// TTL is how long a snapshot is served, from the start of its fetch;
	// zero means MaxTTL, more than MaxTTL is an error.
	TTL time.Duration
	// UpstreamTimeout bounds one whole fetch; zero means the smaller of 10s
	// and TTL/2. More than TTL/2 is an error: fetched data must have time
	// to be served.
	UpstreamTimeout time.Duration
	// StaleIfError, if positive, serves the last snapshot up to this long
	// past TTL, marked stale, while the upstream fails. At most 24h.
	StaleIfError time.Duration
	// DrainDelay is how long Serve keeps serving, with /readyz at 503,
	// after its context ends, so load balancers stop sending traffic first.
	DrainDelay time.Duration
	// ShutdownTimeout is how long in-flight requests get to finish after
	// the drain; zero means 15s.
	ShutdownTimeout time.Duration
	// Redis, if set, is the URL of the Redis the replicas of a fleet share
	// one upstream fetch and one snapshot through (package fleet). Redis is
	// never a reason to fail a request: without it, or when it fails, the
	// server fetches alone.
	Redis string
	// RedisMode is how Redis is deployed: fleet.ModeStandalone (the
	// default), fleet.ModeSentinel or fleet.ModeCluster (see fleet.Redis).
	RedisMode string
	// RedisCA, RedisCert and RedisKey are a CA file to trust and a client
	// certificate and key, for a rediss:// Redis (see fleet.Redis).
	RedisCA, RedisCert, RedisKey string
	// SeparateMetrics takes /metrics off the main handler: it is then
	// served only by MetricsHandler, on a listener of its own.
	SeparateMetrics bool
	// Log receives the server's logs; nil discards them. Wrap its handler
	// with NewLogHandler so lines carry their request id.
	Log *slog.Logger

	// Build names the running binary, exported as the movies_build_info
	// gauge; fields left empty are exported as "unknown" (the Go version
	// as runtime.Version()).
	Build Build

	// Tracer, if set, traces requests, fetches and renders (package
	// tracing builds it from the OTEL_* environment); nil adds no tracing
	// code to any request.
	Tracer trace.TracerProvider
	// TraceStats, if set, counts what became of the spans ended
	// (movies_trace_spans_total, zero without it).
	TraceStats func() tracing.Stats

	// UpstreamName, if set, names the upstream in the fleet's namespace
	// instead of Upstream: replicas share snapshots only when they name
	// the same upstream (cmd/movies says "builtin" for the bundled one,
	// whose URL differs on each replica).
	UpstreamName string

	// redisCallTimeout, if set, replaces fleet's bound on a Redis call:
	// tests that are not about Redis being slow raise it, so a loaded
	// machine running them under -race does not turn into a fallback.
	redisCallTimeout time.Duration
	// redisDialer and upstreamTransport, if set, replace the network
	// (the simulator runs a fleet inside a synctest bubble).
	redisDialer       func(ctx context.Context, network, addr string) (net.Conn, error)
	upstreamTransport http.RoundTripper
	wallClock         func() time.Time                                                    // the fleet's wall clock, stepped by the simulator
	newSnapshot       func(render.View, time.Time, time.Time) (*snapshot.Snapshot, error) // snapshot.New unless set
	jitter            func() float64                                                      // the backoffs' and retries' jitter, in [0, 1)
}

// Build names a binary as Prometheus exporters do in their build_info
// gauge. cmd/movies reads it from the build information the go command
// embeds.
type Build struct {
	Version   string // the main module's version, e.g. v1.2.0 or a pseudo-version
	Revision  string // the VCS revision it was built from
	GoVersion string // the toolchain that built it, e.g. go1.26.8
}

// sharedFormat is the version of what replicas share in Redis: a change
// to the envelope or the catalogue's shape changes it, so replicas of two
// versions never read each other's snapshots.
const sharedFormat = "movies/4"

// namespace is the fleet's key prefix: replicas share snapshots only if
// they are interchangeable (the same format, upstream and TTL), so two
// fleets on one Redis, or one fleet in the middle of a rolling change of
// -ttl, never serve each other's data. The upstream timeout is in it too:
// a replica waits on another's fetch only if that fetch has no more time
// than its own would. The braces keep every key in one Redis Cluster hash
// slot.
func namespace(cfg Config) string {
	name := cfg.UpstreamName
	if name == "" {
		name = cfg.Upstream
	}
	h := sha256.Sum256([]byte(sharedFormat + "\n" + name + "\n" + cfg.TTL.String() + "\n" + cfg.UpstreamTimeout.String()))
	return "movies:{" + hex.EncodeToString(h[:6]) + "}"
}

// retryAfter is the wait an upstream failure asked for: the upstream's
// Retry-After, or the fleet's when another replica's fetch failed.
func retryAfter(err error) time.Duration {
	var se *ghibli.StatusError
	var fe *fleet.FailedError
	switch {
	case errors.As(err, &se):
		return se.RetryAfter
	case errors.As(err, &fe):
		return fe.RetryAfter
	}
	return 0
}

// newsGate holds the fleet's news until the loader is ready for it, then
// passes it to adopt: the newest version heard before is not lost.
type newsGate struct {
	adopt   func(version uint64)
	mu      sync.Mutex
	ready   bool
	pending uint64
}

func (g *newsGate) news(gen uint64) {
	g.mu.Lock()
	if !g.ready {
		g.pending = max(g.pending, gen)
		g.mu.Unlock()
		return
	}
	g.mu.Unlock()
	g.adopt(gen)
}

func (g *newsGate) open() {
	g.mu.Lock()
	g.ready = true
	pending := g.pending
	g.mu.Unlock()
	if pending != 0 {
		g.adopt(pending)
	}
}

// DefaultUpstreamTimeout is the bound on one fetch when Config leaves it
// zero and the TTL allows it.
const DefaultUpstreamTimeout = 10 * time.Second

// withDefaults fills in zero values and validates the rest. Errors name the
// field as the command line does, since that is where users meet them.
func (c Config) withDefaults() (Config, error) {
	if c.Upstream == "" {
		return c, errors.New("web: no upstream")
	}
	if c.TTL == 0 {
		c.TTL = MaxTTL
	}
	if c.TTL < 0 || c.TTL > MaxTTL {
		return c, fmt.Errorf("invalid -ttl %s: must be above 0 and at most %s, the freshness promise", c.TTL, MaxTTL)
	}
	if c.UpstreamTimeout == 0 {
		c.UpstreamTimeout = min(DefaultUpstreamTimeout, c.TTL/2)
	}
	if c.UpstreamTimeout <= 0 || c.UpstreamTimeout > c.TTL/2 {
		return c, fmt.Errorf("invalid -upstream-timeout %s: must be above 0 and at most half of -ttl %s (a fetch must leave its data time to be served)", c.UpstreamTimeout, c.TTL)
	}
	if c.StaleIfError < 0 || c.StaleIfError > 24*time.Hour {
		return c, fmt.Errorf("invalid -stale-if-error %s: must be between 0 (off) and 24h", c.StaleIfError)
	}
	if c.DrainDelay < 0 {
		return c, fmt.Errorf("invalid -drain-delay %s: must not be negative", c.DrainDelay)
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 15 * time.Second
	}
	if c.ShutdownTimeout < 0 {
		return c, fmt.Errorf("invalid -shutdown-timeout %s: must be above 0", c.ShutdownTimeout)
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	// An empty label value is no label at all to Prometheus: a build
	// that cannot name itself says so.
	if c.Build.Version == "" {
		c.Build.Version = "unknown"
	}
	if c.Build.Revision == "" {
		c.Build.Revision = "unknown"
	}
	if c.Build.GoVersion == "" {
		c.Build.GoVersion = runtime.Version()
	}
	return c, nil
}

// Server serves the catalogue. It is safe for concurrent use. Serve runs it
// on listeners; Close releases it when Serve is not used.
type Server struct {
	cfg     Config
	log     *slog.Logger
	cache   *cache.Cache[*snapshot.Snapshot]
	client  *ghibli.Client
	tier    *fleet.Tier[[]ghibli.Movie] // nil without Config.Redis
	metrics *metrics.Metrics
	ready   atomic.Bool // false once shutdown has begun
	ids     *idSource
	accel   atomic.Pointer[accelExpires] // the current snapshot's, made once
	serving atomic.Pointer[servedFrom]   // the snapshot last served, see countServed

	handler        *echo.Echo   // the main listener's routes
	traced         bool         // Config.Tracer is set
	tracer         trace.Tracer // Config.Tracer's
	metricsHandler *echo.Echo   // the metrics listener's: /metrics alone
	// routeMetrics records each route's requests, by route path (and
	// otherRoute); built with the routes, read-only after.
	routeMetrics map[string]*metrics.HTTPRoute
}

// New returns a Server ready to serve cfg, or the error in cfg.
func New(cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	if err := metrics.RegisterBuildInfo(reg, cfg.Build.Version, cfg.Build.Revision, cfg.Build.GoVersion); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	if cfg.Redis == "" {
		m.ExpectSnapshotSources("")
	} else {
		m.ExpectSnapshotSources(string(fleet.FromLead), string(fleet.FromFleet), string(fleet.FromHedge), string(fleet.FromAlone))
	}
	client := &ghibli.Client{
		BaseURL:    cfg.Upstream,
		HTTPClient: ghibli.NewHTTPClient(cfg.UpstreamTimeout),
		Observe:    m.ObserveUpstream,
	}
	if cfg.upstreamTransport != nil {
		client.HTTPClient.Transport = cfg.upstreamTransport
	}
	tracer := tracerOf(cfg.Tracer)
	if cfg.Tracer != nil {
		// A span per upstream request, the retry included, each a child
		// of the fetch's span.
		client.HTTPClient.Transport = otelhttp.NewTransport(client.HTTPClient.Transport,
			otelhttp.WithTracerProvider(cfg.Tracer), otelhttp.WithPropagators(propagation.TraceContext{}))
	}
	if cfg.jitter != nil {
		client.Jitter = cfg.jitter
	}
	l := &loader{client: client, log: cfg.Log, ttl: cfg.TTL, newSnapshot: cfg.newSnapshot, tracer: tracer}
	if l.newSnapshot == nil {
		l.newSnapshot = snapshot.New
	}
	// A load alone is one fetch; a load in a fleet may first wait for the
	// replica fetching for the fleet, at most as long as a fetch of its own
	// would last (package fleet), then fetch itself.
	loadTimeout := cfg.UpstreamTimeout
	if cfg.Redis != "" {
		loadTimeout = 2 * cfg.UpstreamTimeout
	}
	c := cache.New[*snapshot.Snapshot](cache.SharedFunc[*snapshot.Snapshot](l.LoadShared), cache.Options{
		TTL:          cfg.TTL,
		LoadTimeout:  loadTimeout,
		StaleIfError: cfg.StaleIfError,
		RefreshAhead: true,
		RetryAfter:   retryAfter,
		Rand:         cfg.jitter,
	})
	l.waiting = c.Waiting
	age := func() (time.Duration, bool) {
		s, ok := c.Peek()
		return s.Age(time.Now()), ok
	}
	if err := metrics.RegisterCache(reg, c.Stats, cfg.TTL, age); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	if err := metrics.RegisterCounters(reg, l.Stats); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	traceStats := cfg.TraceStats
	if traceStats == nil {
		traceStats = func() tracing.Stats { return tracing.Stats{} }
	}
	if err := metrics.RegisterCounters(reg, traceStats); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	if cfg.Redis != "" {
		gate := &newsGate{adopt: c.Adopt}
		tier, err := fleet.New(fleet.Options[[]ghibli.Movie]{
			Redis:        fleet.Redis{URL: cfg.Redis, Mode: cfg.RedisMode, CAFile: cfg.RedisCA, CertFile: cfg.RedisCert, KeyFile: cfg.RedisKey},
			TTL:          cfg.TTL,
			SwitchBefore: cache.SwitchBefore(cfg.TTL),
			Namespace:    namespace(cfg),
			CallTimeout:  cfg.redisCallTimeout,
			FetchTimeout: cfg.UpstreamTimeout,
			MaxBackoff:   cache.MaxRetryAfter,
			Decode:       decodeShared,
			RetryAfter:   retryAfter,
			Cause:        ghibli.Cause,
			// News of a snapshot goes to the cache, which loads it
			// through its one flight (or already holds it), once the
			// loader knows its tier (the read after subscribing can
			// come before New returns).
			OnNews:  gate.news,
			Observe: m.ObserveRedis,
			Log:     cfg.Log,
			Dialer:  cfg.redisDialer,
			Now:     cfg.wallClock,
			Tracer:  cfg.Tracer,
		})
		if err != nil {
			return nil, err
		}
		if err := metrics.RegisterFleet(reg, tier.Stats, tier.BreakerOpen); err != nil {
			tier.Close()
			return nil, fmt.Errorf("metrics: %w", err)
		}
		l.tier = tier
		gate.open()
	}
	s := &Server{cfg: cfg, log: cfg.Log, cache: c, client: client, metrics: m, ids: newIDSource(), tier: l.tier}
	s.ready.Store(true)
	s.handler, s.metricsHandler = s.routes(noStoreHandler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(cfg.Log.Handler(), slog.LevelError),
		// OpenMetrics to a scraper that asks for it (Prometheus does):
		// the only exposition that carries exemplars.
		EnableOpenMetrics: true,
	})))
	// With a tracer, the main listener's middleware traces each request
	// (see startSpan); scrapes of -metrics-addr are not traced.
	s.traced, s.tracer = cfg.Tracer != nil, tracer
	return s, nil
}

// noStoreHandler marks h's responses as not to be stored: an exposition
// is this replica's counters now, and a cache between it and Prometheus
// would hand a scrape an older one. It wraps the metrics handler itself,
// so /metrics carries it on -addr and on -metrics-addr alike.
func noStoreHandler(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Cache-Control"] = noStore
		h.ServeHTTP(w, r)
	})
}

// Handler is the server's HTTP handler: the catalogue, health and, unless
// Config.SeparateMetrics, /metrics.
func (s *Server) Handler() http.Handler { return s.handler }

// MetricsHandler serves the Prometheus exposition at /metrics, and 404 on
// any other path: the handler of the metrics listener. It answers as
// Handler does (request id, security headers, 405 to methods other than
// GET and HEAD): it is a listener like the other, and the Kubernetes
// manifests turn it on.
func (s *Server) MetricsHandler() http.Handler { return s.metricsHandler }

// TTL is the freshness bound the server keeps.
func (s *Server) TTL() time.Duration { return s.cfg.TTL }

// Close ends any running fetch and waits for it, stops listening to the
// fleet, and closes idle upstream and Redis connections. Serve calls it
// on the way out; call it yourself only when serving through Handler.
func (s *Server) Close() {
	s.cache.Close() // before the tier: a running load may be using it
	if s.tier != nil {
		s.tier.Close()
	}
	s.client.HTTPClient.CloseIdleConnections()
}

// Serve serves Handler on ln, and MetricsHandler on metricsLn if it is not
// nil, until ctx ends or a listener fails. Then it shuts down gracefully:
// /readyz turns 503, requests keep being served for DrainDelay, in-flight
// ones get ShutdownTimeout to finish, and a fetch nobody waits for any more
// is ended. It returns nil after a shutdown that ctx asked for. Serve
// closes the listeners.
func (s *Server) Serve(ctx context.Context, ln, metricsLn net.Listener) error {
	defer s.Close()
	type endpoint struct {
		ln net.Listener
		h  http.Handler
	}
	endpoints := []endpoint{{ln, s.handler}}
	if metricsLn != nil {
		endpoints = append(endpoints, endpoint{metricsLn, s.metricsHandler})
	}
	servers := make([]*http.Server, len(endpoints))
	serveErr := make(chan error, len(endpoints))
	for i, ep := range endpoints {
		servers[i] = s.newHTTPServer(ep.h)
		go func() { serveErr <- servers[i].Serve(ep.ln) }()
	}

	// Until ctx ends or a listener fails; either way, shut everything down
	// the same way so nothing is left running.
	var failed error
	select {
	case err := <-serveErr:
		failed = fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
		// Readiness goes first so load balancers stop sending new
		// requests, then in-flight ones get ShutdownTimeout to finish.
		s.ready.Store(false)
		s.log.Info("shutting down", "drain_delay", s.cfg.DrainDelay, "timeout", s.cfg.ShutdownTimeout)
		drain := time.NewTimer(s.cfg.DrainDelay)
		select {
		case <-drain.C:
		case err := <-serveErr:
			drain.Stop()
			failed = fmt.Errorf("serve: %w", err)
		}
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
	defer cancel()
	var errs []error
	for _, srv := range servers {
		errs = append(errs, srv.Shutdown(sctx))
	}
	if failed != nil {
		return failed
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// newHTTPServer bounds what any one client can hold: slow headers
// (slowloris), slow bodies, a client that never reads its response, idle
// keep-alives and oversized headers each end that client's connection
// without touching anyone else's.
func (s *Server) newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		// A miss waits for the upstream, so writes get the fetch's budget
		// on top of their own.
		WriteTimeout:   s.cfg.UpstreamTimeout + 10*time.Second,
		IdleTimeout:    120 * time.Second,
		MaxHeaderBytes: 32 << 10,
		ErrorLog:       slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
}
