package check

import (
	"io"
	"io/fs"
	"maps"
	"net"
	"net/http"
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

// goFlags are the go command's flags the docs show (go test -race, go
// build -trimpath): no claim about movies.
var goFlags = []string{"race", "short", "run", "skip", "v", "count", "bench", "benchmem", "fuzz", "fuzztime",
	"timeout", "trimpath", "ldflags", "buildvcs", "tags", "cover", "cpuprofile", "memprofile"}

// docsCorpus is what a reader reads: the README and every page of docs/,
// docs/fleet.md included, so a metric documented only there counts.
func docsCorpus(t *testing.T) map[string]string {
	t.Helper()
	files, err := filepath.Glob(repoFile(t, "docs/*.md"))
	if err != nil {
		t.Fatal(err)
	}
	docs := map[string]string{"README.md": string(mustRead(t, "README.md"))}
	for _, f := range files {
		docs["docs/"+filepath.Base(f)] = string(mustRead(t, "docs/"+filepath.Base(f)))
	}
	if len(docs) < 5 || docs["docs/fleet.md"] == "" {
		t.Fatalf("read %d pages: want the README and docs/, fleet.md included", len(docs))
	}
	return docs
}

// goSources reads the product module's Go files under dir (a slash path
// from the repository's root), tests included if tests is true.
func goSources(t *testing.T, dir string, tests bool) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	root := repoFile(t, dir)
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case ".git", "node_modules", "deploy", "testdata":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || !tests && strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		files[path] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// readProgram gathers the names movies has. The metrics come from a scrape
// of the real binary, run with -redis (at a port nobody listens on, so the
// shared tier's metrics are there and it fetches alone) after one request
// to each catalogue route; under -short, which starts no server, Metrics
// is nil and the metrics go unchecked.
func readProgram(t *testing.T) Program {
	t.Helper()
	usage := moviesUsage(t)
	var p Program
	p.Flags, p.Env = UsageNames(usage)
	m := regexp.MustCompile(`(?m)^  -addr \S+\n[ \t]+.*\(default ":([0-9]+)"\)$`).FindStringSubmatch(usage)
	if m == nil {
		t.Fatalf("movies -h shows no -addr default:\n%s", usage)
	}
	p.Port = m[1]

	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(mustRead(t, "deploy/prometheus/rules.yml"), &rules); err != nil {
		t.Fatal(err)
	}
	p.Alerts = map[string]bool{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				p.Alerts[r.Alert] = true
			}
		}
	}

	var err error
	if p.Routes, err = Routes(goSources(t, "pkg/web", false)); err != nil {
		t.Fatal(err)
	}
	if p.Other, err = DefinedFlags(goSources(t, ".", true)); err != nil {
		t.Fatal(err)
	}
	for _, f := range goFlags {
		p.Other[f] = true
	}
	if !testing.Short() {
		p.Metrics = MetricFamilies(scrape(t))
	}

	// The readers must have found something, or the check proves nothing.
	if len(p.Flags) < 15 || len(p.Env) < 15 || len(p.Alerts) < 5 || len(p.Routes) < 7 || !p.Other["rounds"] || p.Metrics != nil && len(p.Metrics) < 25 {
		t.Fatalf("read too few names: %d flags, %d variables, %d alerts, %d routes, %d metrics, other flags %v",
			len(p.Flags), len(p.Env), len(p.Alerts), len(p.Routes), len(p.Metrics), slices.Sorted(maps.Keys(p.Other)))
	}
	return p
}

// scrape runs the binary with the shared tier on and returns its /metrics
// after one request to each catalogue route.
func scrape(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nobody := ln.Addr().String()
	ln.Close()
	ready := filepath.Join(t.TempDir(), "ready")
	cmd := exec.Command(moviesBinary(t), "-addr", "127.0.0.1:0", "-upstream", "builtin", "-ready-file", ready,
		"-redis", "redis://"+nobody, "-log-level", "error")
	cmd.Env = environWithout("MOVIES_")
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("movies output:\n%s", out)
		}
	}()
	var base string
	for deadline := time.Now().Add(20 * time.Second); base == ""; time.Sleep(20 * time.Millisecond) {
		if b, _ := os.ReadFile(ready); len(b) > 0 {
			base = "http://" + strings.Fields(string(b))[0]
		}
		if time.Now().After(deadline) {
			t.Fatal("movies wrote no ready file")
		}
	}
	for _, path := range []string{"/movies/", "/api/v1/movies"} {
		if code := status(t, base+path); code != http.StatusOK {
			t.Fatalf("GET %s: %d, want 200", path, code)
		}
	}
	resp, err := client.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestDocs_NameWhatExistsAndDocumentEverything keeps the README and docs/
// honest where a machine can: every flag, environment variable, metric,
// alert and endpoint they name exists (in movies -h, a scrape, the rules
// file, the router), and every one that exists is named somewhere in them.
func TestDocs_NameWhatExistsAndDocumentEverything(t *testing.T) {
	for _, problem := range Misnamed(docsCorpus(t), readProgram(t)) {
		t.Error(problem)
	}
}

// TestMisnamed_FindsEachKind feeds the check docs wrong each way, against
// a program that has one name of each kind the docs leave out.
func TestMisnamed_FindsEachKind(t *testing.T) {
	p := Program{
		Flags:   map[string]bool{"h": true, "ttl": true, "redis": true, "redis-mode": true, "quiet": true},
		Env:     map[string]bool{"MOVIES_TTL": true, "MOVIES_QUIET": true},
		Metrics: map[string]bool{"movies_cache_hits_total": true, "movies_http_request_duration_seconds": true, "movies_renders_total": true},
		Alerts:  map[string]bool{"MoviesReplicaDown": true, "MoviesQuiet": true},
		Routes:  map[string]bool{"/movies/": true, "/movies": true, "/healthz": true},
		Other:   map[string]bool{"rounds": true, "race": true},
		Port:    "8000",
	}
	docs := map[string]string{
		"README.md": strings.Join([]string{
			"# movies",
			"`-ttl` (`MOVIES_TTL`), `-redis-mode sentinel -redis 'redis://s1:26379'`; `movies -h`.",
			"`movies_cache_hits_total`, `movies_http_request_duration_seconds_bucket`, all of `movies_fleet_*`; alert `MoviesReplicaDown`.",
			"| `GET /movies/` | the page; `/movies` redirects |",
			"`go test -race ./...`, `-rounds 3`, `kubectl -n movies get pods`",
			"```sh",
			"curl -s localhost:8000/healthz; curl localhost:9090/graph   # Prometheus",
			"go run ./cmd/movies -ttl 2s -tll 2s   # -typo in a comment is no flag",
			"```",
		}, "\n"),
		"docs/x.md": strings.Join([]string{
			"Set `MOVIES_TLL` or `-stale`; watch `movies_cache_hit_total` and `MoviesDown`.",
			"`GET /api/v2/movies` and http://localhost:8000/readyz.",
		}, "\n"),
	}
	want := []string{
		"README.md:8: -tll is no flag of movies (movies -h), nor of the benchmarks, tests or go command",
		"alert MoviesQuiet is documented nowhere in the README or docs/",
		"docs/x.md:1: -stale is no flag of movies (movies -h), nor of the benchmarks, tests or go command",
		"docs/x.md:1: MOVIES_TLL is no environment variable of movies (movies -h)",
		"docs/x.md:1: MoviesDown is no alert of deploy/prometheus/rules.yml",
		"docs/x.md:1: movies_cache_hit_total is no metric movies exports",
		"docs/x.md:2: /api/v2/movies is no route of the server (pkg/web)",
		"docs/x.md:2: /readyz is no route of the server (pkg/web)",
		"environment variable MOVIES_QUIET is documented nowhere in the README or docs/",
		"flag -quiet is documented nowhere in the README or docs/",
		"metric movies_renders_total is documented nowhere in the README or docs/",
	}
	if got := Misnamed(docs, p); !slices.Equal(got, want) {
		t.Errorf("Misnamed() =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// Without a scrape (-short), metrics go unchecked either way.
	p.Metrics = nil
	for _, problem := range Misnamed(docs, p) {
		if strings.Contains(problem, "metric") {
			t.Errorf("Misnamed() without metrics: %s", problem)
		}
	}
}

func TestDefinedFlagsAndRoutes(t *testing.T) {
	src := map[string][]byte{"x.go": []byte(`package x

import ("flag"; "time")

var soak = flag.Duration("soak", time.Minute, "")

func setup(fs *flag.FlagSet, e *echo) {
	var n int
	fs.IntVar(&n, "rounds", 3, "")
	fs.Bool("keep", false, "")
	e.Match(getHead, "/movies/", h)
	e.GET("/healthz", h)
	e.String(200, "not a flag")
}
`)}
	flags, err := DefinedFlags(src)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]bool{"soak": true, "rounds": true, "keep": true}; !maps.Equal(flags, want) {
		t.Errorf("DefinedFlags() = %v, want %v", flags, want)
	}
	routes, err := Routes(src)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]bool{"/movies/": true, "/healthz": true}; !maps.Equal(routes, want) {
		t.Errorf("Routes() = %v, want %v", routes, want)
	}
}
