package render

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"html/template"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// fixedView is the small catalogue the golden files are made from: one film
// with people, one without.
func fixedView() View {
	return View{
		FetchedAt: time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC),
		MaxAge:    time.Minute,
		Movies: []Movie{
			{
				ID:          "2baf70d1-42bb-4437-b551-e5fed5a87abe",
				Title:       "Castle in the Sky",
				ReleaseDate: "1986",
				Director:    "Hayao Miyazaki",
				People: []Person{
					{ID: "598f7048-74ff-41e0-92ef-87dc1ad980a9", Name: "Pazu"},
					{ID: "fe93adf2-2f3a-4ec4-9f68-5422f1b87c01", Name: "Sheeta"},
				},
			},
			{
				ID:          "12cfb892-aac0-4c5b-94af-521852e46d6a",
				Title:       "Grave of the Fireflies",
				ReleaseDate: "1988",
				Director:    "Isao Takahata",
			},
		},
	}
}

// checkGolden compares got with testdata/name, or rewrites the file under -update.
func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./pkg/render -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (run go test ./pkg/render -update if intended)\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

func TestPage_Golden(t *testing.T) {
	checkGolden(t, "page.golden.html", mustPage(t, fixedView()))
}

func TestJSON_Golden(t *testing.T) {
	b, err := JSON(fixedView())
	if err != nil {
		t.Fatalf("JSON() error = %v", err)
	}
	checkGolden(t, "movies.golden.json", b)
}

func TestErrorPage_Golden(t *testing.T) {
	checkGolden(t, "error.golden.html", ErrorPage(502, "Upstream unavailable", "The Ghibli API did not answer; try again in a minute."))
}

func TestPage_WellFormed(t *testing.T) {
	v := fixedView()
	// A zone other than UTC: the page must still show UTC.
	v.FetchedAt = time.Date(2026, 11, 27, 21, 0, 0, 0, time.FixedZone("JST", 9*60*60))
	b := mustPage(t, v)
	if !bytes.HasPrefix(b, []byte("<!doctype html>\n")) {
		t.Errorf("page does not start with <!doctype html>")
	}
	doc := mustParse(t, b)

	if got := elements(doc, "html"); len(got) != 1 {
		t.Fatalf("<html> count = %d, want 1", len(got))
	} else if lang, _ := attr(got[0], "lang"); lang != "en" {
		t.Errorf(`<html lang> = %q, want "en"`, lang)
	}
	var charset, viewport bool
	var description string
	for _, m := range elements(doc, "meta") {
		if v, _ := attr(m, "charset"); v == "utf-8" {
			charset = true
		}
		switch v, _ := attr(m, "name"); v {
		case "viewport":
			viewport = true
		case "description":
			description = attrVal(m, "content")
		}
	}
	if !charset || !viewport {
		t.Errorf("meta charset = %v, meta viewport = %v, want both", charset, viewport)
	}
	// Search results show it as the summary: it must say what the page is.
	if !strings.Contains(description, "Studio Ghibli film") {
		t.Errorf(`<meta name="description"> content = %q, want a summary naming Studio Ghibli films`, description)
	}
	if got := elements(doc, "a"); len(got) != 0 {
		t.Errorf("fresh page has %d links, want none", len(got))
	}
	if got := elements(doc, "title"); len(got) != 1 {
		t.Errorf("<title> count = %d, want 1", len(got))
	} else if text(got[0]) == "" {
		t.Errorf("<title> is empty")
	}
	if got := elements(doc, "h1"); len(got) != 1 {
		t.Errorf("<h1> count = %d, want 1", len(got))
	}
	if got := elements(doc, "style"); len(got) != 1 {
		t.Errorf("<style> count = %d, want 1", len(got))
	}
	for _, tag := range []string{"script", "link", "img", "iframe"} {
		if got := elements(doc, tag); len(got) != 0 {
			t.Errorf("<%s> count = %d, want 0", tag, len(got))
		}
	}
	for n := range doc.Descendants() {
		if _, ok := attr(n, "style"); ok {
			t.Errorf("<%s> has a style attribute", n.Data)
		}
	}

	// A fresh page carries no time: the same data must render the same
	// bytes whatever fetch produced it. It states the promise instead.
	if times := elements(doc, "time"); len(times) != 0 {
		t.Errorf("<time> count = %d, want none on a fresh page", len(times))
	}
	if !strings.Contains(text(doc), "Checked against the Ghibli API at most 1 minute ago.") {
		t.Errorf("page does not state its freshness promise")
	}
	other := v
	other.FetchedAt = other.FetchedAt.Add(time.Hour)
	if !bytes.Equal(mustPage(t, other), b) {
		t.Errorf("the same data fetched at another time renders other bytes")
	}
	if !strings.Contains(text(doc), "2 films") {
		t.Errorf("page does not state the film count %q", "2 films")
	}

	articles := elements(doc, "article")
	if len(articles) != len(v.Movies) {
		t.Fatalf("<article> count = %d, want %d", len(articles), len(v.Movies))
	}
	for i, a := range articles {
		m := v.Movies[i]
		if got, want := attrVal(a, "id"), "film-"+m.ID; got != want {
			t.Errorf("article[%d] id = %q, want %q", i, got, want)
		}
		if got := attrVal(a, "data-film-id"); got != m.ID {
			t.Errorf("article[%d] data-film-id = %q, want %q", i, got, m.ID)
		}
		if h2 := elements(a, "h2"); len(h2) != 1 || text(h2[0]) != m.Title {
			t.Errorf("article[%d] <h2> = %d elements, want one reading %q", i, len(h2), m.Title)
		}
		if s := text(a); !strings.Contains(s, m.ReleaseDate) || !strings.Contains(s, m.Director) {
			t.Errorf("article[%d] text = %q, want it to contain %q and %q", i, s, m.ReleaseDate, m.Director)
		}
		var ids []string
		for _, li := range elements(a, "li") {
			ids = append(ids, attrVal(li, "data-person-id"))
		}
		var want []string
		for _, p := range m.People {
			want = append(want, p.ID)
		}
		if !slices.Equal(ids, want) {
			t.Errorf("article[%d] <li data-person-id> = %q, want %q", i, ids, want)
		}
		var noPeople bool
		for _, p := range elements(a, "p") {
			if c, _ := attr(p, "class"); c == "no-people" {
				noPeople = true
			}
		}
		if noPeople != (len(m.People) == 0) {
			t.Errorf("article[%d] no-people marker = %v, want %v", i, noPeople, len(m.People) == 0)
		}
	}
}

func TestPage_FilmCount(t *testing.T) {
	tests := []struct {
		n    int
		want string
	}{
		{0, "0 films"},
		{1, "1 film"},
		{3, "3 films"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			v := View{Movies: make([]Movie, tt.n)}
			doc := mustParse(t, mustPage(t, v))
			for _, p := range elements(doc, "p") {
				if c, _ := attr(p, "class"); c == "count" {
					if got := text(p); got != tt.want {
						t.Errorf("count = %q, want %q", got, tt.want)
					}
					return
				}
			}
			t.Errorf("no <p class=count> in page")
		})
	}
}

// hostile strings that would run script or break out of an attribute if
// they reached the page unescaped.
var hostile = []string{
	`<script>alert(1)</script>`,
	`"><img src=x onerror=alert(1)>`,
	`' onmouseover='alert(1)`,
	`</title><script>alert(1)</script>`,
	`</style><script>alert(1)</script>`,
}

// assertInert fails if doc holds anything executable or loadable.
func assertInert(t *testing.T, b []byte) {
	t.Helper()
	doc := mustParse(t, b)
	for _, tag := range []string{"script", "img", "iframe", "object", "embed", "svg"} {
		if got := elements(doc, tag); len(got) != 0 {
			t.Errorf("output has %d <%s> elements, want 0", len(got), tag)
		}
	}
	for n := range doc.Descendants() {
		for _, a := range n.Attr {
			if strings.HasPrefix(strings.ToLower(a.Key), "on") {
				t.Errorf("<%s> has event handler attribute %s=%q", n.Data, a.Key, a.Val)
			}
		}
	}
	if got := elements(doc, "style"); len(got) != 1 {
		t.Errorf("<style> count = %d, want 1", len(got))
	}
}

func TestPage_EscapesHostileStrings(t *testing.T) {
	fields := []struct {
		name string
		set  func(v *View, s string)
	}{
		{"movie id", func(v *View, s string) { v.Movies[0].ID = s }},
		{"title", func(v *View, s string) { v.Movies[0].Title = s }},
		{"release date", func(v *View, s string) { v.Movies[0].ReleaseDate = s }},
		{"director", func(v *View, s string) { v.Movies[0].Director = s }},
		{"person id", func(v *View, s string) { v.Movies[0].People[0].ID = s }},
		{"person name", func(v *View, s string) { v.Movies[0].People[0].Name = s }},
	}
	for _, f := range fields {
		for i, s := range hostile {
			t.Run(fmt.Sprintf("%s/%d", f.name, i), func(t *testing.T) {
				v := fixedView()
				f.set(&v, s)
				b := mustPage(t, v)
				if bytes.Contains(b, []byte(s)) {
					t.Errorf("page contains raw %q", s)
				}
				if esc := template.HTMLEscapeString(s); !bytes.Contains(b, []byte(esc)) {
					t.Errorf("page does not contain escaped %q", esc)
				}
				assertInert(t, b)
			})
		}
	}
}

func TestErrorPage_EscapesHostileStrings(t *testing.T) {
	for i, s := range hostile {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			for _, b := range [][]byte{
				ErrorPage(500, s, "fine"),
				ErrorPage(500, "fine", s),
			} {
				if bytes.Contains(b, []byte(s)) {
					t.Errorf("error page contains raw %q", s)
				}
				if esc := template.HTMLEscapeString(s); !bytes.Contains(b, []byte(esc)) {
					t.Errorf("error page does not contain escaped %q", esc)
				}
				assertInert(t, b)
			}
		})
	}
}

func TestErrorPage_FallsBackWhenTemplateFails(t *testing.T) {
	broken := template.Must(template.New("").Parse(`{{define "error"}}{{template "missing"}}{{end}}`))
	got := errorPage(broken, errorData{Status: 500, Title: "t", Message: "m"})
	if !bytes.Equal(got, fallbackErrorPage) {
		t.Errorf("errorPage() = %q, want the fallback page", got)
	}
	assertInert(t, got)
	if got, want := styleContent(t, got), styleCSS; got != want {
		t.Errorf("fallback <style> content differs from styleCSS")
	}
}

// retryLink returns the one link of doc and its text, failing unless there
// is exactly one and it leads to the film list.
func retryLink(t *testing.T, b []byte) string {
	t.Helper()
	links := elements(mustParse(t, b), "a")
	if len(links) != 1 {
		t.Fatalf("%d links, want 1", len(links))
	}
	if got := attrVal(links[0], "href"); got != "/movies/" {
		t.Errorf(`link href = %q, want "/movies/"`, got)
	}
	return text(links[0])
}

func TestErrorPage_LinksBackToTheList(t *testing.T) {
	for _, tt := range []struct {
		status int
		want   string
	}{
		{503, "Try again"},
		{500, "Try again"},
		{404, "Go to the film list"},
		{405, "Go to the film list"},
	} {
		t.Run(fmt.Sprint(tt.status), func(t *testing.T) {
			if got := retryLink(t, ErrorPage(tt.status, "Title", "Message.")); got != tt.want {
				t.Errorf("link text = %q, want %q", got, tt.want)
			}
		})
	}
	t.Run("fallback", func(t *testing.T) {
		if got, want := retryLink(t, fallbackErrorPage), "Try again"; got != want {
			t.Errorf("link text = %q, want %q", got, want)
		}
	})
}

func TestJSON_RoundTrips(t *testing.T) {
	v := fixedView()
	v.FetchedAt = time.Date(2026, 11, 27, 21, 0, 0, 0, time.FixedZone("JST", 9*60*60))
	b, err := JSON(v)
	if err != nil {
		t.Fatalf("JSON() error = %v", err)
	}
	if !bytes.HasSuffix(b, []byte("}\n")) {
		t.Errorf("JSON() does not end with a newline")
	}
	if bytes.Contains(b, []byte("null")) {
		t.Errorf("JSON() = %s, want no null", b)
	}

	var got struct {
		Movies []struct {
			ID          string   `json:"id"`
			Title       string   `json:"title"`
			ReleaseDate string   `json:"release_date"`
			Director    string   `json:"director"`
			People      []Person `json:"people"`
		} `json:"movies"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("decode: %v", err)
	}
	if len(got.Movies) != len(v.Movies) {
		t.Fatalf("len(movies) = %d, want %d", len(got.Movies), len(v.Movies))
	}
	for i, m := range got.Movies {
		w := v.Movies[i]
		if m.ID != w.ID || m.Title != w.Title || m.ReleaseDate != w.ReleaseDate || m.Director != w.Director {
			t.Errorf("movies[%d] = %+v, want %+v", i, m, w)
		}
		if m.People == nil {
			t.Errorf("movies[%d].people = null, want []", i)
		}
		if !slices.Equal(m.People, w.People) {
			t.Errorf("movies[%d].people = %v, want %v", i, m.People, w.People)
		}
	}
}

func TestJSON_EmptyViewHasEmptyMovies(t *testing.T) {
	b, err := JSON(View{FetchedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)})
	if err != nil {
		t.Fatalf("JSON() error = %v", err)
	}
	if got, want := string(b), `{"movies":[]}`+"\n"; got != want {
		t.Errorf("JSON() = %q, want %q", got, want)
	}
}

// styleContent returns the text between <style> and </style>, read from the
// raw bytes because the CSP hash covers exactly those bytes.
func styleContent(t *testing.T, b []byte) string {
	t.Helper()
	_, rest, ok := bytes.Cut(b, []byte("<style>"))
	if !ok {
		t.Fatalf("no <style> in output")
	}
	css, _, ok := bytes.Cut(rest, []byte("</style>"))
	if !ok {
		t.Fatalf("no </style> in output")
	}
	return string(css)
}

func TestStyleHash_MatchesStyleElement(t *testing.T) {
	pages := map[string][]byte{
		"page":  mustPage(t, fixedView()),
		"error": ErrorPage(404, "Not found", "No such page."),
	}
	for name, b := range pages {
		t.Run(name, func(t *testing.T) {
			if n := bytes.Count(b, []byte("<style")); n != 1 {
				t.Fatalf("<style count = %d, want 1", n)
			}
			sum := sha256.Sum256([]byte(styleContent(t, b)))
			want := "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
			if got := StyleHash(); got != want {
				t.Errorf("StyleHash() = %s, want %s", got, want)
			}
		})
	}
}

// benchView is about the size of the real catalogue: 22 films, 60 people.
func benchView() View {
	v := View{FetchedAt: time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)}
	person := 0
	for i := range 22 {
		m := Movie{
			ID:          fmt.Sprintf("film-%02d-0000-0000-0000-000000000000", i),
			Title:       fmt.Sprintf("Film number %d", i),
			ReleaseDate: fmt.Sprint(1986 + i),
			Director:    "Hayao Miyazaki",
		}
		for range i % 6 { // 0+1+2+3+4+5 per 6 films: 60 people over 22 films
			m.People = append(m.People, Person{
				ID:   fmt.Sprintf("person-%03d-0000-0000-000000000000", person),
				Name: fmt.Sprintf("Person %d", person),
			})
			person++
		}
		v.Movies = append(v.Movies, m)
	}
	return v
}

func BenchmarkPage(b *testing.B) {
	v := benchView()
	for b.Loop() {
		if _, err := Page(v); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkJSON(b *testing.B) {
	v := benchView()
	for b.Loop() {
		if _, err := JSON(v); err != nil {
			b.Fatal(err)
		}
	}
}

func TestStale(t *testing.T) {
	fresh, stale := fixedView(), fixedView()
	stale.Stale, stale.Age = true, 95*time.Second+400*time.Millisecond

	banner := "the Ghibli API is unreachable"
	if p := string(mustPage(t, fresh)); strings.Contains(p, banner) {
		t.Errorf("fresh page shows the stale banner")
	}
	p := string(mustPage(t, stale))
	clock := stale.FetchedAt.UTC().Format("15:04:05") + " UTC"
	if !strings.Contains(p, banner) || !strings.Contains(p, clock) {
		t.Errorf("stale page lacks the banner with the fetch time %q", clock)
	}
	if got, want := retryLink(t, []byte(p)), "Try again"; got != want {
		t.Errorf("stale banner link text = %q, want %q", got, want)
	}

	for _, tt := range []struct {
		v       View
		wantAge *int64
	}{{fresh, nil}, {stale, ptr(int64(95))}} {
		b, err := JSON(tt.v)
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			Stale bool   `json:"stale"`
			Age   *int64 `json:"age_seconds"`
		}
		if err := json.Unmarshal(b, &doc); err != nil {
			t.Fatal(err)
		}
		if doc.Stale != tt.v.Stale || (doc.Age == nil) != (tt.wantAge == nil) || (doc.Age != nil && *doc.Age != *tt.wantAge) {
			t.Errorf("JSON(stale=%v) = stale %v, age %v; want age %v", tt.v.Stale, doc.Stale, doc.Age, tt.wantAge)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestHumanDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		time.Minute:             "1 minute",
		2 * time.Minute:         "2 minutes",
		30 * time.Second:        "30 seconds",
		time.Second:             "1 second",
		1500 * time.Millisecond: "1.5 seconds",
		0:                       "a moment",
	} {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%v) = %q, want %q", d, got, want)
		}
	}
}
