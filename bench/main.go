// Command bench is the movies load benchmark (issues 4, 8 and 16), one Go
// program in place of the shell script it replaces:
//
//	go run ./bench hit     [flags]  hit path vs the floor vs nginx, per coding; peak RSS
//	go run ./bench churn   [flags]  expiry churn: -ttl 2s against -ttl 1m, a slow upstream
//	go run ./bench scale   [flags]  N real replicas on one redis-server, under load
//	go run ./bench emulate [flags]  N in-process fleet tiers on one redis-server
//	go run ./bench all     [flags]  hit, then churn (what scripts/bench.sh ran before)
//
// `go run ./bench SUBCOMMAND -h` lists a subcommand's flags.
// scripts/bench.sh installs wrk, nginx and redis-server from Debian if they
// are missing, then runs this program with its arguments.
//
// It measures, it does not judge: it prints PASS or MISS next to each
// target and exits 0 either way; it exits 1 only if it could not measure
// (a tool missing, a process that would not start), 2 on a bad flag and
// 130 when interrupted. Everything listens on 127.0.0.1, and every process
// it starts runs in a process group of its own that is stopped when the
// program ends, Ctrl-C included.
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
)

// subcommand is one benchmark: its flags are set up on fs, then run is
// called with the parsed flags.
type subcommand struct {
	name, summary string
	setup         func(fs *flag.FlagSet) func(ctx context.Context, e *env) error
}

var subcommands = []subcommand{
	{"hit", "hit path: movies vs the floor vs nginx on the same bytes, per coding; peak RSS", setupHit},
	{"churn", "expiry churn: -ttl 2s against -ttl 1m, with an upstream answering in 200 ms", setupChurn},
	{"scale", "N replica processes on one redis-server: fetches, Redis commands, reads, renders, lag, backwards pages", setupScale},
	{"emulate", "N in-process fleet tiers on one redis-server: Redis commands and bytes per commit, read latency against the call budget", setupEmulate},
	{"all", "hit, then churn", setupAll},
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: go run ./bench SUBCOMMAND [flags]   (SUBCOMMAND -h lists its flags)")
	fmt.Fprintln(w)
	for _, s := range subcommands {
		fmt.Fprintf(w, "  %-8s %s\n", s.name, s.summary)
	}
}

// run is main with its exit status returned, so deferred cleanup runs.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	var sub *subcommand
	for i := range subcommands {
		if subcommands[i].name == args[0] {
			sub = &subcommands[i]
		}
	}
	if sub == nil {
		fmt.Fprintf(stderr, "bench: unknown subcommand %q\n", args[0])
		usage(stderr)
		return 2
	}
	fs := flag.NewFlagSet("bench "+sub.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	keep := fs.Bool("keep", false, "keep the work directory (logs, wrk output, configuration) and print its path")
	do := sub.setup(fs)
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "bench %s: unexpected argument %q\n", sub.name, fs.Arg(0))
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	e, err := newEnv(ctx, stdout, stderr, *keep)
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	err = do(ctx, e)
	e.close()
	switch {
	case ctx.Err() != nil:
		fmt.Fprintln(stderr, "bench: interrupted; every process it started is stopped")
		return 130
	case errors.Is(err, errUsage):
		fmt.Fprintln(stderr, "bench:", err)
		return 2
	case err != nil:
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	return 0
}

// errUsage marks a flag value that parsed but cannot be used.
var errUsage = errors.New("invalid flag")

// setupAll runs hit and churn with their defaults and the flags they share.
func setupAll(fs *flag.FlagSet) func(context.Context, *env) error {
	hit := setupHit(fs)
	churnFS := flag.NewFlagSet("churn", flag.ContinueOnError)
	churn := setupChurn(churnFS)
	// The flags both define keep hit's names and values; churn follows
	// what it shares with hit.
	return func(ctx context.Context, e *env) error {
		for _, name := range []string{"connections", "rounds", "threads", "warmup"} {
			if f := fs.Lookup(name); f != nil {
				if err := churnFS.Set(name, f.Value.String()); err != nil {
					return err
				}
			}
		}
		if err := hit(ctx, e); err != nil {
			return err
		}
		fmt.Fprintln(e.out)
		return churn(ctx, e)
	}
}
