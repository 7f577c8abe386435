// Package snapshot prepares one catalogue for serving: it renders the page
// and the JSON once, compresses each once, and computes their validators
// and header values once, so serving a cache hit is choosing a byte slice
// and assigning prepared headers. It knows nothing of the upstream, the
// cache or the HTTP framework.
package snapshot

import (
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/movies-dev/movies/pkg/render"
)

// Snapshot is one catalogue, prepared in every form it is served in. It is
// immutable once built, and safe for concurrent use.
type Snapshot struct {
	HTML, JSON *Representation
	// View is the data the representations were rendered from, kept for
	// the rare renderings that depend on the request (a stale one).
	View render.View
	// Fetch is the span of the fetch whose data this is, for the requests
	// that waited on it to link to; invalid when untraced or fetched by
	// another replica.
	Fetch trace.SpanContext

	staleOnce sync.Once
	staleHTML []byte
	staleErr  error

	requests atomic.Uint64 // served from this snapshot, see CountRequest
}

// CountRequest counts one request served from s, and returns how many have been.
func (s *Snapshot) CountRequest() uint64 { return s.requests.Add(1) }

// Requests is how many requests have been served from s.
func (s *Snapshot) Requests() uint64 { return s.requests.Load() }

// New renders view in every form it is served in. changed is when its data
// last changed (the Last-Modified of every representation: a fresh
// rendering carries no fetch time, so the same data is the same bytes and
// the same validators from one snapshot to the next). prevChanged is when
// the data before it changed (zero if none): Last-Modified has a one-second
// resolution, and a snapshot whose second is not its own must not answer
// If-Modified-Since.
func New(view render.View, changed, prevChanged time.Time) (*Snapshot, error) {
	return newSnapshot(view, changed, prevChanged, false)
}

// NewQuick is New at the fastest compression levels: the same forms and
// validators, larger bytes. It is for tests that prepare thousands of
// snapshots and measure none (the fleet simulator), never for serving.
func NewQuick(view render.View, changed, prevChanged time.Time) (*Snapshot, error) {
	return newSnapshot(view, changed, prevChanged, true)
}

func newSnapshot(view render.View, changed, prevChanged time.Time, quick bool) (*Snapshot, error) {
	html, err := render.Page(view)
	if err != nil {
		return nil, err
	}
	js, err := render.JSON(view)
	if err != nil {
		return nil, err
	}
	s := &Snapshot{View: view}
	if s.HTML, err = newRepresentation(html, "text/html; charset=utf-8", changed, prevChanged, quick); err != nil {
		return nil, err
	}
	if s.JSON, err = newRepresentation(js, "application/json", changed, prevChanged, quick); err != nil {
		return nil, err
	}
	return s, nil
}

// StalePage is the page with the stale banner, rendered at most once per
// snapshot: it shows only the fetch time, which does not change.
func (s *Snapshot) StalePage() ([]byte, error) {
	s.staleOnce.Do(func() {
		v := s.View
		v.Stale = true
		s.staleHTML, s.staleErr = render.Page(v)
	})
	return s.staleHTML, s.staleErr
}

// StaleJSON is the JSON document marked stale with its age at now. The age
// changes every second, so it is rendered per request: stale serving is the
// rare, degraded path.
func (s *Snapshot) StaleJSON(now time.Time) ([]byte, error) {
	v := s.View
	v.Stale, v.Age = true, now.Sub(v.FetchedAt)
	return render.JSON(v)
}
