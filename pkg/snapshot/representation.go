package snapshot

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Representation is one rendering (the page or the JSON) of a snapshot in
// every content coding, with its validators and header values. The header
// values are one-element slices with len == cap, assigned straight into a
// response's header map: anyone appending to them gets a copy, never the
// prepared array. Callers must not modify them.
type Representation struct {
	ContentType  []string
	LastModified []string

	modTime time.Time // the fetch start, at Last-Modified's one-second resolution
	// modTimeUnique is false when the previous snapshot started in the same
	// second: Last-Modified then cannot tell the two apart, and only the
	// ETag may answer 304.
	modTimeUnique bool
	identity      Variant
	gzip          Variant
}

// Variant is a representation in one content coding.
type Variant struct {
	Body          []byte
	ETag          string   // quoted, strong
	ETagHeader    []string // ETag as a header value
	ContentLength []string
	Encoding      []string // Content-Encoding; nil for identity
}

var gzipEncoding = []string{"gzip"}

// NewRepresentation prepares body for serving. gzip at the best
// compression costs about a millisecond once per snapshot and saves every
// client most of the bytes. prevFetched is the previous snapshot's fetch
// start (zero if none).
func NewRepresentation(body []byte, contentType string, fetched, prevFetched time.Time) (*Representation, error) {
	sum := sha256.Sum256(body)
	tag := hex.EncodeToString(sum[:12])
	var gz bytes.Buffer
	w, err := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(body); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	modTime := fetched.UTC().Truncate(time.Second)
	return &Representation{
		ContentType:   []string{contentType},
		LastModified:  []string{modTime.Format(http.TimeFormat)},
		modTime:       modTime,
		modTimeUnique: !prevFetched.UTC().Truncate(time.Second).Equal(modTime),
		identity:      newVariant(body, `"`+tag+`"`, nil),
		gzip:          newVariant(gz.Bytes(), `"`+tag+`-gzip"`, gzipEncoding),
	}, nil
}

func newVariant(body []byte, etag string, encoding []string) Variant {
	return Variant{
		Body:          body,
		ETag:          etag,
		ETagHeader:    []string{etag},
		ContentLength: []string{strconv.Itoa(len(body))},
		Encoding:      encoding,
	}
}

// Identity is the uncompressed variant.
func (r *Representation) Identity() *Variant { return &r.identity }

// Negotiate picks the variant for a request's Accept-Encoding lines.
func (r *Representation) Negotiate(acceptEncoding []string) *Variant {
	if acceptsGzip(acceptEncoding) {
		return &r.gzip
	}
	return &r.identity
}

// acceptsGzip reports whether Accept-Encoding, in however many header
// lines, admits gzip: listed (or covered by *) with a q-value above zero.
// An explicit gzip;q=0 wins over *. It allocates nothing.
func acceptsGzip(lines []string) bool {
	gzipQ, starQ := -1.0, -1.0
	for _, header := range lines {
		gzipQ, starQ = acceptEncodingLine(header, gzipQ, starQ)
	}
	if gzipQ >= 0 {
		return gzipQ > 0
	}
	return starQ > 0
}

// acceptEncodingLine updates the q-values of gzip and * from one line.
func acceptEncodingLine(header string, gzipQ, starQ float64) (float64, float64) {
	for header != "" {
		var part string
		part, header, _ = strings.Cut(header, ",")
		coding, params, _ := strings.Cut(part, ";")
		coding = strings.TrimSpace(coding)
		q := 1.0
		for params != "" {
			var p string
			p, params, _ = strings.Cut(params, ";")
			if k, v, ok := strings.Cut(strings.TrimSpace(p), "="); ok && strings.EqualFold(k, "q") {
				if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
					q = f
				} else {
					q = 0
				}
			}
		}
		switch {
		case strings.EqualFold(coding, "gzip"), strings.EqualFold(coding, "x-gzip"):
			gzipQ = q
		case coding == "*":
			starQ = q
		}
	}
	return gzipQ, starQ
}

// NotModified reports whether a conditional request with header h for v
// may be answered 304. If-None-Match, when present, decides alone (RFC 9110
// section 13.2.2); If-Modified-Since counts only while r's Last-Modified
// second is its own.
func (r *Representation) NotModified(h http.Header, v *Variant) bool {
	if inm := h["If-None-Match"]; len(inm) > 0 {
		for _, list := range inm {
			if etagMatches(list, v.ETag) {
				return true
			}
		}
		return false
	}
	if ims := h.Get("If-Modified-Since"); ims != "" && r.modTimeUnique {
		t, err := http.ParseTime(ims)
		return err == nil && !r.modTime.After(t)
	}
	return false
}

// etagMatches applies If-None-Match's weak comparison of a list of tags.
func etagMatches(list, etag string) bool {
	for list != "" {
		var tag string
		tag, list, _ = strings.Cut(list, ",")
		tag = strings.TrimSpace(tag)
		if tag == "*" || strings.TrimPrefix(tag, "W/") == etag {
			return true
		}
	}
	return false
}
