package check

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"unicode"
)

// linkPattern matches inline Markdown links and images: [text](target) or
// ![alt](target "title"). The target is group 1.
var linkPattern = regexp.MustCompile(`!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)`)

// BrokenLinks checks every relative link in the Markdown files given (paths
// on disk): the file it names must exist, and a #fragment must be a
// heading of that file (as GitHub spells heading anchors). Links with a
// scheme (https:, mailto:) are not followed; code blocks and code spans are
// not prose and are skipped. It returns one line per broken link.
func BrokenLinks(files []string) ([]string, error) {
	var broken []string
	anchors := map[string]map[string]bool{}
	anchorsOf := func(path string) (map[string]bool, error) {
		if a, ok := anchors[path]; ok {
			return a, nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		a := HeadingAnchors(string(b))
		anchors[path] = a
		return a, nil
	}
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		for i, line := range proseLines(string(b)) {
			for _, m := range linkPattern.FindAllStringSubmatch(line, -1) {
				target := m[1]
				if regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`).MatchString(target) {
					continue // https:, mailto: and the like
				}
				where := fmt.Sprintf("%s:%d: %s", file, i+1, target)
				path, frag, _ := strings.Cut(target, "#")
				dest := file
				if path != "" {
					dest = filepath.Join(filepath.Dir(file), filepath.FromSlash(path))
					if _, err := os.Stat(dest); err != nil {
						broken = append(broken, where+": no such file")
						continue
					}
				}
				if frag == "" {
					continue
				}
				if !strings.HasSuffix(dest, ".md") {
					broken = append(broken, where+": a fragment into a file that is not Markdown")
					continue
				}
				a, err := anchorsOf(dest)
				if err != nil {
					return nil, err
				}
				if !a[frag] {
					broken = append(broken, where+": no heading #"+frag+" in "+dest)
				}
			}
		}
	}
	return broken, nil
}

// proseLines returns the lines of a Markdown document with fenced code
// blocks and code spans blanked out, so line numbers still match.
func proseLines(doc string) []string {
	lines := strings.Split(doc, "\n")
	inFence := false
	spans := regexp.MustCompile("`[^`]*`")
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "```") {
			inFence = !inFence
			lines[i] = ""
			continue
		}
		if inFence {
			lines[i] = ""
			continue
		}
		lines[i] = spans.ReplaceAllString(l, "``")
	}
	return lines
}

// HeadingAnchors returns the anchors GitHub gives the ATX headings of a
// Markdown document: lower case, punctuation other than - and _ dropped,
// spaces turned into -, and -1, -2 appended to repeats.
func HeadingAnchors(doc string) map[string]bool {
	anchors := map[string]bool{}
	seen := map[string]int{}
	for _, l := range proseLines(doc) {
		text, ok := strings.CutPrefix(l, "#")
		if !ok {
			continue
		}
		text = strings.TrimLeft(text, "#")
		if !strings.HasPrefix(text, " ") {
			continue // #hashtag, not a heading
		}
		var b strings.Builder
		for _, r := range strings.ToLower(strings.TrimSpace(text)) {
			switch {
			case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_':
				b.WriteRune(r)
			case r == ' ':
				b.WriteRune('-')
			}
		}
		slug := b.String()
		if n := seen[slug]; n > 0 {
			anchors[slug+"-"+strconv.Itoa(n)] = true
		} else {
			anchors[slug] = true
		}
		seen[slug]++
	}
	return anchors
}
