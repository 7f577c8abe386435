package main

import (
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	tests := []struct {
		xs   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{27092, 24128, 44876}, 27092},
	}
	for _, tt := range tests {
		in := slices.Clone(tt.xs)
		if got := median(tt.xs); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.xs, got, tt.want)
		}
		if !slices.Equal(in, tt.xs) {
			t.Errorf("median sorted its argument: %v", tt.xs)
		}
	}
	if !math.IsNaN(median(nil)) {
		t.Error("median of nothing is not NaN")
	}
}

func TestRatios(t *testing.T) {
	got := ratios([]float64{10, 20, 30, 5}, []float64{5, 0, 15})
	want := []float64{2, 0, 2}
	if !slices.Equal(got, want) {
		t.Errorf("ratios = %v, want %v", got, want)
	}
	// The median of per-round ratios, not the ratio of medians.
	movies, floor := []float64{100, 90, 200}, []float64{100, 100, 100}
	if got := median(ratios(movies, floor)); got != 1 {
		t.Errorf("median ratio = %v, want 1", got)
	}
}

func TestPercentile(t *testing.T) {
	ds := []time.Duration{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}
	tests := []struct {
		p    float64
		want time.Duration
	}{{50, 5}, {90, 9}, {99, 10}, {100, 10}, {1, 1}, {0, 1}}
	for _, tt := range tests {
		if got := percentile(ds, tt.p); got != tt.want {
			t.Errorf("percentile(p%v) = %v, want %v", tt.p, got, tt.want)
		}
	}
	if got := percentile([]time.Duration(nil), 99); got != 0 {
		t.Errorf("percentile of nothing = %v, want 0", got)
	}
}

func TestWindows(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms ...int) []time.Time {
		var out []time.Time
		for _, m := range ms {
			out = append(out, t0.Add(time.Duration(m)*time.Millisecond))
		}
		return out
	}
	tests := []struct {
		name  string
		times []time.Time
		want  int
	}{
		{"none", nil, 0},
		{"two per 4s window", at(0, 2000, 4000, 6000, 8000), 2},
		{"a burst", at(0, 3990, 4000, 4010, 8100), 3},
		{"unsorted", at(8000, 0, 4100, 4000), 2},
	}
	for _, tt := range tests {
		if got := maxInWindow(tt.times, 4*time.Second); got != tt.want {
			t.Errorf("%s: maxInWindow = %d, want %d", tt.name, got, tt.want)
		}
	}
	if got := minGap(at(4000, 0, 1990, 6100)); got != 1990*time.Millisecond {
		t.Errorf("minGap = %v, want 1.99s", got)
	}
	if got := minGap(at(5)); got != 0 {
		t.Errorf("minGap of one = %v, want 0", got)
	}
	if got := perWindow(15, 30*time.Second, 4*time.Second); got != 2 {
		t.Errorf("perWindow = %v, want 2", got)
	}
	if got := countIn(at(0, 999, 1000, 2000), t0, t0.Add(time.Second)); got != 2 {
		t.Errorf("countIn = %d, want 2", got)
	}
}

func TestWrkDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{10 * time.Second: "10s", 1500 * time.Millisecond: "2s", 0: "1s", time.Minute: "60s"} {
		if got := wrkDuration(d); got != want {
			t.Errorf("wrkDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestNginxConf(t *testing.T) {
	h := map[string][]string{
		"Cache-Control":           {"public, max-age=0"},
		"Content-Security-Policy": {"default-src 'none'"},
		"Etag":                    {`"abc"`},
		"X-Odd":                   {`a "quoted" value`},
		"Date":                    {"now"},
	}
	lines := nginxHeaders(h)
	want := "            add_header Cache-Control \"public, max-age=0\" always;\n            add_header Content-Security-Policy \"default-src 'none'\" always;"
	if lines != want {
		t.Errorf("nginxHeaders =\n%s\nwant\n%s", lines, want)
	}
	conf := nginxConf("/w/nginx", "/w/www", 20001, lines)
	for _, s := range []string{"listen 127.0.0.1:20001;", "root /w/www;", "pid /w/nginx/nginx.pid;", "add_header Cache-Control"} {
		if !strings.Contains(conf, s) {
			t.Errorf("the nginx config lacks %q", s)
		}
	}
	for _, p := range []string{"@PREFIX@", "@ROOT@", "@PORT@", "@HEADERS@"} {
		if strings.Contains(conf, p) {
			t.Errorf("the nginx config keeps the placeholder %s", p)
		}
	}
}
