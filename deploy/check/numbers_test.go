package check

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"go.yaml.in/yaml/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// numbers is every number that more than one file states, read from each.
// A fact with several sources is a list of (where, value) pairs, all of
// which must be equal.
type numbers map[string][]sourced

type sourced struct{ where, value string }

func (n numbers) add(fact, where, value string) { n[fact] = append(n[fact], sourced{where, value}) }

// readNumbers reads the numbers from docker-compose.yml, the HAProxy
// config, the Prometheus config, the Dockerfile, the Kubernetes base and
// the binary's own -h.
func readNumbers(t *testing.T) numbers {
	t.Helper()
	n := numbers{}

	// The binary's defaults, as it prints them. A zero default is not
	// printed: -drain-delay's default is 0, so every deployment must set it.
	usage := moviesUsage(t)
	flagDefault := func(name string) (string, bool) {
		m := regexp.MustCompile(`(?m)^  -` + name + ` \S+\n[ \t]+.*\(default "?([^")]*)"?\)$`).FindStringSubmatch(usage)
		if m == nil {
			return "", false
		}
		return m[1], true
	}
	mustDefault := func(name string) string {
		v, ok := flagDefault(name)
		if !ok {
			t.Fatalf("movies -h shows no default for -%s:\n%s", name, usage)
		}
		return v
	}
	n.add("port", "movies -addr default", portOf(t, mustDefault("addr")))
	n.add("shutdown timeout", "movies -shutdown-timeout default", dur(t, mustDefault("shutdown-timeout")))
	if d, ok := flagDefault("drain-delay"); ok && d != "0s" {
		t.Errorf("movies -drain-delay default %s: the deployments set it, and this test assumes they must", d)
	}

	// docker-compose.yml: both replicas.
	var compose struct {
		Services map[string]struct {
			Environment     map[string]string `yaml:"environment"`
			StopGracePeriod string            `yaml:"stop_grace_period"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(mustRead(t, "docker-compose.yml"), &compose); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"movies-a", "movies-b"} {
		s, ok := compose.Services[name]
		if !ok {
			t.Fatalf("docker-compose.yml has no service %s", name)
		}
		where := "docker-compose.yml " + name
		n.add("port", where+" MOVIES_ADDR", portOf(t, s.Environment["MOVIES_ADDR"]))
		n.add("drain delay", where+" MOVIES_DRAIN_DELAY", dur(t, s.Environment["MOVIES_DRAIN_DELAY"]))
		n.add("shutdown timeout", where+" MOVIES_SHUTDOWN_TIMEOUT", dur(t, s.Environment["MOVIES_SHUTDOWN_TIMEOUT"]))
		n.add("grace period", where+" stop_grace_period", dur(t, s.StopGracePeriod))
	}

	// deploy/haproxy/haproxy.cfg: its checks, its servers, and the drain
	// numbers its header explains (it sets none itself, so a stale
	// explanation would mislead whoever copies it).
	cfg := string(mustRead(t, "deploy/haproxy/haproxy.cfg"))
	find := func(what, re string) string {
		m := regexp.MustCompile(re).FindStringSubmatch(cfg)
		if m == nil {
			t.Fatalf("haproxy.cfg: no %s (%s)", what, re)
		}
		return m[1]
	}
	ds := strings.Fields(find("default-server line", `(?m)^\s*default-server (.*)$`))
	opt := map[string]string{}
	for i := 0; i+1 < len(ds); i += 2 {
		opt[ds[i]] = ds[i+1]
	}
	n.add("readiness interval", "haproxy.cfg default-server inter", dur(t, opt["inter"]))
	n.add("readiness failures", "haproxy.cfg default-server fall", opt["fall"])
	n.add("readiness successes", "haproxy.cfg default-server rise", opt["rise"])
	n.add("readiness timeout", "haproxy.cfg timeout check", dur(t, find("check timeout", `(?m)^\s*timeout check (\S+)`)))
	n.add("readiness path", "haproxy.cfg http-check", find("check path", `(?m)^\s*http-check send meth GET uri (\S+)`))
	for _, m := range regexp.MustCompile(`(?m)^\s*server (\S+) (\S+) check`).FindAllStringSubmatch(cfg, -1) {
		n.add("port", "haproxy.cfg server "+m[1], portOf(t, m[2]))
	}
	n.add("drain delay", "haproxy.cfg comment -drain-delay", dur(t, find("drain comment", `-drain-delay (\S+):`)))
	n.add("shutdown timeout", "haproxy.cfg comment -shutdown-timeout", dur(t, find("shutdown comment", `-shutdown-timeout \((\S+)\)`)))
	n.add("grace period", "haproxy.cfg comment (compose: ...)", dur(t, find("grace comment", `\(compose: (\S+)\)`)))

	// deploy/prometheus/prometheus.yml: what it scrapes, and how often.
	var prom struct {
		Global struct {
			ScrapeInterval string `yaml:"scrape_interval"`
		} `yaml:"global"`
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(mustRead(t, "deploy/prometheus/prometheus.yml"), &prom); err != nil {
		t.Fatal(err)
	}
	n.add("scrape interval", "prometheus.yml scrape_interval", dur(t, prom.Global.ScrapeInterval))
	for _, sc := range prom.ScrapeConfigs {
		if sc.JobName == "movies" {
			for _, s := range sc.StaticConfigs {
				for _, target := range s.Targets {
					n.add("port", "prometheus.yml target "+target, portOf(t, target))
				}
			}
		}
	}

	// The Dockerfile: the port and the HEALTHCHECK the liveness probe
	// mirrors.
	df := string(mustRead(t, "Dockerfile"))
	if m := regexp.MustCompile(`(?m)^EXPOSE (\d+)$`).FindStringSubmatch(df); m != nil {
		n.add("port", "Dockerfile EXPOSE", m[1])
	} else {
		t.Error("Dockerfile: no EXPOSE")
	}
	hc := regexp.MustCompile(`(?m)^HEALTHCHECK --interval=(\S+) --timeout=(\S+) --start-period=(\S+) --retries=(\d+) `).FindStringSubmatch(df)
	if hc == nil {
		t.Fatal("Dockerfile: no HEALTHCHECK --interval --timeout --start-period --retries")
	}
	n.add("liveness interval", "Dockerfile HEALTHCHECK --interval", dur(t, hc[1]))
	n.add("liveness timeout", "Dockerfile HEALTHCHECK --timeout", dur(t, hc[2]))
	n.add("start period", "Dockerfile HEALTHCHECK --start-period", dur(t, hc[3]))
	n.add("liveness failures", "Dockerfile HEALTHCHECK --retries", hc[4])

	// The Kubernetes base, rendered.
	objs, err := Render(repoFile(t, "deploy/kubernetes/base"))
	if err != nil {
		t.Fatal(err)
	}
	d, _ := Find[*appsv1.Deployment](objs, "movies")
	c := d.Spec.Template.Spec.Containers[0]
	env := literalEnv(c)
	ports := map[string]string{}
	for _, p := range c.Ports {
		ports[p.Name] = strconv.Itoa(int(p.ContainerPort))
	}
	k := "deploy/kubernetes "
	n.add("port", k+"MOVIES_ADDR", portOf(t, env["MOVIES_ADDR"]))
	n.add("port", k+"containerPort http", ports["http"])
	n.add("metrics port", k+"MOVIES_METRICS_ADDR", portOf(t, env["MOVIES_METRICS_ADDR"]))
	n.add("metrics port", k+"containerPort metrics", ports["metrics"])
	n.add("drain delay", k+"MOVIES_DRAIN_DELAY", dur(t, env["MOVIES_DRAIN_DELAY"]))
	n.add("shutdown timeout", k+"MOVIES_SHUTDOWN_TIMEOUT", dur(t, env["MOVIES_SHUTDOWN_TIMEOUT"]))
	n.add("grace period", k+"terminationGracePeriodSeconds", seconds(*d.Spec.Template.Spec.TerminationGracePeriodSeconds))
	r, l, s := c.ReadinessProbe, c.LivenessProbe, c.StartupProbe
	n.add("readiness interval", k+"readinessProbe.periodSeconds", seconds(int64(r.PeriodSeconds)))
	n.add("readiness failures", k+"readinessProbe.failureThreshold", strconv.Itoa(int(r.FailureThreshold)))
	n.add("readiness successes", k+"readinessProbe.successThreshold", strconv.Itoa(int(r.SuccessThreshold)))
	n.add("readiness timeout", k+"readinessProbe.timeoutSeconds", seconds(int64(r.TimeoutSeconds)))
	n.add("readiness path", k+"readinessProbe.httpGet.path", r.HTTPGet.Path)
	n.add("liveness interval", k+"livenessProbe.periodSeconds", seconds(int64(l.PeriodSeconds)))
	n.add("liveness timeout", k+"livenessProbe.timeoutSeconds", seconds(int64(l.TimeoutSeconds)))
	n.add("liveness failures", k+"livenessProbe.failureThreshold", strconv.Itoa(int(l.FailureThreshold)))
	n.add("start period", k+"startupProbe.periodSeconds × failureThreshold", seconds(int64(s.PeriodSeconds*s.FailureThreshold)))
	pm, _ := Find[*monitoringv1.PodMonitor](objs, "movies")
	n.add("scrape interval", k+"PodMonitor interval", dur(t, string(pm.Spec.PodMetricsEndpoints[0].Interval)))
	return n
}

// TestNumbers_OneSourceOfTruth holds every number stated in more than one
// place equal everywhere, and the relations between them true: a drain
// longer than any balancer needs to notice it, and a grace period above
// drain + shutdown.
func TestNumbers_OneSourceOfTruth(t *testing.T) {
	n := readNumbers(t)
	for _, fact := range []string{"port", "metrics port", "drain delay", "shutdown timeout", "grace period",
		"readiness interval", "readiness failures", "readiness successes", "readiness timeout", "readiness path",
		"liveness interval", "liveness timeout", "liveness failures", "start period", "scrape interval"} {
		srcs := n[fact]
		if len(srcs) < 2 {
			t.Errorf("%s: stated in %d place(s); the test expects to compare at least two", fact, len(srcs))
			continue
		}
		for _, s := range srcs[1:] {
			if s.value != srcs[0].value {
				t.Errorf("%s disagrees: %s says %s, %s says %s", fact, srcs[0].where, srcs[0].value, s.where, s.value)
			}
		}
	}
	if t.Failed() {
		return
	}
	get := func(fact string) string { return n[fact][0].value }
	durOf := func(fact string) time.Duration { d, _ := time.ParseDuration(get(fact)); return d }
	count := func(fact string) time.Duration { c, _ := strconv.Atoi(get(fact)); return time.Duration(c) }

	drain, shutdown, grace := durOf("drain delay"), durOf("shutdown timeout"), durOf("grace period")
	if grace <= drain+shutdown {
		t.Errorf("grace period %s, want above drain %s + shutdown %s", grace, drain, shutdown)
	}
	// Kubernetes' readiness probe: the next probe after SIGTERM fails, and
	// failureThreshold failures in a row take the pod out.
	if notice := durOf("readiness interval")*count("readiness failures") + durOf("readiness timeout"); notice >= drain {
		t.Errorf("the readiness probe needs up to %s to notice a drain, not within the %s drain delay", notice, drain)
	}
	// HAProxy: inter until the first failure, then fastinter for the rest.
	cfg := string(mustRead(t, "deploy/haproxy/haproxy.cfg"))
	fast := dur(t, regexp.MustCompile(`(?m)^\s*default-server .*\bfastinter (\S+)`).FindStringSubmatch(cfg)[1])
	fastD, _ := time.ParseDuration(fast)
	if notice := durOf("readiness interval") + (count("readiness failures")-1)*fastD + durOf("readiness timeout"); notice >= drain {
		t.Errorf("HAProxy needs up to %s to notice a drain, not within the %s drain delay", notice, drain)
	}
	if get("port") == get("metrics port") {
		t.Errorf("metrics on the serving port %s: it must stay off the Service", get("port"))
	}
}

// TestNumbers_BinaryServesWhatTheManifestsSay runs the real binary with the
// Deployment's environment (addresses moved to loopback port 0, so the test
// can run anywhere, and Redis left out): every probe path answers 200 on
// the port the probe names, /metrics is on the metrics port and not on the
// serving one, and on SIGTERM /readyz turns 503 at once while the page is
// still served until the drain delay ends, and the process exits 0 within
// the grace period.
func TestNumbers_BinaryServesWhatTheManifestsSay(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the real binary")
	}
	objs, err := Render(repoFile(t, "deploy/kubernetes/base"))
	if err != nil {
		t.Fatal(err)
	}
	d, _ := Find[*appsv1.Deployment](objs, "movies")
	pm, _ := Find[*monitoringv1.PodMonitor](objs, "movies")
	c := d.Spec.Template.Spec.Containers[0]
	env := literalEnv(c)
	drain := mustParseDuration(t, env["MOVIES_DRAIN_DELAY"])
	grace := time.Duration(*d.Spec.Template.Spec.TerminationGracePeriodSeconds) * time.Second

	ready := filepath.Join(t.TempDir(), "ready")
	cmd := exec.Command(moviesBinary(t), "-addr", "127.0.0.1:0", "-metrics-addr", "127.0.0.1:0", "-upstream", "builtin", "-ready-file", ready)
	cmd.Env = environWithout("MOVIES_")
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		if t.Failed() {
			t.Logf("movies output:\n%s", out)
		}
	})
	var addrs []string
	for deadline := time.Now().Add(20 * time.Second); len(addrs) < 2; time.Sleep(20 * time.Millisecond) {
		b, _ := os.ReadFile(ready)
		addrs = strings.Fields(string(b))
		if time.Now().After(deadline) {
			t.Fatal("movies wrote no ready file with two addresses")
		}
	}
	// -ready-file lists -addr, then -metrics-addr: the http and metrics ports.
	base := map[string]string{"http": "http://" + addrs[0], "metrics": "http://" + addrs[1]}

	for what, p := range map[string]*corev1.Probe{"startupProbe": c.StartupProbe, "readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe} {
		if code := status(t, base[p.HTTPGet.Port.StrVal]+p.HTTPGet.Path); code != http.StatusOK {
			t.Errorf("%s: GET %s on port %s: %d, want 200", what, p.HTTPGet.Path, p.HTTPGet.Port.StrVal, code)
		}
	}
	ep := pm.Spec.PodMetricsEndpoints[0]
	if code := status(t, base[*ep.Port]+ep.Path); code != http.StatusOK {
		t.Errorf("PodMonitor: GET %s on port %s: %d, want 200", ep.Path, *ep.Port, code)
	}
	if code := status(t, base["http"]+ep.Path); code != http.StatusNotFound {
		t.Errorf("GET %s on the serving port: %d, want 404: metrics must stay off it", ep.Path, code)
	}

	readyz := base[c.ReadinessProbe.HTTPGet.Port.StrVal] + c.ReadinessProbe.HTTPGet.Path
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	signalled := time.Now()
	// The next probe must fail: /readyz turns 503 well within one period.
	period := time.Duration(c.ReadinessProbe.PeriodSeconds) * time.Second
	for status(t, readyz) != http.StatusServiceUnavailable {
		if time.Since(signalled) > period {
			t.Fatalf("/readyz not 503 %s after SIGTERM: the readiness probe would not see the drain in time", period)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Through the drain the replica keeps serving whoever still sends.
	time.Sleep(time.Until(signalled.Add(drain - 500*time.Millisecond)))
	if code := status(t, base["http"]+"/movies/"); code != http.StatusOK {
		t.Errorf("/movies/ %s into the %s drain: %d, want 200", time.Since(signalled).Round(time.Millisecond), drain, code)
	}
	select {
	case err := <-exited:
		took := time.Since(signalled)
		if err != nil {
			t.Errorf("movies exited with %v after SIGTERM, want 0", err)
		}
		if took < drain {
			t.Errorf("movies exited %s after SIGTERM, before its %s drain ended", took, drain)
		}
	case <-time.After(grace):
		t.Fatalf("movies still running %s after SIGTERM: the kubelet would kill it", grace)
	}
}

var client = &http.Client{Timeout: 5 * time.Second}

func status(t *testing.T, url string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// moviesBinary builds ./cmd/movies of this repository once per test binary.
var builtMovies string

func moviesBinary(t *testing.T) string {
	t.Helper()
	if builtMovies != "" {
		return builtMovies
	}
	dir, err := os.MkdirTemp("", "movies-check-")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "movies")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/movies")
	cmd.Dir = repoRoot(t)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/movies: %v\n%s", err, b)
	}
	builtMovies = bin
	return bin
}

// moviesUsage is what `movies -h` prints with no MOVIES_* variable set, so
// the defaults shown are the binary's own.
func moviesUsage(t *testing.T) string {
	t.Helper()
	cmd := exec.Command(moviesBinary(t), "-h")
	cmd.Env = environWithout("MOVIES_")
	b, _ := cmd.CombinedOutput() // -h exits 0; a failure shows as output without flags
	if !strings.Contains(string(b), "-shutdown-timeout") {
		t.Fatalf("movies -h printed no flags:\n%s", b)
	}
	return string(b)
}

func environWithout(prefix string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, prefix) {
			env = append(env, kv)
		}
	}
	return env
}

// literalEnv is the container's environment given as values (not from
// Secrets or fields).
func literalEnv(c corev1.Container) map[string]string {
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env[e.Name] = e.Value
		}
	}
	return env
}

// portOf is the port of a host:port or :port address.
func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Errorf("address %q: %v", addr, err)
	}
	return port
}

// dur normalizes a duration so 5s and 5000ms compare equal.
func dur(t *testing.T, s string) string {
	t.Helper()
	return mustParseDuration(t, s).String()
}

func mustParseDuration(t *testing.T, s string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Errorf("%q is not a duration", s)
	}
	return d
}

func seconds(s int64) string { return (time.Duration(s) * time.Second).String() }
