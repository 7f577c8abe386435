// Package fleettest runs Debian's redis-server for tests of the shared
// tier, in the spirit of net/http/httptest: the protocol is Lua running in
// the real thing, so the tests use the real thing.
package fleettest

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is a redis-server on a loopback port, stopped when the test ends.
type Redis struct {
	// URL is redis://127.0.0.1:port; Addr is 127.0.0.1:port.
	URL, Addr string

	path string
	args []string // the options Start was given, for Restart
	tb   testing.TB
	mu   sync.Mutex
	cmd  *exec.Cmd
	out  bytes.Buffer
}

// Start starts redis-server, with args as further options (say
// "--enable-debug-command", "local", for a test that stalls Redis with
// DEBUG SLEEP). Under go test -short it skips the test: -short is the inner
// loop, and a test that starts a server of its own (and may stop the test
// process, as the starvation test does) is not, whether or not the machine
// has redis-server. A missing redis-server fails the test under CI=true
// (scripts/install-e2e-deps.sh installs it) and skips it otherwise.
func Start(tb testing.TB, args ...string) *Redis {
	tb.Helper()
	if testing.Short() {
		tb.Skip("starts redis-server: skipped under -short")
	}
	path, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("redis-server not found: CI must run this test; install it with scripts/install-e2e-deps.sh")
		}
		tb.Skip("redis-server not found: run scripts/install-e2e-deps.sh")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	r := &Redis{URL: "redis://" + addr, Addr: addr, path: path, args: args, tb: tb}
	r.Restart()
	tb.Cleanup(r.Kill)
	return r
}

// Restart starts the server again, empty, on the same port (after Kill).
func (r *Redis) Restart() {
	r.tb.Helper()
	_, port, _ := net.SplitHostPort(r.Addr)
	cmd := exec.Command(r.path, append([]string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"}, r.args...)...)
	cmd.Stdout, cmd.Stderr = &r.out, &r.out
	if err := cmd.Start(); err != nil {
		r.tb.Fatal(err)
	}
	r.mu.Lock()
	r.cmd = cmd
	r.mu.Unlock()
	c := r.Client()
	defer c.Close()
	for deadline := time.Now().Add(5 * time.Second); c.Ping(context.Background()).Err() != nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			r.tb.Fatalf("redis-server did not answer within 5s:\n%s", r.out.String())
		}
	}
}

// Kill kills the server (its data is lost: it saves nothing).
func (r *Redis) Kill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		r.cmd.Process.Kill()
		r.cmd.Wait()
		r.cmd = nil
	}
}

// Stop freezes the server (SIGSTOP): connections stay open and nothing
// answers, as with a Redis that hangs. Cont resumes it.
func (r *Redis) Stop() { r.signal(syscall.SIGSTOP) }

// Cont resumes a stopped server.
func (r *Redis) Cont() { r.signal(syscall.SIGCONT) }

func (r *Redis) signal(s syscall.Signal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		r.cmd.Process.Signal(s)
	}
}

// Client is a plain client for a test to poke at the keys; the caller
// closes it.
func (r *Redis) Client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: r.Addr})
}
