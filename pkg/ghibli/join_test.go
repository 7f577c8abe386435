package ghibli_test

import (
	"context"
	"slices"
	"testing"

	"github.com/movies-dev/movies/pkg/ghibli"
	"github.com/movies-dev/movies/pkg/ghibli/ghiblitest"
)

// bundledMovies fetches the bundled data through the real client from a
// loopback fake, as the server does, and joins it.
func bundledMovies(t *testing.T) []ghibli.Movie {
	t.Helper()
	srv := ghiblitest.NewServer(ghiblitest.Bundled())
	t.Cleanup(srv.Close)
	movies, err := newClient(srv.URL).Movies(context.Background())
	if err != nil {
		t.Fatalf("Movies() error = %v", err)
	}
	return movies
}

func findMovie(t *testing.T, movies []ghibli.Movie, title string) ghibli.Movie {
	t.Helper()
	for _, m := range movies {
		if m.Title == title {
			return m
		}
	}
	t.Fatalf("no movie titled %q", title)
	return ghibli.Movie{}
}

func names(m ghibli.Movie) []string {
	var out []string
	for _, p := range m.People {
		out = append(out, p.Name)
	}
	return out
}

func TestJoin_BundledData(t *testing.T) {
	movies := bundledMovies(t)
	if len(movies) != 22 {
		t.Fatalf("len(movies) = %d, want 22", len(movies))
	}
	tests := []struct {
		title      string
		wantPeople int
		mustHave   []string
	}{
		{"Castle in the Sky", 14, []string{"Pazu", "Lusheeta Toel Ul Laputa", "Captain Dola"}},
		{"Earwig and the Witch", 6, []string{"Earwig", "Mandrake"}},
		{"The Cat Returns", 6, []string{"Renaldo Moon aka Moon aka Muta", "Baron Humbert von Gikkingen"}},
		{"Whisper of the Heart", 2, []string{"Renaldo Moon aka Moon aka Muta", "Baron Humbert von Gikkingen"}},
		{"My Neighbor Totoro", 10, []string{"Totoro"}},
		{"Grave of the Fireflies", 0, nil},
		{"The Red Turtle", 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.title, func(t *testing.T) {
			m := findMovie(t, movies, tt.title)
			if len(m.People) != tt.wantPeople {
				t.Errorf("%s has %d people %v, want %d", tt.title, len(m.People), names(m), tt.wantPeople)
			}
			for _, n := range tt.mustHave {
				if !slices.Contains(names(m), n) {
					t.Errorf("%s people %v lack %q", tt.title, names(m), n)
				}
			}
		})
	}

	var empty int
	for _, m := range movies {
		if len(m.People) == 0 {
			empty++
		}
		if !slices.IsSortedFunc(m.People, func(a, b ghibli.Cast) int {
			if a.Name < b.Name {
				return -1
			}
			if a.Name > b.Name {
				return 1
			}
			return 0
		}) {
			t.Errorf("%s people not sorted by name: %v", m.Title, names(m))
		}
	}
	if empty != 11 {
		t.Errorf("films without people = %d, want 11 (listed, not dropped)", empty)
	}
	if first := movies[0]; first.Title != "Castle in the Sky" {
		t.Errorf("first movie = %q, want the earliest release, Castle in the Sky", first.Title)
	}
}

func TestJoin(t *testing.T) {
	film := func(id string, people ...string) ghibli.Film {
		return ghibli.Film{ID: id, Title: "T" + id, ReleaseDate: "2000", People: people}
	}
	person := func(id, name string, films ...string) ghibli.Person {
		return ghibli.Person{ID: id, Name: name, Films: films}
	}
	tests := []struct {
		name   string
		films  []ghibli.Film
		people []ghibli.Person
		want   map[string][]string // film id -> person ids
	}{
		{
			name:   "person side only, old host",
			films:  []ghibli.Film{film("f1", "https://ghibliapi.herokuapp.com/people/")},
			people: []ghibli.Person{person("p1", "A", "https://ghibliapi.herokuapp.com/films/f1")},
			want:   map[string][]string{"f1": {"p1"}},
		},
		{
			name:   "film side only, any host",
			films:  []ghibli.Film{film("f1", "https://elsewhere.example/people/p1")},
			people: []ghibli.Person{person("p1", "A")},
			want:   map[string][]string{"f1": {"p1"}},
		},
		{
			name:   "both sides on different hosts, de-duplicated",
			films:  []ghibli.Film{film("f1", "https://new.example/people/p1/", "https://new.example/people/p1")},
			people: []ghibli.Person{person("p1", "A", "https://old.example/films/f1", "http://old.example/films/f1")},
			want:   map[string][]string{"f1": {"p1"}},
		},
		{
			name:   "union of sides",
			films:  []ghibli.Film{film("f1", "/people/p2")},
			people: []ghibli.Person{person("p1", "A", "/films/f1"), person("p2", "B")},
			want:   map[string][]string{"f1": {"p1", "p2"}},
		},
		{
			name:  "unknown ids, wrong collections and garbage URLs ignored",
			films: []ghibli.Film{film("f1", "https://x/people/nobody", "https://x/films/p1", "%zz", "", "p1")},
			people: []ghibli.Person{person("p1", "A", "https://x/films/nofilm", "https://x/people/f1", "::", "https://x/films/"),
				person("", "blank id", "https://x/films/f1")},
			want: map[string][]string{"f1": nil},
		},
		{
			name:   "duplicate film ids keep the first, people from both",
			films:  []ghibli.Film{film("f1", "/people/p1"), {ID: "f1", Title: "dup", People: []string{"/people/p2"}}},
			people: []ghibli.Person{person("p1", "A"), person("p2", "B")},
			want:   map[string][]string{"f1": {"p1", "p2"}},
		},
		{
			name:   "duplicate person ids: first name, links from both",
			films:  []ghibli.Film{film("f1"), film("f2")},
			people: []ghibli.Person{person("p1", "A", "/films/f1"), person("p1", "dup", "/films/f2")},
			want:   map[string][]string{"f1": {"p1"}, "f2": {"p1"}},
		},
		{
			name:   "blank film id dropped",
			films:  []ghibli.Film{film(""), film("f1")},
			people: nil,
			want:   map[string][]string{"f1": nil},
		},
		{
			name:  "nothing",
			films: nil, people: nil,
			want: map[string][]string{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ghibli.Join(tt.films, tt.people)
			gotMap := map[string][]string{}
			for _, m := range got {
				var ids []string
				for _, p := range m.People {
					ids = append(ids, p.ID)
				}
				gotMap[m.ID] = ids
			}
			if len(gotMap) != len(tt.want) {
				t.Fatalf("Join() = %v, want %v", gotMap, tt.want)
			}
			for id, want := range tt.want {
				if !slices.Equal(gotMap[id], want) {
					t.Errorf("Join()[%s] = %v, want %v", id, gotMap[id], want)
				}
			}
		})
	}
}

func TestJoin_StableOrder(t *testing.T) {
	films := []ghibli.Film{
		{ID: "b", Title: "B", ReleaseDate: "2001"},
		{ID: "a", Title: "A", ReleaseDate: "2001"},
		{ID: "c", Title: "C", ReleaseDate: "1999"},
	}
	people := []ghibli.Person{
		{ID: "2", Name: "Zed", Films: []string{"/films/a"}},
		{ID: "1", Name: "Amy", Films: []string{"/films/a"}},
		{ID: "0", Name: "Amy", Films: []string{"/films/a"}},
	}
	want := ghibli.Join(films, people)
	slices.Reverse(films)
	slices.Reverse(people)
	got := ghibli.Join(films, people)
	var order []string
	for _, m := range got {
		order = append(order, m.ID)
	}
	if !slices.Equal(order, []string{"c", "a", "b"}) {
		t.Errorf("film order = %v, want [c a b] (release, then title)", order)
	}
	if !slices.EqualFunc(got, want, func(x, y ghibli.Movie) bool {
		return x.ID == y.ID && slices.Equal(x.People, y.People)
	}) {
		t.Errorf("Join() depends on input order:\n got %+v\nwant %+v", got, want)
	}
	if p := got[1].People; len(p) != 3 || p[0].ID != "0" || p[1].ID != "1" || p[2].ID != "2" {
		t.Errorf("people of a = %+v, want Amy(0), Amy(1), Zed(2)", p)
	}
}

func TestTrailingID(t *testing.T) {
	tests := []struct {
		url, collection, want string
		ok                    bool
	}{
		{"https://ghibliapi.herokuapp.com/films/2baf70d1", "films", "2baf70d1", true},
		{"https://ghibliapi.vercel.app/films/2baf70d1/", "films", "2baf70d1", true},
		{"/films/x", "films", "x", true},
		{"https://ghibliapi.herokuapp.com/people/", "people", "", false},
		{"https://ghibliapi.herokuapp.com/people", "people", "", false},
		{"https://h/films/x", "people", "", false},
		{"", "films", "", false},
		{"%zz", "films", "", false},
	}
	for _, tt := range tests {
		got, ok := ghibli.TrailingID(tt.url, tt.collection)
		if got != tt.want || ok != tt.ok {
			t.Errorf("TrailingID(%q, %q) = %q, %v, want %q, %v", tt.url, tt.collection, got, ok, tt.want, tt.ok)
		}
	}
}

// BenchmarkJoin joins the bundled data, as fetched: 22 films, 57 people.
func BenchmarkJoin(b *testing.B) {
	srv := ghiblitest.NewServer(ghiblitest.Bundled())
	defer srv.Close()
	c := newClient(srv.URL)
	defer c.HTTPClient.CloseIdleConnections()
	films, err := c.Films(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	people, err := c.People(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		ghibli.Join(films, people)
	}
}
