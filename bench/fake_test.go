package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestMarkerFake checks the scale benchmark's upstream on loopback: each
// /films request is recorded with the marker its answer carried, and the
// marker moves.
func TestMarkerFake(t *testing.T) {
	f, err := startMarkerFake(10*time.Millisecond, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.close()
	c := &http.Client{Timeout: 5 * time.Second}
	seen := map[int]bool{}
	for i := 0; i < 5; i++ {
		resp, err := c.Get(f.URL + "/films")
		if err != nil {
			t.Fatal(err)
		}
		var films []struct{ ID, Title string }
		err = json.NewDecoder(resp.Body).Decode(&films)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		// The record is written once the handler returns, a moment
		// after the client has its answer.
		for deadline := time.Now().Add(time.Second); f.fetchCount() <= i && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		recs := f.fetchesSince(i)
		if len(recs) != 1 {
			t.Fatalf("after %d requests the fake recorded %d from index %d, want 1", i+1, len(recs), i)
		}
		var title string
		for _, film := range films {
			if film.ID == castleID {
				title = film.Title
			}
		}
		if want := fmt.Sprintf("Castle in the Sky #%d", recs[0].marker); title != want {
			t.Errorf("the answer showed %q, the record says marker %d", title, recs[0].marker)
		}
		seen[recs[0].marker] = true
		time.Sleep(25 * time.Millisecond)
	}
	if len(seen) < 2 {
		t.Errorf("the marker did not move in 5 requests 25ms apart: %v", seen)
	}
	if _, err := c.Get(f.URL + "/people"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	if n := f.fetchCount(); n != 5 {
		t.Errorf("fetchCount = %d after 5 /films and 1 /people, want 5", n)
	}
}

// TestLoadGen checks the load generator's pacing, round robin and
// reading of pages against loopback servers.
func TestLoadGen(t *testing.T) {
	var hits [2]atomic.Int64
	mk := func(i int, body string, status int) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits[i].Add(1)
			w.WriteHeader(status)
			fmt.Fprint(w, body)
		}))
	}
	good := mk(0, "<h2>Castle in the Sky #7</h2>", http.StatusOK)
	defer good.Close()
	bad := mk(1, "down", http.StatusServiceUnavailable)
	defer bad.Close()
	lg := newLoadGen([]string{good.URL, bad.URL}, 200)
	start := time.Now()
	lg.run(context.Background(), start, start.Add(100*time.Millisecond))
	obs, failures := lg.results(start)
	if len(obs) != 20 {
		t.Fatalf("%d requests in 100ms at 200/s, want 20", len(obs))
	}
	if a, b := hits[0].Load(), hits[1].Load(); a != 10 || b != 10 {
		t.Errorf("requests per replica = %d, %d; want 10 each (round robin)", a, b)
	}
	for _, o := range obs {
		want := -1
		if o.replica == 0 {
			want = 7
		}
		if o.marker != want {
			t.Errorf("replica %d: marker %d, want %d", o.replica, o.marker, want)
		}
	}
	if len(failures) == 0 || !strings.Contains(failures[0], "status 503") {
		t.Errorf("failures = %v, want the 503s named", failures)
	}
}
