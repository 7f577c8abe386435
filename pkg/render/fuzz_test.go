package render

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"
)

// The elements and attributes the templates write. Whatever the data, a
// page holds nothing else: anything more is markup that came from the data.
var (
	pageElements  = set("html", "head", "meta", "style", "title", "body", "header", "h1", "p", "time", "main", "article", "h2", "dl", "dt", "dd", "ul", "li")
	errorElements = set("html", "head", "meta", "style", "title", "body", "main", "h1", "p", "a")
	pageAttrs     = set("lang", "charset", "name", "content", "datetime", "id", "data-film-id", "data-person-id", "class")
	errorAttrs    = set("lang", "charset", "name", "content", "class", "href")
)

func set(xs ...string) map[string]bool {
	m := make(map[string]bool, len(xs))
	for _, x := range xs {
		m[x] = true
	}
	return m
}

func oneFilm(filmID, title, released, director, personID, name string) View {
	return View{
		FetchedAt: time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC),
		Movies: []Movie{{
			ID: filmID, Title: title, ReleaseDate: released, Director: director,
			People: []Person{{ID: personID, Name: name}},
		}},
	}
}

// FuzzPage renders one film with one person from arbitrary strings: the
// page has the same elements and attributes as a page of benign data, the
// strings come back as text and attribute values exactly, and the JSON
// document holds them exactly.
func FuzzPage(f *testing.F) {
	f.Add("2baf70d1-42bb-4437-b551-e5fed5a87abe", "Castle in the Sky", "1986", "Hayao Miyazaki", "fe93adf2-2f3a-4ec4-9f68-5422f1b87c01", "Pazu")
	f.Add("", "", "", "", "", "")
	f.Add(`"><script>alert(1)</script>`, "</h2><img src=x onerror=alert(1)>", "<!--", "]]><![CDATA[", `' onmouseover='x`, "</style><style>*{}</style>")
	f.Add("x\" onclick=\"y", "&amp;&lt;&#0;&#x110000;&nosuch;", "</title><title>", "\x00\r\n\r\f\v", "a b\tc", "<li>two</li>")
	f.Add("千と千尋の神隠し", "\u202eevil\u202c", "\ufeff", "\xff\xfe", "\xed\xa0\x80", "🐱\u200d")
	f.Add("</article></main></body></html><p>", "<plaintext>", "<xmp>", "<noscript>", "<template>", "<textarea>")

	ref := mustParse(f, mustPage(f, oneFilm("f", "T", "1986", "D", "p", "N")))
	refStyle := text(elements(ref, "style")...)
	refShape := shape(ref)

	f.Fuzz(func(t *testing.T, filmID, title, released, director, personID, name string) {
		v := oneFilm(filmID, title, released, director, personID, name)
		doc := mustParse(t, mustPage(t, v))

		checkOnly(t, doc, pageElements, pageAttrs)
		if got := shape(doc); got != refShape {
			t.Fatalf("page structure differs from a benign page's:\n got %s\nwant %s", got, refShape)
		}
		if got := elements(doc, "title"); len(got) != 1 || text(got...) != "Studio Ghibli films" {
			t.Errorf("<title> = %q, want one, the constant", text(got...))
		}
		if got := elements(doc, "style"); len(got) != 1 || text(got...) != refStyle {
			t.Errorf("<style> count = %d or content differs from the constant style", len(got))
		}
		dd := elements(doc, "dd")
		article := elements(doc, "article")[0]
		li := elements(doc, "li")[0]
		for _, c := range []struct{ what, got, want string }{
			{"<h2> text", text(elements(doc, "h2")...), title},
			{"released <dd> text", text(dd[0]), orUnknown(released)},
			{"director <dd> text", text(dd[1]), orUnknown(director)},
			{"<li> text", text(li), name},
			{"<article id>", attrVal(article, "id"), "film-" + filmID},
			{"<article data-film-id>", attrVal(article, "data-film-id"), filmID},
			{"<li data-person-id>", attrVal(li, "data-person-id"), personID},
		} {
			if want := parsed(c.want); c.got != want {
				t.Errorf("%s = %q, want %q", c.what, c.got, want)
			}
		}

		checkJSON(t, v)
	})
}

// FuzzErrorPage renders an error page from arbitrary strings: it has the
// same elements and attributes as one from benign strings and shows them
// as text.
func FuzzErrorPage(f *testing.F) {
	f.Add("Upstream unavailable", "The Ghibli API did not answer; try again in a minute.")
	f.Add("", "")
	f.Add("</title><script>alert(1)</script>", `<p onclick="x">`)
	f.Add("<!--", "\x00\r\n\xff&amp;")
	f.Add("Something went wrong", "</main></body></html><h1>")

	ref := mustParse(f, ErrorPage(502, "T", "M"))
	refStyle := text(elements(ref, "style")...)
	refShape := shape(ref)

	f.Fuzz(func(t *testing.T, title, message string) {
		doc := mustParse(t, ErrorPage(502, title, message))

		checkOnly(t, doc, errorElements, errorAttrs)
		if got := shape(doc); got != refShape {
			t.Fatalf("error page structure differs from a benign one's:\n got %s\nwant %s", got, refShape)
		}
		if got := elements(doc, "style"); len(got) != 1 || text(got...) != refStyle {
			t.Errorf("<style> count = %d or content differs from the constant style", len(got))
		}
		p := elements(doc, "p")
		for _, c := range []struct{ what, got, want string }{
			{"<title> text", text(elements(doc, "title")...), "502 " + title},
			{"<h1> text", text(elements(doc, "h1")...), title},
			{"<p> text", text(p[0]), message},
		} {
			if want := parsed(c.want); c.got != want {
				t.Errorf("%s = %q, want %q", c.what, c.got, want)
			}
		}
	})
}

// checkJSON decodes JSON(v) and compares it with v.
func checkJSON(t *testing.T, v View) {
	t.Helper()
	b, err := JSON(v)
	if err != nil {
		t.Fatalf("JSON() error = %v", err)
	}
	if !json.Valid(b) {
		t.Fatalf("JSON() = %s, not valid JSON", b)
	}
	var doc struct {
		Movies []struct {
			ID          string `json:"id"`
			Title       string `json:"title"`
			ReleaseDate string `json:"release_date"`
			Director    string `json:"director"`
			People      []struct {
				ID   string `json:"id"`
				Name string `json:"name"`
			} `json:"people"`
		} `json:"movies"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("decoding JSON(): %v", err)
	}
	if len(doc.Movies) != 1 || len(doc.Movies[0].People) != 1 {
		t.Fatalf("JSON() = %s, want one movie with one person", b)
	}
	m, got := v.Movies[0], doc.Movies[0]
	for _, c := range [][2]string{
		{got.ID, m.ID}, {got.Title, m.Title}, {got.ReleaseDate, m.ReleaseDate}, {got.Director, m.Director},
		{got.People[0].ID, m.People[0].ID}, {got.People[0].Name, m.People[0].Name},
	} {
		// encoding/json writes each byte of invalid UTF-8 as U+FFFD, as
		// converting to runes does.
		if want := string([]rune(c[1])); c[0] != want {
			t.Errorf("JSON() round trip = %q, want %q", c[0], want)
		}
	}
}

// parsed is what an HTML parser makes of s once it has been escaped into
// text or a quoted attribute: html/template writes NUL as U+FFFD, and
// parsing normalizes line endings to \n.
func parsed(s string) string {
	return strings.NewReplacer("\r\n", "\n", "\r", "\n", "\x00", "\uFFFD").Replace(s)
}

// orUnknown is how the page shows a missing date or director.
func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// checkOnly reports elements and attributes outside the given sets, and
// any event handler attribute.
func checkOnly(t *testing.T, doc *html.Node, allowedElements, allowedAttrs map[string]bool) {
	t.Helper()
	for n := range doc.Descendants() {
		if n.Type != html.ElementNode {
			continue
		}
		if !allowedElements[n.Data] {
			t.Errorf("unexpected element <%s>", n.Data)
		}
		for _, a := range n.Attr {
			if strings.HasPrefix(strings.ToLower(a.Key), "on") {
				t.Errorf("<%s> has event handler attribute %s=%q", n.Data, a.Key, a.Val)
			} else if !allowedAttrs[a.Key] || a.Namespace != "" {
				t.Errorf("<%s> has unexpected attribute %s=%q", n.Data, a.Key, a.Val)
			}
		}
	}
}

// shape describes the document's nodes apart from text: element names
// with their attribute names, comments and doctypes, in document order.
func shape(doc *html.Node) string {
	var sb strings.Builder
	for n := range doc.Descendants() {
		switch n.Type {
		case html.ElementNode:
			fmt.Fprintf(&sb, "<%s", n.Data)
			for _, a := range n.Attr {
				fmt.Fprintf(&sb, " %s", a.Key)
			}
			fmt.Fprintf(&sb, ">@%d ", depth(n))
		case html.CommentNode:
			sb.WriteString("<!--> ")
		case html.DoctypeNode:
			sb.WriteString("<!doctype> ")
		}
	}
	return sb.String()
}

func depth(n *html.Node) int {
	d := 0
	for ; n.Parent != nil; n = n.Parent {
		d++
	}
	return d
}
