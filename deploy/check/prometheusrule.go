package check

import (
	"bytes"
)

// PrometheusRuleHeader opens deploy/kubernetes/base/prometheusrule.yaml, before
// the rules file's text.
const PrometheusRuleHeader = `# GENERATED from deploy/prometheus/rules.yml, the file promtool tests
# (promtool test rules deploy/prometheus/rules_test.yml): do not edit.
# Regenerate with: (cd deploy/check && go test -run TestPrometheusRule -update)
# deploy/check fails while this file and that one differ.
#
# The operator's Prometheus picks rules up by its ruleSelector: add the
# label it selects on (the prometheus-operator Helm chart's is
# release: <its release name>) if it has one.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: movies
  labels:
    app.kubernetes.io/name: movies
spec:
`

// PrometheusRule is the PrometheusRule manifest carrying rules, the text of
// a Prometheus rules file: its groups become the object's spec.groups,
// every line kept as it is (comments included), indented under spec, so
// the expressions Prometheus evaluates are byte for byte the tested ones.
func PrometheusRule(rules []byte) []byte {
	var b bytes.Buffer
	b.WriteString(PrometheusRuleHeader)
	for line := range bytes.Lines(rules) {
		if len(bytes.TrimSpace(line)) > 0 {
			b.WriteString("  ")
		}
		b.Write(line)
	}
	return b.Bytes()
}
