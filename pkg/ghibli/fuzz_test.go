package ghibli_test

import (
	"cmp"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/movies-dev/movies/pkg/ghibli"
)

// A small slice of the real upstream's shape (see ghiblitest/data.json),
// as the client asks for it: films with people URLs on the old host, one
// with only the bare collection URL, and people naming their films.
const (
	seedFilms = `[
{"id":"2baf70d1-42bb-4437-b551-e5fed5a87abe","title":"Castle in the Sky","release_date":"1986","director":"Hayao Miyazaki",
 "people":["https://ghibliapi.herokuapp.com/people/598f7048-74ff-41e0-92ef-87dc1ad980a9","https://ghibliapi.herokuapp.com/people/fe93adf2-2f3a-4ec4-9f68-5422f1b87c01"]},
{"id":"12cfb892-aac0-4c5b-94af-521852e46d6a","title":"Grave of the Fireflies","release_date":"1988","director":"Isao Takahata",
 "people":["https://ghibliapi.herokuapp.com/people/"]},
{"id":"58611129-2dbc-4a81-a72f-77ddfc1b1b49","title":"My Neighbor Totoro","release_date":"1988","director":"Hayao Miyazaki",
 "people":["https://ghibliapi.herokuapp.com/people/986faac6-67e3-4fb8-a9ee-bad077c2e7fe"]}
]`
	seedPeople = `[
{"id":"fe93adf2-2f3a-4ec4-9f68-5422f1b87c01","name":"Pazu","films":["https://ghibliapi.herokuapp.com/films/2baf70d1-42bb-4437-b551-e5fed5a87abe"]},
{"id":"598f7048-74ff-41e0-92ef-87dc1ad980a9","name":"Lusheeta Toel Ul Laputa","films":["https://ghibliapi.vercel.app/films/2baf70d1-42bb-4437-b551-e5fed5a87abe/"]},
{"id":"986faac6-67e3-4fb8-a9ee-bad077c2e7fe","name":"Satsuki Kusakabe","films":["https://ghibliapi.herokuapp.com/films/58611129-2dbc-4a81-a72f-77ddfc1b1b49"]}
]`
)

// fuzzUpstream answers /films and /people with whatever bodies the fuzzer
// last set, always as a 200, so every failure is the decoder's to name.
type fuzzUpstream struct {
	mu            sync.Mutex
	films, people []byte
}

func (u *fuzzUpstream) set(films, people []byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.films, u.people = films, people
}

// RoundTrip serves the request in process. Over a loopback listener the
// instrumented net/http stack ran at about 300 execs/s and its scheduling
// made coverage flaky, so the fuzzer spent its time minimizing noise; in
// process it runs over ten times faster and the real Client still does
// everything it does with a body: status, size cap, decode, Cause.
func (u *fuzzUpstream) RoundTrip(r *http.Request) (*http.Response, error) {
	u.mu.Lock()
	var body []byte
	switch r.URL.Path {
	case ghibli.EndpointFilms:
		body = u.films
	case ghibli.EndpointPeople:
		body = u.people
	}
	u.mu.Unlock()
	rec := httptest.NewRecorder()
	if body == nil {
		http.NotFound(rec, r)
	} else {
		rec.Header().Set("Content-Type", "application/json")
		rec.Write(body)
	}
	return rec.Result(), nil
}

// FuzzClientAndJoin feeds arbitrary bodies through the real client into
// Join: nothing panics, failures carry the Cause a plain decode of the same
// bytes predicts, and successes satisfy checkJoin.
func FuzzClientAndJoin(f *testing.F) {
	f.Add([]byte(seedFilms), []byte(seedPeople))
	f.Add([]byte(seedFilms), []byte(`[]`))
	f.Add([]byte(``), []byte(seedPeople))
	f.Add([]byte(`null`), []byte(`null`))
	f.Add([]byte(`{}`), []byte(`{"films":[]}`))
	f.Add([]byte(seedFilms[:len(seedFilms)/2]), []byte(seedPeople))
	f.Add([]byte(strings.Repeat("[", 20000)+strings.Repeat("]", 20000)), []byte(seedPeople))
	f.Add([]byte(`[{"id":1e999,"title":123456789012345678901234567890}]`), []byte(`[{"id":-0.0e-400}]`))
	f.Add([]byte(`[{"id":"f","title":"千と千尋の神隠し","release_date":"2001","people":["/people/p","\u0000"]},{"ID":"f","Title":"dup"}]`),
		[]byte(`[{"id":"p","name":"\ud83d\udc31 \u00e9","films":["//x/films/f/","/films/f?x#y"]},{"id":"p","name":"second"},{"id":""}]`))
	f.Add([]byte(`[{"id":"a","people":null},{"id":"b","people":[null,"",7]}]`), []byte(`[{"id":"p","name":null,"films":{}}]`))

	var up fuzzUpstream
	c := &ghibli.Client{BaseURL: "http://upstream.test", HTTPClient: &http.Client{Transport: &up, Timeout: 5 * time.Second}}

	f.Fuzz(func(t *testing.T, filmsBody, peopleBody []byte) {
		up.set(filmsBody, peopleBody)
		movies, err := c.Movies(t.Context())

		films, filmsCause := decode[ghibli.Film](filmsBody)
		people, peopleCause := decode[ghibli.Person](peopleBody)
		if err != nil {
			// Films and people are fetched concurrently: either side's
			// failure may be the one reported.
			if got := ghibli.Cause(err); got == "ok" || (got != filmsCause && got != peopleCause) {
				t.Fatalf("Movies() error = %v, Cause %q; want cause %q (films) or %q (people)", err, got, filmsCause, peopleCause)
			}
			return
		}
		if filmsCause != "ok" || peopleCause != "ok" {
			t.Fatalf("Movies() = %d movies, nil error; want cause %q (films) or %q (people)", len(movies), filmsCause, peopleCause)
		}
		checkJoin(t, films, people, movies)
	})
}

// decode is the client's decoding of one body done by hand, and the Cause
// the client should report for it.
func decode[T any](body []byte) ([]T, string) {
	var list []T
	switch {
	case len(body) > ghibli.DefaultMaxBodyBytes:
		return nil, "too_large"
	case json.Unmarshal(body, &list) != nil:
		return nil, "malformed"
	case len(list) == 0:
		return nil, "empty"
	}
	return list, "ok"
}

// FuzzJoin builds films and people from fuzzed text and links them with
// URLs in every shape the upstream has used: old and new hosts, trailing
// slashes, path prefixes, surrounding spaces, bare collection URLs and
// wrong collections.
//
// films is lines of "id\ttitle\trelease_date\tdirector", people lines of
// "id\tname"; links is read three bytes at a time: URL shape (its low bit
// picks the side that carries the URL), film index, person index.
func FuzzJoin(f *testing.F) {
	f.Add("2baf70d1\tCastle in the Sky\t1986\tHayao Miyazaki\n12cfb892\tGrave of the Fireflies\t1988\tIsao Takahata",
		"fe93adf2\tPazu\n598f7048\tLusheeta Toel Ul Laputa",
		[]byte{0, 0, 0, 1, 0, 1, 2, 1, 0, 11, 1, 1, 13, 0, 0})
	f.Add("a\tSame\t2000\t\nb\tSame\t2000\t\nc\tEarlier\t1999\t\na\tdup\t1900\t", "x\tAmy\ny\tAmy\nz\t\nx\tdup",
		[]byte{0, 0, 0, 0, 0, 1, 3, 1, 2, 5, 3, 3, 7, 0, 1, 9, 1, 0, 15, 2, 1, 17, 2, 2})
	f.Add("", "", []byte{})
	f.Add("\n\t\t\t", "\t\n\t", []byte{1, 0, 0})
	f.Add("id with spaces/and?query#frag%zz\tt\t\t", "ü\x00\xff\tnaïve", []byte{0, 0, 0, 1, 0, 0, 16, 0, 0, 17, 0, 0})

	f.Fuzz(func(t *testing.T, filmsText, peopleText string, links []byte) {
		var films []ghibli.Film
		for line := range strings.Lines(filmsText) {
			fs := fields(line, 4)
			films = append(films, ghibli.Film{ID: fs[0], Title: fs[1], ReleaseDate: fs[2], Director: fs[3]})
		}
		var people []ghibli.Person
		for line := range strings.Lines(peopleText) {
			fs := fields(line, 2)
			people = append(people, ghibli.Person{ID: fs[0], Name: fs[1]})
		}

		firstPerson := make(map[string]int)
		for i, p := range people {
			if _, ok := firstPerson[p.ID]; !ok {
				firstPerson[p.ID] = i
			}
		}

		type pair struct{ film, person string }
		var mustLink []pair
		for i := 0; i+2 < len(links) && len(films) > 0 && len(people) > 0; i += 3 {
			shape := urlShapes[int(links[i]>>1)%len(urlShapes)]
			fi, pi := int(links[i+1])%len(films), int(links[i+2])%len(people)
			film, person := films[fi], people[pi]
			named := shape.links
			if links[i]&1 == 0 {
				people[pi].Films = append(people[pi].Films, shape.url("films", film.ID))
				named = named && firstPerson[person.ID] == pi // see checkJoin
			} else {
				films[fi].People = append(films[fi].People, shape.url("people", person.ID))
			}
			// An escaped id links from any host, with or without a trailing
			// slash, unless it holds a slash: the path is matched after
			// unescaping, so %2F reads as a separator.
			if named && film.ID != "" && person.ID != "" &&
				!strings.Contains(film.ID, "/") && !strings.Contains(person.ID, "/") {
				mustLink = append(mustLink, pair{film.ID, person.ID})
			}
		}

		movies := ghibli.Join(films, people)
		checkJoin(t, films, people, movies)

		got := make(map[pair]bool)
		for _, m := range movies {
			for _, p := range m.People {
				got[pair{m.ID, p.ID}] = true
			}
		}
		for _, l := range mustLink {
			if !got[l] {
				t.Errorf("Join() lacks film %q with person %q, linked by a URL", l.film, l.person)
			}
		}
	})
}

// fields splits one line on tabs into exactly n fields.
func fields(line string, n int) []string {
	fs := strings.SplitN(strings.TrimSuffix(line, "\n"), "\t", n)
	for len(fs) < n {
		fs = append(fs, "")
	}
	return fs
}

// A urlShape is a URL form FuzzJoin links with: {c} stands for the
// collection, {id} for the escaped id and {raw} for the id as it is. links
// says whether the shape names its id (given an id without a slash).
type urlShape struct {
	pattern string
	links   bool
}

func (s urlShape) url(collection, id string) string {
	return strings.NewReplacer("{c}", collection, "{id}", url.PathEscape(id), "{raw}", id).Replace(s.pattern)
}

var urlShapes = []urlShape{
	{"https://ghibliapi.herokuapp.com/{c}/{id}", true},
	{"https://ghibliapi.vercel.app/{c}/{id}/", true},
	{"/{c}/{id}", true},
	{"http://127.0.0.1:8080/api/v1/{c}/{id}?x=1#top", true},
	{" \thttps://elsewhere.example/{c}//{id}\n", true},
	{"https://ghibliapi.herokuapp.com/{c}/", false},
	{"https://ghibliapi.herokuapp.com/{c}", false},
	{"https://ghibliapi.herokuapp.com/vehicles/{id}", false},
	{"{id}", false},
	// Unescaped, as a careless upstream might send it: whatever TrailingID
	// makes of it, checkJoin holds Join to it.
	{"https://h/{c}/{raw}", false},
}

// checkJoin holds movies, the Join of films and people, to Join's contract:
// every film with an id exactly once, in (release date, title, id) order,
// with the fields of its first occurrence; each film's people unique, in
// (name, id) order, named as their first occurrence; and the relation is
// exactly the union of what the films' people URLs and the people's films
// URLs name, matched by TrailingID.
func checkJoin(t *testing.T, films []ghibli.Film, people []ghibli.Person, movies []ghibli.Movie) {
	t.Helper()
	firstFilm := make(map[string]ghibli.Film)
	for _, f := range films {
		if _, ok := firstFilm[f.ID]; f.ID != "" && !ok {
			firstFilm[f.ID] = f
		}
	}
	firstPerson := make(map[string]ghibli.Person)
	for _, p := range people {
		if _, ok := firstPerson[p.ID]; p.ID != "" && !ok {
			firstPerson[p.ID] = p
		}
	}

	type pair struct{ film, person string }
	want := make(map[pair]bool)
	for _, f := range films {
		for _, u := range f.People {
			if id, ok := ghibli.TrailingID(u, "people"); ok && firstFilm[f.ID].ID != "" && firstPerson[id].ID != "" {
				want[pair{f.ID, id}] = true
			}
		}
	}
	// Both sides are a union: every person with an id brings its films
	// URLs, as every film brings its people URLs (the first of each id
	// gives the name and title).
	for _, p := range people {
		for _, u := range p.Films {
			if id, ok := ghibli.TrailingID(u, "films"); ok && p.ID != "" && firstFilm[id].ID != "" {
				want[pair{id, p.ID}] = true
			}
		}
	}

	if len(movies) != len(firstFilm) {
		t.Errorf("Join() = %d movies, want one for each of %d film ids", len(movies), len(firstFilm))
	}
	seen := make(map[string]bool)
	for i, m := range movies {
		f, ok := firstFilm[m.ID]
		switch {
		case m.ID == "":
			t.Errorf("movie %d has an empty id", i)
		case seen[m.ID]:
			t.Errorf("movie %q listed twice", m.ID)
		case !ok:
			t.Errorf("movie %q is not in the input", m.ID)
		case m.Title != f.Title || m.ReleaseDate != f.ReleaseDate || m.Director != f.Director:
			t.Errorf("movie %+v, want the first film with its id, %+v", m, f)
		}
		seen[m.ID] = true
		if i > 0 {
			prev := movies[i-1]
			if cmp.Or(strings.Compare(prev.ReleaseDate, m.ReleaseDate), strings.Compare(prev.Title, m.Title), strings.Compare(prev.ID, m.ID)) >= 0 {
				t.Errorf("movies %q and %q not in (release date, title, id) order", prev.ID, m.ID)
			}
		}

		for j, c := range m.People {
			p, ok := firstPerson[c.ID]
			switch {
			case !ok:
				t.Errorf("movie %q lists person %q, not in the input", m.ID, c.ID)
			case c.Name != p.Name:
				t.Errorf("movie %q lists person %q as %q, want %q", m.ID, c.ID, c.Name, p.Name)
			case !want[pair{m.ID, c.ID}]:
				t.Errorf("movie %q lists person %q, linked by no URL", m.ID, c.ID)
			}
			delete(want, pair{m.ID, c.ID})
			if j > 0 {
				prev := m.People[j-1]
				if cmp.Or(strings.Compare(prev.Name, c.Name), strings.Compare(prev.ID, c.ID)) >= 0 {
					t.Errorf("movie %q: people %q and %q not unique in (name, id) order", m.ID, prev.ID, c.ID)
				}
			}
		}
	}
	for l := range want {
		t.Errorf("Join() lacks film %q with person %q, linked by a URL", l.film, l.person)
	}
}
