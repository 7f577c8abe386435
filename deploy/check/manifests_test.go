package check

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	sigsyaml "sigs.k8s.io/yaml"
)

// kustomizations are the two ways to apply the manifests.
var kustomizations = []string{"deploy/kubernetes/base", "deploy/kubernetes/with-redis"}

// TestManifests_EveryFileDecodesStrictly decodes every document of every
// manifest file as it is written, before kustomize touches it.
func TestManifests_EveryFileDecodesStrictly(t *testing.T) {
	dir := repoFile(t, "deploy/kubernetes")
	n := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".yaml") || d.Name() == "kustomization.yaml" {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		docs, err := SplitDocuments(b)
		if err != nil {
			t.Errorf("%s: %v", path, err)
			return nil
		}
		for i, doc := range docs {
			if _, err := DecodeStrict(doc); err != nil {
				t.Errorf("%s, document %d: %v", path, i+1, err)
			}
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 11 {
		t.Errorf("decoded %d documents, want every object (at least 11): did the walk miss files?", n)
	}
}

// TestManifests_KustomizationsRender renders both kustomizations and checks
// that every file is used by one of them: a manifest no kustomization
// lists would never be applied.
func TestManifests_KustomizationsRender(t *testing.T) {
	listed := map[string]bool{}
	for _, k := range kustomizations {
		objs, err := Render(repoFile(t, k))
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range objs {
			listed[kindOf(o)+"/"+o.(Named).GetName()] = true
		}
	}
	want := []string{
		"Namespace/movies", "Deployment/movies", "Service/movies", "PodDisruptionBudget/movies",
		"HorizontalPodAutoscaler/movies", "NetworkPolicy/movies", "PodMonitor/movies", "PrometheusRule/movies",
		"Deployment/movies-redis", "Service/movies-redis", "NetworkPolicy/movies-redis",
	}
	for _, w := range want {
		if !listed[w] {
			t.Errorf("no kustomization renders %s", w)
		}
	}
}

func kindOf(o runtime.Object) string {
	t := reflect.TypeOf(o)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t.Name()
}

// TestDecodeStrict_RejectsBrokenManifests breaks the real deployment (and
// the CRD objects) one way at a time: each break must fail to decode, or
// the check above proves nothing.
func TestDecodeStrict_RejectsBrokenManifests(t *testing.T) {
	deployment := string(mustRead(t, "deploy/kubernetes/base/deployment.yaml"))
	podMonitor := string(mustRead(t, "deploy/kubernetes/base/podmonitor.yaml"))
	rule := string(mustRead(t, "deploy/kubernetes/base/prometheusrule.yaml"))
	hpa := string(mustRead(t, "deploy/kubernetes/base/hpa.yaml"))
	for _, tc := range []struct {
		name, doc, old, new, want string
	}{
		{"misspelt field", deployment, "readinessProbe:", "readinesProbe:", "unknown field"},
		{"field in the wrong place", deployment, "  revisionHistoryLimit: 5\n", "  revisionHistoryLimit: 5\n  terminationGracePeriodSeconds: 30\n", "unknown field"},
		{"wrong case", deployment, "failureThreshold: 2", "FailureThreshold: 2", "unknown field"},
		{"wrong type", deployment, "revisionHistoryLimit: 5", `revisionHistoryLimit: "5"`, "cannot unmarshal"},
		{"duplicate field", deployment, "  revisionHistoryLimit: 5\n", "  revisionHistoryLimit: 5\n  revisionHistoryLimit: 4\n", "already set"},
		{"missing required field", deployment, "        - name: movies\n          image:", "        - image:", "containers[0].name"},
		{"missing selector", deployment, "  selector:\n    matchLabels:\n      app.kubernetes.io/name: movies\n  strategy:", "  strategy:", "spec.selector"},
		{"unknown kind", deployment, "kind: Deployment", "kind: Deploymnet", "no kind"},
		{"unknown version", deployment, "apiVersion: apps/v1", "apiVersion: apps/v1beta1", "no kind"},
		{"HPA without maxReplicas", hpa, "  maxReplicas: 10\n", "", "spec.maxReplicas"},
		{"PodMonitor unknown field", podMonitor, "  jobLabel:", "  jobLabels:", "unknown field"},
		{"PodMonitor wrong type", podMonitor, "  jobLabel: app.kubernetes.io/name", "  jobLabel: [app.kubernetes.io/name]", "cannot unmarshal"},
		{"PodMonitor without selector", podMonitor, "  selector:\n    matchLabels:\n      app.kubernetes.io/name: movies\n", "", "spec.selector"},
		{"PrometheusRule unknown field", rule, "        expr: up", "        exp: up", "unknown field"},
		{"PrometheusRule rule without expr", rule, "        expr: up{job=\"movies\"} == 0\n", "", "rules[0].expr"},
		{"PrometheusRule group without name", rule, "    - name: movies\n      rules:", "    - rules:", "groups[0].name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(tc.doc, tc.old) {
				t.Fatalf("the manifest no longer contains %q: update this case", tc.old)
			}
			broken := strings.Replace(tc.doc, tc.old, tc.new, 1)
			docs, err := SplitDocuments([]byte(broken))
			if err != nil {
				t.Fatal(err)
			}
			var errs []string
			for _, d := range docs {
				if _, err := DecodeStrict(d); err != nil {
					errs = append(errs, err.Error())
				}
			}
			if len(errs) == 0 {
				t.Fatalf("decoded without error; want one mentioning %q", tc.want)
			}
			if !strings.Contains(strings.Join(errs, "; "), tc.want) {
				t.Errorf("error %q, want one mentioning %q", errs, tc.want)
			}
		})
	}
}

// TestManifests_FitTogether checks what the types alone cannot: that the
// objects name each other correctly once rendered, that the metrics port is
// on no Service, and that every container runs locked down.
func TestManifests_FitTogether(t *testing.T) {
	for _, k := range kustomizations {
		t.Run(k, func(t *testing.T) {
			objs, err := Render(repoFile(t, k))
			if err != nil {
				t.Fatal(err)
			}
			checkFit(t, objs, k == "deploy/kubernetes/with-redis")
		})
	}
}

func checkFit(t *testing.T, objs []runtime.Object, withRedis bool) {
	d, ok := Find[*appsv1.Deployment](objs, "movies")
	if !ok {
		t.Fatal("no Deployment movies")
	}
	pod := labels.Set(d.Spec.Template.Labels)
	if sel := mustSelector(t, "Deployment", d.Spec.Selector); !sel.Matches(pod) {
		t.Errorf("Deployment selector %v does not select its own pods %v", sel, pod)
	}
	// The HPA counts the replicas; a replicas field would fight it on
	// every apply.
	if d.Spec.Replicas != nil {
		t.Errorf("Deployment replicas = %d: leave the count to the HPA (minReplicas 3)", *d.Spec.Replicas)
	}
	c := onlyContainer(t, d)
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	namedPort := func(what string, p intstr.IntOrString) {
		t.Helper()
		if p.Type != intstr.String || ports[p.StrVal] == 0 {
			t.Errorf("%s: port %s is not a named port of the container (%v)", what, p.String(), slices.Sorted(maps.Keys(ports)))
		}
	}
	for what, p := range map[string]*corev1.Probe{"startupProbe": c.StartupProbe, "readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s: want an httpGet probe", what)
			continue
		}
		namedPort(what, p.HTTPGet.Port)
		if p.HTTPGet.Port.StrVal != "http" {
			t.Errorf("%s on port %s: probes go to the serving port, http", what, p.HTTPGet.Port.String())
		}
	}

	// The Service the ingress uses: it selects the pods, through the http
	// port, and nothing else: no metrics port.
	svc, ok := Find[*corev1.Service](objs, "movies")
	if !ok {
		t.Fatal("no Service movies")
	}
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(pod) {
		t.Errorf("Service selector %v does not select the pods", svc.Spec.Selector)
	}
	for _, s := range All[*corev1.Service](objs) {
		for _, p := range s.Spec.Ports {
			if p.TargetPort.StrVal == "metrics" || p.TargetPort.IntValue() == int(ports["metrics"]) || p.Port == ports["metrics"] {
				t.Errorf("Service %s exposes the metrics port: keep /metrics off every Service", s.Name)
			}
		}
	}
	if len(svc.Spec.Ports) != 1 {
		t.Errorf("Service movies has ports %v, want http only", svc.Spec.Ports)
	} else {
		namedPort("Service", svc.Spec.Ports[0].TargetPort)
	}

	pdb, ok := Find[*policyv1.PodDisruptionBudget](objs, "movies")
	if !ok || !mustSelector(t, "PDB", pdb.Spec.Selector).Matches(pod) {
		t.Errorf("PodDisruptionBudget movies missing or not selecting the pods")
	} else if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 {
		t.Errorf("PDB maxUnavailable = %v, want 1", pdb.Spec.MaxUnavailable)
	}

	hpa, ok := Find[*autoscalingv2.HorizontalPodAutoscaler](objs, "movies")
	if !ok {
		t.Fatal("no HorizontalPodAutoscaler movies")
	}
	if ref := hpa.Spec.ScaleTargetRef; ref.Kind != "Deployment" || ref.Name != d.Name || ref.APIVersion != "apps/v1" {
		t.Errorf("HPA targets %+v, want the Deployment", ref)
	}
	if hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas != 3 || hpa.Spec.MaxReplicas <= *hpa.Spec.MinReplicas {
		t.Errorf("HPA min %v max %d: want 3 replicas at least, and room above", hpa.Spec.MinReplicas, hpa.Spec.MaxReplicas)
	}
	// The HPA's CPU target is a share of the request: without one it
	// cannot scale at all.
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() ||
		c.Resources.Limits.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("container resources %+v: want CPU and memory requests and limits", c.Resources)
	}

	pm, ok := Find[*monitoringv1.PodMonitor](objs, "movies")
	if !ok {
		t.Fatal("no PodMonitor movies")
	}
	if !mustSelector(t, "PodMonitor", &pm.Spec.Selector).Matches(pod) {
		t.Errorf("PodMonitor selector does not select the pods")
	}
	if pm.Spec.JobLabel == "" || pod[pm.Spec.JobLabel] != "movies" {
		t.Errorf("PodMonitor jobLabel %q gives job %q; the alerts and dashboard select job=\"movies\"", pm.Spec.JobLabel, pod[pm.Spec.JobLabel])
	}
	if len(pm.Spec.PodMetricsEndpoints) != 1 || pm.Spec.PodMetricsEndpoints[0].Port == nil || *pm.Spec.PodMetricsEndpoints[0].Port != "metrics" {
		t.Errorf("PodMonitor endpoints %+v, want the metrics port", pm.Spec.PodMetricsEndpoints)
	}

	// NetworkPolicy: the pods are selected; http open, metrics only from
	// Prometheus.
	np, ok := Find[*networkingv1.NetworkPolicy](objs, "movies")
	if !ok {
		t.Fatal("no NetworkPolicy movies")
	}
	if !mustSelector(t, "NetworkPolicy", &np.Spec.PodSelector).Matches(pod) {
		t.Errorf("NetworkPolicy does not select the pods")
	}
	for _, rule := range np.Spec.Ingress {
		for _, p := range rule.Ports {
			namedPort("NetworkPolicy", *p.Port)
			if p.Port.StrVal == "metrics" {
				if len(rule.From) == 0 {
					t.Errorf("NetworkPolicy opens the metrics port to everyone")
				}
				for _, peer := range rule.From {
					if peer.PodSelector == nil || peer.PodSelector.MatchLabels["app.kubernetes.io/name"] != "prometheus" {
						t.Errorf("NetworkPolicy lets %+v reach metrics, want Prometheus only", peer)
					}
				}
			}
		}
	}

	// Every container of every Deployment (Redis's too) runs locked down.
	for _, dep := range All[*appsv1.Deployment](objs) {
		ps := dep.Spec.Template.Spec.SecurityContext
		if ps == nil || ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot || ps.SeccompProfile == nil || ps.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: pod securityContext %+v: want runAsNonRoot and seccomp RuntimeDefault", dep.Name, ps)
		}
		for _, ctr := range dep.Spec.Template.Spec.Containers {
			sc := ctr.SecurityContext
			if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
				sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
				sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
				t.Errorf("%s/%s: securityContext %+v: want a read-only root, no privilege escalation, every capability dropped", dep.Name, ctr.Name, sc)
			}
		}
	}
	if *d.Spec.Template.Spec.SecurityContext.RunAsUser != 65532 {
		t.Errorf("runAsUser %d, want distroless nonroot's 65532", *d.Spec.Template.Spec.SecurityContext.RunAsUser)
	}

	// The Redis URL comes from a Secret, optional: without it the
	// replicas serve alone.
	var ref *corev1.SecretKeySelector
	for _, e := range c.Env {
		if e.Name == "MOVIES_REDIS_URL" && e.ValueFrom != nil {
			ref = e.ValueFrom.SecretKeyRef
		}
	}
	if ref == nil || ref.Optional == nil || !*ref.Optional || ref.Key != "url" {
		t.Fatalf("MOVIES_REDIS_URL: want an optional secretKeyRef to key url, got %+v", ref)
	}
	if !withRedis {
		return
	}
	secret, ok := Find[*corev1.Secret](objs, ref.Name)
	if !ok {
		t.Fatalf("with-redis: the Deployment reads Secret %s, which the kustomization does not make", ref.Name)
	}
	if got := string(secret.Data["url"]); got != "redis://movies-redis:6379/0" {
		t.Errorf("with-redis: Secret url = %q, want the bundled Redis's Service", got)
	}
	rsvc, ok := Find[*corev1.Service](objs, "movies-redis")
	rdep, ok2 := Find[*appsv1.Deployment](objs, "movies-redis")
	if !ok || !ok2 || !labels.SelectorFromSet(rsvc.Spec.Selector).Matches(labels.Set(rdep.Spec.Template.Labels)) || rsvc.Spec.Ports[0].Port != 6379 {
		t.Fatalf("with-redis: Service movies-redis does not reach Deployment movies-redis on 6379")
	}
	rnp, ok := Find[*networkingv1.NetworkPolicy](objs, "movies-redis")
	if !ok || !mustSelector(t, "redis NetworkPolicy", &rnp.Spec.PodSelector).Matches(labels.Set(rdep.Spec.Template.Labels)) {
		t.Fatal("with-redis: no NetworkPolicy selecting Redis")
	}
	for _, rule := range rnp.Spec.Ingress {
		if len(rule.From) == 0 {
			t.Errorf("with-redis: Redis open to every pod")
		}
		for _, peer := range rule.From {
			if peer.NamespaceSelector != nil || peer.IPBlock != nil || peer.PodSelector == nil || !mustSelector(t, "redis peer", peer.PodSelector).Matches(pod) {
				t.Errorf("with-redis: Redis reachable by %+v, want the replicas only", peer)
			}
		}
	}
}

func mustSelector(t *testing.T, what string, s *metav1.LabelSelector) labels.Selector {
	t.Helper()
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil || sel.Empty() {
		t.Fatalf("%s selector %+v: %v (empty selects everything)", what, s, err)
	}
	return sel
}

func onlyContainer(t *testing.T, d *appsv1.Deployment) corev1.Container {
	t.Helper()
	if cs := d.Spec.Template.Spec.Containers; len(cs) == 1 {
		return cs[0]
	}
	t.Fatalf("Deployment %s: want one container", d.Name)
	return corev1.Container{}
}

// TestPrometheusRule_IsTheTestedRulesFile keeps the PrometheusRule equal to
// deploy/prometheus/rules.yml, the file promtool's tests and the e2e
// Prometheus load: generated from it (-update writes it), and compared
// both as text and as decoded rule groups.
func TestPrometheusRule_IsTheTestedRulesFile(t *testing.T) {
	rules := mustRead(t, "deploy/prometheus/rules.yml")
	want := PrometheusRule(rules)
	path := repoFile(t, "deploy/kubernetes/base/prometheusrule.yaml")
	if *update {
		if err := os.WriteFile(path, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("deploy/kubernetes/base/prometheusrule.yaml differs from deploy/prometheus/rules.yml: regenerate it with go test -run TestPrometheusRule -update (never edit it by hand)")
	}

	// As data: the object's groups are the rules file's groups.
	obj, err := DecodeStrict(got)
	if err != nil {
		t.Fatal(err)
	}
	pr := obj.(*monitoringv1.PrometheusRule)
	var file struct {
		Groups []monitoringv1.RuleGroup `json:"groups"`
	}
	if err := sigsyaml.UnmarshalStrict(rules, &file); err != nil {
		t.Fatalf("rules.yml as prometheus-operator rule groups: %v", err)
	}
	if !reflect.DeepEqual(pr.Spec.Groups, file.Groups) {
		a, _ := json.Marshal(pr.Spec.Groups)
		b, _ := json.Marshal(file.Groups)
		t.Errorf("PrometheusRule groups differ from rules.yml:\n%s\n%s", a, b)
	}
	if n := len(file.Groups[0].Rules); n < 5 {
		t.Errorf("rules.yml has %d rules; the test must compare the real file", n)
	}
}
