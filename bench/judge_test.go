package main

import (
	"testing"
	"time"
)

var t0 = time.Unix(2000, 0)

func ms(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }

func TestBackwards(t *testing.T) {
	tests := []struct {
		name      string
		obs       []sighting
		at0, at50 int
	}{
		{
			name: "markers only rise",
			obs:  []sighting{{0, ms(0), ms(5), 1}, {1, ms(10), ms(15), 1}, {0, ms(20), ms(25), 2}, {1, ms(30), ms(35), 2}},
		},
		{
			name: "an older page 20 ms after a newer one was received",
			obs:  []sighting{{0, ms(0), ms(5), 2}, {1, ms(25), ms(30), 1}},
			at0:  1,
		},
		{
			name: "an older page 80 ms after: past the grace too",
			obs:  []sighting{{0, ms(0), ms(5), 2}, {1, ms(85), ms(90), 1}},
			at0:  1, at50: 1,
		},
		{
			name: "overlapping requests are not backwards: the older was sent before the newer was received",
			obs:  []sighting{{0, ms(0), ms(10), 2}, {1, ms(5), ms(20), 1}},
		},
		{
			name: "failures are neither a newer page nor an older one",
			obs:  []sighting{{0, ms(0), ms(5), 3}, {1, ms(100), ms(105), -1}, {0, ms(200), ms(205), 3}},
		},
		{
			name: "unsorted input",
			obs:  []sighting{{1, ms(300), ms(305), 1}, {0, ms(0), ms(5), 2}, {1, ms(100), ms(110), 2}},
			at0:  1, at50: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := backwards(tt.obs, 0); got != tt.at0 {
				t.Errorf("backwards(grace 0) = %d, want %d", got, tt.at0)
			}
			if got := backwards(tt.obs, 50*time.Millisecond); got != tt.at50 {
				t.Errorf("backwards(grace 50ms) = %d, want %d", got, tt.at50)
			}
		})
	}
}

func TestCommitLags(t *testing.T) {
	fetches := []fetchRecord{
		{at: ms(0), done: ms(10), marker: 5},
		{at: ms(2000), done: ms(2010), marker: 12},
		{at: ms(2500), done: ms(2505), marker: 12}, // a second fetch of the same marker: the first counts
		{at: ms(9000), done: ms(9010), marker: 40}, // after until: not judged
	}
	obs := []sighting{
		{0, ms(0), ms(4), 4},     // before the fetch
		{0, ms(50), ms(60), 5},   // replica 0 serves 5 at 60 ms
		{1, ms(100), ms(300), 5}, // replica 1 at 300 ms
		{0, ms(2100), ms(2110), 12},
		{1, ms(2400), ms(2420), 13}, // a newer marker counts as serving 12
	}
	got := commitLags(fetches, obs, 2, ms(8000))
	if len(got) != 2 {
		t.Fatalf("commitLags judged %d markers, want 2: %+v", len(got), got)
	}
	want := []commitLag{
		{marker: 5, toAll: 290 * time.Millisecond, spread: 240 * time.Millisecond, allServedIt: true},
		{marker: 12, toAll: 410 * time.Millisecond, spread: 310 * time.Millisecond, allServedIt: true},
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("lag %d = %+v, want %+v", i, got[i], want[i])
		}
	}

	// A replica that never serves it: not served by all.
	got = commitLags(fetches[:1], obs[:2], 2, ms(8000))
	if len(got) != 1 || got[0].allServedIt {
		t.Errorf("commitLags with a replica that never served = %+v, want one not served by all", got)
	}
	if n := countUnserved(got); n != 1 {
		t.Errorf("countUnserved = %d, want 1", n)
	}
	if s := lagText(commitLags(fetches, obs, 2, ms(8000))); s != "290 ms / 410 ms (310 ms)" {
		t.Errorf("lagText = %q", s)
	}
	if s := lagText(got); s != "n/a" {
		t.Errorf("lagText with nothing served = %q, want n/a", s)
	}
}

func TestClientCallsText(t *testing.T) {
	d := redisDelta{span: 2 * time.Second, calls: map[string]int64{"evalsha": 40, "ping": 4, "get": 100}, total: 144}
	if got := callsPerSecond(d); got != "22.0 [72]" {
		t.Errorf("callsPerSecond = %q, want 22.0 [72]", got)
	}
	if got := perReplica(d, 4); got != "5.50" {
		t.Errorf("perReplica = %q, want 5.50", got)
	}
	if got := callsPerSecond(redisDelta{}); got != "n/a" {
		t.Errorf("callsPerSecond with no span = %q, want n/a", got)
	}
}
