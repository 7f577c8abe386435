package main

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/movies-dev/movies/pkg/ghibli/ghiblitest"
)

func TestAcceptsGzip(t *testing.T) {
	tests := []struct {
		header string
		want   bool
	}{
		{"", false},
		{"gzip", true},
		{"GZIP", true},
		{"gzip, deflate, br", true},
		{"br;q=1.0, gzip;q=0.8, *;q=0.1", true},
		{"deflate", false},
		{"gzip;q=0", false},
		{"gzip; q=0.0", false},
		{"*", true},
		{"*;q=0", false},
		{"gzip;q=0, *", false}, // an explicit refusal wins over *
		{"identity", false},
		{"x-gzip", true},
		{"gzip;q=bogus", false},
		{" gzip ;q=0.5 ", true},
	}
	for _, tt := range tests {
		if got := acceptsGzip([]string{tt.header}); got != tt.want {
			t.Errorf("acceptsGzip(%q) = %v, want %v", tt.header, got, tt.want)
		}
	}
	// A header may come in several lines; they form one list.
	for _, tt := range []struct {
		lines []string
		want  bool
	}{
		{nil, false},
		{[]string{"br", "gzip"}, true},
		{[]string{"*", "gzip;q=0"}, false},
	} {
		if got := acceptsGzip(tt.lines); got != tt.want {
			t.Errorf("acceptsGzip(%q) = %v, want %v", tt.lines, got, tt.want)
		}
	}
}

func TestNotModified(t *testing.T) {
	mod := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	fetched := mod.Add(300 * time.Millisecond)
	r, err := newRepresentation([]byte("page"), "text/plain", fetched, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	etag := r.identity.etag
	tests := []struct {
		name string
		h    http.Header
		want bool
	}{
		{"unconditional", nil, false},
		{"matching tag", http.Header{"If-None-Match": {etag}}, true},
		{"weak form of the tag", http.Header{"If-None-Match": {"W/" + etag}}, true},
		{"in a list", http.Header{"If-None-Match": {`"x", ` + etag}}, true},
		{"in a second header line", http.Header{"If-None-Match": {`"x"`, etag}}, true},
		{"star", http.Header{"If-None-Match": {`*`}}, true},
		{"other tag", http.Header{"If-None-Match": {`"abd"`}}, false},
		{"other variant's tag", http.Header{"If-None-Match": {r.gzip.etag}}, false},
		{"tag decides over date", http.Header{"If-None-Match": {`"x"`}, "If-Modified-Since": {mod.Format(http.TimeFormat)}}, false},
		{"our Last-Modified", http.Header{"If-Modified-Since": {mod.Format(http.TimeFormat)}}, true},
		{"later date", http.Header{"If-Modified-Since": {mod.Add(time.Hour).Format(http.TimeFormat)}}, true},
		{"earlier date", http.Header{"If-Modified-Since": {mod.Add(-time.Second).Format(http.TimeFormat)}}, false},
		{"garbage date", http.Header{"If-Modified-Since": {"yesterday"}}, false},
	}
	for _, tt := range tests {
		if got := notModified(tt.h, r, &r.identity); got != tt.want {
			t.Errorf("%s: notModified(%v) = %v, want %v", tt.name, tt.h, got, tt.want)
		}
	}

	// A second snapshot in the same second shares Last-Modified with the
	// first: a client holding the first must not be told it is current.
	next, err := newRepresentation([]byte("new page"), "text/plain", fetched.Add(500*time.Millisecond), fetched)
	if err != nil {
		t.Fatal(err)
	}
	if h := (http.Header{"If-Modified-Since": r.lastModified}); notModified(h, next, &next.identity) {
		t.Error("If-Modified-Since of the previous snapshot in the same second answered 304")
	}
	// A snapshot in a later second is unambiguous again.
	later, _ := newRepresentation([]byte("later"), "text/plain", fetched.Add(2*time.Second), next.modTime.Add(500*time.Millisecond))
	if h := (http.Header{"If-Modified-Since": later.lastModified}); !notModified(h, later, &later.identity) {
		t.Error("If-Modified-Since of a snapshot's own Last-Modified did not answer 304")
	}
	if h := (http.Header{"If-Modified-Since": r.lastModified}); notModified(h, later, &later.identity) {
		t.Error("If-Modified-Since of an older snapshot answered 304")
	}
}

func doWith(t *testing.T, url string, header map[string]string) response {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	// A Transport that does not add or undo gzip on its own.
	tr := &http.Transport{DisableCompression: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{resp.StatusCode, resp.Header, string(b)}
}

func TestServer_HTTPCaching(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	in := mustStart(t, up.URL)
	for _, path := range []string{"/movies/", "/api/v1/movies"} {
		plain := doWith(t, in.URL+path, nil)
		gz := doWith(t, in.URL+path, map[string]string{"Accept-Encoding": "gzip, br"})
		if plain.status != 200 || gz.status != 200 {
			t.Fatalf("%s: status %d / %d", path, plain.status, gz.status)
		}
		if plain.header.Get("Content-Encoding") != "" || gz.header.Get("Content-Encoding") != "gzip" {
			t.Errorf("%s: Content-Encoding %q / %q, want none / gzip", path, plain.header.Get("Content-Encoding"), gz.header.Get("Content-Encoding"))
		}
		zr, err := gzip.NewReader(strings.NewReader(gz.body))
		if err != nil {
			t.Fatalf("%s: gzip body: %v", path, err)
		}
		unzipped, _ := io.ReadAll(zr)
		if !bytes.Equal(unzipped, []byte(plain.body)) || len(gz.body) >= len(plain.body)/2 {
			t.Errorf("%s: gzip body (%d bytes) is not the page (%d bytes) compressed", path, len(gz.body), len(plain.body))
		}
		if cl, _ := strconv.Atoi(gz.header.Get("Content-Length")); cl != len(gz.body) {
			t.Errorf("%s: gzip Content-Length %d for %d bytes", path, cl, len(gz.body))
		}
		for _, r := range []response{plain, gz} {
			if r.header.Get("Vary") != "Accept-Encoding" {
				t.Errorf("%s: Vary = %q", path, r.header.Get("Vary"))
			}
			etag := r.header.Get("ETag")
			if !strings.HasPrefix(etag, `"`) || !strings.HasSuffix(etag, `"`) {
				t.Errorf("%s: ETag %q is not a strong tag", path, etag)
			}
			age, err1 := strconv.Atoi(r.header.Get("Age"))
			var maxAge int
			_, err2 := fmt.Sscanf(r.header.Get("Cache-Control"), "public, max-age=%d, must-revalidate", &maxAge)
			if err1 != nil || err2 != nil || age < 0 || maxAge > 60 || maxAge+age > 60 {
				t.Errorf("%s: Age %q, Cache-Control %q: want max-age + Age within the 60s TTL", path, r.header.Get("Age"), r.header.Get("Cache-Control"))
			}
			// Revalidation answers 304 with no body.
			nm := doWith(t, in.URL+path, map[string]string{"If-None-Match": etag, "Accept-Encoding": map[bool]string{true: "gzip"}[r.header.Get("Content-Encoding") == "gzip"]})
			if nm.status != 304 || nm.body != "" || nm.header.Get("ETag") != etag {
				t.Errorf("%s: If-None-Match %s = %d (%d bytes, ETag %q), want 304 without a body", path, etag, nm.status, len(nm.body), nm.header.Get("ETag"))
			}
			ims := doWith(t, in.URL+path, map[string]string{"If-Modified-Since": r.header.Get("Last-Modified")})
			if ims.status != 304 {
				t.Errorf("%s: If-Modified-Since = %d, want 304", path, ims.status)
			}
		}
		if plain.header.Get("ETag") == gz.header.Get("ETag") {
			t.Errorf("%s: identity and gzip share ETag %s; each representation needs its own", path, plain.header.Get("ETag"))
		}
		if r := doWith(t, in.URL+path, map[string]string{"If-None-Match": `"something-else"`}); r.status != 200 {
			t.Errorf("%s: stale If-None-Match = %d, want 200", path, r.status)
		}
	}
}

// TestServer_RefreshAhead: under steady traffic, after the cold start no
// request waits for the upstream, and an idle server fetches nothing.
func TestServer_RefreshAhead(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	up.SetBehavior("", ghiblitest.Behavior{Latency: 100 * time.Millisecond})
	// Generous timeout: on a busy machine a slow fetch must not turn into a
	// failure; what is under test is who waits.
	in := mustStart(t, up.URL, "-ttl", "3s", "-upstream-timeout", "1500ms")
	t.Cleanup(testClient.CloseIdleConnections)
	for end := time.Now().Add(7 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if r := mustGet(t, in.URL+"/movies/"); r.status != 200 {
			t.Fatalf("status %d", r.status)
		}
	}
	m := mustMetrics(t, in.URL)
	if m["movies_cache_misses_total"] != 1 || m["movies_cache_early_refreshes_total"] < 2 {
		t.Errorf("misses %v, early refreshes %v: want only the cold miss, and refreshes ahead of expiry",
			m["movies_cache_misses_total"], m["movies_cache_early_refreshes_total"])
	}
	// Idle: no more upstream calls.
	before := up.Requests("")
	time.Sleep(4 * time.Second)
	if got := up.Requests(""); got != before {
		t.Errorf("idle server made %d upstream requests", got-before)
	}
}
