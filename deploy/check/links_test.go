package check

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestDocs_RelativeLinksResolve checks every relative link and image in
// README.md and docs/*.md: the README points into docs/ for everything it
// does not say itself, so a moved page or a renamed heading must fail here.
func TestDocs_RelativeLinksResolve(t *testing.T) {
	files, err := filepath.Glob(repoFile(t, "docs/*.md"))
	if err != nil {
		t.Fatal(err)
	}
	files = append([]string{repoFile(t, "README.md")}, files...)
	if len(files) < 5 {
		t.Fatalf("found %v: want README.md and the docs pages", files)
	}
	broken, err := BrokenLinks(files)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range broken {
		t.Error(b)
	}
	// Every docs page is reachable from the README.
	readme := string(mustRead(t, "README.md"))
	for _, f := range files[1:] {
		if rel := "docs/" + filepath.Base(f); !strings.Contains(readme, "("+rel+")") {
			t.Errorf("README.md does not link %s", rel)
		}
	}
}

// TestBrokenLinks_FindsEachKind feeds the checker pages broken each way.
func TestBrokenLinks_FindsEachKind(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	write("docs/page.md", "# A page\n\n## Running a fleet\n\n## Running a fleet\n")
	write("docs/shot.png", "")
	readme := write("README.md", strings.Join([]string{
		"# Title",
		"[ok](docs/page.md) [ok](docs/page.md#running-a-fleet) [ok](docs/page.md#running-a-fleet-1) ![ok](docs/shot.png)",
		"[ok](#title) [ok](https://example.com/x) `[code](nowhere.md)`",
		"```", "[fenced](nowhere.md)", "```",
		"[gone](docs/gone.md)",
		"[no anchor](docs/page.md#behind-a-cache)",
		"[no own anchor](#nothing)",
		"![no image](docs/none.png)",
	}, "\n"))
	broken, err := BrokenLinks([]string{readme})
	if err != nil {
		t.Fatal(err)
	}
	var targets []string
	for _, b := range broken {
		targets = append(targets, strings.SplitN(strings.TrimPrefix(b, readme+":"), ": ", 3)[1])
	}
	want := []string{"docs/gone.md", "docs/page.md#behind-a-cache", "#nothing", "docs/none.png"}
	if !slices.Equal(targets, want) {
		t.Errorf("BrokenLinks found %q, want %q (all of %q)", targets, want, broken)
	}
}
