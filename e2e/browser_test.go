package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"image/png"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

var updateScreenshot = flag.Bool("update-screenshot", false, "write the page's screenshot to docs/screenshot.png")

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

		checkScreenshot(t, shot)
		out := filepath.Join(t.TempDir(), "screenshot.png")
		if *updateScreenshot {
			out = filepath.Join(repoRoot(t), "docs", "screenshot.png")
		}
		if err := os.WriteFile(out, shot, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s (%d bytes)", out, len(shot))
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
