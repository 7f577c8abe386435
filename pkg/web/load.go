package web

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/movies-dev/movies/pkg/ghibli"
	"github.com/movies-dev/movies/pkg/render"
	"github.com/movies-dev/movies/pkg/snapshot"
)

// loader fetches the catalogue and prepares a snapshot of it. It runs
// inside the cache's flight, so once per TTL however many requests wait,
// and logs once per fetch, so an outage logs once per attempt, not once per
// request. It remembers its own last fetch (the snapshot's validators need
// it) rather than asking the cache it fills.
type loader struct {
	client *ghibli.Client
	log    *slog.Logger

	mu          sync.Mutex
	prevFetched time.Time // start of the last fetch that made a snapshot
}

func (l *loader) Load(ctx context.Context, started time.Time) (*snapshot.Snapshot, error) {
	movies, err := l.client.Movies(ctx)
	attrs := []any{"duration", time.Since(started).Round(time.Millisecond), "outcome", ghibli.Cause(err)}
	if err != nil {
		l.log.ErrorContext(ctx, "upstream fetch failed", append(attrs, "err", err)...)
		return nil, err
	}
	view := toView(movies, started)
	l.log.InfoContext(ctx, "upstream fetch", append(attrs, "films", len(view.Movies), "links", countPeople(view))...)
	l.mu.Lock()
	defer l.mu.Unlock()
	s, err := snapshot.New(view, l.prevFetched)
	if err != nil {
		l.log.ErrorContext(ctx, "render failed", "err", err)
		return nil, fmt.Errorf("render: %w", err)
	}
	l.prevFetched = started
	return s, nil
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

func countPeople(v render.View) int {
	n := 0
	for _, m := range v.Movies {
		n += len(m.People)
	}
	return n
}
