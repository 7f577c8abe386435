package web

import (
	"compress/gzip"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
)

// decodeBody undoes a response's Content-Encoding.
func decodeBody(t *testing.T, encoding, body string) string {
	t.Helper()
	var (
		b   []byte
		err error
	)
	switch encoding {
	case "":
		return body
	case "br":
		b, err = io.ReadAll(brotli.NewReader(strings.NewReader(body)))
	case "zstd":
		var d *zstd.Decoder
		if d, err = zstd.NewReader(nil); err == nil {
			b, err = d.DecodeAll([]byte(body), nil)
			d.Close()
		}
	case "gzip":
		var zr *gzip.Reader
		if zr, err = gzip.NewReader(strings.NewReader(body)); err == nil {
			b, err = io.ReadAll(zr)
		}
	default:
		t.Fatalf("unexpected Content-Encoding %q", encoding)
	}
	if err != nil {
		t.Fatalf("decode %s body: %v", encoding, err)
	}
	return string(b)
}

// TestServer_NegotiatesContentEncoding: over a real server, each
// Accept-Encoding gets the coding RFC 9110 section 12.5.3 picks, a body
// that decodes to the identity one, and validators of its own.
func TestServer_NegotiatesContentEncoding(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	in := mustStart(t, Config{Upstream: up.URL})
	tests := []struct {
		accept *string // nil: no Accept-Encoding
		want   string  // Content-Encoding; "" for identity
	}{
		{nil, ""},
		{ptr(""), ""},
		{ptr("br"), "br"},
		{ptr("zstd"), "zstd"},
		{ptr("gzip"), "gzip"},
		{ptr("X-Gzip"), "gzip"},
		{ptr("gzip, deflate, br, zstd"), "br"},
		{ptr("br;q=0.5, gzip"), "gzip"},
		{ptr("*"), "br"},
		{ptr("br;q=0, zstd, *;q=0.5"), "zstd"},
		{ptr("gzip;q=0"), ""},
		{ptr("identity;q=0, *;q=0"), ""}, // nothing acceptable: identity anyway
		{ptr("deflate"), ""},
	}
	for _, path := range []string{"/movies/", "/api/v1/movies"} {
		plain := doWith(t, in.URL+path, nil)
		if plain.status != 200 {
			t.Fatalf("GET %s = %d, want 200", path, plain.status)
		}
		etags := map[string]string{} // Content-Encoding -> ETag
		for _, tt := range tests {
			h := map[string]string{}
			name := "no Accept-Encoding"
			if tt.accept != nil {
				h["Accept-Encoding"], name = *tt.accept, "Accept-Encoding: "+*tt.accept
			}
			r := doWith(t, in.URL+path, h)
			enc := r.header.Get("Content-Encoding")
			if r.status != 200 || enc != tt.want {
				t.Errorf("%s with %s = %d, Content-Encoding %q; want 200, %q", path, name, r.status, enc, tt.want)
				continue
			}
			if got := decodeBody(t, enc, r.body); got != plain.body {
				t.Errorf("%s with %s: body decodes to %d bytes, not the %d-byte identity body", path, name, len(got), len(plain.body))
			}
			if cl, _ := strconv.Atoi(r.header.Get("Content-Length")); cl != len(r.body) {
				t.Errorf("%s with %s: Content-Length %d for %d bytes", path, name, cl, len(r.body))
			}
			if got := r.header.Get("Vary"); got != "Accept-Encoding" {
				t.Errorf("%s with %s: Vary = %q, want Accept-Encoding", path, name, got)
			}
			etag := r.header.Get("ETag")
			if prev, ok := etags[enc]; ok && prev != etag {
				t.Errorf("%s: %q body served under ETags %s and %s", path, enc, prev, etag)
			}
			etags[enc] = etag
			// Revalidating with the tag it got answers 304 for the same
			// negotiation, with that tag and no body.
			h["If-None-Match"] = etag
			if nm := doWith(t, in.URL+path, h); nm.status != 304 || nm.body != "" || nm.header.Get("ETag") != etag {
				t.Errorf("%s with %s, If-None-Match %s = %d (%d bytes, ETag %q), want 304 without a body", path, name, etag, nm.status, len(nm.body), nm.header.Get("ETag"))
			}
		}

		// Every coding has its own tag, and one coding's tag does not
		// validate another's body.
		seen := map[string]string{}
		for enc, etag := range etags {
			if other, dup := seen[etag]; dup {
				t.Errorf("%s: %q and %q share ETag %s", path, enc, other, etag)
			}
			seen[etag] = enc
		}
		if len(etags) != 4 {
			t.Errorf("%s: ETags %v; want one for each of identity, br, zstd, gzip", path, etags)
		}
		for held, etag := range etags {
			for _, asked := range []string{"br", "zstd", "gzip"} {
				if asked == held {
					continue
				}
				r := doWith(t, in.URL+path, map[string]string{"Accept-Encoding": asked, "If-None-Match": etag})
				if r.status != 200 || r.header.Get("Content-Encoding") != asked {
					t.Errorf("%s: Accept-Encoding %s with the %q ETag = %d, Content-Encoding %q; want 200, %s", path, asked, held, r.status, r.header.Get("Content-Encoding"), asked)
				}
			}
		}
	}
}

func ptr(s string) *string { return &s }
