package main

import (
	"bytes"
	"compress/gzip"
	"context"
	_ "embed"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

//go:embed nginx.conf.tmpl
var nginxTemplate string

// Targets of the hit path, from issues 4 and 8.
const (
	minFloorRatio = 0.9 // movies req/s over the floor's (issue 8)
	minNginxRatio = 0.8 // movies req/s over nginx's (issue 4)
	maxRSSMiB     = 40
)

// offeredCodings are the codings movies may answer in, identity first.
var offeredCodings = []string{"identity", "gzip", "br", "zstd"}

// nginxSuffix is the file nginx serves for a coding (gzip through
// gzip_static, br and zstd through the config's map).
var nginxSuffix = map[string]string{"gzip": ".gz", "br": ".br", "zstd": ".zst"}

type hitFlags struct {
	duration, warmup   time.Duration
	encodings          string
	conns, rounds      int
	threads            int
	rss                bool
	rssDuration        time.Duration
	rssConns           int
	rssUpstreamLatency time.Duration
}

func setupHit(fs *flag.FlagSet) func(context.Context, *env) error {
	f := &hitFlags{}
	fs.DurationVar(&f.duration, "duration", 10*time.Second, "each wrk run (keep it well under the 1m TTL)")
	fs.StringVar(&f.encodings, "encodings", "identity gzip br", "the codings to load-test, among those movies offers (space or comma separated; add zstd for the fourth)")
	fs.IntVar(&f.conns, "connections", 64, "wrk connections")
	fs.IntVar(&f.rounds, "rounds", 3, "interleaved rounds; medians are reported")
	fs.IntVar(&f.threads, "threads", 2, "wrk threads")
	fs.DurationVar(&f.warmup, "warmup", 2*time.Second, "a wrk run of each target and coding before the rounds")
	fs.BoolVar(&f.rss, "rss", true, "measure peak RSS under -rss-connections after the rounds")
	fs.DurationVar(&f.rssDuration, "rss-duration", 10*time.Second, "the peak-RSS wrk run")
	fs.IntVar(&f.rssConns, "rss-connections", 256, "wrk connections of the peak-RSS run")
	fs.DurationVar(&f.rssUpstreamLatency, "rss-upstream-latency", 200*time.Millisecond, "latency of the fake upstream (in another process) behind the peak-RSS run")
	return func(ctx context.Context, e *env) error { return runHit(ctx, e, f) }
}

// capture is one response of movies, as the floor and nginx will serve it.
type capture struct {
	coding string
	status string
	header http.Header
	body   []byte
}

// head is the response head as the floor reads it (curl -D's format).
func (c capture) head() []byte {
	var b bytes.Buffer
	b.WriteString(c.status + "\r\n")
	keys := make([]string, 0, len(c.header))
	for k := range c.header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range c.header[k] {
			fmt.Fprintf(&b, "%s: %s\r\n", k, v)
		}
	}
	b.WriteString("\r\n")
	return b.Bytes()
}

// rawClient neither asks for nor undoes compression: the bytes are the
// ones on the wire.
var rawClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableCompression: true}}

func get(url, coding string) (capture, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return capture{}, err
	}
	if coding != "identity" {
		req.Header.Set("Accept-Encoding", coding)
	}
	resp, err := rawClient.Do(req)
	if err != nil {
		return capture{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return capture{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return capture{}, fmt.Errorf("GET %s (%s): status %d", url, coding, resp.StatusCode)
	}
	// Content-Length is the body's; net/http moves it out of the map.
	resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
	return capture{coding: coding, status: resp.Proto + " " + resp.Status, header: resp.Header, body: body}, nil
}

// etagHash is the snapshot hash an ETag carries, without its coding
// suffix: every coding of one snapshot shares it.
func etagHash(etag string) string {
	etag = strings.Trim(strings.TrimPrefix(etag, "W/"), `"`)
	if i := strings.LastIndexByte(etag, '-'); i >= 0 && strings.IndexFunc(etag[i+1:], func(r rune) bool { return r < 'a' || r > 'z' }) < 0 {
		etag = etag[:i]
	}
	return etag
}

// splitList reads a list flag: "a b", "a,b" or "a, b".
func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' })
}

// nginxHeaders are the extra headers movies sends, as add_header lines, so
// that neither answer is cheaper for being shorter; the ones nginx makes
// itself are left to it, and values nginx would read as variables or
// quotes are skipped.
func nginxHeaders(h http.Header) string {
	skip := map[string]bool{"date": true, "content-length": true, "content-type": true, "last-modified": true, "etag": true,
		"content-encoding": true, "vary": true, "server": true, "connection": true, "keep-alive": true, "transfer-encoding": true, "accept-ranges": true}
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var lines []string
	for _, k := range keys {
		if skip[strings.ToLower(k)] {
			continue
		}
		for _, v := range h[k] {
			if strings.ContainsAny(v, "\"$\\") {
				continue
			}
			lines = append(lines, fmt.Sprintf("            add_header %s \"%s\" always;", k, v))
		}
	}
	return strings.Join(lines, "\n")
}

// nginxConf fills in the template's placeholders.
func nginxConf(prefix, root string, port int, headers string) string {
	return strings.NewReplacer("@PREFIX@", prefix, "@ROOT@", root, "@PORT@", strconv.Itoa(port), "@HEADERS@", headers).Replace(nginxTemplate)
}

func runHit(ctx context.Context, e *env, f *hitFlags) error {
	if f.rounds < 1 || f.conns < 1 || f.threads < 1 || f.conns < f.threads {
		return fmt.Errorf("%w: -rounds, -connections and -threads must be positive, connections at least threads", errUsage)
	}
	if err := need("wrk", "nginx"); err != nil {
		return err
	}
	w, err := newWrk(e, f.threads)
	if err != nil {
		return err
	}
	e.logf("building ./cmd/movies, ./cmd/ghiblifake and ./bench/floor")
	for _, pkg := range []string{"./cmd/movies", "./cmd/ghiblifake", "./bench/floor"} {
		if _, err := e.build(pkg); err != nil {
			return err
		}
	}
	e.header("movies load benchmark: the hit path", "wrk", "nginx")

	movies, base, err := e.startMovies("steady", "-upstream", "builtin")
	if err != nil {
		return err
	}
	steadyURL := base + "/movies/"
	// The first request pays for the first fetch; no wrk run should.
	if _, err := get(steadyURL, "identity"); err != nil {
		return err
	}

	// movies' own responses, one per coding it offers.
	respDir := filepath.Join(e.work, "responses")
	os.MkdirAll(respDir, 0o755)
	caps := map[string]capture{}
	var codings []string
	for _, c := range offeredCodings {
		got, err := get(steadyURL, c)
		if err != nil {
			return err
		}
		if c != "identity" && got.header.Get("Content-Encoding") != c {
			continue
		}
		caps[c] = got
		codings = append(codings, c)
		os.WriteFile(filepath.Join(respDir, c+".headers"), got.head(), 0o644)
		os.WriteFile(filepath.Join(respDir, c+".body"), got.body, 0o644)
	}
	id := caps["identity"]
	for _, c := range codings {
		if etagHash(caps[c].header.Get("ETag")) != etagHash(id.header.Get("ETag")) {
			return fmt.Errorf("the %s response is from another snapshot than identity's (a refresh between the fetches?); run again", c)
		}
	}
	if g, ok := caps["gzip"]; ok {
		zr, err := gzip.NewReader(bytes.NewReader(g.body))
		if err != nil {
			return fmt.Errorf("movies' gzip body: %w", err)
		}
		plain, err := io.ReadAll(zr)
		if err != nil || !bytes.Equal(plain, id.body) {
			return fmt.Errorf("movies' gzip body does not decompress to its identity body (%v)", err)
		}
	}
	var cases []string
	for _, c := range splitList(f.encodings) {
		if _, ok := caps[c]; ok {
			cases = append(cases, c)
		} else {
			e.logf("movies does not offer %q: left out", c)
		}
	}
	if len(cases) == 0 {
		return fmt.Errorf("%w: -encodings %q names no coding movies offers (%s)", errUsage, f.encodings, strings.Join(codings, " "))
	}

	// The floor: echo on net/http writing those very responses.
	floorBin, _ := e.build("./bench/floor")
	floorPort, err := freePort()
	if err != nil {
		return err
	}
	floor, err := e.start("floor", floorBin, "-addr", fmt.Sprintf("127.0.0.1:%d", floorPort), "-dir", respDir)
	if err != nil {
		return err
	}
	floorURL := fmt.Sprintf("http://127.0.0.1:%d/movies/", floorPort)
	if err := e.waitHTTP(floorURL, floor); err != nil {
		return err
	}

	// nginx: the same bytes as static files.
	www := filepath.Join(e.work, "www")
	os.MkdirAll(filepath.Join(www, "movies"), 0o755)
	os.WriteFile(filepath.Join(www, "movies", "index.html"), id.body, 0o644)
	for _, c := range codings[1:] {
		os.WriteFile(filepath.Join(www, "movies", "index.html"+nginxSuffix[c]), caps[c].body, 0o644)
	}
	prefix := filepath.Join(e.work, "nginx")
	os.MkdirAll(prefix, 0o755)
	nginxPort, err := freePort()
	if err != nil {
		return err
	}
	conf := filepath.Join(prefix, "nginx.conf")
	if err := os.WriteFile(conf, []byte(nginxConf(prefix, www, nginxPort, nginxHeaders(id.header))), 0o644); err != nil {
		return err
	}
	nginx, err := e.start("nginx", "nginx", "-p", prefix, "-c", conf, "-e", filepath.Join(prefix, "error.log"), "-g", "daemon off;")
	if err != nil {
		return err
	}
	nginxURL := fmt.Sprintf("http://127.0.0.1:%d/movies/", nginxPort)
	if err := e.waitHTTP(nginxURL, nginx); err != nil {
		return err
	}

	// All three must serve the very same bytes, or the comparison means
	// nothing.
	targets := []string{"movies", "floor", "nginx"}
	urlOf := map[string]string{"movies": steadyURL, "floor": floorURL, "nginx": nginxURL}
	heads := map[string]int{}
	for _, c := range codings {
		for _, t := range targets[1:] {
			got, err := get(urlOf[t], c)
			if err != nil {
				return err
			}
			if !bytes.Equal(got.body, caps[c].body) || got.header.Get("Content-Encoding") != caps[c].header.Get("Content-Encoding") {
				e.keep = true
				return fmt.Errorf("%s does not serve the same %s bytes as movies; see %s (kept)", t, c, e.work)
			}
			if c == "identity" {
				heads[t] = len(got.head())
			}
		}
	}

	e.printf("\n## Steady state: movies vs the floor vs nginx, on the same bytes\n\n")
	e.printf("- /movies/ body per encoding, as movies sends it (and the floor and nginx):")
	for _, c := range codings {
		e.printf(" %s %d B;", c, len(caps[c].body))
	}
	e.printf("\n- response head, identity: movies %d B, floor %d B, nginx %d B\n", len(id.head()), heads["floor"], heads["nginx"])
	e.printf("- movies -upstream builtin -ttl 1m; floor: echo v4 on net/http writing movies' responses from memory (bench/floor), same server settings; nginx worker_processes auto, sendfile, gzip_static, open_file_cache, keep-alive unlimited\n")
	e.printf("- wrk -t%d -c%d -d%s --latency, %d interleaved rounds (each case: movies, floor, nginx, with movies and the floor swapped in even rounds; Accept-Encoding: the case's coding alone), after a %s warm-up of each\n\n",
		f.threads, f.conns, wrkDuration(f.duration), f.rounds, wrkDuration(f.warmup))

	for _, c := range cases {
		for _, t := range targets {
			if _, err := w.run("warmup-"+t+"-"+c, f.conns, f.warmup, urlOf[t], c); err != nil {
				return err
			}
		}
	}
	before, err := scrape(base)
	if err != nil {
		return err
	}
	rps := map[string][]float64{}
	p99 := map[string][]float64{}
	for r := 1; r <= f.rounds; r++ {
		// movies and the floor swap places every other round, so that a
		// machine getting busier or quieter favours neither.
		order := targets
		if r%2 == 0 {
			order = []string{"floor", "movies", "nginx"}
		}
		for _, c := range cases {
			for _, t := range order {
				// A round is longer than the TTL: movies' snapshot may
				// expire while the others take their turns. One request
				// first, so wrk measures hits, not that idle-made miss.
				if t == "movies" {
					if _, err := get(steadyURL, "identity"); err != nil {
						return err
					}
				}
				rep, err := w.run(fmt.Sprintf("%s-%s-%d", t, c, r), f.conns, f.duration, urlOf[t], c)
				if err != nil {
					return err
				}
				k := t + "-" + c
				rps[k] = append(rps[k], rep.RPS)
				p99[k] = append(p99[k], rep.P99ms)
				per := 0.0
				if rep.Requests > 0 {
					per = float64(rep.Bytes) / float64(rep.Requests)
				}
				e.printf("- round %d %-8s %-6s %9.0f req/s  p99 %7.2f ms  max %7.2f ms  %6.0f B/response  errors %d, non-2xx %d\n",
					r, c, t, rep.RPS, rep.P99ms, rep.Maxms, per, rep.SocketErrors, rep.Non2xx)
			}
		}
	}
	after, err := scrape(base)
	if err != nil {
		return err
	}
	moviesHWM, _ := peakRSS(movies.cmd.Process.Pid)
	var nginxHWM []int64
	for _, pid := range append([]int{nginx.cmd.Process.Pid}, childrenOf(nginx.cmd.Process.Pid)...) {
		if k, err := peakRSS(pid); err == nil {
			nginxHWM = append(nginxHWM, k)
		}
	}
	e.stopProc(nginx)
	e.stopProc(floor)
	e.stopProc(movies)

	e.printf("\n| case | body | movies req/s | floor req/s | nginx req/s | movies/floor (target >= %.1fx) | rounds | movies/nginx | movies p99 | floor p99 | nginx p99 |\n", minFloorRatio)
	e.printf("|---|---|---|---|---|---|---|---|---|---|---|\n")
	floorRatio, nginxRatio := map[string]float64{}, map[string]float64{}
	for _, c := range cases {
		m, fl, n := rps["movies-"+c], rps["floor-"+c], rps["nginx-"+c]
		// A ratio is the median of the rounds' ratios, each from runs
		// seconds apart; the rounds' spread is the noise.
		floorRatio[c] = median(ratios(m, fl))
		nginxRatio[c] = median(ratios(m, n))
		var per []string
		for _, x := range ratios(m, fl) {
			per = append(per, fmt.Sprintf("%.2f", x))
		}
		e.printf("| %s | %d B | %.0f | %.0f | %.0f | %.2fx | %s | %.2fx | %.2f ms | %.2f ms | %.2f ms |\n",
			c, len(caps[c].body), median(m), median(fl), median(n), floorRatio[c], strings.Join(per, ", "), nginxRatio[c],
			median(p99["movies-"+c]), median(p99["floor-"+c]), median(p99["nginx-"+c]))
	}
	e.printf("\nreq/s and p99: medians of %d rounds; ratios: medians of the rounds' ratios (movies and the floor swap order every other round). During these runs (1m TTL) movies loaded %s new snapshot(s): cache misses %s, hits %s, early refreshes %s (each movies run starts with one request, so a snapshot that expired while the others ran is reloaded before wrk starts; within a run, loads start ahead of expiry).\n",
		f.rounds, counterDelta(before, after, "movies_cache_loads_total"), counterDelta(before, after, "movies_cache_misses_total"),
		counterDelta(before, after, "movies_cache_hits_total"), counterDelta(before, after, "movies_cache_early_refreshes_total"))

	var rssKiB int64 = -1
	if f.rss {
		fake, fakeURL, err := e.startFakeUpstream("-latency", f.rssUpstreamLatency.String())
		if err != nil {
			return err
		}
		// An upstream in another process, so the figure is movies alone
		// (-upstream builtin would add the fake's data and server to it).
		m, mbase, err := e.startMovies("rss", "-upstream", fakeURL, "-ttl", "1m", "-upstream-timeout", "1s")
		if err != nil {
			return err
		}
		if _, err := get(mbase+"/movies/", "identity"); err != nil {
			return err
		}
		rep, err := w.run("rss", f.rssConns, f.rssDuration, mbase+"/movies/", "identity")
		if err != nil {
			return err
		}
		rssKiB, _ = peakRSS(m.cmd.Process.Pid)
		e.stopProc(m)
		e.stopProc(fake)
		e.printf("\n## Peak RSS\n\n")
		e.printf("- movies, wrk -t%d -c%d -d%s identity (%.0f req/s, p99 %.2f ms): VmHWM %s\n", f.threads, f.rssConns, wrkDuration(f.rssDuration), rep.RPS, rep.P99ms, mib(rssKiB))
		var ns []string
		for _, k := range nginxHWM {
			ns = append(ns, mib(k))
		}
		e.printf("- for reference: the steady-state movies (-upstream builtin, so with the fake upstream in-process, after all its runs): VmHWM %s; nginx master and workers: %s\n", mib(moviesHWM), strings.Join(ns, ", "))
	}

	e.printf("\n## Targets\n\n")
	for _, c := range cases {
		e.printf("- %s hit throughput, %s: %.2fx the floor (target >= %.1fx)\n", verdict(floorRatio[c] >= minFloorRatio), c, floorRatio[c], minFloorRatio)
	}
	for _, c := range cases {
		e.printf("- %s hit throughput, %s: %.2fx nginx (target >= %.1fx)\n", verdict(nginxRatio[c] >= minNginxRatio), c, nginxRatio[c], minNginxRatio)
	}
	if rssKiB >= 0 {
		e.printf("- %s peak RSS at %d connections: %s (target < %d MiB)\n", verdict(rssKiB < maxRSSMiB*1024), f.rssConns, mib(rssKiB), maxRSSMiB)
	}
	e.printf("\nLoad average at the end: %s (the machine is shared: anything else running skews both sides of each comparison, not always equally).\n", loadAvg())
	return nil
}

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

func mib(kib int64) string { return fmt.Sprintf("%.1f MiB", float64(kib)/1024) }

func loadAvg() string {
	f := strings.Fields(readFile("/proc/loadavg"))
	return strings.Join(f[:min(3, len(f))], " ")
}

// scrape fetches base's /metrics.
func scrape(base string) (string, error) {
	resp, err := rawClient.Get(base + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s/metrics: status %d", base, resp.StatusCode)
	}
	return string(b), nil
}

// counterDelta is a counter's growth between two scrapes, every series
// summed, or "absent".
func counterDelta(before, after, name string) string {
	a, found, err := metricSum(after, name, nil)
	if err != nil || !found {
		return "absent"
	}
	b, _, _ := metricSum(before, name, nil)
	return strconv.FormatFloat(a-b, 'f', 0, 64)
}

// peakRSS is a process's VmHWM in KiB.
func peakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	return vmHWM(string(b))
}

// childrenOf lists the processes whose parent is pid.
func childrenOf(pid int) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, d := range entries {
		child, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if ppid, ok := parentOf(readFile(fmt.Sprintf("/proc/%d/stat", child))); ok && ppid == pid {
			out = append(out, child)
		}
	}
	return out
}

// parentOf reads the parent pid from a /proc/PID/stat line, whose second
// field (the command, in parentheses) may hold spaces.
func parentOf(stat string) (int, bool) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 2 {
		return 0, false
	}
	p, err := strconv.Atoi(f[1])
	return p, err == nil
}
