package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

var updateScreenshot = flag.Bool("update-screenshot", false, "write the page's screenshots to docs/screenshot.png (light) and docs/screenshot-dark.png")

// cspListener records securitypolicyviolation events from the first moment
// of every document: DevTools injects it, so the page's CSP does not apply.
const cspListener = `window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', e =>
  window.__cspViolations.push(e.violatedDirective + ' blocked ' + (e.blockedURI || 'inline') + ' at line ' + e.lineNumber));`

// TestBrowser_RendersEveryFilmWithoutErrors loads /movies/ in headless
// Chromium and checks the DOM against the replica's own JSON, with no
// console error and no CSP violation.
func TestBrowser_RendersEveryFilmWithoutErrors(t *testing.T) {
	chromium := mustLookPath(t, "chromium")
	ctx := newBrowser(t, chromium)

	// The detector must see what it is meant to catch, or a clean result
	// below would mean nothing.
	t.Run("detector catches a CSP violation and a console error", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/" {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'")
			fmt.Fprint(w, `<!doctype html><title>t</title><style>body{color:red}</style><script>console.error("boom")</script>`)
		}))
		defer srv.Close()
		problems := visit(t, ctx, srv.URL+"/", nil)
		for _, want := range []string{"securitypolicyviolation: style-src", "log security error", "console.error: \"boom\""} {
			if !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, want) }) {
				t.Errorf("%q went unnoticed; saw %q", want, problems)
			}
		}
	})

	t.Run("movies page", func(t *testing.T) {
		addr := freeAddr(t)
		startReplica(t, "movies", addr)
		base := "http://" + addr
		want := apiMovies(t, base+"/api/v1/movies")

		var got []domFilm
		var shot []byte
		problems := visit(t, ctx, base+"/movies/", func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
			var err error
			got, err = chromedp.Evaluate[[]domFilm](`[...document.querySelectorAll('article[data-film-id]')].map(a => ({
				id: a.dataset.filmId,
				title: a.querySelector('h2').textContent.trim(),
				people: [...a.querySelectorAll('li[data-person-id]')].map(li => li.dataset.personId),
				noPeople: a.querySelectorAll('.no-people').length,
			}))`)(ctx, tg)
			if err != nil {
				return chromedp.Void{}, err
			}
			shot, err = chromedp.FullScreenshot(100)(ctx, tg)
			return chromedp.Void{}, err
		})
		for _, p := range problems {
			t.Errorf("browser reported: %s", p)
		}

		if len(got) != 22 {
			t.Errorf("%d article[data-film-id] elements, want 22", len(got))
		}
		byTitle := map[string]domFilm{}
		for _, f := range got {
			byTitle[f.Title] = f
		}
		if n := len(byTitle["Castle in the Sky"].People); n != 14 {
			t.Errorf("Castle in the Sky has %d li[data-person-id], want 14", n)
		}
		if !slices.ContainsFunc(got, func(f domFilm) bool { return f.NoPeople == 1 && len(f.People) == 0 }) {
			t.Error("no film shows .no-people")
		}
		// Every film and its people, in order, as the JSON of the same
		// snapshot has them.
		if len(got) != len(want) {
			t.Fatalf("page has %d films, API %d", len(got), len(want))
		}
		for i, w := range want {
			g := got[i]
			if g.ID != w.ID || g.Title != w.Title || !slices.Equal(g.People, w.people()) {
				t.Errorf("film %d on the page = %+v, API has %s %q with people %v", i, g, w.ID, w.Title, w.people())
			}
			if (len(g.People) == 0) != (g.NoPeople == 1) {
				t.Errorf("%s: %d people and %d .no-people", g.Title, len(g.People), g.NoPeople)
			}
		}

		saveScreenshot(t, "screenshot.png", shot)
	})
}

type domFilm struct {
	ID       string   `json:"id"`
	Title    string   `json:"title"`
	People   []string `json:"people"`
	NoPeople int      `json:"noPeople"`
}

type apiMovie struct {
	ID     string `json:"id"`
	Title  string `json:"title"`
	People []struct {
		ID string `json:"id"`
	} `json:"people"`
}

func (m apiMovie) people() []string {
	ids := make([]string, len(m.People))
	for i, p := range m.People {
		ids[i] = p.ID
	}
	return ids
}

func apiMovies(t *testing.T, url string) []apiMovie {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Movies []apiMovie `json:"movies"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("GET %s: %s: %v", url, resp.Status, err)
	}
	return body.Movies
}

// newBrowser starts headless Chromium for the test, with the flags this
// machine needs (no sandbox as root, no background connections).
func newBrowser(t *testing.T, execPath string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(execPath),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 800),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx, chromedp.WithErrorf(t.Logf))
	t.Cleanup(func() {
		cancel() // closes the browser
		cancelAlloc()
	})
	// The first Do starts the browser, which lives as long as ctx: bound
	// this start, not ctx.
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(ctx) }()
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("start Chromium: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Chromium did not start in 60s")
	}
	return ctx
}

// visit opens url in a new tab, runs then (if any) once it has loaded, and
// returns every console error, uncaught exception, error-level browser log
// entry and CSP violation the page caused.
func visit(t *testing.T, browser context.Context, url string, then chromedp.Action[chromedp.Void]) []string {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser)
	defer cancel()
	ctx, cancelTimeout := context.WithTimeout(ctx, 60*time.Second)
	defer cancelTimeout()

	var mu sync.Mutex
	var problems []string
	report := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		problems = append(problems, fmt.Sprintf(format, args...))
	}
	// Listen, not Events: the func sees each event before the reply to any
	// later command, so nothing the page did is missed at the end.
	if err := chromedp.Listen(ctx, func(ev any) {
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeAssert {
				var args []string
				for _, a := range ev.Args {
					if len(a.Value) > 0 {
						args = append(args, string(a.Value))
					} else {
						args = append(args, a.Description)
					}
				}
				report("console.%s: %s", ev.Type, strings.Join(args, " "))
			}
		case *runtime.EventExceptionThrown:
			d := ev.ExceptionDetails
			desc := d.Text
			if d.Exception != nil {
				desc += " " + d.Exception.Description
			}
			report("exception: %s (%s:%d)", desc, d.URL, d.LineNumber)
		case *cdplog.EventEntryAdded:
			// Chromium words CSP reports "Refused to ..." or "... violates the
			// following Content Security Policy directive", by version.
			if e := ev.Entry; e.Level == cdplog.EntryLevelError || e.Source == cdplog.EntrySourceSecurity ||
				strings.Contains(e.Text, "Refused to") || strings.Contains(e.Text, "Content Security Policy") {
				report("log %s %s: %s (%s)", e.Source, e.Level, e.Text, e.URL)
			}
		}
	}); err != nil {
		t.Fatalf("listen to %s: %v", url, err)
	}

	steps := []chromedp.Action[chromedp.Void]{
		chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := cdp.Call(ctx, tg, page.AddScriptToEvaluateOnNewDocument,
				page.AddScriptToEvaluateOnNewDocumentParams{Source: cspListener})
			return err
		}),
		chromedp.Navigate(url),
	}
	if then != nil {
		steps = append(steps, then)
	}
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("browse %s: %v", url, err)
	}
	violations, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`window.__cspViolations`))
	if err != nil {
		t.Fatalf("read CSP violations of %s: %v", url, err)
	}
	for _, v := range violations {
		report("securitypolicyviolation: %s", v)
	}
	mu.Lock()
	defer mu.Unlock()
	return append([]string(nil), problems...)
}

// saveScreenshot checks shot and writes it to docs/name under
// -update-screenshot, to a temporary file otherwise.
func saveScreenshot(t *testing.T, name string, shot []byte) {
	t.Helper()
	checkScreenshot(t, shot)
	out := filepath.Join(t.TempDir(), name)
	if *updateScreenshot {
		out = filepath.Join(repoRoot(t), "docs", name)
	}
	if err := os.WriteFile(out, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", out, len(shot))
}

// checkScreenshot requires a PNG big enough to show the page.
func checkScreenshot(t *testing.T, shot []byte) {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	b := img.Bounds()
	if b.Dx() < 800 || b.Dy() < 800 || len(shot) < 20_000 {
		t.Errorf("screenshot is %dx%d, %d bytes: too small to show the page", b.Dx(), b.Dy(), len(shot))
	}
}

// axeTags are the axe-core rule sets every page must pass: WCAG 2.0 and
// 2.1 at levels A and AA, and axe's best practices.
var axeTags = []string{"wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"}

// TestBrowser_PagesPassAxeInLightAndDark runs axe-core in Chromium on
// every page a visitor can see: the film list, the 503 page (a replica
// whose upstream refuses connections) and the list with the stale banner
// (-stale-if-error after the upstream failed), each under
// prefers-color-scheme light and dark, and fails on any violation of
// axeTags. The dark list is docs/accessibility.md's dark screenshot.
func TestBrowser_PagesPassAxeInLightAndDark(t *testing.T) {
	chromium := mustLookPath(t, "chromium")
	axe := axeScript(t)
	ctx := newBrowser(t, chromium)

	// axe must see what it is meant to catch, through the same session
	// set-up: a style that only the CSP bypass lets apply, and that fails
	// contrast only in dark mode. A clean light run and a failing dark one
	// prove the bypass, the emulation and the audit all work.
	t.Run("detector catches low contrast in dark mode behind a CSP", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/" {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Security-Policy", "default-src 'none'")
			fmt.Fprint(w, `<!doctype html><html lang="en"><title>t</title>`+
				`<style>html{background:#fff;color:#000}@media (prefers-color-scheme: dark){html{background:#121212;color:#333}}</style>`+
				`<main><h1>Heading</h1><p id="dim">Some text.</p></main>`)
		}))
		defer srv.Close()
		if v := audit(t, ctx, axe, srv.URL+"/", "light", http.StatusOK, nil).Violations; len(v) != 0 {
			t.Errorf("light: axe reported %s, want nothing", describeViolations(v))
		}
		v := audit(t, ctx, axe, srv.URL+"/", "dark", http.StatusOK, nil).Violations
		if !slices.ContainsFunc(v, func(v axeViolation) bool {
			return v.ID == "color-contrast" && slices.ContainsFunc(v.Nodes, func(n axeNode) bool { return n.Target == "#dim" })
		}) {
			t.Errorf("dark: #333 on #121212 went unnoticed; axe reported %s", describeViolations(v))
		}
	})

	listAddr, downAddr, staleAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	startReplica(t, "movies", listAddr)
	// Nothing listens on a fresh free address: every fetch fails at once,
	// so /movies/ is the 503 page.
	startReplica(t, "movies-down", downAddr, "-upstream", "http://"+freeAddr(t))
	startStaleReplica(t, "movies-stale", staleAddr)

	for _, p := range []struct {
		name   string
		url    string
		status int64
	}{
		{"list", "http://" + listAddr + "/movies/", http.StatusOK},
		{"503", "http://" + downAddr + "/movies/", http.StatusServiceUnavailable},
		{"stale", "http://" + staleAddr + "/movies/", http.StatusOK},
	} {
		for _, scheme := range []string{"light", "dark"} {
			t.Run(p.name+"/"+scheme, func(t *testing.T) {
				var then chromedp.Action[chromedp.Void]
				var shot []byte
				if p.name == "list" && scheme == "dark" {
					then = chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
						var err error
						shot, err = chromedp.FullScreenshot(100)(ctx, tg)
						return err
					})
				}
				res := audit(t, ctx, axe, p.url, scheme, p.status, then)
				for _, v := range res.Violations {
					t.Errorf("axe: %s", describeViolations([]axeViolation{v}))
				}
				// The rule this test exists for must have run and decided,
				// not been left for review.
				if !slices.Contains(res.Passed, "color-contrast") {
					t.Errorf("axe did not pass color-contrast; needs review: %v", res.Incomplete)
				}
				if shot != nil {
					saveScreenshot(t, "screenshot-dark.png", shot)
				}
			})
		}
	}
}

// axeScript returns axe.min.js as scripts/install-e2e-deps.sh installs it
// (npm ci in e2e/axe). Missing, it skips the test on a developer's machine
// and fails it under CI=true, as mustLookPath does for programs.
func axeScript(t *testing.T) string {
	t.Helper()
	path := filepath.Join(repoRoot(t), "e2e", "axe", "node_modules", "axe-core", "axe.min.js")
	b, err := os.ReadFile(path)
	if err == nil {
		return string(b)
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("axe-core not found (%v): CI must run this test; install it with scripts/install-e2e-deps.sh", err)
	}
	t.Skipf("axe-core not found: run scripts/install-e2e-deps.sh to run this test")
	return ""
}

// axeViolation is one failed axe rule, with what the report needs to find
// and fix it.
type axeViolation struct {
	ID     string    `json:"id"`
	Impact string    `json:"impact"`
	Help   string    `json:"help"`
	Nodes  []axeNode `json:"nodes"`
}

type axeNode struct {
	Target  string `json:"target"`  // CSS selector of the element
	Summary string `json:"summary"` // axe's failure summary, e.g. the contrast measured
}

// describeViolations formats violations one per line with each failing
// node, or says there were none.
func describeViolations(vs []axeViolation) string {
	if len(vs) == 0 {
		return "no violations"
	}
	var sb strings.Builder
	for _, v := range vs {
		fmt.Fprintf(&sb, "\n%s (%s): %s, %d nodes", v.ID, v.Impact, v.Help, len(v.Nodes))
		for _, n := range v.Nodes {
			fmt.Fprintf(&sb, "\n  %s: %s", n.Target, strings.ReplaceAll(n.Summary, "\n", " "))
		}
	}
	return sb.String()
}

// audit opens url in a new tab with the page's CSP bypassed and
// prefers-color-scheme set to scheme, checks the document's status, runs
// then (if any), injects axe-core and returns its results for axeTags.
//
// The bypass lives only in this test's browser session, so the server's
// CSP stays as strict as it is. (DevTools evaluation is not subject to the
// CSP either; the bypass also covers anything axe itself injects.)
func audit(t *testing.T, browser context.Context, axe, url, scheme string, wantStatus int64, then chromedp.Action[chromedp.Void]) axeResults {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser)
	defer cancel()
	ctx, cancelTimeout := context.WithTimeout(ctx, 60*time.Second)
	defer cancelTimeout()

	err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		if _, err := cdp.Call(ctx, tg, page.SetBypassCSP, page.SetBypassCSPParams{Enabled: true}); err != nil {
			return err
		}
		_, err := cdp.Call(ctx, tg, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}},
		})
		return err
	}))
	if err != nil {
		t.Fatalf("set up the tab for %s: %v", url, err)
	}
	resp, err := chromedp.Run(ctx, chromedp.NavigateResponse(url))
	if err != nil {
		t.Fatalf("browse %s: %v", url, err)
	}
	if resp.Status != wantStatus {
		t.Fatalf("GET %s in the browser: status %d, want %d", url, resp.Status, wantStatus)
	}
	dark, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`matchMedia('(prefers-color-scheme: dark)').matches`))
	if err != nil || dark != (scheme == "dark") {
		t.Fatalf("prefers-color-scheme: dark matches = %v (%v) under %s emulation", dark, err, scheme)
	}
	if then != nil {
		if err := chromedp.Do(ctx, then); err != nil {
			t.Fatalf("on %s: %v", url, err)
		}
	}

	tags, err := json.Marshal(axeTags)
	if err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](axe)); err != nil {
		t.Fatalf("inject axe-core into %s: %v", url, err)
	}
	res, err := chromedp.Run(ctx, chromedp.Evaluate[axeResults](`axe.run(document, {
	runOnly: {type: 'tag', values: `+string(tags)+`},
	resultTypes: ['violations'],
}).then(r => ({
	passed: r.passes.map(v => v.id),
	incomplete: r.incomplete.map(v => v.id),
	violations: r.violations.map(v => ({
		id: v.id,
		impact: v.impact || '',
		help: v.help,
		nodes: v.nodes.map(n => ({target: n.target.join(' '), summary: n.failureSummary || ''})),
	})),
}))`, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("run axe-core on %s: %v", url, err)
	}
	t.Logf("axe on %s (%s): %d rules passed, %d violated, needs review: %v", url, scheme, len(res.Passed), len(res.Violations), res.Incomplete)
	return res
}

// axeResults is what audit asks axe.run to return.
type axeResults struct {
	Passed     []string       `json:"passed"`
	Incomplete []string       `json:"incomplete"` // rules axe could not decide
	Violations []axeViolation `json:"violations"`
}

// startStaleReplica runs the movies binary on addr with -stale-if-error
// against a small fake upstream that answers once and then fails, and
// waits until /movies/ shows the stale banner.
func startStaleReplica(t *testing.T, name, addr string) {
	t.Helper()
	var down atomic.Bool
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "down", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/films":
			fmt.Fprint(w, `[{"id":"f1","title":"Castle in the Sky","release_date":"1986","director":"Hayao Miyazaki","people":["https://ghibliapi.vercel.app/people/"]},`+
				`{"id":"f2","title":"Grave of the Fireflies","release_date":"1988","director":"Isao Takahata","people":["https://ghibliapi.vercel.app/people/"]}]`)
		case "/people":
			fmt.Fprint(w, `[{"id":"p1","name":"Pazu","films":["https://ghibliapi.vercel.app/films/f1"]}]`)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(upstream.Close)
	startReplica(t, name, addr, "-upstream", upstream.URL, "-ttl", "1s", "-upstream-timeout", "500ms", "-stale-if-error", "1h")
	page := "http://" + addr + "/movies/"
	if err := wantStatus(page, http.StatusOK); err != nil {
		t.Fatal(err)
	}
	down.Store(true)
	waitFor(t, 10*time.Second, name+" serving stale", func() error {
		resp, err := http.Get(page)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK || !bytes.Contains(b, []byte(`class="stale"`)) {
			return fmt.Errorf("GET %s: %s, no stale banner yet", page, resp.Status)
		}
		return nil
	})
}

// TestBrowser_PagesPassTheNuHTMLChecker runs the W3C Nu HTML checker
// (vnu.jar, offline, on the machine's Java) over the bytes the replicas
// serve: the list, the 503 page, the stale page, the 404 and the 405. Any
// error fails the run; warnings are logged. A page broken on purpose must
// be caught, or the check proves nothing.
func TestBrowser_PagesPassTheNuHTMLChecker(t *testing.T) {
	java := mustLookPath(t, "java")
	jar := vnuJar(t)
	listAddr, downAddr, staleAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	startReplica(t, "movies", listAddr)
	startReplica(t, "movies-down", downAddr, "-upstream", "http://"+freeAddr(t))
	startStaleReplica(t, "movies-stale", staleAddr)

	dir := t.TempDir()
	fetch := func(name, method, url string, want int) string {
		t.Helper()
		req, err := http.NewRequest(method, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != want || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
			t.Fatalf("%s %s: %s %s, want %d text/html", method, url, resp.Status, resp.Header.Get("Content-Type"), want)
		}
		path := filepath.Join(dir, name+".html")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	pages := []string{
		fetch("list", http.MethodGet, "http://"+listAddr+"/movies/", http.StatusOK),
		fetch("503", http.MethodGet, "http://"+downAddr+"/movies/", http.StatusServiceUnavailable),
		fetch("stale", http.MethodGet, "http://"+staleAddr+"/movies/", http.StatusOK),
		fetch("404", http.MethodGet, "http://"+listAddr+"/nope", http.StatusNotFound),
		fetch("405", http.MethodPost, "http://"+listAddr+"/movies/", http.StatusMethodNotAllowed),
	}
	// The detector: the real list with an element left open.
	list, err := os.ReadFile(pages[0])
	if err != nil {
		t.Fatal(err)
	}
	broken := filepath.Join(dir, "broken.html")
	if err := os.WriteFile(broken, bytes.Replace(list, []byte("</h1>"), []byte("</h1><div>"), 1), 0o644); err != nil {
		t.Fatal(err)
	}

	// One JVM for all pages: starting Java is most of the cost. It needs a
	// deeper stack than the default for its schema validation.
	cmd := exec.Command(java, append([]string{"-Xss16m", "-jar", jar, "--format", "json", "--stdout"}, append(pages, broken)...)...)
	out, err := cmd.Output() // exits 1 when it reports errors: the broken page always has some
	var report struct {
		Messages []struct {
			Type, SubType, URL, Message, Extract string
			LastLine                             int
		} `json:"messages"`
	}
	if jerr := json.Unmarshal(out, &report); jerr != nil {
		t.Fatalf("vnu.jar: %v (exit: %v); output:\n%s", jerr, err, out)
	}
	caught := 0
	for _, m := range report.Messages {
		page := strings.TrimSuffix(filepath.Base(m.URL), ".html")
		switch {
		case page == "broken":
			caught++
		case m.Type == "error" || m.Type == "non-document-error":
			t.Errorf("Nu HTML checker, %s page, line %d: %s (%q)", page, m.LastLine, m.Message, m.Extract)
		default:
			t.Logf("Nu HTML checker, %s page, line %d (%s %s): %s", page, m.LastLine, m.Type, m.SubType, m.Message)
		}
	}
	if caught == 0 {
		t.Errorf("the Nu HTML checker found nothing wrong with a page with an unclosed <div>: the check cannot fail")
	}
	t.Logf("Nu HTML checker: %d messages over %d pages, %d on the broken one", len(report.Messages)-caught, len(pages), caught)
}

// vnuJar returns vnu.jar as scripts/install-e2e-deps.sh installs it (npm ci
// in e2e/axe, package vnu-jar). Missing, it skips the test on a developer's
// machine and fails it under CI=true, as mustLookPath does for programs.
func vnuJar(t *testing.T) string {
	t.Helper()
	path := filepath.Join(repoRoot(t), "e2e", "axe", "node_modules", "vnu-jar", "build", "dist", "vnu.jar")
	if _, err := os.Stat(path); err == nil {
		return path
	} else if os.Getenv("CI") == "true" {
		t.Fatalf("vnu.jar not found (%v): CI must run this test; install it with scripts/install-e2e-deps.sh", err)
	}
	t.Skipf("vnu.jar not found: run scripts/install-e2e-deps.sh to run this test")
	return ""
}
