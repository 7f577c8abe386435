package render

import (
	"bytes"
	"strings"
	"testing"

	"golang.org/x/net/html"
)

// The HTML helpers every test of this package reads pages with, the fuzz
// targets included.

func mustPage(tb testing.TB, v View) []byte {
	tb.Helper()
	b, err := Page(v)
	if err != nil {
		tb.Fatalf("Page() error = %v", err)
	}
	return b
}

func mustParse(tb testing.TB, b []byte) *html.Node {
	tb.Helper()
	doc, err := html.Parse(bytes.NewReader(b))
	if err != nil {
		tb.Fatalf("html.Parse() error = %v", err)
	}
	return doc
}

// elements returns every element named tag under n, in document order.
func elements(n *html.Node, tag string) []*html.Node {
	var out []*html.Node
	for d := range n.Descendants() {
		if d.Type == html.ElementNode && d.Data == tag {
			out = append(out, d)
		}
	}
	return out
}

func attr(n *html.Node, key string) (string, bool) {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val, true
		}
	}
	return "", false
}

// attrVal is attr for when a missing attribute may read as "".
func attrVal(n *html.Node, key string) string {
	v, _ := attr(n, key)
	return v
}

// text is the text content of nodes, concatenated.
func text(nodes ...*html.Node) string {
	var sb strings.Builder
	for _, n := range nodes {
		for d := range n.Descendants() {
			if d.Type == html.TextNode {
				sb.WriteString(d.Data)
			}
		}
	}
	return sb.String()
}
