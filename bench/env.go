package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// env is what every subcommand shares: the repository, a work directory,
// the processes started (each stopped by close), and where to print.
type env struct {
	ctx       context.Context
	root      string // the module's root: where go build runs
	work      string
	keep      bool
	out, logw io.Writer

	mu    sync.Mutex
	procs []*proc
	built map[string]string
}

func newEnv(ctx context.Context, out, logw io.Writer, keep bool) (*env, error) {
	root, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	raiseFileLimit(logw)
	work, err := os.MkdirTemp("", "movies-bench.")
	if err != nil {
		return nil, err
	}
	// nginx's workers run as nobody when started by root.
	if err := os.Chmod(work, 0o755); err != nil {
		return nil, err
	}
	return &env{ctx: ctx, root: root, work: work, keep: keep, out: out, logw: logw, built: map[string]string{}}, nil
}

// moduleRoot walks up from the working directory to go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the movies module (no go.mod above the working directory)")
		}
		dir = parent
	}
}

// raiseFileLimit lifts the soft limit on open files to the hard one: wrk at
// 256 connections, nginx, and a thousand emulated tiers (two connections
// each, and Redis, which inherits the limit, the other end of them) need
// more than the usual 1,024.
func raiseFileLimit(logw io.Writer) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			fmt.Fprintf(logw, "bench: could not raise the open-file limit: %v\n", err)
		}
	}
}

// fileLimit is the soft limit on open files.
func fileLimit() uint64 {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0
	}
	return l.Cur
}

func (e *env) logf(format string, args ...any) {
	fmt.Fprintf(e.logw, "bench: "+format+"\n", args...)
}

func (e *env) printf(format string, args ...any) { fmt.Fprintf(e.out, format, args...) }

// close stops every process still running and removes the work directory
// unless asked to keep it.
func (e *env) close() {
	e.mu.Lock()
	procs := e.procs
	e.procs = nil
	e.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Go(p.stop)
	}
	wg.Wait()
	if e.keep {
		e.logf("work directory kept: %s", e.work)
	} else {
		os.RemoveAll(e.work)
	}
}

// build compiles a package of the module once per run and returns the
// binary.
func (e *env) build(pkg string) (string, error) {
	e.mu.Lock()
	bin, ok := e.built[pkg]
	e.mu.Unlock()
	if ok {
		return bin, nil
	}
	bin = filepath.Join(e.work, "bin", filepath.Base(pkg))
	cmd := exec.CommandContext(e.ctx, "go", "build", "-o", bin, pkg)
	cmd.Dir = e.root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
	}
	e.mu.Lock()
	e.built[pkg] = bin
	e.mu.Unlock()
	return bin, nil
}

// proc is a process the benchmark started, in its own process group.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
	once sync.Once
}

// start runs path with args, its output in the work directory as
// NAME.log. The process gets its own process group, so that stopping it
// stops what it started too (nginx's workers), and SIGKILL if this program
// dies without cleaning up.
func (e *env) start(name, path string, args ...string) (*proc, error) {
	logPath := filepath.Join(e.work, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	e.mu.Lock()
	e.procs = append(e.procs, p)
	e.mu.Unlock()
	return p, nil
}

// forget drops p from the processes close stops (it was stopped already).
func (e *env) forget(p *proc) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, q := range e.procs {
		if q == p {
			e.procs = append(e.procs[:i], e.procs[i+1:]...)
			return
		}
	}
}

// stopProc stops p and forgets it.
func (e *env) stopProc(p *proc) {
	p.stop()
	e.forget(p)
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to p's process group, and SIGKILL if it has not
// exited within 10 s (a server's drain).
func (p *proc) stop() {
	p.once.Do(func() {
		pgid := p.cmd.Process.Pid
		syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-pgid, syscall.SIGKILL)
			<-p.done
		}
		// Anything left in the group (a worker its master did not take
		// down) goes too.
		syscall.Kill(-pgid, syscall.SIGKILL)
	})
}

// tail is the end of p's log, for error messages.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// freePort finds a loopback port nobody listens on, below the kernel's
// ephemeral range so that it cannot collide with the load generators' own
// connections.
func freePort() (int, error) {
	for range 200 {
		p := 20000 + rand.IntN(12000)
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err == nil {
			ln.Close()
			return p, nil
		}
	}
	return 0, errors.New("no free port found")
}

// waitHTTP waits up to 10 s for url to answer 200 while p lives.
func (e *env) waitHTTP(url string, p *proc) error {
	c := &http.Client{Timeout: time.Second}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		if resp, err := c.Get(url); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if p.exited() {
			return fmt.Errorf("%s exited; its log:\n%s", p.name, p.tail())
		}
		if err := sleep(e.ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	return fmt.Errorf("%s did not answer 200 within 10s; its log:\n%s", url, p.tail())
}

// startMovies starts the movies binary on a free loopback port with args,
// waits until it is healthy, and returns it with its base URL.
func (e *env) startMovies(name string, args ...string) (*proc, string, error) {
	bin, err := e.build("./cmd/movies")
	if err != nil {
		return nil, "", err
	}
	ready := filepath.Join(e.work, name+".ready")
	p, err := e.start("movies-"+name, bin, append([]string{"-addr", "127.0.0.1:0", "-ready-file", ready, "-log-level", "warn"}, args...)...)
	if err != nil {
		return nil, "", err
	}
	var addr string
	for deadline := time.Now().Add(10 * time.Second); addr == ""; {
		if b, err := os.ReadFile(ready); err == nil {
			addr, _, _ = strings.Cut(string(b), "\n")
		}
		if addr != "" {
			break
		}
		if p.exited() || time.Now().After(deadline) {
			return nil, "", fmt.Errorf("movies %s did not start; its log:\n%s", name, p.tail())
		}
		if err := sleep(e.ctx, 20*time.Millisecond); err != nil {
			return nil, "", err
		}
	}
	url := "http://" + addr
	return p, url, e.waitHTTP(url+"/healthz", p)
}

// startFakeUpstream starts cmd/ghiblifake with args and returns it and its
// URL (from its first line, "listening on URL").
func (e *env) startFakeUpstream(args ...string) (*proc, string, error) {
	bin, err := e.build("./cmd/ghiblifake")
	if err != nil {
		return nil, "", err
	}
	p, err := e.start("ghiblifake", bin, append([]string{"-addr", "127.0.0.1:0"}, args...)...)
	if err != nil {
		return nil, "", err
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && !p.exited(); {
		b, _ := os.ReadFile(p.log)
		if line, ok := strings.CutPrefix(string(b), "listening on "); ok {
			if url, _, ok := strings.Cut(line, "\n"); ok {
				return p, url, nil
			}
		}
		if err := sleep(e.ctx, 20*time.Millisecond); err != nil {
			return nil, "", err
		}
	}
	return nil, "", fmt.Errorf("ghiblifake did not start; its log:\n%s", p.tail())
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// header prints what the figures depend on: the date, the machine, the
// tools and the commit.
func (e *env) header(title string, tools ...string) {
	e.printf("# %s\n\n", title)
	e.printf("- date: %s\n", time.Now().UTC().Format("2006-01-02 15:04:05 UTC"))
	load, _ := os.ReadFile("/proc/loadavg")
	e.printf("- machine: %d cores, %s, %s, kernel %s, load average %s at start\n",
		runtime.NumCPU(), cpuModel(), memTotal(), strings.TrimSpace(readFile("/proc/sys/kernel/osrelease")),
		strings.Join(strings.Fields(string(load))[:min(3, len(strings.Fields(string(load))))], " "))
	versions := []string{runtime.Version()}
	for _, t := range tools {
		versions = append(versions, toolVersion(t))
	}
	e.printf("- %s\n", strings.Join(versions, ", "))
	e.printf("- movies at %s\n", e.commit())
}

func (e *env) commit() string {
	cmd := exec.Command("git", "rev-parse", "--short", "HEAD")
	cmd.Dir = e.root
	out, err := cmd.Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(out))
	diff := exec.Command("git", "diff", "--quiet", "HEAD", "--", "cmd", "pkg", "metrics", "bench", "go.mod", "go.sum")
	diff.Dir = e.root
	if diff.Run() != nil {
		c += " + uncommitted changes"
	}
	return c
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func cpuModel() string {
	for line := range strings.Lines(readFile("/proc/cpuinfo")) {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

func memTotal() string {
	for line := range strings.Lines(readFile("/proc/meminfo")) {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
			return fmt.Sprintf("%.0f GiB", float64(kb)/(1<<20))
		}
	}
	return "unknown memory"
}

// toolVersion is the first line a tool prints of its version.
func toolVersion(tool string) string {
	var cmd *exec.Cmd
	switch tool {
	case "wrk":
		cmd = exec.Command("wrk", "-v")
	case "nginx":
		cmd = exec.Command("nginx", "-v")
	case "redis-server":
		cmd = exec.Command("redis-server", "--version")
	default:
		return tool
	}
	out, _ := cmd.CombinedOutput() // wrk -v exits 1
	line, _, _ := strings.Cut(string(bytes.TrimSpace(out)), "\n")
	line = strings.TrimPrefix(line, "nginx version: ")
	if f := strings.Fields(line); tool == "wrk" && len(f) >= 2 {
		line = f[0] + " " + f[1]
	}
	if f := strings.Fields(line); tool == "redis-server" && len(f) >= 3 {
		line = "redis-server " + strings.TrimPrefix(f[2], "v=")
	}
	if line == "" {
		return tool + " (version unknown)"
	}
	return line
}

// need fails unless every tool is on PATH.
func need(tools ...string) error {
	var missing []string
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s not found: scripts/bench.sh installs them from Debian", strings.Join(missing, ", "))
	}
	return nil
}

func readDirNames(dir string) ([]string, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Readdirnames(-1)
}
