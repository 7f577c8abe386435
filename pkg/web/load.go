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

	"github.com/movies-dev/movies/pkg/cache"
	"github.com/movies-dev/movies/pkg/fleet"
	"github.com/movies-dev/movies/pkg/ghibli"
	"github.com/movies-dev/movies/pkg/render"
	"github.com/movies-dev/movies/pkg/snapshot"
)

// loader fetches the catalogue and prepares a snapshot of it. It runs
// inside the cache's flight, so once per TTL however many requests wait,
// and logs once per fetch, so an outage logs once per attempt, not once per
// request. It remembers its own last snapshot (the validators and the
// shared tier need it) rather than asking the cache it fills.
//
// With a shared tier (-redis) it takes a snapshot another replica fetched,
// leads the fleet's fetch, or waits for the replica that does; without one,
// or whenever Redis fails, it fetches alone.
type loader struct {
	client *ghibli.Client
	log    *slog.Logger
	ttl    time.Duration
	tier   *fleet.Tier // nil without -redis

	mu   sync.Mutex
	last struct {
		fetched  time.Time // the last snapshot's age counts from here (local clock)
		deadline time.Time // and it is served until here
		gen      uint64    // its generation in the fleet; 0 if fetched alone
		// What identifies its data, and when that data was first seen
		// (its Last-Modified), and when the data before it was.
		data                 [sha256.Size]byte
		changed, prevChanged time.Time
		snap                 *snapshot.Snapshot
		// adopted is when the adopter put snap in the cache; zero if a
		// load returned it.
		adopted time.Time
	}
}

// Load is the Loader method; the cache prefers LoadDated.
func (l *loader) Load(ctx context.Context, started time.Time) (*snapshot.Snapshot, error) {
	s, _, err := l.LoadDated(ctx, started)
	return s, err
}

// LoadDated returns a new snapshot and the instant its age counts from:
// this load's start, or for a shared snapshot the (earlier) start of the
// fetch another replica made.
func (l *loader) LoadDated(ctx context.Context, started time.Time) (*snapshot.Snapshot, time.Time, error) {
	var e fleet.Entry
	var movies []ghibli.Movie
	var err error
	if l.tier == nil {
		movies, err = l.fetch(ctx, started)
		e = fleet.Entry{FetchedAt: started, Deadline: started.Add(l.ttl), Source: "local"}
	} else {
		// This load was started for the snapshot the cache held then. If
		// news brought a newer one since, that one is what it needs: the
		// shared tier, asked for something newer than that, would fetch
		// again for the fleet moments after another replica did.
		have, s, fetched := l.have(started)
		if s != nil {
			return s, fetched, nil
		}
		e, err = l.tier.Load(ctx, have, func(ctx context.Context) ([]byte, error) {
			movies, err = l.fetch(ctx, time.Now())
			if err != nil {
				return nil, err
			}
			return json.Marshal(movies)
		})
		if err == nil && e.Source == "shared" {
			movies, err = decodeShared(e.Data)
		}
	}
	if err != nil {
		return nil, time.Time{}, err
	}
	return l.prepare(ctx, movies, e)
}

// fetch asks the upstream and logs the outcome once.
func (l *loader) fetch(ctx context.Context, started time.Time) ([]ghibli.Movie, error) {
	movies, err := l.client.Movies(ctx)
	attrs := []any{"duration", time.Since(started).Round(time.Millisecond), "outcome", ghibli.Cause(err)}
	if err != nil {
		l.log.ErrorContext(ctx, "upstream fetch failed", append(attrs, "err", err)...)
		return nil, err
	}
	l.log.InfoContext(ctx, "upstream fetch", append(attrs, "films", len(movies), "links", countPeople(movies))...)
	return movies, nil
}

// prepare renders a snapshot of movies from e and remembers it.
func (l *loader) prepare(ctx context.Context, movies []ghibli.Movie, e fleet.Entry) (*snapshot.Snapshot, time.Time, error) {
	return l.prepareAndOffer(ctx, movies, e, nil)
}

// prepareAndOffer is prepare that, if offer is not nil, remembers the
// snapshot only if offer (called with l.mu held) put it in the cache. So
// a load looking meanwhile (have) sees either that snapshot, in the
// loader and the cache, or the one before, never one in the loader and
// the other in the cache. Rendering, the costly part, runs unlocked.
func (l *loader) prepareAndOffer(ctx context.Context, movies []ghibli.Movie, e fleet.Entry, offer func(*snapshot.Snapshot, time.Time) bool) (*snapshot.Snapshot, time.Time, error) {
	// Every time here is on this replica's clock, counted back from the
	// deadline: the writer's FetchedAt is another clock, maybe ahead of
	// ours, and a Last-Modified or an age from it could lie.
	fetched := e.Deadline.Add(-l.ttl)
	canonical, err := json.Marshal(movies)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("render: %w", err)
	}
	data := sha256.Sum256(canonical)
	view := toView(movies, fetched)
	view.MaxAge = l.ttl
	l.mu.Lock()
	changed, prevChanged := l.datesLocked(data, fetched)
	var s *snapshot.Snapshot
	for {
		l.mu.Unlock()
		s, err = snapshot.New(view, changed, prevChanged)
		if err != nil {
			l.log.ErrorContext(ctx, "render failed", "err", err)
			return nil, time.Time{}, fmt.Errorf("render: %w", err)
		}
		l.mu.Lock()
		// Another snapshot may have been remembered while this one
		// rendered: if that moves its dates, render it again, or its
		// Last-Modified could claim data older than what a client
		// holds, and earn that client a wrong 304.
		c, p := l.datesLocked(data, fetched)
		if c.Equal(changed) && p.Equal(prevChanged) {
			break
		}
		changed, prevChanged = c, p
	}
	defer l.mu.Unlock()
	if e.Source == "shared" {
		l.log.DebugContext(ctx, "took the shared snapshot", "gen", e.Gen, "left", time.Until(e.Deadline).Round(time.Millisecond))
	}
	var adopted time.Time
	if offer != nil {
		if !offer(s, fetched) {
			return s, fetched, nil
		}
		adopted = time.Now()
	}
	if fetched.After(l.last.fetched) {
		l.last.fetched, l.last.deadline, l.last.gen = fetched, e.Deadline, e.Gen
		l.last.data, l.last.changed, l.last.prevChanged = data, changed, prevChanged
		l.last.snap, l.last.adopted = s, adopted
	}
	return s, fetched, nil
}

// datesLocked returns the Last-Modified of data fetched at fetched, and
// that of the data before it, given the snapshot remembered last.
// Unchanged data keeps its Last-Modified, and with it its bytes and
// validators, so clients and caches revalidate with a 304. Changed data is
// dated when it was fetched, as this replica reckons it. l.mu must be held.
func (l *loader) datesLocked(data [sha256.Size]byte, fetched time.Time) (changed, prevChanged time.Time) {
	if data != l.last.data {
		return fetched, l.last.changed
	}
	return l.last.changed, l.last.prevChanged
}

// have returns the snapshot the adopter put in the cache at or after
// started, if it is still fresh; else the deadline a shared snapshot must
// beat (haveDeadline). Both come from one look under l.mu, so a load
// overtaken by an adoption either takes the adopted snapshot or asks the
// shared tier for one newer than the snapshot before it, which the
// adopted one is.
func (l *loader) have(started time.Time) (time.Time, *snapshot.Snapshot, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !time.Now().Before(l.last.deadline) {
		return time.Time{}, nil, time.Time{}
	}
	if !l.last.adopted.IsZero() && !l.last.adopted.Before(started) {
		return time.Time{}, l.last.snap, l.last.fetched
	}
	return l.last.deadline, nil, time.Time{}
}

// haveDeadline is when the snapshot this replica serves expires, or zero
// if it has none fresh: the shared tier offers only something newer.
func (l *loader) haveDeadline() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	if time.Now().After(l.last.deadline) {
		return time.Time{}
	}
	return l.last.deadline
}

// holds reports whether the snapshot this replica serves is generation
// gen or a later one.
func (l *loader) holds(gen uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last.gen >= gen
}

// adopter takes news of a snapshot another replica committed and puts it
// in the cache at once, so no replica serves an older snapshot than one
// the fleet has already served for longer than it takes news to travel.
type adopter struct {
	loader *loader
	cache  *cache.Cache[*snapshot.Snapshot]
	busy   atomic.Bool
	// settled is the generation the last finished adoption was told of,
	// adopted or not (nothing newer in Redis, a newer snapshot here
	// already, an invalid value): the tier repeats news on every poll, and
	// only an adoption that Redis failed, or that was busy, is worth
	// repeating. Only that very generation is skipped, not every lower
	// one: announced generations come from Redis, unchecked, and a bogus
	// huge one must not stop every adoption after it.
	settled atomic.Uint64

	mu     sync.Mutex // orders wg.Add before close's wg.Wait
	closed bool
	wg     sync.WaitGroup
}

// news is the tier's OnNews: it must not block, and one adoption at a
// time is enough (the tier repeats the news on its next poll).
func (a *adopter) news(gen uint64) {
	if gen == a.settled.Load() || a.loader.holds(gen) {
		return
	}
	have := a.loader.haveDeadline()
	if have.IsZero() {
		return // nothing fresh here to supersede: the next Get loads
	}
	if !a.busy.CompareAndSwap(false, true) {
		return
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		a.busy.Store(false)
		return
	}
	a.wg.Add(1)
	a.mu.Unlock()
	go func() {
		defer a.wg.Done()
		defer a.busy.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		e, found, err := a.loader.tier.Read(ctx, have)
		if err != nil && !errors.Is(err, fleet.ErrInvalid) {
			return // Redis failed: the next poll tries again
		}
		defer a.settled.Store(gen)
		if !found {
			return
		}
		movies, err := decodeShared(e.Data)
		if err != nil {
			return
		}
		a.loader.prepareAndOffer(ctx, movies, e, a.cache.Offer)
	}()
}

// close stops adoptions and waits for a running one.
func (a *adopter) close() {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	a.wg.Wait()
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

// validateShared is the shared tier's Validate.
func validateShared(b []byte) error {
	_, err := decodeShared(b)
	return err
}

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
