package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/movies-dev/movies/pkg/fleet"
	"github.com/movies-dev/movies/pkg/ghibli"
	"github.com/movies-dev/movies/pkg/web"
)

// builtinUpstream is the -upstream value that serves the bundled data.
const builtinUpstream = "builtin"

// config is the validated command line.
type config struct {
	addr            string
	upstream        string // a base URL, or builtinUpstream
	ttl             time.Duration
	upstreamTimeout time.Duration
	staleIfError    time.Duration
	metricsAddr     string      // "" serves /metrics on addr
	readyFile       string      // "" writes none
	redis           fleet.Redis // URL "" runs alone
	drainDelay      time.Duration
	shutdownTimeout time.Duration
	logFormat       string
	logLevel        slog.Level
	healthcheck     bool // probe a running server instead of serving
	version         bool // print the build and exit
}

// parseConfig reads flags, each falling back to its MOVIES_* environment
// variable and then to its default, and validates the result. Errors are
// one line that names the flag or variable at fault.
func parseConfig(args []string, getenv func(string) string, usage io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("movies", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned as one line, not a usage dump

	var envErrs []error
	str := func(p *string, name, env, def, help string) {
		if v := getenv(env); v != "" {
			def = v
		}
		fs.StringVar(p, name, def, help+" (env "+env+")")
	}
	dur := func(p *time.Duration, name, env string, def time.Duration, help string) {
		if v := getenv(env); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				envErrs = append(envErrs, fmt.Errorf("invalid %s %q: not a duration like 30s or 1m", env, v))
			} else {
				def = d
			}
		}
		fs.DurationVar(p, name, def, help+" (env "+env+")")
	}
	var level string
	str(&c.addr, "addr", "MOVIES_ADDR", ":8000", "address to listen on")
	str(&c.upstream, "upstream", "MOVIES_UPSTREAM", ghibli.DefaultBaseURL,
		`base URL of the Ghibli API, or "builtin" to serve the bundled data offline`)
	dur(&c.ttl, "ttl", "MOVIES_TTL", web.MaxTTL, "how long a snapshot is served, from the start of its fetch (at most 1m)")
	dur(&c.upstreamTimeout, "upstream-timeout", "MOVIES_UPSTREAM_TIMEOUT", 0,
		"bound on one upstream fetch, at most half of -ttl (default: the smaller of 10s and half of -ttl)")
	dur(&c.staleIfError, "stale-if-error", "MOVIES_STALE_IF_ERROR", 0,
		"when the upstream fails, serve the last good snapshot up to this long past -ttl, marked stale (0: never)")
	str(&c.metricsAddr, "metrics-addr", "MOVIES_METRICS_ADDR", "",
		"serve /metrics on this separate address instead of -addr (keeps it off the load balancer)")
	dur(&c.drainDelay, "drain-delay", "MOVIES_DRAIN_DELAY", 0,
		"on SIGTERM, keep serving this long with /readyz at 503 so load balancers stop sending traffic")
	dur(&c.shutdownTimeout, "shutdown-timeout", "MOVIES_SHUTDOWN_TIMEOUT", 15*time.Second,
		"on SIGTERM, how long in-flight requests get to finish")
	str(&c.redis.URL, "redis", "MOVIES_REDIS_URL", "",
		"redis://, rediss:// or unix:// URL of a Redis the replicas share one upstream fetch and one snapshot through (default: none, each replica fetches alone); with -redis-mode sentinel or cluster, a sentinel or a seed node, further ones as ?addr=host:port")
	str(&c.redis.Mode, "redis-mode", "MOVIES_REDIS_MODE", fleet.ModeStandalone,
		"how -redis is deployed: standalone (one server, or a proxy to the master), sentinel (the URL names a sentinel and ?master_name=) or cluster")
	str(&c.redis.CAFile, "redis-ca", "MOVIES_REDIS_CA", "",
		"PEM file of certificate authorities trusted for a rediss:// server's certificate, besides the system's")
	str(&c.redis.CertFile, "redis-cert", "MOVIES_REDIS_CERT", "",
		"PEM client certificate for a rediss:// server that requires one (with -redis-key)")
	str(&c.redis.KeyFile, "redis-key", "MOVIES_REDIS_KEY", "",
		"PEM key of -redis-cert")
	str(&c.readyFile, "ready-file", "MOVIES_READY_FILE", "",
		"once listening, write the listening addresses here (host:port, -addr first), for supervisors and tests using port 0")
	str(&c.logFormat, "log-format", "MOVIES_LOG_FORMAT", "text", "log format: text or json")
	str(&level, "log-level", "MOVIES_LOG_LEVEL", "info", "log level: debug, info, warn or error")

	fs.BoolVar(&c.healthcheck, "healthcheck", false,
		"probe /healthz of the server on -addr and exit 0 if it is healthy, 1 if not (for container health checks, which have no shell)")
	fs.BoolVar(&c.version, "version", false,
		"print the module version, VCS revision and Go version of this binary, and exit")

	if len(envErrs) > 0 {
		return c, errors.Join(envErrs...)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(usage)
			fmt.Fprintln(usage, "Usage: movies [flags]")
			fs.PrintDefaults()
			return c, flag.ErrHelp
		}
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q: movies takes only flags", fs.Arg(0))
	}

	if _, _, err := net.SplitHostPort(c.addr); err != nil {
		return c, fmt.Errorf("invalid -addr %q: want host:port or :port", c.addr)
	}
	if err := validateUpstream(c.upstream); err != nil {
		return c, fmt.Errorf("invalid -upstream %q: %w", c.upstream, err)
	}
	if c.ttl <= 0 || c.ttl > web.MaxTTL {
		return c, fmt.Errorf("invalid -ttl %s: must be above 0 and at most %s, the freshness promise", c.ttl, web.MaxTTL)
	}
	timeoutGiven := getenv("MOVIES_UPSTREAM_TIMEOUT") != ""
	fs.Visit(func(f *flag.Flag) { timeoutGiven = timeoutGiven || f.Name == "upstream-timeout" })
	if !timeoutGiven {
		// A short -ttl alone must just work: only a timeout someone chose
		// can conflict with it.
		c.upstreamTimeout = min(web.DefaultUpstreamTimeout, c.ttl/2)
	}
	if c.upstreamTimeout <= 0 || c.upstreamTimeout > c.ttl/2 {
		return c, fmt.Errorf("invalid -upstream-timeout %s: must be above 0 and at most half of -ttl %s (a fetch must leave its data time to be served)", c.upstreamTimeout, c.ttl)
	}
	if c.staleIfError < 0 || c.staleIfError > 24*time.Hour {
		return c, fmt.Errorf("invalid -stale-if-error %s: must be between 0 (off) and 24h", c.staleIfError)
	}
	switch {
	case c.redis.URL != "":
		if err := c.redis.Check(); err != nil {
			return c, fmt.Errorf("invalid -redis %s", strings.TrimPrefix(err.Error(), "fleet: Redis "))
		}
	case c.redis.CAFile != "" || c.redis.CertFile != "" || c.redis.KeyFile != "":
		return c, errors.New("-redis-ca, -redis-cert and -redis-key need -redis")
	}
	if c.metricsAddr != "" {
		if _, _, err := net.SplitHostPort(c.metricsAddr); err != nil {
			return c, fmt.Errorf("invalid -metrics-addr %q: want host:port or :port", c.metricsAddr)
		}
	}
	if c.drainDelay < 0 {
		return c, fmt.Errorf("invalid -drain-delay %s: must not be negative", c.drainDelay)
	}
	if c.shutdownTimeout <= 0 {
		return c, fmt.Errorf("invalid -shutdown-timeout %s: must be above 0", c.shutdownTimeout)
	}
	if c.logFormat != "text" && c.logFormat != "json" {
		return c, fmt.Errorf("invalid -log-format %q: want text or json", c.logFormat)
	}
	if err := c.logLevel.UnmarshalText([]byte(level)); err != nil {
		return c, fmt.Errorf("invalid -log-level %q: want debug, info, warn or error", level)
	}
	return c, nil
}

func validateUpstream(s string) error {
	if s == builtinUpstream {
		return nil
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return errors.New("not a URL")
	case u.Scheme != "http" && u.Scheme != "https":
		return errors.New(`scheme must be http or https (or use "builtin")`)
	case u.Host == "":
		return errors.New("no host")
	case u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		return errors.New("want a base URL with no query, fragment or credentials")
	case strings.ContainsAny(u.Path, "?#"):
		return errors.New("bad path")
	}
	return nil
}
