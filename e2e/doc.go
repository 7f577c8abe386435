// Package e2e holds end-to-end tests that run the movies binary as real
// processes on loopback, next to the real components it is deployed with:
// Prometheus (scraping it, loading deploy/prometheus/rules.yml and running
// every query of the Grafana dashboard), HAProxy (deploy/haproxy/haproxy.cfg,
// through a rolling restart under load), headless Chromium (the page as a
// browser renders it, audited by axe-core for WCAG 2.1 AA in light and dark),
// nginx and Varnish in front of it (the freshness promise through downstream
// caches), and Redis shared by a fleet of replicas (one fetch, one snapshot,
// through Redis's failures). The soak and the shutdown-under-load tests run
// here too: they start the real binary.
//
// The components come from Debian packages, and axe-core from npm at the
// version e2e/axe/package-lock.json pins (scripts/install-e2e-deps.sh).
// A test whose component is missing skips, except under CI=true, where it
// fails: CI must never pass by skipping.
package e2e
