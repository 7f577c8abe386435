package e2e

import (
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// drainDelay is the replicas' -drain-delay here: more than the
// inter + fall*fastinter + timeout check (1s + 0.25s + 1s at worst) the
// shipped HAProxy config needs to take a draining replica out, but shorter
// than compose's 5s to keep the test quick.
const drainDelay = 3 * time.Second

// TestHAProxy_RollingRestartLosesNoRequest puts the shipped HAProxy config in
// front of two replicas and restarts them one after the other under constant
// load: every request must be answered 200.
func TestHAProxy_RollingRestartLosesNoRequest(t *testing.T) {
	haproxy := mustLookPath(t, "haproxy")

	if out, err := exec.Command(haproxy, "-c", "-f", deployFile(t, "haproxy/haproxy.cfg")).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c deploy/haproxy/haproxy.cfg: %v\n%s", err, out)
	}

	lbAddr, statsAddr := freeAddr(t), freeAddr(t)
	servers := []struct{ name, addr string }{{"movies-a", freeAddr(t)}, {"movies-b", freeAddr(t)}}
	replicaArgs := []string{"-drain-delay", drainDelay.String(), "-shutdown-timeout", "5s"}
	replicas := map[string]*process{}
	for _, s := range servers {
		replicas[s.name] = startReplica(t, s.name, s.addr, replicaArgs...)
	}

	cfgPath := filepath.Join(t.TempDir(), "haproxy.cfg")
	cfg := testHAProxyConfig(t, lbAddr, statsAddr, servers[0].addr, servers[1].addr)
	if err := os.WriteFile(cfgPath, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(haproxy, "-c", "-f", cfgPath).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c (test config): %v\n%s", err, out)
	}
	startProcess(t, "haproxy", haproxy, "-db", "-f", cfgPath)
	stats := &haproxyStats{url: "http://" + statsAddr + "/stats;csv"}
	for _, s := range servers {
		stats.waitStatus(t, s.name, "UP")
	}
	if err := wantStatus("http://"+statsAddr+"/metrics", http.StatusOK); err != nil {
		t.Errorf("HAProxy's Prometheus exporter, scraped by compose: %v", err)
	}

	load := startLoad(t, "http://"+lbAddr+"/movies/", 16)
	waitFor(t, 10*time.Second, "load flowing", func() error {
		if n := load.total.Load(); n < 100 {
			return fmt.Errorf("%d requests so far", n)
		}
		return nil
	})

	start := time.Now()
	for _, s := range servers {
		before, phase := load.total.Load(), time.Now()

		p := replicas[s.name]
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := p.wait(t, drainDelay+10*time.Second); err != nil {
			t.Fatalf("%s after SIGTERM: %v, want exit status 0", s.name, err)
		}
		// The drain must outlast HAProxy's checks: by the time the listener
		// closed, HAProxy had stopped sending it requests.
		if st := stats.mustRow(t, s.name)["status"]; !strings.HasPrefix(st, "DOWN") {
			t.Errorf("%s exited while HAProxy still had it %q: -drain-delay %s is too short for the checks", s.name, st, drainDelay)
		}

		replicas[s.name] = startReplica(t, s.name, s.addr, replicaArgs...)
		stats.waitStatus(t, s.name, "UP")
		t.Logf("restarted %s in %s, %d requests meanwhile", s.name, time.Since(phase).Round(time.Millisecond), load.total.Load()-before)
	}
	// Both take traffic again.
	before := map[string]int{}
	for _, s := range servers {
		before[s.name] = stats.sessions(t, s.name)
	}
	waitFor(t, 5*time.Second, "both replicas serving after the restart", func() error {
		for _, s := range servers {
			if n := stats.sessions(t, s.name); n <= before[s.name] {
				return fmt.Errorf("%s served no request since it came back", s.name)
			}
		}
		return nil
	})
	elapsed := time.Since(start)
	total, failed := load.stop()

	retries, redispatches := stats.counters(t)
	t.Logf("rolling restart took %s: %d requests, %d failed; HAProxy retried %d and redispatched %d",
		elapsed.Round(time.Millisecond), total, failed, retries, redispatches)
	if failed != 0 {
		t.Errorf("%d of %d requests failed during the rolling restart, first ones:\n%s", failed, total, strings.Join(load.firstFailures(), "\n"))
	}
}

// testHAProxyConfig is deploy/haproxy/haproxy.cfg with loopback addresses
// and without Docker's DNS. Each replacement must match exactly once, so a
// change of the shipped file's shape fails here rather than testing
// something else.
func testHAProxyConfig(t *testing.T, lb, stats, a, b string) []byte {
	t.Helper()
	raw, err := os.ReadFile(deployFile(t, "haproxy/haproxy.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(raw)
	for _, r := range [][2]string{
		{"bind :8000\n", "bind " + lb + "\n"},
		{"bind :8404\n", "bind " + stats + "\n"},
		{"server movies-a movies-a:8000 ", "server movies-a " + a + " "},
		{"server movies-b movies-b:8000 ", "server movies-b " + b + " "},
		{" resolvers docker init-addr last,libc,none\n", "\n"},
	} {
		if n := strings.Count(cfg, r[0]); n != 1 {
			t.Fatalf("deploy/haproxy/haproxy.cfg has %q %d times, want once", r[0], n)
		}
		cfg = strings.Replace(cfg, r[0], r[1], 1)
	}
	return []byte(cfg)
}

// load is a fixed number of clients looping GET on one URL.
type load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	total  atomic.Int64
	failed atomic.Int64

	mu       sync.Mutex
	failures []string
}

// maxLoadRequests bounds the load whatever happens.
const maxLoadRequests = 2_000_000

func startLoad(t *testing.T, url string, clients int) *load {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	l := &load{cancel: cancel}
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: clients, DisableCompression: true},
	}
	for range clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for ctx.Err() == nil && l.total.Add(1) <= maxLoadRequests {
				if err := getPage(ctx, client, url); err != nil {
					if ctx.Err() != nil {
						l.total.Add(-1) // cut short by the end of the test
						return
					}
					l.failed.Add(1)
					l.mu.Lock()
					if len(l.failures) < 10 {
						l.failures = append(l.failures, err.Error())
					}
					l.mu.Unlock()
				}
			}
		}()
	}
	t.Cleanup(func() {
		cancel()
		l.wg.Wait()
		client.CloseIdleConnections()
	})
	return l
}

// stop ends the load and returns how many requests were made and failed.
func (l *load) stop() (total, failed int64) {
	l.cancel()
	l.wg.Wait()
	return min(l.total.Load(), maxLoadRequests), l.failed.Load()
}

func (l *load) firstFailures() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.failures...)
}

// getPage GETs the page and checks that all of it arrived.
func getPage(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	switch {
	case err != nil:
		return fmt.Errorf("%s: reading body: %v", resp.Status, err)
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("%s: %.200s", resp.Status, body)
	case !strings.Contains(string(body), "</html>"):
		return fmt.Errorf("%s: truncated page of %d bytes", resp.Status, len(body))
	}
	return nil
}

// haproxyStats reads HAProxy's stats page as CSV.
type haproxyStats struct{ url string }

// rows returns the stats rows of the movies backend by server name
// ("BACKEND" for the backend's own), each by column name.
func (h *haproxyStats) rows() (map[string]map[string]string, error) {
	resp, err := http.Get(h.url)
	if err != nil {
		return nil, fmt.Errorf("HAProxy stats: %w", err)
	}
	defer resp.Body.Close()
	recs, err := csv.NewReader(resp.Body).ReadAll()
	if err != nil || len(recs) < 2 {
		return nil, fmt.Errorf("HAProxy stats CSV: %v (%d lines)", err, len(recs))
	}
	header := recs[0]
	header[0] = strings.TrimPrefix(header[0], "# ")
	out := map[string]map[string]string{}
	for _, rec := range recs[1:] {
		row := map[string]string{}
		for i, col := range header {
			if i < len(rec) {
				row[col] = rec[i]
			}
		}
		if row["pxname"] == "movies" {
			out[row["svname"]] = row
		}
	}
	return out, nil
}

// row returns one server's stats row.
func (h *haproxyStats) row(server string) (map[string]string, error) {
	rows, err := h.rows()
	if err != nil {
		return nil, err
	}
	row, ok := rows[server]
	if !ok {
		return nil, fmt.Errorf("HAProxy stats have no row %s", server)
	}
	return row, nil
}

func (h *haproxyStats) mustRow(t *testing.T, server string) map[string]string {
	t.Helper()
	row, err := h.row(server)
	if err != nil {
		t.Fatal(err)
	}
	return row
}

func (h *haproxyStats) waitStatus(t *testing.T, server, want string) {
	t.Helper()
	waitFor(t, 15*time.Second, "HAProxy to see "+server+" "+want, func() error {
		row, err := h.row(server)
		if err != nil {
			return err
		}
		if st := row["status"]; st != want {
			return fmt.Errorf("status %q", st)
		}
		return nil
	})
}

// sessions is how many requests HAProxy has sent the server in all.
func (h *haproxyStats) sessions(t *testing.T, server string) int {
	t.Helper()
	n, _ := strconv.Atoi(h.mustRow(t, server)["stot"])
	return n
}

// counters returns the backend's retries and redispatches.
func (h *haproxyStats) counters(t *testing.T) (retries, redispatches int) {
	t.Helper()
	row := h.mustRow(t, "BACKEND")
	retries, _ = strconv.Atoi(row["wretr"])
	redispatches, _ = strconv.Atoi(row["wredis"])
	return retries, redispatches
}
