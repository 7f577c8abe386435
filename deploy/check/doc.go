// Package check tests what the project deploys with, where no cluster
// runs: the Kubernetes manifests under deploy/kubernetes decoded strictly
// into the API types of Kubernetes 1.37 (k8s.io/api v0.37.2) and of the
// prometheus-operator (monitoring/v1, v0.95.2), both kustomizations
// rendered by kustomize's own library, and the numbers (ports, probes,
// drain, shutdown, grace) that docker-compose.yml, deploy/haproxy, the
// Dockerfile, the manifests and the binary's flags must agree on. It holds
// the replicas' NetworkPolicy to every Redis URL the docs and manifests
// give (a blocked Redis fails nothing: the fleet fetches alone, quietly).
// It keeps README.md and docs/*.md honest: every relative link resolves,
// and every flag, MOVIES_* variable, metric, alert and endpoint they name
// exists, and every one that exists is named in them. And it lints the
// rendered manifests with kube-score, pinned as a tool in the module
// deploy/check/kubescore (its imports clash with k8s.io/api v0.37).
//
// It is a module of its own so that the Kubernetes libraries stay out of
// the product's go.mod; scripts/test.sh runs its tests.
package check
