// Command ghiblifake serves the bundled copy of the Ghibli API's data the way
// the upstream does, optionally slowed down, for load tests that need a real
// upstream in another process: the benchmarks (go run ./bench churn, hit)
// point movies at it, with -latency 200ms to measure expiry churn.
//
// It is a [ghiblitest.Handler] served by [builtin.Start], the very function
// that serves `movies -upstream builtin`, so it answers exactly what the
// tests' fake and the offline server answer. Its first line on stdout is
// "listening on http://HOST:PORT", which lets a script ask for port 0. It
// stops on SIGINT or SIGTERM, releasing requests still waiting out the
// latency.
//
// Usage:
//
//	ghiblifake [-addr 127.0.0.1:0] [-latency 200ms]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/movies-dev/movies/pkg/ghibli/builtin"
	"github.com/movies-dev/movies/pkg/ghibli/ghiblitest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "ghiblifake:", err)
		os.Exit(2)
	}
}

// run serves until ctx ends, then shuts down and returns nil, or returns the
// error that stopped it.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("ghiblifake", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned as one line, not a usage dump
	addr := fs.String("addr", "127.0.0.1:0", "address to listen on (port 0 picks a free one)")
	latency := fs.Duration("latency", 0, "how long every request waits before it is answered")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fmt.Fprintln(stdout, "Usage: ghiblifake [flags]")
			fs.PrintDefaults()
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: ghiblifake takes only flags", fs.Arg(0))
	}
	if *latency < 0 {
		return fmt.Errorf("invalid -latency %s: must not be negative", *latency)
	}

	h := ghiblitest.NewHandler(ghiblitest.Bundled())
	h.SetBehavior("", ghiblitest.Behavior{Latency: *latency})

	up, err := builtin.Start(*addr, h)
	if err != nil {
		return fmt.Errorf("listen on -addr %s: %w", *addr, err)
	}
	fmt.Fprintf(stdout, "listening on %s\n", up.URL)

	select {
	case <-up.Done():
		return fmt.Errorf("serve: %w", up.Err())
	case <-ctx.Done():
	}
	// Requests still waiting out the latency would hold Shutdown for that
	// long; Close answers them 503 at once.
	h.Close()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := up.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}
