package main

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/movies-dev/movies/pkg/ghibli"
	"github.com/movies-dev/movies/pkg/ghibli/builtin"
	"github.com/movies-dev/movies/pkg/ghibli/ghiblitest"
)

// castleID is the film whose title carries the marker, as in the e2e
// tests: "Castle in the Sky #n".
const castleID = "2baf70d1-42bb-4437-b551-e5fed5a87abe"

// markerFake is the scale benchmark's upstream: the bundled data, in this
// process, with a counter in a film's title that moves every period, and
// its own record of every /films request (when it came, when it was
// answered, which marker it carried). Every fetch makes exactly one /films
// request when nothing fails, so this record is the count of fetches,
// and of commits, that no server metric has to be trusted for.
type markerFake struct {
	h   *ghiblitest.Handler
	srv *builtin.Server
	URL string

	mu       sync.Mutex
	marker   int
	film     int
	versions map[int64]int // data version: the marker it carries
	fetches  []fetchRecord

	stop context.CancelFunc
	done chan struct{}
}

func startMarkerFake(every, latency time.Duration) (*markerFake, error) {
	d := ghiblitest.Bundled()
	film := slices.IndexFunc(d.Films, func(f map[string]any) bool { return f["id"] == castleID })
	if film < 0 {
		return nil, fmt.Errorf("the bundled data has no film %s", castleID)
	}
	f := &markerFake{h: ghiblitest.NewHandler(d), film: film, versions: map[int64]int{}, done: make(chan struct{})}
	f.h.SetBehavior("", ghiblitest.Behavior{Latency: latency})
	f.install(0)
	srv, err := builtin.Start("127.0.0.1:0", f)
	if err != nil {
		return nil, err
	}
	f.srv, f.URL = srv, srv.URL
	ctx, cancel := context.WithCancel(context.Background())
	f.stop = cancel
	go func() {
		defer close(f.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for n := 1; ; n++ {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				f.install(n)
			}
		}
	}()
	return f, nil
}

// install puts marker n in the data; the lock makes the version it gets
// known before any request built from it is recorded.
func (f *markerFake) install(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.h.Update(func(d *ghiblitest.Data) { d.Films[f.film]["title"] = "Castle in the Sky #" + strconv.Itoa(n) })
	f.versions[f.h.Version()] = n
	f.marker = n
}

func (f *markerFake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != ghibli.EndpointFilms {
		f.h.ServeHTTP(w, r)
		return
	}
	at := time.Now()
	f.h.ServeHTTP(w, r)
	done := time.Now()
	v, err := strconv.ParseInt(w.Header().Get(ghiblitest.VersionHeader), 10, 64)
	f.mu.Lock()
	defer f.mu.Unlock()
	m, ok := f.versions[v]
	if err != nil || !ok {
		m = -1 // not answered with data (a fault): no marker
	}
	f.fetches = append(f.fetches, fetchRecord{at: at, done: done, marker: m})
}

// fetchesSince returns the /films requests recorded so far from index i.
func (f *markerFake) fetchesSince(i int) []fetchRecord {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.fetches[min(i, len(f.fetches)):])
}

func (f *markerFake) fetchCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.fetches)
}

func (f *markerFake) close() {
	f.stop()
	<-f.done
	f.h.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f.srv.Shutdown(ctx)
}
