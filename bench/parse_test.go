package main

import (
	"maps"
	"testing"
)

func TestParseWrk(t *testing.T) {
	tests := []struct {
		name    string
		out     string
		want    wrkReport
		wantErr bool
	}{
		{
			name: "report line among wrk's own output",
			out: "Running 10s test @ http://127.0.0.1:1/movies/\n  2 threads and 64 connections\n" +
				"BENCH rps=27092.4 p50_ms=2.101 p99_ms=8.734 max_ms=31.002 requests=270924 bytes=3188000000 socket_errors=0 non2xx=3\n",
			want: wrkReport{RPS: 27092.4, P50ms: 2.101, P99ms: 8.734, Maxms: 31.002, Requests: 270924, Bytes: 3188000000, Non2xx: 3},
		},
		{
			name: "unknown fields are ignored",
			out:  "BENCH rps=1 p50_ms=1 p99_ms=1 max_ms=1 requests=1 bytes=1 socket_errors=2 non2xx=0 extra=7\n",
			want: wrkReport{RPS: 1, P50ms: 1, P99ms: 1, Maxms: 1, Requests: 1, Bytes: 1, SocketErrors: 2},
		},
		{name: "no report line", out: "Running 10s test\n", wantErr: true},
		{name: "a field missing", out: "BENCH rps=1 p50_ms=1 p99_ms=1 max_ms=1 requests=1 bytes=1 socket_errors=0\n", wantErr: true},
		{name: "a number that is not one", out: "BENCH rps=x p50_ms=1 p99_ms=1 max_ms=1 requests=1 bytes=1 socket_errors=0 non2xx=0\n", wantErr: true},
		{name: "not key=value", out: "BENCH rps\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseWrk(tt.out)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseWrk() error = %v, want error %v", err, tt.wantErr)
			}
			if !tt.wantErr && got != tt.want {
				t.Errorf("parseWrk() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

const exposition = `# HELP movies_fleet_reads_total Reads of the shared snapshot.
# TYPE movies_fleet_reads_total counter
movies_fleet_reads_total{result="hit"} 12
movies_fleet_reads_total{result="miss"} 3
movies_fleet_reads_total{result="error"} 0
movies_cache_loads_total 7
movies_http_requests_total{code="200",handler="GET /movies/"} 1e+03
movies_http_requests_total{code="404",handler="a \"quoted\" } brace"} 2 1700000000000
movies_renders_totalish 99
`

func TestMetricSum(t *testing.T) {
	tests := []struct {
		name   string
		metric string
		want   map[string]string
		sum    float64
		found  bool
	}{
		{name: "every series summed", metric: "movies_fleet_reads_total", sum: 15, found: true},
		{name: "one label", metric: "movies_fleet_reads_total", want: map[string]string{"result": "hit"}, sum: 12, found: true},
		{name: "a label no series has", metric: "movies_fleet_reads_total", want: map[string]string{"result": "lost"}},
		{name: "unlabelled", metric: "movies_cache_loads_total", sum: 7, found: true},
		{name: "exponent, and a timestamp dropped", metric: "movies_http_requests_total", sum: 1002, found: true},
		{name: "escaped quotes and a brace in a label value", metric: "movies_http_requests_total", want: map[string]string{"handler": `a "quoted" } brace`}, sum: 2, found: true},
		{name: "absent, though a longer name starts with it", metric: "movies_renders_total"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sum, found, err := metricSum(exposition, tt.metric, tt.want)
			if err != nil {
				t.Fatal(err)
			}
			if sum != tt.sum || found != tt.found {
				t.Errorf("metricSum(%s, %v) = %v, %v; want %v, %v", tt.metric, tt.want, sum, found, tt.sum, tt.found)
			}
		})
	}
	if _, _, err := metricSum("movies_x{a=\"1\" 3\n", "movies_x", nil); err == nil {
		t.Error("metricSum accepted an unclosed label set")
	}
}

func TestCounterDelta(t *testing.T) {
	before := "movies_cache_loads_total 3\n"
	after := "movies_cache_loads_total 10\n"
	if got := counterDelta(before, after, "movies_cache_loads_total"); got != "7" {
		t.Errorf("counterDelta = %q, want 7", got)
	}
	if got := counterDelta(before, after, "movies_renders_total"); got != "absent" {
		t.Errorf("counterDelta of a missing counter = %q, want absent", got)
	}
}

func TestSeriesDeltas(t *testing.T) {
	before := "movies_upstream_requests_total{endpoint=\"/films\",outcome=\"ok\"} 2\n"
	after := "movies_upstream_requests_total{endpoint=\"/films\",outcome=\"ok\"} 5\nmovies_upstream_requests_total{endpoint=\"/people\",outcome=\"timeout\"} 1\n"
	got := seriesDeltas(before, after, "movies_upstream_requests_total")
	want := map[string]float64{
		`movies_upstream_requests_total{endpoint="/films",outcome="ok"}`:       3,
		`movies_upstream_requests_total{endpoint="/people",outcome="timeout"}`: 1,
	}
	if !maps.Equal(got, want) {
		t.Errorf("seriesDeltas = %v, want %v", got, want)
	}
}

const commandstats = "# Commandstats\r\n" +
	"cmdstat_evalsha:calls=120,usec=2400,usec_per_call=20.00,rejected_calls=0,failed_calls=0\r\n" +
	"cmdstat_get:calls=200,usec=300,usec_per_call=1.50,rejected_calls=0,failed_calls=0\r\n" +
	"cmdstat_client|setinfo:calls=4,usec=4,usec_per_call=1.00,rejected_calls=0,failed_calls=0\r\n" +
	"cmdstat_ping:calls=20,usec=10,usec_per_call=0.50,rejected_calls=0,failed_calls=0\r\n"

func TestCommandStats(t *testing.T) {
	got, err := commandStats(commandstats)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"evalsha": 120, "get": 200, "client|setinfo": 4, "ping": 20}
	if !maps.Equal(got, want) {
		t.Errorf("commandStats = %v, want %v", got, want)
	}
	for _, bad := range []string{"cmdstat_get\r\n", "cmdstat_get:usec=1\r\n", "cmdstat_get:calls=x\r\n"} {
		if _, err := commandStats(bad); err == nil {
			t.Errorf("commandStats(%q) accepted it", bad)
		}
	}
}

func TestCommandUsec(t *testing.T) {
	got, err := commandUsec(commandstats)
	if err != nil {
		t.Fatal(err)
	}
	if got["evalsha"] != 2400 || got["get"] != 300 || len(got) != 4 {
		t.Errorf("commandUsec = %v", got)
	}
	if _, err := commandUsec("cmdstat_get:calls=1,usec=x\r\n"); err == nil {
		t.Error("commandUsec accepted usec=x")
	}
}

func TestDeltaCallsAndClientCalls(t *testing.T) {
	before := map[string]int64{"evalsha": 100, "get": 150, "ping": 10, "publish": 5}
	after := map[string]int64{"evalsha": 130, "get": 200, "ping": 13, "publish": 5, "subscribe": 2}
	d, total := deltaCalls(before, after)
	want := map[string]int64{"evalsha": 30, "get": 50, "ping": 3, "subscribe": 2}
	if !maps.Equal(d, want) || total != 85 {
		t.Errorf("deltaCalls = %v, %d; want %v, 85", d, total, want)
	}
	// get ran inside the scripts: not a round trip.
	if got := clientCalls(d); got != 35 {
		t.Errorf("clientCalls = %d, want 35 (evalsha, ping, subscribe)", got)
	}
	// A Redis restarted between the samples counts from zero.
	if d, total := deltaCalls(map[string]int64{"evalsha": 100}, map[string]int64{"evalsha": 7}); d["evalsha"] != 7 || total != 7 {
		t.Errorf("deltaCalls across a restart = %v, %d; want 7", d, total)
	}
}

func TestInfoFields(t *testing.T) {
	info := "# Stats\r\ntotal_net_output_bytes:123456\r\n# CPU\r\nused_cpu_user:1.250000\r\n"
	if n, err := infoField(info, "total_net_output_bytes"); err != nil || n != 123456 {
		t.Errorf("infoField = %d, %v; want 123456", n, err)
	}
	if _, err := infoField(info, "total_net_input_bytes"); err == nil {
		t.Error("infoField found a field that is not there")
	}
	if f, err := infoFloat(info, "used_cpu_user"); err != nil || f != 1.25 {
		t.Errorf("infoFloat = %v, %v; want 1.25", f, err)
	}
}

func TestFormatCalls(t *testing.T) {
	if got := formatCalls(map[string]int64{"get": 2, "evalsha": 9, "del": 2}); got != "evalsha 9, del 2, get 2" {
		t.Errorf("formatCalls = %q", got)
	}
	if got := formatCalls(nil); got != "none" {
		t.Errorf("formatCalls(nil) = %q, want none", got)
	}
}

func TestProcStatus(t *testing.T) {
	if k, err := vmHWM("Name:\tmovies\nVmPeak:\t 900 kB\nVmHWM:\t   28672 kB\n"); err != nil || k != 28672 {
		t.Errorf("vmHWM = %d, %v; want 28672", k, err)
	}
	if _, err := vmHWM("Name:\tmovies\n"); err == nil {
		t.Error("vmHWM without the line succeeded")
	}
	if p, ok := parentOf("1234 (nginx: worker (x)) S 1200 1234 1234 0"); !ok || p != 1200 {
		t.Errorf("parentOf = %d, %v; want 1200", p, ok)
	}
}

func TestEtagHash(t *testing.T) {
	for etag, want := range map[string]string{
		`"3fa9c0"`:      "3fa9c0",
		`"3fa9c0-br"`:   "3fa9c0",
		`W/"3fa9c0-gz"`: "3fa9c0",
		`"3f-a9c0"`:     "3f-a9c0",
	} {
		if got := etagHash(etag); got != want {
			t.Errorf("etagHash(%s) = %q, want %q", etag, got, want)
		}
	}
}

func TestPageMarker(t *testing.T) {
	if m, err := pageMarker([]byte("<h2>Spirited Away</h2><h2>Castle in the Sky #42</h2>")); err != nil || m != 42 {
		t.Errorf("pageMarker = %d, %v; want 42", m, err)
	}
	if _, err := pageMarker([]byte("<h2>Castle in the Sky</h2>")); err == nil {
		t.Error("pageMarker found a marker on a page without one")
	}
}

func TestParseCountsAndLists(t *testing.T) {
	if got, err := parseCounts("1,10, 20"); err != nil || len(got) != 3 || got[2] != 20 {
		t.Errorf("parseCounts = %v, %v", got, err)
	}
	for _, bad := range []string{"", "0", "ten", "1,-2"} {
		if _, err := parseCounts(bad); err == nil {
			t.Errorf("parseCounts(%q) accepted it", bad)
		}
	}
	if got := splitList("identity gzip,br"); len(got) != 3 || got[1] != "gzip" {
		t.Errorf("splitList = %v", got)
	}
}
