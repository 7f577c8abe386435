package check

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"
)

// scheme knows every kind the manifests may hold; any other kind fails to
// decode, so a typo in apiVersion or kind is an error, not a skipped object.
var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme,
		autoscalingv2.AddToScheme, networkingv1.AddToScheme, monitoringv1.AddToScheme,
	} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}()

// strictJSON is apimachinery's own JSON serializer in strict mode, the one
// kubectl's client-side strict validation used: unknown and duplicate
// fields are errors, and so is a value of the wrong type.
var strictJSON = kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme, scheme,
	kjson.SerializerOptions{Strict: true})

// SplitDocuments splits a YAML stream into its documents, dropping empty
// ones (a file may start with ---).
func SplitDocuments(stream []byte) ([][]byte, error) {
	r := yaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(stream)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(stripComments(doc))) > 0 {
			docs = append(docs, doc)
		}
	}
}

// DecodeStrict decodes one YAML document into the typed object of its
// apiVersion and kind. It fails on an unknown kind, an unknown, misspelt or
// duplicate field, a value of the wrong type, and a missing required field
// (see MissingRequired).
func DecodeStrict(doc []byte) (runtime.Object, error) {
	j, err := sigsyaml.YAMLToJSONStrict(doc) // duplicate keys fail here
	if err != nil {
		return nil, err
	}
	obj, _, err := strictJSON.Decode(j, nil, nil)
	if err != nil {
		return nil, err // strict errors come back with the object: still a failure
	}
	var tree any
	if err := json.Unmarshal(j, &tree); err != nil {
		return nil, err
	}
	if missing := MissingRequired(reflect.TypeOf(obj), tree); len(missing) > 0 {
		return nil, fmt.Errorf("missing required fields: %s", strings.Join(missing, ", "))
	}
	return obj, nil
}

// unmarshalerType marks leaf types that parse themselves (Quantity,
// IntOrString, Time, Duration, RawExtension): their insides are not fields.
var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

// MissingRequired lists the paths of required fields absent from tree (a
// decoded JSON value) for the Go API type t. A field is required when its
// json tag has no omitempty: that is the rule the Kubernetes OpenAPI
// generator (openapi-gen) and controller-gen, which writes the
// prometheus-operator's CRD schemas, both apply, so this finds what the API
// server's schema validation would reject as "Required value". Fields
// present are checked all the way down; optionalByMarker lists the few
// that are tagged without omitempty yet marked +optional in the source.
func MissingRequired(t reflect.Type, tree any) []string {
	var missing []string
	walkRequired(t, tree, "", &missing)
	return missing
}

// optionalByMarker are fields whose json tag lacks omitempty but whose
// source marks them +optional, so the schema does not require them
// (type.field, as Go spells the type).
var optionalByMarker = []string{
	// None are needed by the manifests today; add one with the line of
	// k8s.io/api or the prometheus-operator that marks it +optional.
}

func walkRequired(t reflect.Type, tree any, path string, missing *[]string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if tree == nil || reflect.PointerTo(t).Implements(unmarshalerType) {
		return
	}
	switch t.Kind() {
	case reflect.Slice, reflect.Array:
		if items, ok := tree.([]any); ok {
			for i, item := range items {
				walkRequired(t.Elem(), item, fmt.Sprintf("%s[%d]", path, i), missing)
			}
		}
	case reflect.Map:
		if m, ok := tree.(map[string]any); ok {
			for k, v := range m {
				walkRequired(t.Elem(), v, path+"."+k, missing)
			}
		}
	case reflect.Struct:
		m, ok := tree.(map[string]any)
		if !ok {
			return
		}
		for i := range t.NumField() {
			f := t.Field(i)
			tag := f.Tag.Get("json")
			name, opts, _ := strings.Cut(tag, ",")
			if tag == "-" || !f.IsExported() {
				continue
			}
			if f.Anonymous && (name == "" || strings.Contains(opts, "inline")) {
				walkRequired(f.Type, tree, path, missing) // inlined: same object
				continue
			}
			if name == "" {
				name = f.Name
			}
			v, present := m[name]
			if !present {
				if !strings.Contains(","+opts+",", ",omitempty,") && !slices.Contains(optionalByMarker, t.Name()+"."+f.Name) {
					*missing = append(*missing, strings.TrimPrefix(path+"."+name, "."))
				}
				continue
			}
			walkRequired(f.Type, v, path+"."+name, missing)
		}
	}
}

// stripComments drops whole-line comments, so a document of comments only
// counts as empty.
func stripComments(doc []byte) []byte {
	var out []byte
	for line := range bytes.Lines(doc) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			out = append(out, line...)
		}
	}
	return out
}
