package snapshot

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
)

// Representation is one rendering (the page or the JSON) of a snapshot in
// every content coding, with its validators and header values. The header
// values are one-element slices with len == cap, assigned straight into a
// response's header map: anyone appending to them gets a copy, never the
// prepared array. Callers must not modify them. A Representation is
// immutable once built, and safe for concurrent use.
type Representation struct {
	ContentType  []string
	LastModified []string

	modTime time.Time // when the data last changed, at Last-Modified's one-second resolution
	// modTimeUnique is false when the previous, different data changed in
	// the same second: Last-Modified then cannot tell the two apart, and
	// only the ETag may answer 304.
	modTimeUnique bool
	variants      [numCodings]Variant // indexed by coding
	// bySize lists the codings from the smallest body to the largest, so
	// that Negotiate's first best candidate is also the cheapest to send.
	bySize [numCodings]coding
}

// Variant is a representation in one content coding.
type Variant struct {
	Coding        string // "identity", "br", "zstd" or "gzip"
	Body          []byte
	ETag          string   // quoted, strong, its own per coding
	ETagHeader    []string // ETag as a header value
	ContentLength []string
	Encoding      []string // Content-Encoding; nil for identity
}

// coding indexes the forms a representation is prepared in. The order is
// the tie-break among bodies of equal size: the better compressor first.
type coding uint8

const (
	codingBr coding = iota
	codingZstd
	codingGzip
	codingIdentity
	numCodings
)

// codingNames are the content-coding tokens (RFC 9110 section 8.4.1) sent
// in Content-Encoding and used as the ETag suffix.
var codingNames = [numCodings]string{
	codingBr:       "br",
	codingZstd:     "zstd",
	codingGzip:     "gzip",
	codingIdentity: "identity",
}

// NewRepresentation prepares body for serving in every coding. Each coding
// runs near its best compression (levels.go says which and why): that
// costs about 10 ms for the 12 KB page, once per snapshot
// (BenchmarkNewRepresentation), and saves bytes on every response.
// changed is when the data last changed (its Last-Modified), prevChanged
// when the data before it did (zero if none).
func NewRepresentation(body []byte, contentType string, changed, prevChanged time.Time) (*Representation, error) {
	return newRepresentation(body, contentType, changed, prevChanged, false)
}

// newRepresentation is NewRepresentation, at the fastest brotli and gzip
// levels if quick.
func newRepresentation(body []byte, contentType string, changed, prevChanged time.Time, quick bool) (*Representation, error) {
	var bodies [numCodings][]byte
	bodies[codingIdentity] = body
	brQuality, gzLevel := brotliQuality, gzip.BestCompression
	if quick {
		brQuality, gzLevel = 0, gzip.NoCompression
	}
	var err error
	if bodies[codingBr], err = compressBrotli(body, brQuality); err != nil {
		return nil, err
	}
	if bodies[codingZstd], err = compressZstd(body); err != nil {
		return nil, err
	}
	if bodies[codingGzip], err = compressGzip(body, gzLevel); err != nil {
		return nil, err
	}

	// One hash of the content names every variant: the suffix tells the
	// codings apart, so a client's tag for one never validates another.
	sum := sha256.Sum256(body)
	tag := hex.EncodeToString(sum[:12])
	modTime := changed.UTC().Truncate(time.Second)
	r := &Representation{
		ContentType:   []string{contentType},
		LastModified:  []string{modTime.Format(http.TimeFormat)},
		modTime:       modTime,
		modTimeUnique: !prevChanged.UTC().Truncate(time.Second).Equal(modTime),
	}
	for c := range numCodings {
		etag, encoding := `"`+tag+`-`+codingNames[c]+`"`, []string{codingNames[c]}
		if c == codingIdentity {
			etag, encoding = `"`+tag+`"`, nil
		}
		r.variants[c] = Variant{
			Coding:        codingNames[c],
			Body:          bodies[c],
			ETag:          etag,
			ETagHeader:    []string{etag},
			ContentLength: []string{strconv.Itoa(len(bodies[c]))},
			Encoding:      encoding,
		}
		r.bySize[c] = c
	}
	// Stable, so equal sizes keep the codings' own order.
	slices.SortStableFunc(r.bySize[:], func(a, b coding) int {
		return cmp.Compare(len(bodies[a]), len(bodies[b]))
	})
	return r, nil
}

// compressBrotli uses a window just large enough for body: the encoder
// does not know the size up front, and at quality 11 the default 4 MiB
// window costs some 32 MB of match-finder tables for a 12 KB page.
func compressBrotli(body []byte, quality int) ([]byte, error) {
	lgwin := 10 // the smallest window brotli has
	for lgwin < 24 && 1<<lgwin-16 < len(body) {
		lgwin++
	}
	var buf bytes.Buffer
	w := brotli.NewWriterOptions(&buf, brotli.WriterOptions{Quality: quality, LGWin: lgwin})
	if _, err := w.Write(body); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// zstdEncoder is shared by every snapshot: an encoder takes megabytes of
// tables to set up, while EncodeAll on a shared one is safe for concurrent
// use. Zero frames keep an empty body decodable.
var zstdEncoder = sync.OnceValues(func() (*zstd.Encoder, error) {
	// The window fits the bodies served (a page is ~12 KB): the default
	// best-level window holds tens of MiB for the life of the process.
	return zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstdLevel),
		zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(1<<17),
		zstd.WithLowerEncoderMem(true),
		zstd.WithZeroFrames(true))
})

func compressZstd(body []byte) ([]byte, error) {
	enc, err := zstdEncoder()
	if err != nil {
		return nil, err
	}
	return enc.EncodeAll(body, nil), nil
}

func compressGzip(body []byte, level int) ([]byte, error) {
	var buf bytes.Buffer
	var w *gzip.Writer
	if level == gzip.NoCompression {
		// NewQuick's: a writer costs more to make than to use, and the
		// simulator makes thousands.
		w = storedGzip.Get().(*gzip.Writer)
		defer storedGzip.Put(w)
		w.Reset(&buf)
	} else {
		var err error
		if w, err = gzip.NewWriterLevel(&buf, level); err != nil {
			return nil, err
		}
	}
	if _, err := w.Write(body); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

var storedGzip = sync.Pool{New: func() any {
	w, _ := gzip.NewWriterLevel(nil, gzip.NoCompression)
	return w
}}

// Identity is the uncompressed variant.
func (r *Representation) Identity() *Variant { return &r.variants[codingIdentity] }

// Variants lists every variant, identity first, then br, zstd and gzip:
// for reports of the bytes each coding sends. Callers must not modify
// them.
func (r *Representation) Variants() []*Variant {
	return []*Variant{
		&r.variants[codingIdentity],
		&r.variants[codingBr],
		&r.variants[codingZstd],
		&r.variants[codingGzip],
	}
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
