package web

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/movies-dev/movies/pkg/cache"
	"github.com/movies-dev/movies/pkg/fleet"
	"github.com/movies-dev/movies/pkg/ghibli"
	"github.com/movies-dev/movies/pkg/render"
	"github.com/movies-dev/movies/pkg/snapshot"
)

// loader fetches the catalogue and prepares a snapshot of it. It runs
// inside the cache's flight, so once per TTL however many requests wait,
// one load at a time, and logs once per fetch, so an outage logs once per
// attempt, not once per request. The cache is the one owner of what is
// served; the loader keeps only what dates the data (Last-Modified).
//
// With a shared tier (-redis) it takes a snapshot another replica fetched,
// leads the fleet's fetch, or waits for the replica that does; without one,
// or whenever Redis fails, it fetches alone. News of another replica's
// snapshot comes back through the cache (Adopt) as a load that only reads.
type loader struct {
	client *ghibli.Client
	log    *slog.Logger
	ttl    time.Duration
	tier   *fleet.Tier[[]ghibli.Movie] // nil without -redis
	tracer trace.Tracer                // records nothing without Config.Tracer
	// waiting is how many requests wait on a load now (the cache's), told
	// to the fetch's span when it ends: the requests it answers.
	waiting func() int
	// newSnapshot is snapshot.New (the simulator's replicas use NewQuick).
	newSnapshot func(render.View, time.Time, time.Time) (*snapshot.Snapshot, error)

	stats loaderStats // only through sync/atomic

	mu    sync.Mutex // loads run one at a time, but say so
	dates struct {
		// What identifies the last data prepared, when that data was
		// first seen (its Last-Modified), and when the data before it was.
		data                 [sha256.Size]byte
		changed, prevChanged time.Time
	}
}

// loaderStats are the loader's counters (see metrics.RegisterCounters).
type loaderStats struct {
	// Renders is what a fleet pays per replica for each snapshot: a
	// render and the compression of every coding, tens of ms of CPU.
	Renders uint64 `metric:"renders_total" help:"Snapshots rendered and compressed (a page in every coding), whether fetched here or read from the fleet."`
}

// Stats returns the loader's counters.
func (l *loader) Stats() loaderStats {
	return loaderStats{Renders: atomic.LoadUint64(&l.stats.Renders)}
}

// LoadShared returns a new snapshot with the instant its age counts from
// (this load's start, or the start of the fetch another replica made) and
// its version in the fleet.
func (l *loader) LoadShared(ctx context.Context, r cache.Request[*snapshot.Snapshot]) (cache.Snapshot[*snapshot.Snapshot], error) {
	var held fleet.Entry[[]ghibli.Movie] // what the cache holds, as the fleet asks it
	if r.Have != nil {
		held = fleet.Entry[[]ghibli.Movie]{Version: r.Have.Version, Deadline: r.Have.Fetched.Add(l.ttl)}
	}
	var e fleet.Entry[[]ghibli.Movie]
	var err error
	// The span of this load's fetch that succeeded (of the two, when a
	// late fetch raced a second), for the waiters to link to.
	var fetched struct {
		sync.Mutex
		span trace.SpanContext
	}
	fetch := func(ctx context.Context) ([]ghibli.Movie, error) {
		movies, span, err := l.fetch(ctx, time.Now())
		if err == nil {
			fetched.Lock()
			fetched.span = span
			fetched.Unlock()
			// In a fleet, the span travels with the snapshot, so the
			// requests other replicas serve from it link to it too.
			if span.IsValid() {
				fleet.ShareTrace(ctx, traceparent(span))
			}
		}
		return movies, err
	}
	switch {
	case l.tier == nil && (r.Adopt != 0 || !r.Hold.IsZero()):
		return cache.Snapshot[*snapshot.Snapshot]{}, cache.ErrNotNewer
	case l.tier == nil:
		e.Value, err = fetch(ctx)
		e.Deadline = r.Started.Add(l.ttl)
	case r.Adopt != 0 && r.Have != nil && r.Have.Version == 0 && time.Since(r.Have.Fetched) < l.ttl:
		// What is served was fetched alone (Redis failed): it has no
		// place in the fleet's order, and is kept until it expires.
		return cache.Snapshot[*snapshot.Snapshot]{}, cache.ErrNotNewer
	case r.Adopt != 0 || !r.Hold.IsZero():
		// News to adopt, or a wait the upstream asked of this replica
		// (its Retry-After): take what another replica fetched, if it
		// is newer, and fetch nothing.
		var found bool
		if e, found, err = l.tier.Read(ctx, held.Version); err == nil && !found {
			err = cache.ErrNotNewer
		}
	default:
		e, err = l.tier.Load(ctx, held, func(ctx context.Context) ([]ghibli.Movie, []byte, error) {
			movies, err := fetch(ctx)
			if err != nil {
				return nil, nil, err
			}
			b, err := json.Marshal(movies)
			return movies, b, err
		})
	}
	if err != nil {
		return cache.Snapshot[*snapshot.Snapshot]{}, err
	}
	start := e.Deadline.Add(-l.ttl)
	if e.Source == fleet.FromFleet && r.Have != nil && r.Have.Version == 0 && start.Before(r.Have.Fetched) && time.Since(r.Have.Fetched) < l.ttl {
		// An early refresh while what is served was fetched alone, after
		// what the fleet offers (its previous snapshot, before the
		// switch): the cache would keep what it holds, so preparing the
		// offer is work thrown away, again at every hit until the switch.
		// Nothing newer: the next early refresh asks again.
		return cache.Snapshot[*snapshot.Snapshot]{}, cache.ErrNotNewer
	}
	if e.Source == fleet.FromFleet {
		l.log.DebugContext(ctx, "took the shared snapshot", "version", e.Version, "left", time.Until(e.Deadline).Round(time.Millisecond), "newer", e.Newer)
	}
	// Every time here is on this replica's clock, counted back from the
	// deadline: a writer's clock may be ahead of ours, and a
	// Last-Modified or an age from it could lie.
	var span trace.SpanContext
	if e.Source == fleet.FromFleet {
		span = spanOf(e.Trace) // another replica's fetch
	} else {
		fetched.Lock()
		span = fetched.span
		fetched.Unlock()
	}
	s, err := l.prepare(ctx, e.Value, start, span)
	return cache.Snapshot[*snapshot.Snapshot]{Value: s, Fetched: start, Version: e.Version, Newer: e.Newer, Origin: string(e.Source)}, err
}

// fetch asks the upstream, in a span of its own, and logs the outcome once.
func (l *loader) fetch(ctx context.Context, started time.Time) ([]ghibli.Movie, trace.SpanContext, error) {
	ctx, span := l.tracer.Start(ctx, "fetch")
	movies, err := l.client.Movies(ctx)
	cause := ghibli.Cause(err)
	span.SetAttributes(attribute.String("movies.outcome", cause))
	attrs := []any{"duration", time.Since(started).Round(time.Millisecond), "outcome", cause}
	if err != nil {
		l.log.ErrorContext(ctx, "upstream fetch failed", append(attrs, "err", err)...)
		endSpan(span, err)
		return nil, span.SpanContext(), err
	}
	span.SetAttributes(attribute.Int("movies.films", len(movies)), attribute.Int("movies.links", countPeople(movies)))
	if l.waiting != nil {
		span.SetAttributes(attribute.Int("movies.requests_waiting", l.waiting()))
	}
	l.log.InfoContext(ctx, "upstream fetch", append(attrs, "films", len(movies), "links", countPeople(movies))...)
	endSpan(span, nil)
	return movies, span.SpanContext(), nil
}

// prepare renders a snapshot of movies fetched at fetched. Unchanged data
// keeps its Last-Modified, and with it its bytes and validators, so
// clients and caches revalidate with a 304; changed data is dated when it
// was fetched, as this replica reckons it.
func (l *loader) prepare(ctx context.Context, movies []ghibli.Movie, fetched time.Time, fetch trace.SpanContext) (s *snapshot.Snapshot, err error) {
	ctx, span := l.tracer.Start(ctx, "render")
	defer func() { endSpan(span, err) }()
	canonical, err := json.Marshal(movies)
	if err != nil {
		return nil, fmt.Errorf("render: %w", err)
	}
	data := sha256.Sum256(canonical)
	view := toView(movies, fetched)
	view.MaxAge = l.ttl
	l.mu.Lock()
	defer l.mu.Unlock()
	changed, prevChanged := l.dates.changed, l.dates.prevChanged
	if data != l.dates.data {
		changed, prevChanged = fetched, l.dates.changed
	}
	s, err = l.newSnapshot(view, changed, prevChanged)
	atomic.AddUint64(&l.stats.Renders, 1)
	if err != nil {
		l.log.ErrorContext(ctx, "render failed", "err", err)
		return nil, fmt.Errorf("render: %w", err)
	}
	s.Fetch = fetch
	l.dates.data, l.dates.changed, l.dates.prevChanged = data, changed, prevChanged
	return s, nil
}

// Bounds on a shared catalogue: far above the real one (22 films, 57
// people), far below what could hurt.
const (
	maxSharedFilms  = 1000
	maxSharedPeople = 1000
	maxSharedField  = 1000
)

// decodeShared checks a catalogue read from Redis, where anything may have
// been written: it must be valid UTF-8 JSON of exactly the shape we write,
// within bounds, with ids and titles, and no markup or control characters
// in any field (the templates would escape them; they are refused because
// this replica never wrote them).
func decodeShared(b []byte) ([]ghibli.Movie, error) {
	if !utf8.Valid(b) {
		return nil, errors.New("not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var movies []ghibli.Movie
	if err := dec.Decode(&movies); err != nil {
		return nil, fmt.Errorf("malformed catalogue: %w", err)
	}
	if dec.More() {
		return nil, errors.New("trailing data after the catalogue")
	}
	if len(movies) == 0 || len(movies) > maxSharedFilms {
		return nil, fmt.Errorf("%d films, want 1 to %d", len(movies), maxSharedFilms)
	}
	for _, m := range movies {
		if m.ID == "" || m.Title == "" || len(m.People) > maxSharedPeople {
			return nil, errors.New("a film without id or title, or with too many people")
		}
		fields := []string{m.ID, m.Title, m.ReleaseDate, m.Director}
		for _, p := range m.People {
			if p.ID == "" {
				return nil, errors.New("a person without an id")
			}
			fields = append(fields, p.ID, p.Name)
		}
		for _, f := range fields {
			if len(f) > maxSharedField || strings.ContainsAny(f, "<>\x00") || strings.ContainsFunc(f, isControl) {
				return nil, fmt.Errorf("a field with markup, control characters or over %d bytes", maxSharedField)
			}
		}
	}
	return movies, nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

func toView(movies []ghibli.Movie, fetched time.Time) render.View {
	v := render.View{FetchedAt: fetched, Movies: make([]render.Movie, len(movies))}
	for i, m := range movies {
		people := make([]render.Person, len(m.People))
		for j, p := range m.People {
			people[j] = render.Person{ID: p.ID, Name: p.Name}
		}
		v.Movies[i] = render.Movie{ID: m.ID, Title: m.Title, ReleaseDate: m.ReleaseDate, Director: m.Director, People: people}
	}
	return v
}

func countPeople(movies []ghibli.Movie) int {
	n := 0
	for _, m := range movies {
		n += len(m.People)
	}
	return n
}
