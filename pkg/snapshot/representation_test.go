package snapshot

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"

	"github.com/movies-dev/movies/pkg/ghibli"
	"github.com/movies-dev/movies/pkg/ghibli/builtin"
	"github.com/movies-dev/movies/pkg/render"
)

// bundledView is the catalogue the server shows for the bundled data, so
// that sizes and timings here are those of the real page.
func bundledView(tb testing.TB) render.View {
	tb.Helper()
	data := builtin.Bundled()
	var films []ghibli.Film
	var people []ghibli.Person
	for _, c := range []struct {
		from any
		into any
	}{{data.Films, &films}, {data.People, &people}} {
		b, err := json.Marshal(c.from)
		if err != nil {
			tb.Fatal(err)
		}
		if err := json.Unmarshal(b, c.into); err != nil {
			tb.Fatal(err)
		}
	}
	v := render.View{FetchedAt: time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)}
	for _, m := range ghibli.Join(films, people) {
		rm := render.Movie{ID: m.ID, Title: m.Title, ReleaseDate: m.ReleaseDate, Director: m.Director}
		for _, p := range m.People {
			rm.People = append(rm.People, render.Person{ID: p.ID, Name: p.Name})
		}
		v.Movies = append(v.Movies, rm)
	}
	return v
}

func mustRepresentation(tb testing.TB, body []byte) *Representation {
	tb.Helper()
	r, err := NewRepresentation(body, "text/plain", time.Now(), time.Time{})
	if err != nil {
		tb.Fatalf("NewRepresentation() error = %v", err)
	}
	return r
}

// decode undoes a variant's content coding with a decoder independent of
// the encoder's settings.
func decode(t *testing.T, v *Variant) []byte {
	t.Helper()
	var (
		out []byte
		err error
	)
	switch v.Coding {
	case "identity":
		return v.Body
	case "br":
		out, err = io.ReadAll(brotli.NewReader(bytes.NewReader(v.Body)))
	case "zstd":
		var d *zstd.Decoder
		if d, err = zstd.NewReader(nil); err == nil {
			out, err = d.DecodeAll(v.Body, nil)
			d.Close()
		}
	case "gzip":
		var zr *gzip.Reader
		if zr, err = gzip.NewReader(bytes.NewReader(v.Body)); err == nil {
			out, err = io.ReadAll(zr)
		}
	default:
		t.Fatalf("unknown coding %q", v.Coding)
	}
	if err != nil {
		t.Fatalf("decode %s: %v", v.Coding, err)
	}
	return out
}

func TestNewRepresentation_EveryVariantDecodesToTheBody(t *testing.T) {
	snap, err := New(bundledView(t), time.Now(), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		r    *Representation
	}{
		{"page", snap.HTML},
		{"JSON", snap.JSON},
		{"empty", mustRepresentation(t, nil)},
		{"one byte", mustRepresentation(t, []byte("x"))},
	} {
		t.Run(tt.name, func(t *testing.T) {
			body := tt.r.Identity().Body
			var codings []string
			for _, v := range tt.r.Variants() {
				codings = append(codings, v.Coding)
				if got := decode(t, v); !bytes.Equal(got, body) {
					t.Errorf("%s decodes to %d bytes, want the %d-byte body", v.Coding, len(got), len(body))
				}
				if want := []string{strconv.Itoa(len(v.Body))}; fmt.Sprint(v.ContentLength) != fmt.Sprint(want) {
					t.Errorf("%s: ContentLength = %q, want %q", v.Coding, v.ContentLength, want)
				}
				if v.Coding == "identity" {
					if v.Encoding != nil {
						t.Errorf("identity: Encoding = %q, want nil", v.Encoding)
					}
				} else if len(v.Encoding) != 1 || v.Encoding[0] != v.Coding {
					t.Errorf("%s: Encoding = %q, want [%s]", v.Coding, v.Encoding, v.Coding)
				}
				if len(v.ETagHeader) != 1 || v.ETagHeader[0] != v.ETag {
					t.Errorf("%s: ETagHeader = %q, want [%s]", v.Coding, v.ETagHeader, v.ETag)
				}
			}
			if got, want := fmt.Sprint(codings), "[identity br zstd gzip]"; got != want {
				t.Errorf("Variants() codings = %s, want %s", got, want)
			}
		})
	}
}

// TestNewRepresentation_CompressesTheRealPage pins that every coding earns
// its place on the bodies actually served, and logs the sizes (go test -v).
func TestNewRepresentation_CompressesTheRealPage(t *testing.T) {
	snap, err := New(bundledView(t), time.Now(), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]*Representation{"page": snap.HTML, "JSON": snap.JSON} {
		size := map[string]int{}
		for _, v := range r.Variants() {
			size[v.Coding] = len(v.Body)
		}
		t.Logf("%s: identity %d, br %d, zstd %d, gzip %d bytes", name, size["identity"], size["br"], size["zstd"], size["gzip"])
		for _, c := range []string{"br", "zstd", "gzip"} {
			if size[c] > size["identity"]/2 {
				t.Errorf("%s: %s %d bytes of %d; want at most half", name, c, size[c], size["identity"])
			}
		}
		if size["br"] >= size["gzip"] {
			t.Errorf("%s: br %d bytes, not below gzip's %d", name, size["br"], size["gzip"])
		}
		// What a browser that speaks every coding gets is the smallest.
		v := r.Negotiate([]string{"gzip, deflate, br, zstd"})
		for c, n := range size {
			if n < len(v.Body) {
				t.Errorf("%s: negotiated %s (%d bytes), but %s is %d", name, v.Coding, len(v.Body), c, n)
			}
		}
	}
}

func TestNewRepresentation_EveryVariantHasItsOwnStrongETag(t *testing.T) {
	r := mustRepresentation(t, []byte("page"))
	seen := map[string]string{}
	for _, v := range r.Variants() {
		if len(v.ETag) < 3 || v.ETag[0] != '"' || v.ETag[len(v.ETag)-1] != '"' {
			t.Errorf("%s: ETag %s is not a quoted strong tag", v.Coding, v.ETag)
		}
		if other, dup := seen[v.ETag]; dup {
			t.Errorf("%s and %s share ETag %s", v.Coding, other, v.ETag)
		}
		seen[v.ETag] = v.Coding
	}
	// The same content in a later snapshot keeps its tags: a client's
	// cached copy stays valid across refreshes that changed nothing.
	again := mustRepresentation(t, []byte("page"))
	for i, v := range again.Variants() {
		if want := r.Variants()[i].ETag; v.ETag != want {
			t.Errorf("%s: ETag %s for the same content, want %s", v.Coding, v.ETag, want)
		}
	}
}

func TestNotModified(t *testing.T) {
	mod := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	fetched := mod.Add(300 * time.Millisecond)
	r, err := NewRepresentation([]byte("page"), "text/plain", fetched, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	etag := r.Identity().ETag
	gzipTag := r.variants[codingGzip].ETag
	tests := []struct {
		name string
		h    http.Header
		want bool
	}{
		{"unconditional", nil, false},
		{"matching tag", http.Header{"If-None-Match": {etag}}, true},
		{"weak form of the tag", http.Header{"If-None-Match": {"W/" + etag}}, true},
		{"in a list", http.Header{"If-None-Match": {`"x", ` + etag}}, true},
		{"in a second header line", http.Header{"If-None-Match": {`"x"`, etag}}, true},
		{"star", http.Header{"If-None-Match": {`*`}}, true},
		{"other tag", http.Header{"If-None-Match": {`"abd"`}}, false},
		{"other variant's tag", http.Header{"If-None-Match": {gzipTag}}, false},
		{"tag decides over date", http.Header{"If-None-Match": {`"x"`}, "If-Modified-Since": {mod.Format(http.TimeFormat)}}, false},
		{"our Last-Modified", http.Header{"If-Modified-Since": {mod.Format(http.TimeFormat)}}, true},
		{"later date", http.Header{"If-Modified-Since": {mod.Add(time.Hour).Format(http.TimeFormat)}}, true},
		{"earlier date", http.Header{"If-Modified-Since": {mod.Add(-time.Second).Format(http.TimeFormat)}}, false},
		{"garbage date", http.Header{"If-Modified-Since": {"yesterday"}}, false},
	}
	for _, tt := range tests {
		if got := r.NotModified(tt.h, r.Identity()); got != tt.want {
			t.Errorf("%s: NotModified(%v) = %v, want %v", tt.name, tt.h, got, tt.want)
		}
	}

	// A second snapshot in the same second shares Last-Modified with the
	// first: a client holding the first must not be told it is current.
	next, err := NewRepresentation([]byte("new page"), "text/plain", fetched.Add(500*time.Millisecond), fetched)
	if err != nil {
		t.Fatal(err)
	}
	if h := (http.Header{"If-Modified-Since": r.LastModified}); next.NotModified(h, next.Identity()) {
		t.Error("If-Modified-Since of the previous snapshot in the same second answered 304")
	}
	// A snapshot in a later second is unambiguous again.
	later, _ := NewRepresentation([]byte("later"), "text/plain", fetched.Add(2*time.Second), next.modTime.Add(500*time.Millisecond))
	if h := (http.Header{"If-Modified-Since": later.LastModified}); !later.NotModified(h, later.Identity()) {
		t.Error("If-Modified-Since of a snapshot's own Last-Modified did not answer 304")
	}
	if h := (http.Header{"If-Modified-Since": r.LastModified}); later.NotModified(h, later.Identity()) {
		t.Error("If-Modified-Since of an older snapshot answered 304")
	}
}

// TestNotModified_OnlyByTheVariantsOwnTag: a cache holding the br body
// must not be told that its bytes are the gzip variant, or it would serve
// br to a client that asked for gzip.
func TestNotModified_OnlyByTheVariantsOwnTag(t *testing.T) {
	r := mustRepresentation(t, []byte("page"))
	for _, held := range r.Variants() {
		for _, served := range r.Variants() {
			h := http.Header{"If-None-Match": held.ETagHeader}
			if got, want := r.NotModified(h, served), held == served; got != want {
				t.Errorf("If-None-Match %s for the %s variant: NotModified = %v, want %v", held.ETag, served.Coding, got, want)
			}
		}
	}
}

// BenchmarkNewRepresentation measures the compression once per snapshot,
// for each of the two bodies the server prepares.
func BenchmarkNewRepresentation(b *testing.B) {
	view := bundledView(b)
	page, err := render.Page(view)
	if err != nil {
		b.Fatal(err)
	}
	js, err := render.JSON(view)
	if err != nil {
		b.Fatal(err)
	}
	for _, bb := range []struct {
		name string
		body []byte
	}{{"page", page}, {"JSON", js}} {
		b.Run(bb.name, func(b *testing.B) {
			b.SetBytes(int64(len(bb.body)))
			for b.Loop() {
				if _, err := NewRepresentation(bb.body, "text/html", view.FetchedAt, time.Time{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestNew_SameDataSameValidators: two snapshots of the same data fetched at
// different times are the same bytes and ETags, so a client holding the
// first gets a 304 from the second.
func TestNew_SameDataSameValidators(t *testing.T) {
	changed := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	v1 := bundledView(t)
	v1.FetchedAt = changed
	v2 := v1
	v2.FetchedAt = changed.Add(3 * time.Minute)
	s1, err := New(v1, changed, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	s2, err := New(v2, changed, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]*Representation{{s1.HTML, s2.HTML}, {s1.JSON, s2.JSON}} {
		old, cur := r[0], r[1]
		for i, v := range cur.Variants() {
			if v.ETag != old.Variants()[i].ETag {
				t.Errorf("%s: ETag %s, then %s for the same data", v.Coding, old.Variants()[i].ETag, v.ETag)
			}
			if !cur.NotModified(http.Header{"If-None-Match": {old.Variants()[i].ETag}}, v) {
				t.Errorf("%s: the new snapshot does not validate the old one's ETag", v.Coding)
			}
		}
		if !cur.NotModified(http.Header{"If-Modified-Since": old.LastModified}, cur.Identity()) {
			t.Error("Last-Modified of unchanged data does not validate")
		}
	}
}
