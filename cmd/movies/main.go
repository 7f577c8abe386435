// Command movies serves every Studio Ghibli film and the people who appear
// in it at /movies/, from the public Ghibli API, never showing data older
// than its TTL (one minute at most).
//
// It is thin on purpose: flags and environment become a config (config.go),
// the config one web.Server, and main serves it until a signal. Run it with
// -h for its flags; each has a MOVIES_* environment fallback.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/movies-dev/movies/pkg/ghibli/builtin"
	"github.com/movies-dev/movies/pkg/tracing"
	"github.com/movies-dev/movies/pkg/web"
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

// tracingFlushTimeout bounds how long the exit waits to send the spans
// still queued.
const tracingFlushTimeout = 5 * time.Second

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
	build := readBuild(debug.ReadBuildInfo())
	if cfg.version {
		fmt.Fprintln(stdout, versionLine(build))
		return nil
	}
	if cfg.healthcheck {
		return probe(ctx, cfg.addr)
	}
	log := newLogger(cfg, stdout)
	traced, err := tracing.Enabled(getenv)
	if err != nil {
		return err
	}
	var tracer trace.TracerProvider
	var traceStats func() tracing.Stats
	if traced {
		tp, err := tracing.Start(ctx, build.Version)
		if err != nil {
			return err
		}
		// Spans still queued go out at exit, within a bound: a trace
		// backend that is down must not hold the shutdown.
		defer func() {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), tracingFlushTimeout)
			defer cancel()
			if err := tp.Shutdown(sctx); err != nil {
				log.Warn("traces not all sent at exit", "err", err)
			}
		}()
		tracer, traceStats = tp, tp.Stats
	}

	upstream, upstreamName := cfg.upstream, ""
	if cfg.upstream == builtinUpstream {
		upstreamName = builtinUpstream
		up, err := builtin.Start("127.0.0.1:0", builtin.NewHandler(builtin.Bundled()))
		if err != nil {
			return fmt.Errorf("-upstream builtin: %w", err)
		}
		defer up.Shutdown(context.Background())
		upstream = up.URL
	}
	srv, err := web.New(web.Config{
		Upstream:        upstream,
		UpstreamName:    upstreamName,
		TTL:             cfg.ttl,
		UpstreamTimeout: cfg.upstreamTimeout,
		StaleIfError:    cfg.staleIfError,
		DrainDelay:      cfg.drainDelay,
		ShutdownTimeout: cfg.shutdownTimeout,
		SeparateMetrics: cfg.metricsAddr != "",
		Redis:           cfg.redis.URL,
		RedisMode:       cfg.redis.Mode,
		RedisCA:         cfg.redis.CAFile,
		RedisCert:       cfg.redis.CertFile,
		RedisKey:        cfg.redis.KeyFile,
		Log:             log,
		Build:           build,
		Tracer:          tracer,
		TraceStats:      traceStats,
	})
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		srv.Close()
		return fmt.Errorf("listen on -addr %s: %w", cfg.addr, err)
	}
	addrs := []string{ln.Addr().String()}
	var metricsLn net.Listener
	if cfg.metricsAddr != "" {
		if metricsLn, err = net.Listen("tcp", cfg.metricsAddr); err != nil {
			ln.Close()
			srv.Close()
			return fmt.Errorf("listen on -metrics-addr %s: %w", cfg.metricsAddr, err)
		}
		addrs = append(addrs, metricsLn.Addr().String())
	}
	if cfg.readyFile != "" {
		if err := writeReadyFile(cfg.readyFile, addrs); err != nil {
			ln.Close()
			if metricsLn != nil {
				metricsLn.Close()
			}
			srv.Close()
			return fmt.Errorf("-ready-file: %w", err)
		}
	}
	attrs := []any{"addr", strings.Join(addrs, ","), "upstream", cfg.upstream, "ttl", cfg.ttl, "upstream_timeout", cfg.upstreamTimeout}
	if cfg.redis.URL != "" {
		attrs = append(attrs, "redis", cfg.redis.Redacted(), "redis_mode", cfg.redis.Mode)
	}
	attrs = append(attrs, "version", build.Version, "revision", build.Revision, "go", build.GoVersion, "tracing", traced)
	log.Info("listening", attrs...)
	if err := srv.Serve(ctx, ln, metricsLn); err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

// writeReadyFile writes addrs, one per line, all at once: a reader polling
// for the file never sees half of it.
func writeReadyFile(path string, addrs []string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".ready-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(strings.Join(addrs, "\n") + "\n"); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func newLogger(cfg config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.logLevel}
	if cfg.logFormat == "json" {
		return slog.New(web.NewLogHandler(slog.NewJSONHandler(w, opts)))
	}
	return slog.New(web.NewLogHandler(slog.NewTextHandler(w, opts)))
}
