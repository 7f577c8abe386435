package check

import (
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	sigsyaml "sigs.k8s.io/yaml"
)

// Render builds the kustomization in dir as `kubectl apply -k dir` would
// (kubectl embeds this same kustomize library) and decodes every object it
// renders with DecodeStrict. The kustomization file itself is decoded
// strictly first: kustomize would ignore a misspelt key in it.
func Render(dir string) ([]runtime.Object, error) {
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		return nil, err
	}
	var k types.Kustomization
	if err := sigsyaml.UnmarshalStrict(b, &k); err != nil {
		return nil, fmt.Errorf("%s/kustomization.yaml: %w", dir, err)
	}
	stream, err := RenderYAML(dir)
	if err != nil {
		return nil, err
	}
	docs, err := SplitDocuments(stream)
	if err != nil {
		return nil, err
	}
	objs := make([]runtime.Object, 0, len(docs))
	for i, doc := range docs {
		obj, err := DecodeStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("kustomize build %s: object %d: %w", dir, i, err)
		}
		objs = append(objs, obj)
	}
	return objs, nil
}

// RenderYAML is `kustomize build dir`: the YAML stream kubectl would apply.
func RenderYAML(dir string) ([]byte, error) {
	rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	return rm.AsYaml()
}

// Named is an object with a name, as every manifest object is.
type Named interface {
	runtime.Object
	GetName() string
}

// Find returns the object of type T named name among objs, or false.
func Find[T Named](objs []runtime.Object, name string) (T, bool) {
	for _, o := range objs {
		if t, ok := o.(T); ok && t.GetName() == name {
			return t, true
		}
	}
	var zero T
	return zero, false
}

// All returns every object of type T among objs.
func All[T Named](objs []runtime.Object) []T {
	var out []T
	for _, o := range objs {
		if t, ok := o.(T); ok {
			out = append(out, t)
		}
	}
	return out
}
