package snapshot

import (
	"net/http"
	"testing"
	"time"
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
	r, err := NewRepresentation([]byte("page"), "text/plain", fetched, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	etag := r.identity.ETag
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
		{"other variant's tag", http.Header{"If-None-Match": {r.gzip.ETag}}, false},
		{"tag decides over date", http.Header{"If-None-Match": {`"x"`}, "If-Modified-Since": {mod.Format(http.TimeFormat)}}, false},
		{"our Last-Modified", http.Header{"If-Modified-Since": {mod.Format(http.TimeFormat)}}, true},
		{"later date", http.Header{"If-Modified-Since": {mod.Add(time.Hour).Format(http.TimeFormat)}}, true},
		{"earlier date", http.Header{"If-Modified-Since": {mod.Add(-time.Second).Format(http.TimeFormat)}}, false},
		{"garbage date", http.Header{"If-Modified-Since": {"yesterday"}}, false},
	}
	for _, tt := range tests {
		if got := r.NotModified(tt.h, &r.identity); got != tt.want {
			t.Errorf("%s: NotModified(%v) = %v, want %v", tt.name, tt.h, got, tt.want)
		}
	}

	// A second snapshot in the same second shares Last-Modified with the
	// first: a client holding the first must not be told it is current.
	next, err := NewRepresentation([]byte("new page"), "text/plain", fetched.Add(500*time.Millisecond), fetched)
	if err != nil {
		t.Fatal(err)
	}
	if h := (http.Header{"If-Modified-Since": r.LastModified}); next.NotModified(h, &next.identity) {
		t.Error("If-Modified-Since of the previous snapshot in the same second answered 304")
	}
	// A snapshot in a later second is unambiguous again.
	later, _ := NewRepresentation([]byte("later"), "text/plain", fetched.Add(2*time.Second), next.modTime.Add(500*time.Millisecond))
	if h := (http.Header{"If-Modified-Since": later.LastModified}); !later.NotModified(h, &later.identity) {
		t.Error("If-Modified-Since of a snapshot's own Last-Modified did not answer 304")
	}
	if h := (http.Header{"If-Modified-Since": r.LastModified}); later.NotModified(h, &later.identity) {
		t.Error("If-Modified-Since of an older snapshot answered 304")
	}
}
