package check

import (
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite generated files (deploy/kubernetes/base/prometheusrule.yaml) instead of comparing")

// repoRoot is the repository's root: go test runs in deploy/check.
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// repoFile is the path of a file of the repository, by its slash path.
func repoFile(t testing.TB, rel string) string {
	t.Helper()
	return filepath.Join(repoRoot(t), filepath.FromSlash(rel))
}

func mustRead(t testing.TB, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(repoFile(t, rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
