package ghibli

import (
	"cmp"
	"net/url"
	"slices"
	"strings"
)

// Film is a film as the API sends it, limited to the fields this package asks for.
type Film struct {
	ID          string   `json:"id"`
	Title       string   `json:"title"`
	ReleaseDate string   `json:"release_date"`
	Director    string   `json:"director"`
	People      []string `json:"people"` // URLs; often only the bare collection URL
}

// Person is a person as the API sends it, limited to the fields this package asks for.
type Person struct {
	ID    string   `json:"id"`
	Name  string   `json:"name"`
	Films []string `json:"films"` // URLs of the films the person appears in
}

// Movie is a film joined with the people who appear in it.
type Movie struct {
	ID          string
	Title       string
	ReleaseDate string
	Director    string
	People      []Cast
}

// Cast is a person as listed under a Movie.
type Cast struct {
	ID   string
	Name string
}

// Join lists every film with the people who appear in it. The relation is
// the union of both sides, each person's films and each film's people,
// matched on the trailing id of each URL and never on its host: the data
// still names a host the API has left. Films come in release order (then
// title, then id) and people by name (then id), so the same data always
// renders the same bytes. Records sharing an id are merged (the first gives
// the title or name, all give links); blank ids and URLs naming unknown ids
// are dropped; Join never fails.
func Join(films []Film, people []Person) []Movie {
	byFilm := make(map[string]*Movie, len(films))
	movies := make([]*Movie, 0, len(films))
	for _, f := range films {
		if f.ID == "" || byFilm[f.ID] != nil {
			continue
		}
		m := &Movie{ID: f.ID, Title: f.Title, ReleaseDate: f.ReleaseDate, Director: f.Director}
		byFilm[f.ID] = m
		movies = append(movies, m)
	}
	byPerson := make(map[string]*Person, len(people))
	for i := range people {
		if p := &people[i]; p.ID != "" && byPerson[p.ID] == nil {
			byPerson[p.ID] = p
		}
	}

	type pair struct{ film, person string }
	seen := make(map[pair]bool)
	add := func(filmID, personID string) {
		m, p := byFilm[filmID], byPerson[personID]
		if m == nil || p == nil || seen[pair{filmID, personID}] {
			return
		}
		seen[pair{filmID, personID}] = true
		m.People = append(m.People, Cast{ID: p.ID, Name: p.Name})
	}
	for _, p := range people {
		for _, u := range p.Films {
			if id, ok := TrailingID(u, "films"); ok {
				add(id, p.ID)
			}
		}
	}
	for _, f := range films {
		for _, u := range f.People {
			if id, ok := TrailingID(u, "people"); ok {
				add(f.ID, id)
			}
		}
	}

	out := make([]Movie, len(movies))
	for i, m := range movies {
		slices.SortFunc(m.People, func(a, b Cast) int {
			return cmp.Or(strings.Compare(a.Name, b.Name), strings.Compare(a.ID, b.ID))
		})
		out[i] = *m
	}
	slices.SortFunc(out, func(a, b Movie) int {
		return cmp.Or(
			strings.Compare(a.ReleaseDate, b.ReleaseDate),
			strings.Compare(a.Title, b.Title),
			strings.Compare(a.ID, b.ID),
		)
	})
	return out
}

// TrailingID returns the id at the end of a resource URL such as
// https://any.host/films/<id>, whatever the host. It reports false for the
// bare collection URL (.../people/) that the API puts in place of a list, and
// for URLs whose next-to-last segment is not collection.
func TrailingID(rawURL, collection string) (string, bool) {
	u, err := url.Parse(strings.TrimSpace(rawURL))
	if err != nil {
		return "", false
	}
	segs := strings.FieldsFunc(u.Path, func(r rune) bool { return r == '/' })
	if len(segs) < 2 || segs[len(segs)-2] != collection {
		return "", false
	}
	return segs[len(segs)-1], true
}
