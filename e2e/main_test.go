package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// tmpDir holds what the tests share: the movies binary, built once.
var tmpDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "movies-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	tmpDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// repoRoot is the module root; go test runs a package's tests in its folder.
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// deployFile is the path of a file under deploy/.
func deployFile(t testing.TB, rel string) string {
	t.Helper()
	return filepath.Join(repoRoot(t), "deploy", filepath.FromSlash(rel))
}

// mustLookPath finds a component the test needs. Missing, it skips the test
// on a developer's machine, and fails it under CI=true: CI never passes by
// skipping. scripts/install-e2e-deps.sh installs them all.
func mustLookPath(t testing.TB, name string) string {
	t.Helper()
	skipIfShort(t)
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found (%v): CI must run this test; install it with scripts/install-e2e-deps.sh", name, err)
	}
	t.Skipf("%s not found: run scripts/install-e2e-deps.sh to run this test", name)
	return ""
}

// skipIfShort skips tests that start real processes under -short, which
// is for the quick inner loop; CI and the test command never pass it.
func skipIfShort(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end: skipped under -short")
	}
}

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// moviesBinary builds ./cmd/movies once for all tests.
func moviesBinary(t testing.TB) string {
	t.Helper()
	skipIfShort(t)
	buildOnce.Do(func() {
		out := filepath.Join(tmpDir, "movies")
		cmd := exec.Command("go", "build", "-o", out, "./cmd/movies")
		cmd.Dir = repoRoot(t)
		if b, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/movies: %v\n%s", err, b)
			return
		}
		buildPath = out
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildPath
}

// freeAddr returns a loopback address that was free a moment ago and that
// it never returned before.
func freeAddr(t testing.TB) string {
	t.Helper()
	// The kernel may hand a port just closed out again: a test that asked
	// for two addresses once got the same one twice (HAProxy's stats and a
	// replica). Never return a port this process handed out before.
	handedOut.Lock()
	defer handedOut.Unlock()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		if !handedOut.addrs[addr] {
			handedOut.addrs[addr] = true
			return addr
		}
	}
	t.Fatal("no loopback port that was not handed out already")
	return ""
}

// handedOut is every address freeAddr returned.
var handedOut = struct {
	sync.Mutex
	addrs map[string]bool
}{addrs: map[string]bool{}}

// syncBuffer is a bytes.Buffer safe for a process's stdout and stderr to
// write while the test reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// process is a program the test started, in its own process group so that
// nothing it starts outlives the test.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{} // closed when it has exited
	err  error         // what Wait returned; read after done
}

// startProcess starts a program and kills it (and its group) when the test
// ends, logging its output if the test failed.
func startProcess(t testing.TB, name, path string, args ...string) *process {
	t.Helper()
	p := &process{name: name, out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(path, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
		if t.Failed() {
			t.Logf("output of %s (%s):\n%s", name, strings.Join(p.cmd.Args, " "), tail(p.out.String(), 4000))
		}
	})
	return p
}

// exited reports whether the process has exited.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits for the process to exit and returns its exit error.
func (p *process) wait(t testing.TB, timeout time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		t.Fatalf("%s still running after %s", p.name, timeout)
		return nil
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// startMovies is the one way tests run the movies binary: with JSON logs,
// the bundled data and -addr 127.0.0.1:0 unless args say otherwise (later
// flags win), it waits until the process has written its -ready-file and
// returns the process and its base URL. Nothing is parsed from the logs.
func startMovies(t testing.TB, name string, args ...string) (*process, string) {
	t.Helper()
	ready := filepath.Join(t.TempDir(), "ready")
	args = append([]string{"-addr", "127.0.0.1:0", "-upstream", "builtin", "-log-format", "json", "-ready-file", ready}, args...)
	p := startProcess(t, name, moviesBinary(t), args...)
	var addr string
	waitFor(t, 20*time.Second, name+" listening", func() error {
		if p.exited() {
			return fmt.Errorf("%w: exited: %v", errStop, p.err)
		}
		b, err := os.ReadFile(ready)
		if err != nil {
			return err
		}
		addr = strings.Fields(string(b))[0]
		return nil
	})
	return p, "http://" + addr
}

// startReplica runs the movies binary on a given addr (a load balancer's
// config names it, and it survives restarts) and waits until it is ready.
func startReplica(t testing.TB, name, addr string, extra ...string) *process {
	t.Helper()
	p, url := startMovies(t, name, append([]string{"-addr", addr}, extra...)...)
	waitFor(t, 10*time.Second, name+" ready", func() error {
		if p.exited() {
			return fmt.Errorf("%w: exited: %v", errStop, p.err)
		}
		return wantStatus(url+"/readyz", http.StatusOK)
	})
	return p
}

// errStop wrapped in a waitFor condition's error stops the wait at once.
var errStop = errors.New("gave up")

// waitFor polls cond until it returns nil. The components under test are
// other processes, which can only be asked, not awaited.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if errors.Is(err, errStop) || time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// wantStatus GETs url and checks its status.
func wantStatus(url string, want int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != want {
		return fmt.Errorf("GET %s: %s, want %d", url, resp.Status, want)
	}
	return nil
}
