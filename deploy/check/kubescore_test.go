package check

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

// kubeScore runs kube-score, pinned in deploy/check/kubescore/go.mod and
// built from the Go module proxy, on a YAML stream, for the Kubernetes
// version the API types are pinned to, with the optional seccomp and
// container-port checks on (the requests-equal-limits ones stay off: a CPU
// request below its limit is deliberate). Warnings count as failures. It
// returns the report and whether kube-score passed it.
func kubeScore(t *testing.T, stream []byte) (string, bool) {
	t.Helper()
	cmd := exec.Command("go", "tool", "kube-score", "score", "--kubernetes-version", "v1.37",
		"--enable-optional-test", "container-seccomp-profile", "--enable-optional-test", "container-ports-check",
		"--exit-one-on-warning", "--output-format", "ci", "-")
	cmd.Dir = "kubescore"
	cmd.Stdin = bytes.NewReader(stream)
	out, err := cmd.CombinedOutput()
	if _, exited := err.(*exec.ExitError); err != nil && !exited {
		t.Fatalf("go tool kube-score: %v\n%s", err, out)
	}
	return string(out), err == nil
}

// TestManifests_KubeScore lints what each kustomization renders with
// kube-score, a real manifest linter that runs offline: probes, resources,
// security contexts, network policies, PDB and HPA coverage. The few
// checks skipped are skipped per object, by annotation, with the reason
// beside it in the manifest.
func TestManifests_KubeScore(t *testing.T) {
	if testing.Short() {
		t.Skip("builds kube-score")
	}
	for _, k := range kustomizations {
		stream, err := RenderYAML(repoFile(t, k))
		if err != nil {
			t.Fatal(err)
		}
		if report, ok := kubeScore(t, stream); !ok {
			t.Errorf("kube-score on %s:\n%s", k, report)
		}
	}

	// The linter must see a real fault through the same pipeline: a
	// container whose root filesystem is writable.
	stream, err := RenderYAML(repoFile(t, "deploy/kubernetes/base"))
	if err != nil {
		t.Fatal(err)
	}
	broken := bytes.Replace(stream, []byte("readOnlyRootFilesystem: true"), []byte("readOnlyRootFilesystem: false"), 1)
	report, ok := kubeScore(t, broken)
	if ok || !strings.Contains(report, "writable root filesystem") {
		t.Errorf("kube-score passed a writable root filesystem:\n%s", report)
	}
}
