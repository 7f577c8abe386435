// Package render turns a plain view model of the film catalogue into the
// HTML page and the JSON document that the server caches and serves.
//
// It knows nothing of the upstream API or of the HTTP framework: callers map
// their data into a View. Rendering happens once per data snapshot, so the
// functions return bytes rather than writing to a response.
//
// All functions are safe for concurrent use.
package render

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html/template"
	"time"
)

// Person is someone who appears in a movie.
type Person struct {
	ID, Name string
}

// Movie is one film and its people, in display order.
type Movie struct {
	ID, Title, ReleaseDate, Director string
	People                           []Person
}

// View is one snapshot of the catalogue.
//
// A fresh page or document carries no time of its own: the same data
// renders the same bytes whatever fetch produced it, so a cache or browser
// holding them can be told with a 304 that they are still current. The
// fetch time appears only on a stale rendering, which is never cached.
type View struct {
	// FetchedAt is when the upstream fetch started; shown, in UTC, only
	// on a stale rendering.
	FetchedAt time.Time
	// MaxAge is the promise the page states: the data was checked against
	// the Ghibli API at most this long ago (the TTL).
	MaxAge time.Duration
	Movies []Movie
	// Stale marks a snapshot served past its TTL because the upstream is
	// unreachable: the page says so in a banner, the JSON gives its Age.
	Stale bool
	Age   time.Duration // with Stale, how old the snapshot is
}

// listPath is where the server serves the film list. The error page and
// the stale banner link there, so a visitor can retry with a click: a
// plain link, because the CSP admits no script.
const listPath = "/movies/"

var (
	//go:embed page.html.tmpl
	templateFS embed.FS

	// styleCSS is the whole content of the one <style> element of every
	// page. The CSP hash is computed from it, so it must reach the output
	// byte for byte: it is inserted as template.CSS, which html/template
	// passes through unescaped.
	//
	// Its colours are custom properties per prefers-color-scheme, each
	// text colour at least 4.5:1 on its scheme's background (WCAG 2.1 AA;
	// contrast_test.go measures them). The background is set explicitly
	// rather than left to the browser's canvas, so that checkers such as
	// axe, which assume white when none is set, judge the colours the
	// visitor sees. Visited links keep the measured link colour: a retry
	// link is visited by design.
	//
	//go:embed style.css
	styleCSS string

	styleHash = func() string {
		sum := sha256.Sum256([]byte(styleCSS))
		return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	}()

	templateFuncs = template.FuncMap{
		"style":    func() template.CSS { return template.CSS(styleCSS) },
		"listPath": func() string { return listPath },
	}
	templates = template.Must(template.New("").Funcs(templateFuncs).ParseFS(templateFS, "page.html.tmpl"))

	// fallbackErrorPage is served when the error template cannot execute:
	// ErrorPage is the last resort of a failing request and must not fail
	// itself. It carries the same style so the CSP hash still holds.
	fallbackErrorPage = []byte(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>` + styleCSS + `</style>
<title>Error</title>
</head>
<body>
<main>
<h1>Something went wrong</h1>
<p>The page could not be shown. Please try again later.</p>
<p><a href="` + listPath + `">Try again</a></p>
</main>
</body>
</html>
`)
)

// StyleHash returns the Content-Security-Policy source expression
// ('sha256-<base64>') for the <style> element used by Page and ErrorPage,
// so a policy like "style-src " + StyleHash() admits it and nothing else.
func StyleHash() string { return styleHash }

// pageData is what the page template sees: the time is formatted here so
// the template cannot show it in any zone but UTC.
type pageData struct {
	MaxAge     string // "1 minute", for people
	Movies     []Movie
	Stale      bool
	FetchedAt  string // RFC 3339, for the stale banner's datetime attribute
	StaleClock string // HH:MM:SS UTC of the fetch, for the stale banner
}

// Page renders v as a complete HTML5 document.
func Page(v View) ([]byte, error) {
	t := v.FetchedAt.UTC()
	d := pageData{
		MaxAge: humanDuration(v.MaxAge),
		Movies: v.Movies,
		Stale:  v.Stale,
	}
	if v.Stale {
		d.FetchedAt, d.StaleClock = t.Format(time.RFC3339), t.Format("15:04:05 UTC")
	}
	var buf bytes.Buffer
	if err := templates.ExecuteTemplate(&buf, "page", d); err != nil {
		return nil, fmt.Errorf("render: page: %w", err)
	}
	return buf.Bytes(), nil
}

// The JSON wire types are kept apart from the view model so the document's
// shape is pinned here, not by whoever adds a field to Movie.
type (
	jsonDoc struct {
		// Stale, FetchedAt and AgeSeconds appear only on a stale
		// snapshot: a fresh document is the data alone, so the same data
		// is the same bytes and revalidates with a 304.
		Stale      bool        `json:"stale,omitempty"`
		FetchedAt  string      `json:"fetched_at,omitempty"`
		AgeSeconds *int64      `json:"age_seconds,omitempty"`
		Movies     []jsonMovie `json:"movies"`
	}
	jsonMovie struct {
		ID          string       `json:"id"`
		Title       string       `json:"title"`
		ReleaseDate string       `json:"release_date"`
		Director    string       `json:"director"`
		People      []jsonPerson `json:"people"`
	}
	jsonPerson struct {
		ID   string `json:"id"`
		Name string `json:"name"`
	}
)

// JSON renders v as a JSON document followed by a newline:
//
//	{"movies": [{"id", "title", "release_date", "director",
//	"people": [{"id", "name"}]}]}
//
// A stale view starts with "stale": true, "fetched_at": "<RFC 3339, UTC>"
// and "age_seconds".
//
// Empty movie and people lists are [] rather than null, so clients can
// iterate without a nil check.
func JSON(v View) ([]byte, error) {
	doc := jsonDoc{Movies: make([]jsonMovie, 0, len(v.Movies))}
	if v.Stale {
		age := int64(v.Age / time.Second)
		doc.Stale, doc.FetchedAt, doc.AgeSeconds = true, v.FetchedAt.UTC().Format(time.RFC3339), &age
	}
	for _, m := range v.Movies {
		people := make([]jsonPerson, 0, len(m.People))
		for _, p := range m.People {
			people = append(people, jsonPerson{ID: p.ID, Name: p.Name})
		}
		doc.Movies = append(doc.Movies, jsonMovie{
			ID:          m.ID,
			Title:       m.Title,
			ReleaseDate: m.ReleaseDate,
			Director:    m.Director,
			People:      people,
		})
	}
	var buf bytes.Buffer
	// Encode, unlike Marshal, ends the document with a newline.
	if err := json.NewEncoder(&buf).Encode(doc); err != nil {
		return nil, fmt.Errorf("render: json: %w", err)
	}
	return buf.Bytes(), nil
}

type errorData struct {
	Status         int
	Title, Message string
}

// ErrorPage renders a short HTML5 page for a failure: the status code, a
// headline and a sentence, all escaped, and a link to the film list that
// reads "Try again" for a 5xx and "Go to the film list" otherwise. It never
// fails: should the template not execute, it returns a constant page
// instead.
func ErrorPage(status int, title, message string) []byte {
	return errorPage(templates, errorData{Status: status, Title: title, Message: message})
}

// errorPage is ErrorPage with the template set passed in, so tests can
// exercise the fallback with a set that fails.
func errorPage(t *template.Template, d errorData) []byte {
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "error", d); err != nil {
		return bytes.Clone(fallbackErrorPage)
	}
	return buf.Bytes()
}

// humanDuration says d the way the page does: "1 minute", "30 seconds",
// "1.5 seconds".
func humanDuration(d time.Duration) string {
	switch {
	case d <= 0:
		return "a moment"
	case d%time.Minute == 0:
		if d == time.Minute {
			return "1 minute"
		}
		return fmt.Sprintf("%d minutes", d/time.Minute)
	case d == time.Second:
		return "1 second"
	case d%time.Second == 0:
		return fmt.Sprintf("%d seconds", d/time.Second)
	default:
		return fmt.Sprintf("%g seconds", d.Seconds())
	}
}
