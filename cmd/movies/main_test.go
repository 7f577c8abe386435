package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/movies-dev/movies/pkg/ghibli"
	"github.com/movies-dev/movies/pkg/web"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// instance is the real program, started by run on a loopback port.
type instance struct {
	URL       string
	readyFile string     // what -ready-file wrote: the listening addresses
	cancel    func()     // what SIGTERM does
	result    chan error // what run returned
}

// stop cancels run's context, as SIGTERM does, and returns what run
// returned (go test's own timeout bounds the wait).
func (in *instance) stop() error {
	in.cancel()
	return <-in.result
}

// mustStart runs the program against upstream with extra flags, on the
// port 0 that -ready-file reports.
func mustStart(tb testing.TB, upstream string, args ...string) *instance {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	in := &instance{readyFile: filepath.Join(tb.TempDir(), "ready"), cancel: cancel, result: make(chan error, 1)}
	args = append([]string{"-addr", "127.0.0.1:0", "-upstream", upstream, "-ready-file", in.readyFile}, args...)
	done := make(chan struct{})
	go func() {
		defer close(done)
		in.result <- run(ctx, args, func(string) string { return "" }, io.Discard)
	}()
	tb.Cleanup(func() {
		cancel()
		<-done
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if b, err := os.ReadFile(in.readyFile); err == nil {
			in.URL = "http://" + strings.Fields(string(b))[0]
			return in
		}
		select {
		case <-done:
			tb.Fatalf("run() = %v before listening", <-in.result)
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatal("no -ready-file within 10s")
		}
	}
}

var testClient = &http.Client{Timeout: 30 * time.Second}

// mustAPI fetches the JSON catalogue.
func mustAPI(t *testing.T, base string) (doc struct{ Movies []json.RawMessage }) {
	t.Helper()
	resp, err := testClient.Get(base + "/api/v1/movies")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /api/v1/movies = %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatalf("decode /api/v1/movies: %v", err)
	}
	return doc
}

func TestRun_Builtin(t *testing.T) {
	in := mustStart(t, "builtin")
	t.Cleanup(testClient.CloseIdleConnections)
	doc := mustAPI(t, in.URL)
	if len(doc.Movies) != 22 {
		t.Errorf("builtin upstream: %d movies, want 22", len(doc.Movies))
	}
	if err := in.stop(); err != nil {
		t.Errorf("run() = %v", err)
	}
}

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string // substring; "" means valid
		check   func(t *testing.T, c config)
	}{
		{name: "defaults", check: func(t *testing.T, c config) {
			if c.addr != ":8000" || c.upstream != ghibli.DefaultBaseURL || c.ttl != time.Minute || c.upstreamTimeout != 10*time.Second || c.logFormat != "text" {
				t.Errorf("defaults = %+v", c)
			}
		}},
		{name: "env fallback", env: map[string]string{"MOVIES_ADDR": "127.0.0.1:9", "MOVIES_TTL": "30s", "MOVIES_UPSTREAM": "builtin", "MOVIES_LOG_FORMAT": "json"},
			check: func(t *testing.T, c config) {
				if c.addr != "127.0.0.1:9" || c.ttl != 30*time.Second || c.upstream != "builtin" || c.logFormat != "json" {
					t.Errorf("config = %+v, want the environment's values", c)
				}
			}},
		{name: "flag beats env", args: []string{"-ttl", "30s"}, env: map[string]string{"MOVIES_TTL": "45s"},
			check: func(t *testing.T, c config) {
				if c.ttl != 30*time.Second {
					t.Errorf("ttl = %v, want the flag's 30s", c.ttl)
				}
			}},
		{name: "ftp upstream", args: []string{"-upstream", "ftp://x"}, wantErr: `invalid -upstream "ftp://x"`},
		{name: "upstream without host", args: []string{"-upstream", "http://"}, wantErr: "invalid -upstream"},
		{name: "ttl above the promise", args: []string{"-ttl", "2m"}, wantErr: "invalid -ttl 2m0s"},
		{name: "zero ttl", args: []string{"-ttl", "0s"}, wantErr: "invalid -ttl"},
		{name: "timeout above ttl", args: []string{"-ttl", "5s", "-upstream-timeout", "10s"}, wantErr: "invalid -upstream-timeout"},
		{name: "short ttl alone picks a timeout that fits", args: []string{"-ttl", "2s"}, check: func(t *testing.T, c config) {
			if c.upstreamTimeout != time.Second {
				t.Errorf("-ttl 2s: upstream timeout %v, want half the TTL, 1s", c.upstreamTimeout)
			}
		}},
		{name: "explicit timeout conflicting by env", args: []string{"-ttl", "2s"}, env: map[string]string{"MOVIES_UPSTREAM_TIMEOUT": "10s"}, wantErr: "invalid -upstream-timeout"},
		{name: "explicit zero timeout", args: []string{"-upstream-timeout", "0s"}, wantErr: "invalid -upstream-timeout"},
		{name: "every bad env var reported", env: map[string]string{"MOVIES_TTL": "x", "MOVIES_DRAIN_DELAY": "y"}, wantErr: "MOVIES_DRAIN_DELAY"},
		{name: "bad duration", args: []string{"-ttl", "soon"}, wantErr: "-ttl"},
		{name: "bad env duration", env: map[string]string{"MOVIES_UPSTREAM_TIMEOUT": "x"}, wantErr: "MOVIES_UPSTREAM_TIMEOUT"},
		{name: "redis URL with password", args: []string{"-redis", "redis://u:s3cret@127.0.0.1:6379/2"}, check: func(t *testing.T, c config) {
			if c.redis.URL != "redis://u:s3cret@127.0.0.1:6379/2" {
				t.Errorf("redis = %q", c.redis.URL)
			}
		}},
		{name: "redis bad scheme hides the password", args: []string{"-redis", "http://u:s3cret@h:1"}, wantErr: "invalid -redis http://u:xxxxx@h:1"},
		{name: "redis bad database hides the password", args: []string{"-redis", "redis://u:s3cret@127.0.0.1:6379/x"}, wantErr: "invalid -redis redis://u:xxxxx@127.0.0.1:6379/x: invalid database number"},
		{name: "redis bad option", args: []string{"-redis", "redis://:s3cret@127.0.0.1:6379/0?pool_size=many"}, wantErr: "invalid -redis redis://:xxxxx@127.0.0.1:6379/0?pool_size=many: invalid pool_size"},
		{name: "redis host list refused", args: []string{"-redis", "redis://a:6379,b:6379"}, wantErr: "a host list is not one Redis"},
		{name: "redis unix socket", args: []string{"-redis", "unix:///run/redis/redis.sock?db=1"}, check: func(t *testing.T, c config) {
			if c.redis.URL != "unix:///run/redis/redis.sock?db=1" || c.redis.Mode != "standalone" {
				t.Errorf("redis = %+v", c.redis)
			}
		}},
		{name: "redis sentinel from env", env: map[string]string{"MOVIES_REDIS_URL": "redis://127.0.0.1:26379?master_name=m&addr=127.0.0.1:26380", "MOVIES_REDIS_MODE": "sentinel"}, check: func(t *testing.T, c config) {
			if c.redis.Mode != "sentinel" {
				t.Errorf("redis = %+v", c.redis)
			}
		}},
		{name: "redis sentinel needs a master", args: []string{"-redis-mode", "sentinel", "-redis", "redis://127.0.0.1:26379"}, wantErr: "master_name"},
		{name: "redis cluster seeds", args: []string{"-redis-mode", "cluster", "-redis", "redis://127.0.0.1:7000?addr=127.0.0.1:7001"}, check: func(t *testing.T, c config) {
			if c.redis.Mode != "cluster" {
				t.Errorf("redis = %+v", c.redis)
			}
		}},
		{name: "redis bad mode", args: []string{"-redis-mode", "ring", "-redis", "redis://127.0.0.1:7000"}, wantErr: `mode "ring"`},
		{name: "redis CA needs TLS", args: []string{"-redis", "redis://127.0.0.1:6379", "-redis-ca", "/etc/hostname"}, wantErr: "needs a rediss:// URL"},
		{name: "redis CA needs redis", args: []string{"-redis-ca", "/etc/hostname"}, wantErr: "need -redis"},
		{name: "redis CA unreadable", args: []string{"-redis", "rediss://127.0.0.1:6379", "-redis-ca", "/nonexistent/ca.pem"}, wantErr: "CA file"},
		{name: "redis CA not PEM", args: []string{"-redis", "rediss://127.0.0.1:6379", "-redis-ca", "/etc/hostname"}, wantErr: "holds no PEM certificate"},
		{name: "redis cert without key", args: []string{"-redis", "rediss://127.0.0.1:6379", "-redis-cert", "/etc/hostname"}, wantErr: "both its file and its key"},
		{name: "redis query password hidden", args: []string{"-redis-mode", "sentinel", "-redis", "redis://127.0.0.1:26379?master_name=m&password=s3cret&bogus=1"}, wantErr: "password=xxxxx"},
		{name: "redis from env", env: map[string]string{"MOVIES_REDIS_URL": "ftp://x"}, wantErr: "invalid -redis"},
		{name: "bad addr", args: []string{"-addr", "8000"}, wantErr: "invalid -addr"},
		{name: "bad log format", args: []string{"-log-format", "xml"}, wantErr: "invalid -log-format"},
		{name: "bad log level", args: []string{"-log-level", "loud"}, wantErr: "invalid -log-level"},
		{name: "unknown flag", args: []string{"-colour"}, wantErr: "colour"},
		{name: "stray argument", args: []string{"serve"}, wantErr: "unexpected argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseConfig(tt.args, func(k string) string { return tt.env[k] }, io.Discard)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("parseConfig() error = %v", err)
				}
				tt.check(t, c)
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("parseConfig() error = %v, want one naming %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("error shows the password: %q", err)
			}
			if strings.Contains(err.Error(), "\n") && len(tt.env) < 2 {
				t.Errorf("error spans lines: %q", err)
			}
		})
	}
}

func TestRun_BadFlagFailsFast(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), []string{"-upstream", "ftp://x"}, func(string) string { return "" }, &out)
	if err == nil || !strings.Contains(err.Error(), "-upstream") {
		t.Errorf("run() = %v, want an error naming -upstream", err)
	}
}

func TestRun_Help(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), []string{"-h"}, func(string) string { return "" }, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("run(-h) = %v, want flag.ErrHelp", err)
	}
	sc := bufio.NewScanner(&out)
	var flags int
	for sc.Scan() {
		if strings.HasPrefix(strings.TrimSpace(sc.Text()), "-") {
			flags++
		}
	}
	if flags != 18 { // every flag in config.go
		t.Errorf("usage lists %d flags, want all of them:\n%s", flags, out.String())
	}
}

func TestRun_Healthcheck(t *testing.T) {
	in := mustStart(t, "builtin")
	t.Cleanup(testClient.CloseIdleConnections)
	addr := strings.TrimPrefix(in.URL, "http://")
	noEnv := func(string) string { return "" }
	if err := run(context.Background(), []string{"-healthcheck", "-addr", addr}, noEnv, io.Discard); err != nil {
		t.Errorf("healthcheck of a running server = %v, want nil", err)
	}
	if err := in.stop(); err != nil {
		t.Fatal(err)
	}
	err := run(context.Background(), []string{"-healthcheck", "-addr", addr}, noEnv, io.Discard)
	if err == nil || exitCode(err) != 1 {
		t.Errorf("healthcheck of a stopped server = %v (exit %d), want an error and exit 1", err, exitCode(err))
	}
}

// TestRun_ShortTTLJustWorks: -ttl alone starts, with an upstream timeout
// that fits it.
func TestRun_ShortTTLJustWorks(t *testing.T) {
	in := mustStart(t, "builtin", "-ttl", "2s")
	t.Cleanup(testClient.CloseIdleConnections)
	if doc := mustAPI(t, in.URL); len(doc.Movies) != 22 {
		t.Errorf("-ttl 2s: %d movies, want 22", len(doc.Movies))
	}
	if err := in.stop(); err != nil {
		t.Errorf("run() = %v", err)
	}
}

// TestRun_ReadyFileListsBothListeners: the ready file is how a supervisor
// or a test learns the ports it asked the kernel to pick.
func TestRun_ReadyFileListsBothListeners(t *testing.T) {
	in := mustStart(t, "builtin", "-metrics-addr", "127.0.0.1:0")
	t.Cleanup(testClient.CloseIdleConnections)
	b, err := os.ReadFile(in.readyFile)
	if err != nil {
		t.Fatal(err)
	}
	addrs := strings.Fields(string(b))
	if len(addrs) != 2 || "http://"+addrs[0] != in.URL {
		t.Fatalf("ready file = %q, want -addr (%s) then -metrics-addr", addrs, in.URL)
	}
	for i, path := range []string{"/healthz", "/metrics"} {
		resp, err := testClient.Get("http://" + addrs[i] + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("GET %s on %s = %s, want 200", path, addrs[i], resp.Status)
		}
	}
	if err := in.stop(); err != nil {
		t.Errorf("run() = %v", err)
	}
}

// TestRun_LogsNoRedisPassword: the start-up line names the Redis URL with
// every password masked, the URL's own and a Sentinel master's ?password=.
func TestRun_LogsNoRedisPassword(t *testing.T) {
	var out syncWriter
	ctx, cancel := context.WithCancel(context.Background())
	ready := filepath.Join(t.TempDir(), "ready")
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-addr", "127.0.0.1:0", "-upstream", "builtin", "-ready-file", ready,
			"-redis-mode", "sentinel", "-redis", "redis://u:urlpw@127.0.0.1:1?master_name=m&password=masterpw"},
			func(string) string { return "" }, &out)
	}()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no -ready-file within 10s")
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	log := out.String()
	if !strings.Contains(log, "msg=listening") || strings.Contains(log, "urlpw") || strings.Contains(log, "masterpw") {
		t.Errorf("the log shows a password, or has no start-up line:\n%s", log)
	}
}

// syncWriter is a log destination safe for the server's goroutines.
type syncWriter struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

func TestReadBuild(t *testing.T) {
	const rev = "ad591c9c0ffee0123456789abcdef0123456789a"
	tests := []struct {
		name string
		info *debug.BuildInfo
		ok   bool
		want web.Build
	}{
		{"no build information", nil, false, web.Build{Version: "(devel)", Revision: "unknown", GoVersion: runtime.Version()}},
		{"go run, or -buildvcs=false", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}},
			true, web.Build{Version: "(devel)", Revision: "unknown", GoVersion: "go1.26.8"}},
		{"go build in a modified checkout", &debug.BuildInfo{
			GoVersion: "go1.26.8",
			Main:      debug.Module{Version: "v0.0.0-20261202021500-ad591c9c0ffe+dirty"},
			Settings:  []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: "true"}},
		}, true, web.Build{Version: "v0.0.0-20261202021500-ad591c9c0ffe+dirty", Revision: rev, GoVersion: "go1.26.8"}},
		{"a tagged release", &debug.BuildInfo{
			GoVersion: "go1.26.8",
			Main:      debug.Module{Version: "v1.2.0"},
			Settings:  []debug.BuildSetting{{Key: "vcs.revision", Value: rev}},
		}, true, web.Build{Version: "v1.2.0", Revision: rev, GoVersion: "go1.26.8"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := readBuild(tt.info, tt.ok); got != tt.want {
				t.Errorf("readBuild() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestRun_Version: -version prints one line naming the build and exits 0
// without serving.
func TestRun_Version(t *testing.T) {
	var out bytes.Buffer
	// An -addr nobody could listen on: -version must not try.
	err := run(context.Background(), []string{"-version", "-addr", "192.0.2.1:1"}, func(string) string { return "" }, &out)
	if err != nil {
		t.Fatalf("run(-version) = %v, want nil (exit 0)", err)
	}
	want := versionLine(readBuild(debug.ReadBuildInfo())) + "\n"
	if out.String() != want {
		t.Errorf("run(-version) printed %q, want %q", out.String(), want)
	}
	if !regexp.MustCompile(`^movies \S+ \(revision \S+, go1\.\S+\)\n$`).MatchString(out.String()) {
		t.Errorf("run(-version) printed %q, want movies VERSION (revision REV, goX.Y.Z)", out.String())
	}
}

// TestRun_NamesItsBuild: the start-up line and movies_build_info name the
// same build as -version, so a log line, a dashboard and a shell on the
// machine agree on what runs.
func TestRun_NamesItsBuild(t *testing.T) {
	var out syncWriter
	ctx, cancel := context.WithCancel(context.Background())
	ready := filepath.Join(t.TempDir(), "ready")
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-addr", "127.0.0.1:0", "-upstream", "builtin", "-ready-file", ready, "-log-format", "json"},
			func(string) string { return "" }, &out)
	}()
	var addr string
	for deadline := time.Now().Add(10 * time.Second); addr == ""; time.Sleep(5 * time.Millisecond) {
		if b, err := os.ReadFile(ready); err == nil {
			addr = strings.Fields(string(b))[0]
		}
		if time.Now().After(deadline) {
			t.Fatal("no -ready-file within 10s")
		}
	}
	t.Cleanup(testClient.CloseIdleConnections)
	resp, err := testClient.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	exposition, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	b := readBuild(debug.ReadBuildInfo())
	var started map[string]any
	for line := range strings.SplitSeq(out.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "listening" {
			started = rec
		}
	}
	if started["version"] != b.Version || started["revision"] != b.Revision || started["go"] != b.GoVersion {
		t.Errorf("start-up line %v, want version %q, revision %q, go %q", started, b.Version, b.Revision, b.GoVersion)
	}
	want := fmt.Sprintf("movies_build_info{goversion=%q,revision=%q,version=%q} 1\n", b.GoVersion, b.Revision, b.Version)
	if !strings.Contains(string(exposition), want) {
		t.Errorf("/metrics lacks %q", want)
	}
}
