package snapshot

import (
	"strings"
	"testing"
)

// negotiateTests are Accept-Encoding header lines (nil: no header) and the
// coding chosen for a body that compresses as pages do, br smallest, then
// zstd, gzip and identity.
var negotiateTests = []struct {
	name  string
	lines []string
	want  string
}{
	// No header, empty header.
	{"no header gets identity", nil, "identity"},
	{"empty header gets identity only", []string{""}, "identity"},
	{"blank header gets identity only", []string{" \t "}, "identity"},
	{"empty elements only get identity", []string{" , ,"}, "identity"},

	// Plain lists.
	{"gzip", []string{"gzip"}, "gzip"},
	{"br", []string{"br"}, "br"},
	{"zstd", []string{"zstd"}, "zstd"},
	{"identity", []string{"identity"}, "identity"},
	{"browser list gets the smallest", []string{"gzip, deflate, br, zstd"}, "br"},
	{"browser list without zstd", []string{"gzip, deflate, br"}, "br"},
	{"zstd beats gzip on a tie", []string{"gzip, zstd"}, "zstd"},
	{"gzip and deflate", []string{"gzip, deflate"}, "gzip"},
	{"only codings we lack get identity", []string{"deflate, compress"}, "identity"},
	{"RFC example: compress, gzip", []string{"compress, gzip"}, "gzip"},

	// Names.
	{"coding names ignore case", []string{"GZIP"}, "gzip"},
	{"mixed case br", []string{"Br"}, "br"},
	{"x-gzip is gzip", []string{"x-gzip"}, "gzip"},
	{"x-gzip ignores case", []string{"X-GZip"}, "gzip"},
	{"a longer name is not gzip", []string{"gzipx"}, "identity"},

	// Weights.
	{"higher q wins over the smaller body", []string{"br;q=0.5, gzip"}, "gzip"},
	{"client's order of q, not of listing", []string{"gzip;q=0.4, br;q=0.5"}, "br"},
	{"thousandths count", []string{"gzip;q=1.0, zstd;q=0.999"}, "gzip"},
	{"smallest positive q", []string{"br;q=0.001, gzip;q=0.002"}, "gzip"},
	{"equal q goes to the smaller body", []string{"gzip;q=0.5, br;q=0.5"}, "br"},
	{"RFC example: compress;q=0.5, gzip;q=1.0", []string{"compress;q=0.5, gzip;q=1.0"}, "gzip"},
	{"RFC example with identity and star", []string{"gzip;q=1.0, identity; q=0.5, *;q=0"}, "gzip"},
	{"identity preferred by q", []string{"identity, gzip;q=0.5"}, "identity"},
	{"identity and gzip tied go to gzip", []string{"identity;q=0.5, gzip;q=0.5"}, "gzip"},
	{"any listed coding beats unlisted identity", []string{"gzip;q=0.001"}, "gzip"},
	{"q name ignores case", []string{"br;Q=0.1, gzip;Q=0.2"}, "gzip"},
	{"spaces around the weight", []string{"br ; q=0.1 , gzip ;q = 0.2"}, "gzip"},
	{"tabs as whitespace", []string{"\tbr;q=0.1\t,\tgzip\t"}, "gzip"},
	{"1. is a valid q", []string{"br;q=0.9, gzip;q=1."}, "gzip"},
	{"1.000 is a valid q", []string{"br;q=0.9, gzip;q=1.000"}, "gzip"},
	{"other parameters are ignored", []string{"gzip;level=9"}, "gzip"},

	// Refusals.
	{"gzip refused", []string{"gzip;q=0"}, "identity"},
	{"gzip refused with decimals", []string{"gzip; q=0.000"}, "identity"},
	{"every coding refused", []string{"br;q=0, zstd;q=0, gzip;q=0"}, "identity"},
	{"explicit refusal wins over star", []string{"gzip;q=0, *"}, "br"},
	{"br refused, star for the rest", []string{"br;q=0, *"}, "zstd"},
	{"br and zstd refused, star for the rest", []string{"br;q=0, zstd;q=0, *"}, "gzip"},
	{"identity refused, gzip listed", []string{"gzip, identity;q=0"}, "gzip"},
	{"identity refused, star", []string{"identity;q=0, *"}, "br"},
	{"the last entry for a coding decides", []string{"gzip;q=0, gzip"}, "gzip"},
	{"the last refusal decides", []string{"gzip, gzip;q=0"}, "identity"},

	// Star.
	{"star gets the smallest", []string{"*"}, "br"},
	{"listed coding above star", []string{"*;q=0.5, gzip"}, "gzip"},
	{"star covers identity", []string{"*;q=0.5, gzip;q=0.4"}, "br"},
	{"listed identity above star", []string{"identity, *;q=0.5"}, "identity"},
	{"star refusing the rest", []string{"*;q=0, gzip;q=0.1"}, "gzip"},

	// Nothing acceptable: identity anyway (RFC 9110 section 12.5.3).
	{"star refused", []string{"*;q=0"}, "identity"},
	{"identity refused, nothing else listed", []string{"identity;q=0"}, "identity"},
	{"identity and star refused", []string{"identity;q=0, *;q=0"}, "identity"},
	{"only unknown codings, identity refused", []string{"deflate, identity;q=0"}, "identity"},

	// Weights that do not parse make their entry not acceptable.
	{"word as q", []string{"gzip;q=bogus"}, "identity"},
	{"q above 1", []string{"gzip;q=1.5"}, "identity"},
	{"q of 2", []string{"br;q=2, gzip"}, "gzip"},
	{"1 with a fraction", []string{"gzip;q=1.001"}, "identity"},
	{"four decimals", []string{"gzip;q=0.1234"}, "identity"},
	{"negative q", []string{"gzip;q=-1"}, "identity"},
	{"empty q", []string{"gzip;q="}, "identity"},
	{"leading dot", []string{"gzip;q=.5"}, "identity"},
	{"exponent", []string{"gzip;q=1e-1"}, "identity"},
	{"invalid q is a refusal, not an omission", []string{"gzip;q=bogus, *"}, "br"},
	{"invalid star refuses unlisted codings", []string{"*;q=x, zstd;q=0.1"}, "zstd"},

	// Several header lines are one list.
	{"second line adds a coding", []string{"br;q=0.1", "gzip"}, "gzip"},
	{"second line refuses", []string{"*", "br;q=0"}, "zstd"},
	{"empty second line", []string{"gzip", ""}, "gzip"},
	{"empty first line", []string{"", "zstd"}, "zstd"},
	{"refusal in one line, star in the other", []string{"identity;q=0", "*;q=0"}, "identity"},
}

func compressible() []byte {
	return []byte(strings.Repeat("<li>My Neighbor Totoro (1988), Hayao Miyazaki</li>\n", 200))
}

func TestNegotiate(t *testing.T) {
	r := mustRepresentation(t, compressible())
	// The table's wants assume the usual order of sizes.
	sizes := []int{len(r.variants[codingBr].Body), len(r.variants[codingZstd].Body), len(r.variants[codingGzip].Body), len(r.Identity().Body)}
	for i := 1; i < len(sizes); i++ {
		if sizes[i-1] >= sizes[i] {
			t.Fatalf("sizes br, zstd, gzip, identity = %v; the table needs them increasing", sizes)
		}
	}
	for _, tt := range negotiateTests {
		if got := r.Negotiate(tt.lines); got.Coding != tt.want {
			t.Errorf("%s: Negotiate(%q) = %s, want %s", tt.name, tt.lines, got.Coding, tt.want)
		}
	}
}

// TestNegotiate_TiesGoToTheSmallestBody: on a body too small to compress,
// every coding adds bytes, and a client accepting all of them equally gets
// the plain one.
func TestNegotiate_TiesGoToTheSmallestBody(t *testing.T) {
	r := mustRepresentation(t, []byte("x"))
	for _, tt := range []struct {
		lines []string
		want  string
	}{
		{[]string{"*"}, "identity"},
		{[]string{"gzip;q=0.001"}, "identity"}, // identity's default weight ties the lowest
		{[]string{"gzip;q=0.002"}, "gzip"},
		{[]string{"identity;q=0.5, *"}, smallest(r, "br", "zstd", "gzip")},
	} {
		if got := r.Negotiate(tt.lines); got.Coding != tt.want {
			t.Errorf("Negotiate(%q) = %s, want %s", tt.lines, got.Coding, tt.want)
		}
	}
}

// smallest names the coding with the smallest body among codings, the
// first on a tie.
func smallest(r *Representation, codings ...string) string {
	best, n := "", -1
	for _, c := range codings {
		for _, v := range r.Variants() {
			if v.Coding == c && (n < 0 || len(v.Body) < n) {
				best, n = c, len(v.Body)
			}
		}
	}
	return best
}

// TestNegotiate_AllocatesNothing: negotiation runs on every cache hit.
func TestNegotiate_AllocatesNothing(t *testing.T) {
	r := mustRepresentation(t, compressible())
	for _, tt := range negotiateTests {
		if n := testing.AllocsPerRun(100, func() { r.Negotiate(tt.lines) }); n != 0 {
			t.Errorf("%s: Negotiate(%q) allocates %v times, want 0", tt.name, tt.lines, n)
		}
	}
}

func BenchmarkNegotiate(b *testing.B) {
	r := mustRepresentation(b, compressible())
	for _, bb := range []struct {
		name  string
		lines []string
	}{
		{"none", nil},
		{"gzip", []string{"gzip"}},
		{"browser", []string{"gzip, deflate, br, zstd"}},
		{"weighted", []string{"br;q=0.5, gzip;q=1.0, identity;q=0.1, *;q=0"}},
	} {
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				r.Negotiate(bb.lines)
			}
		})
	}
}
