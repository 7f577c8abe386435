package check

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
)

// redisTexts is every file that writes a Redis URL for someone to use:
// the README, the docs, compose and the Kubernetes manifests.
func redisTexts(t *testing.T) map[string]string {
	t.Helper()
	files, err := filepath.Glob(repoFile(t, "docs/*.md"))
	if err != nil {
		t.Fatal(err)
	}
	yamls, err := filepath.Glob(repoFile(t, "deploy/kubernetes/*/*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	files = append(append(files, yamls...), repoFile(t, "README.md"), repoFile(t, "docker-compose.yml"))
	texts := map[string]string{}
	for _, f := range files {
		rel, _ := filepath.Rel(repoRoot(t), f)
		texts[rel] = string(mustRead(t, filepath.ToSlash(rel)))
	}
	return texts
}

func moviesPolicy(t *testing.T) *networkingv1.NetworkPolicy {
	t.Helper()
	objs, err := Render(repoFile(t, "deploy/kubernetes/base"))
	if err != nil {
		t.Fatal(err)
	}
	np, ok := Find[*networkingv1.NetworkPolicy](objs, "movies")
	if !ok {
		t.Fatal("no NetworkPolicy movies")
	}
	return np
}

// TestNetworkPolicy_AdmitsTheDocumentedRedis: every Redis the README, the
// docs, compose or the manifests tell a user to point -redis at (one
// server, TLS on 6380, Sentinel on 26379, a Cluster on 7000) is reachable
// through the replicas' NetworkPolicy. A Redis it blocks would not fail a
// request: the fleet would fetch alone, quietly, until an alert five
// minutes later.
func TestNetworkPolicy_AdmitsTheDocumentedRedis(t *testing.T) {
	np := moviesPolicy(t)
	texts := redisTexts(t)
	var n int
	for _, text := range texts {
		n += len(RedisURLs(text))
	}
	if n < 5 {
		t.Fatalf("found %d Redis URLs in %d files: want the docs' examples and the manifests' Secret", n, len(texts))
	}
	for _, line := range UnadmittedRedis(np, texts) {
		t.Error(line)
	}
	// The deployments the docs describe, each by the port it listens on.
	for _, p := range []int32{6379, 6380, 26379, 7000} {
		if !AdmitsEgress(np, p) {
			t.Errorf("NetworkPolicy movies does not admit port %d", p)
		}
	}
}

// TestUnadmittedRedis_FindsABlockedPort feeds the check the real policy
// and URLs it must refuse: a Redis on a port the policy does not list, in
// the URL or in a further ?addr=.
func TestUnadmittedRedis_FindsABlockedPort(t *testing.T) {
	np := moviesPolicy(t)
	got := UnadmittedRedis(np, map[string]string{
		"README.md": strings.Join([]string{
			"`-redis redis://cache:6379/0` and `rediss://cache.example:6380` and `redis://cache` pass;",
			"`-redis-mode sentinel -redis 'redis://s1:26379?master_name=m&addr=s2:26379'` passes;",
			"`-redis redis://cache:6390/0` does not,",
			"nor `-redis-mode cluster -redis 'redis://n1:7000?addr=n2:30001'`,",
			"and `redis://[user:password@]host:port[/db]` is a placeholder.",
		}, "\n"),
	})
	want := []string{
		"README.md: redis://cache:6390/0: port 6390 is not admitted by NetworkPolicy movies's egress",
		"README.md: redis://n1:7000?addr=n2:30001: port 30001 is not admitted by NetworkPolicy movies's egress",
	}
	if !slices.Equal(got, want) {
		t.Errorf("UnadmittedRedis() = %q, want %q", got, want)
	}
}

func TestRedisPorts(t *testing.T) {
	for _, tt := range []struct {
		url  string
		want []int32
	}{
		{"redis://movies-redis:6379/0", []int32{6379}},
		{"rediss://host", []int32{6379}},
		{"redis://:PASSWORD@HOST:6379/0", []int32{6379}},
		{"redis://s1:26379?master_name=mymaster&addr=s2:26379&addr=s3:26380", []int32{26379, 26379, 26380}},
		{"rediss://host:6380", []int32{6380}},
	} {
		got, err := RedisPorts(tt.url)
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("RedisPorts(%q) = %v, %v; want %v", tt.url, got, err, tt.want)
		}
	}
}
