package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/movies-dev/movies/pkg/fleet/fleettest"
	"go.yaml.in/yaml/v3"
)

// TestPromtool_DeployFiles runs promtool's own checks on the shipped config,
// rules and rule unit tests.
func TestPromtool_DeployFiles(t *testing.T) {
	promtool := mustLookPath(t, "promtool")
	for _, args := range [][]string{
		{"check", "config", deployFile(t, "prometheus/prometheus.yml")},
		{"check", "rules", deployFile(t, "prometheus/rules.yml")},
		{"test", "rules", deployFile(t, "prometheus/rules_test.yml")},
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// The dashboard panels that must show data as soon as replicas serve traffic.
var corePanels = []string{"Requests per second", "Cache hit ratio", "Served data age vs TTL", "Requests served per snapshot", "Requests per upstream fetch"}

// grafanaVars are the values Grafana would put in for the variables the
// dashboard may use; anything else left with a $ fails the test.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "1m",
	"${__rate_interval}", "1m",
	"$__interval", "15s",
	"${__interval}", "15s",
	"$__range", "5m",
	"${instance}", ".*",
	"$instance", ".*",
)

// TestPrometheus_RunsEveryDashboardQueryAndAlert has a real Prometheus
// scrape two replicas under traffic with the shipped scrape config and
// rules, then runs every dashboard query and alert expression through its
// HTTP API.
func TestPrometheus_RunsEveryDashboardQueryAndAlert(t *testing.T) {
	promBin := mustLookPath(t, "prometheus")

	// As in the compose stack: two replicas sharing a Redis, so the
	// shared tier's panels have series too.
	redis := fleettest.Start(t)
	replicas := []string{freeAddr(t), freeAddr(t)}
	for i, addr := range replicas {
		// A short TTL, so snapshots roll over and the collapse panels
		// (requests per snapshot, per fetch) have data within seconds.
		startReplica(t, fmt.Sprintf("movies-%c", 'a'+i), addr, "-redis", redis.URL, "-ttl", "2s")
	}

	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, testPrometheusConfig(t, replicas), 0o644); err != nil {
		t.Fatal(err)
	}
	promAddr := freeAddr(t)
	startProcess(t, "prometheus", promBin,
		"--config.file="+cfgPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr,
		"--log.level=warn",
	)
	prom := &promAPI{base: "http://" + promAddr}

	// Traffic for the rates, the hit ratio and a snapshot to age.
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { stop(); wg.Wait() })
	for _, addr := range replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20000 && ctx.Err() == nil; i++ {
				for _, path := range []string{"/movies/", "/api/v1/movies"} {
					_ = wantStatus("http://"+addr+path, http.StatusOK)
				}
				select {
				case <-ctx.Done():
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
	}

	start := time.Now()
	waitFor(t, 30*time.Second, "both replicas up in Prometheus", func() error {
		res, err := prom.query(`count(up{job="movies"} == 1)`)
		if err != nil {
			return err
		}
		if len(res) != 1 || res[0].value() != 2 {
			return fmt.Errorf("count(up == 1) = %v, want 2", res)
		}
		return nil
	})

	panels := dashboardQueries(t)
	for _, title := range corePanels {
		if _, ok := panels[title]; !ok {
			t.Fatalf("dashboard has no panel %q", title)
		}
	}
	waitFor(t, 30*time.Second, "data in the core panels", func() error {
		for _, title := range corePanels {
			for _, q := range panels[title] {
				res, err := prom.query(q)
				if err != nil {
					return fmt.Errorf("%s: %w", title, err)
				}
				if !hasFiniteValue(res) {
					return fmt.Errorf("%s: %s returned %v", title, q, res)
				}
			}
		}
		return nil
	})
	t.Logf("core panels have data %s after start", time.Since(start).Round(time.Millisecond))

	n := 0
	for title, queries := range panels {
		for _, q := range queries {
			res, err := prom.query(q)
			if err != nil {
				t.Errorf("%s: %v", title, err)
				continue
			}
			n++
			t.Logf("%s: %d series: %s", title, len(res), q)
			checkSelectors(t, prom, title, q)
		}
	}

	rules := alertRules(t)
	for name, expr := range rules {
		if _, err := prom.query(expr); err != nil {
			t.Errorf("alert %s: %v", name, err)
		}
		n++
		checkSelectors(t, prom, "alert "+name, expr)
	}
	t.Logf("%d dashboard and alert queries ran", n)

	// Prometheus itself evaluates the rules it loaded from rules.yml.
	waitFor(t, 15*time.Second, "every rule evaluated without error", func() error {
		return prom.rulesHealthy(len(rules))
	})
}

// selectorRE finds the series selectors of the service's metrics in a query.
var selectorRE = regexp.MustCompile(`\b(?:movies_[a-z0-9_]+|up)(?:\{[^}]*\})?`)

// checkSelectors requires every series selector of a query to match series
// of the running replicas: a misspelt metric or label value parses fine and
// makes a panel stay empty or an alert never fire. Only failed upstream
// requests may be absent here, since the bundled upstream does not fail.
func checkSelectors(t *testing.T, prom *promAPI, what, query string) {
	t.Helper()
	for _, ix := range selectorRE.FindAllStringIndex(query, -1) {
		sel := query[ix[0]:ix[1]]
		if strings.Contains(sel, `outcome!="ok"`) {
			continue
		}
		if ix[0] > 0 && query[ix[0]-1] == ':' {
			continue // part of a recorded series' name (job:movies_…:ratio)
		}
		res, err := prom.query("count(" + sel + ")")
		if err != nil {
			t.Errorf("%s: %v", what, err)
		} else if len(res) == 0 {
			t.Errorf("%s: %s matches no series of the running replicas", what, sel)
		}
	}
}

// testPrometheusConfig is deploy/prometheus/prometheus.yml with the movies
// job's targets swapped for the test's replicas, the rules file by absolute
// path, other jobs dropped and a 1s scrape and evaluation interval.
func testPrometheusConfig(t *testing.T, targets []string) []byte {
	t.Helper()
	b, err := os.ReadFile(deployFile(t, "prometheus/prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatalf("deploy/prometheus/prometheus.yml: %v", err)
	}
	global, _ := cfg["global"].(map[string]any)
	if global == nil {
		global = map[string]any{}
	}
	global["scrape_interval"], global["evaluation_interval"] = "1s", "1s"
	cfg["global"] = global

	files, _ := cfg["rule_files"].([]any)
	if len(files) != 1 || files[0] != "rules.yml" {
		t.Fatalf("deploy/prometheus/prometheus.yml rule_files = %v, want [rules.yml]", files)
	}
	cfg["rule_files"] = []any{deployFile(t, "prometheus/rules.yml")}

	var movies map[string]any
	jobs, _ := cfg["scrape_configs"].([]any)
	for _, j := range jobs {
		if job, _ := j.(map[string]any); job != nil && job["job_name"] == "movies" {
			movies = job
		}
	}
	if movies == nil {
		t.Fatal(`deploy/prometheus/prometheus.yml has no job_name "movies", which the rules and dashboard select`)
	}
	movies["static_configs"] = []any{map[string]any{"targets": targets}}
	cfg["scrape_configs"] = []any{movies}

	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// dashboardQueries returns every PromQL query of the dashboard by panel
// title, Grafana's variables filled in. The query of a label_values()
// variable counts too: its series selector is PromQL.
func dashboardQueries(t *testing.T) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(deployFile(t, "grafana/dashboards/movies.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels     []dashPanel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	out := map[string][]string{}
	add := func(title, expr string) {
		q := grafanaVars.Replace(expr)
		if strings.Contains(q, "$") {
			t.Errorf("%s: unknown Grafana variable in %q", title, expr)
			return
		}
		out[title] = append(out[title], q)
	}
	var walk func([]dashPanel)
	walk = func(ps []dashPanel) {
		for _, p := range ps {
			walk(p.Panels) // a row's collapsed panels
			if p.Type == "row" {
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no queries", p.Title)
			}
			for _, tg := range p.Targets {
				add(p.Title, tg.Expr)
			}
		}
	}
	walk(dash.Panels)

	labelValues := regexp.MustCompile(`^label_values\((.+),\s*\w+\)$`)
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(string)
		if m, ok := v.Query.(map[string]any); ok {
			q, _ = m["query"].(string)
		}
		sel := labelValues.FindStringSubmatch(q)
		if sel == nil {
			t.Errorf("variable %s: query %q is not label_values(selector, label)", v.Name, q)
			continue
		}
		add("variable "+v.Name, sel[1])
	}
	if len(out) == 0 {
		t.Fatal("dashboard has no queries")
	}
	return out
}

type dashPanel struct {
	Title   string `json:"title"`
	Type    string `json:"type"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []dashPanel `json:"panels"`
}

// alertRules returns the expression of every alert in rules.yml by name.
func alertRules(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile(deployFile(t, "prometheus/rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("rules.yml: %v", err)
	}
	out := map[string]string{}
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				out[r.Alert] = r.Expr
			}
		}
	}
	for _, name := range []string{"MoviesUpstreamFailing", "MoviesHitRatioLow", "MoviesDataAgeNearTTL", "MoviesReplicaDown"} {
		if _, ok := out[name]; !ok {
			t.Errorf("rules.yml has no alert %s", name)
		}
	}
	return out
}

// promAPI is a client of the Prometheus HTTP API.
type promAPI struct{ base string }

type sample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

func (s sample) value() float64 {
	str, _ := s.Value[1].(string)
	v, err := strconv.ParseFloat(str, 64)
	if err != nil {
		return math.NaN()
	}
	return v
}

func (s sample) String() string { return fmt.Sprintf("%v=%v", s.Metric, s.Value[1]) }

func hasFiniteValue(res []sample) bool {
	for _, s := range res {
		if v := s.value(); !math.IsNaN(v) && !math.IsInf(v, 0) {
			return true
		}
	}
	return false
}

// get calls an API path and decodes its data, failing on any status but
// success (a query that does not parse answers 400 with status "error").
func (p *promAPI) get(path string, data any) error {
	resp, err := http.Get(p.base + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Status    string          `json:"status"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
		Data      json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return fmt.Errorf("GET %s: %s: %v", path, resp.Status, err)
	}
	if body.Status != "success" {
		return fmt.Errorf("GET %s: status %q: %s: %s", path, body.Status, body.ErrorType, body.Error)
	}
	return json.Unmarshal(body.Data, data)
}

// query runs an instant query and returns its vector.
func (p *promAPI) query(q string) ([]sample, error) {
	var data struct {
		ResultType string   `json:"resultType"`
		Result     []sample `json:"result"`
	}
	if err := p.get("/api/v1/query?query="+url.QueryEscape(q), &data); err != nil {
		return nil, fmt.Errorf("query %s: %w", q, err)
	}
	if data.ResultType != "vector" {
		return nil, fmt.Errorf("query %s: result type %q, want vector", q, data.ResultType)
	}
	return data.Result, nil
}

// rulesHealthy checks that Prometheus loaded want alerting rules and has
// evaluated each without error.
func (p *promAPI) rulesHealthy(want int) error {
	var data struct {
		Groups []struct {
			Rules []struct {
				Name           string `json:"name"`
				Type           string `json:"type"`
				Health         string `json:"health"`
				LastError      string `json:"lastError"`
				LastEvaluation string `json:"lastEvaluation"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := p.get("/api/v1/rules", &data); err != nil {
		return err
	}
	n := 0
	for _, g := range data.Groups {
		for _, r := range g.Rules {
			if r.Type != "alerting" {
				continue
			}
			n++
			if r.Health != "ok" {
				return fmt.Errorf("rule %s: health %q %s", r.Name, r.Health, r.LastError)
			}
		}
	}
	if n != want {
		return fmt.Errorf("Prometheus has %d alerting rules, want %d", n, want)
	}
	return nil
}
