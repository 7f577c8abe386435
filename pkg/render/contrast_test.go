package render

import (
	"math"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The colours in style.css, measured as WCAG 2.1 does. The browser test
// (e2e) runs axe-core on the rendered pages; this catches a bad colour
// without a browser, and says by how much.

var (
	customProperty = regexp.MustCompile(`--([a-z]+):\s*#([0-9a-fA-F]{6})\b`)
	colorDecl      = regexp.MustCompile(`(?:^|[\s;{])color:\s*([^;}]+)`)
)

// schemeColours returns the custom properties of the light scheme (the
// :root rule before the dark media query) and of the dark one (inside it).
func schemeColours(t *testing.T) (light, dark map[string]string) {
	t.Helper()
	before, after, ok := strings.Cut(styleCSS, "@media (prefers-color-scheme: dark)")
	if !ok {
		t.Fatal("style.css has no dark-scheme media query")
	}
	after, _, _ = strings.Cut(after, "}") // the dark :root rule only
	parse := func(css string) map[string]string {
		m := map[string]string{}
		for _, sub := range customProperty.FindAllStringSubmatch(css, -1) {
			m[sub[1]] = strings.ToLower(sub[2])
		}
		return m
	}
	return parse(before), parse(after)
}

// relativeLuminance is WCAG 2.1's, of an sRGB colour written rrggbb.
func relativeLuminance(t *testing.T, hex string) float64 {
	t.Helper()
	n, err := strconv.ParseUint(hex, 16, 32)
	if err != nil {
		t.Fatalf("colour %q: %v", hex, err)
	}
	lin := func(c uint64) float64 {
		s := float64(c) / 255
		if s <= 0.04045 {
			return s / 12.92
		}
		return math.Pow((s+0.055)/1.055, 2.4)
	}
	return 0.2126*lin(n>>16&0xff) + 0.7152*lin(n>>8&0xff) + 0.0722*lin(n&0xff)
}

func contrastRatio(t *testing.T, a, b string) float64 {
	t.Helper()
	la, lb := relativeLuminance(t, a), relativeLuminance(t, b)
	return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)
}

func TestStyle_ColoursMeetWCAGAAInBothSchemes(t *testing.T) {
	light, dark := schemeColours(t)
	for _, tt := range []struct {
		fg  string
		min float64
	}{
		{"text", 4.5},  // 1.4.3: body text
		{"muted", 4.5}, // 1.4.3: the fetch time, "No people listed", the status line
		{"link", 4.5},  // 1.4.3: link text
		{"warn", 3},    // 1.4.11: the stale banner's border, a graphic
	} {
		for _, s := range []struct {
			name    string
			colours map[string]string
		}{{"light", light}, {"dark", dark}} {
			fg, bg := s.colours[tt.fg], s.colours["bg"]
			if fg == "" || bg == "" {
				t.Errorf("%s scheme: --%s = %q, --bg = %q; want both", s.name, tt.fg, fg, bg)
				continue
			}
			got := contrastRatio(t, fg, bg)
			t.Logf("%s: --%s #%s on #%s = %.2f:1", s.name, tt.fg, fg, bg, got)
			if got < tt.min {
				t.Errorf("%s scheme: --%s #%s on #%s = %.2f:1, want at least %.1f:1", s.name, tt.fg, fg, bg, got, tt.min)
			}
		}
	}
}

// A literal colour in a color declaration would bypass the measured
// custom properties, and would not change with the scheme.
func TestStyle_TextColoursComeFromTheMeasuredProperties(t *testing.T) {
	decls := colorDecl.FindAllStringSubmatch(styleCSS, -1)
	if len(decls) == 0 {
		t.Fatal("style.css has no color declarations")
	}
	for _, d := range decls {
		if v := strings.TrimSpace(d[1]); !strings.HasPrefix(v, "var(--") {
			t.Errorf("color: %s, want var(--text), var(--muted) or var(--link)", v)
		}
	}
}
