package e2e

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// No Docker engine runs where these tests do, so the compose file and the
// Dockerfile are checked for what can be checked without one: that they
// parse, agree with each other and with the files they mount, and that the
// image's HEALTHCHECK command works against the real binary.

type composeFile struct {
	Services map[string]struct {
		Image           string            `yaml:"image"`
		Build           any               `yaml:"build"`
		Ports           []string          `yaml:"ports"`
		Volumes         []string          `yaml:"volumes"`
		Environment     map[string]string `yaml:"environment"`
		StopGracePeriod string            `yaml:"stop_grace_period"`
	} `yaml:"services"`
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func TestCompose_ServicesAndMounts(t *testing.T) {
	root := repoRoot(t)
	var c composeFile
	readYAML(t, filepath.Join(root, "docker-compose.yml"), &c)

	for _, name := range []string{"movies-a", "movies-b", "redis", "lb", "prometheus", "grafana"} {
		if _, ok := c.Services[name]; !ok {
			t.Errorf("docker-compose.yml has no service %s", name)
		}
	}
	if lb := c.Services["lb"]; !slices.Contains(lb.Ports, "8000:8000") {
		t.Errorf("lb ports = %v, want 8000:8000 published", lb.Ports)
	}

	// The replicas' drain and shutdown must fit in Docker's stop grace
	// period, or a stop kills requests in flight.
	for _, name := range []string{"movies-a", "movies-b"} {
		s := c.Services[name]
		if s.Build == nil {
			t.Errorf("%s: no build: it must run this repository's Dockerfile", name)
		}
		drain := mustDuration(t, name+" MOVIES_DRAIN_DELAY", s.Environment["MOVIES_DRAIN_DELAY"])
		shutdown := mustDuration(t, name+" MOVIES_SHUTDOWN_TIMEOUT", s.Environment["MOVIES_SHUTDOWN_TIMEOUT"])
		grace := mustDuration(t, name+" stop_grace_period", s.StopGracePeriod)
		if grace <= drain+shutdown {
			t.Errorf("%s: stop_grace_period %s, want above drain %s + shutdown %s", name, grace, drain, shutdown)
		}
		if drain < 3*time.Second {
			t.Errorf("%s: MOVIES_DRAIN_DELAY %s is shorter than HAProxy's checks need (see e2e/haproxy_test.go)", name, drain)
		}
		// Both replicas share one fetch through the stack's Redis.
		if got := s.Environment["MOVIES_REDIS_URL"]; got != "redis://redis:6379/0" {
			t.Errorf("%s: MOVIES_REDIS_URL = %q, want the stack's redis service", name, got)
		}
		if up := s.Environment["MOVIES_UPSTREAM"]; up != "" {
			t.Errorf("%s: MOVIES_UPSTREAM = %q; the default stack uses the live API", name, up)
		}
	}

	// Every file mounted from the repository exists.
	for name, s := range c.Services {
		for _, v := range s.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if !strings.HasPrefix(src, "./") {
				continue // a named volume
			}
			if _, err := os.Stat(filepath.Join(root, src)); err != nil {
				t.Errorf("%s mounts %s: %v", name, src, err)
			}
		}
	}

	// The offline override switches both replicas to the bundled data.
	var off composeFile
	readYAML(t, filepath.Join(root, "deploy", "compose.offline.yml"), &off)
	for _, name := range []string{"movies-a", "movies-b"} {
		if got := off.Services[name].Environment["MOVIES_UPSTREAM"]; got != "builtin" {
			t.Errorf("compose.offline.yml: %s MOVIES_UPSTREAM = %q, want builtin", name, got)
		}
	}
}

func TestGrafana_ProvisioningMatchesDashboard(t *testing.T) {
	var ds struct {
		Datasources []struct {
			UID  string `yaml:"uid"`
			Type string `yaml:"type"`
			URL  string `yaml:"url"`
		} `yaml:"datasources"`
	}
	readYAML(t, deployFile(t, "grafana/provisioning/datasources/prometheus.yml"), &ds)
	if len(ds.Datasources) != 1 || ds.Datasources[0].Type != "prometheus" {
		t.Fatalf("datasources = %+v, want one prometheus", ds.Datasources)
	}
	uid := ds.Datasources[0].UID

	var prov struct {
		Providers []struct {
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	readYAML(t, deployFile(t, "grafana/provisioning/dashboards/movies.yml"), &prov)
	var c composeFile
	readYAML(t, filepath.Join(repoRoot(t), "docker-compose.yml"), &c)
	if len(prov.Providers) != 1 || !slices.Contains(c.Services["grafana"].Volumes, "./deploy/grafana/dashboards:"+prov.Providers[0].Options.Path+":ro") {
		t.Errorf("dashboard provider path %+v is not where compose mounts deploy/grafana/dashboards", prov.Providers)
	}

	// Every panel and query uses the provisioned datasource.
	b, err := os.ReadFile(deployFile(t, "grafana/dashboards/movies.json"))
	if err != nil {
		t.Fatal(err)
	}
	uids := regexp.MustCompile(`"uid":\s*"([^"]*)"`).FindAllStringSubmatch(string(b), -1)
	var dash struct{ UID string }
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	for _, m := range uids {
		if m[1] != uid && m[1] != dash.UID {
			t.Errorf("dashboard refers to datasource uid %q, want the provisioned %q", m[1], uid)
		}
	}
}

// TestDockerfile_HealthcheckProbesTheServer runs the image's HEALTHCHECK
// command, as the Dockerfile spells it, with the binary the image holds:
// 0 against a serving replica, 1 against nothing.
func TestDockerfile_HealthcheckProbesTheServer(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", `-ldflags "-s -w"`, "EXPOSE 8000", "USER nonroot", `ENTRYPOINT ["/movies"]`} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %s", want)
		}
	}
	m := regexp.MustCompile(`(?m)^HEALTHCHECK .*CMD (\[.*\])$`).FindStringSubmatch(df)
	if m == nil {
		t.Fatal("Dockerfile has no exec-form HEALTHCHECK CMD")
	}
	var argv []string
	if err := json.Unmarshal([]byte(m[1]), &argv); err != nil || len(argv) == 0 || argv[0] != "/movies" {
		t.Fatalf("HEALTHCHECK CMD %s: want [\"/movies\", ...] (%v)", m[1], err)
	}

	healthcheck := func(addr string) error {
		cmd := exec.Command(moviesBinary(t), argv[1:]...)
		// As in compose: the probe reads the address the server was given.
		cmd.Env = append(os.Environ(), "MOVIES_ADDR="+addr)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Logf("healthcheck against %s: %s", addr, out)
		}
		return err
	}
	addr := freeAddr(t)
	startReplica(t, "movies", addr)
	if err := healthcheck(addr); err != nil {
		t.Errorf("healthcheck of a serving replica: %v, want exit 0", err)
	}
	var exit *exec.ExitError
	if err := healthcheck(freeAddr(t)); !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Errorf("healthcheck of nothing: %v, want exit status 1", err)
	}
}

func mustDuration(t *testing.T, what, s string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Errorf("%s: %q is not a duration", what, s)
	}
	return d
}
