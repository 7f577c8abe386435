package main

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// wrkReport is the line bench/report.lua prints at the end of a wrk run:
// exact numbers, never wrk's rounded, unit-changing display.
type wrkReport struct {
	RPS                  float64
	P50ms, P99ms, Maxms  float64
	Requests, Bytes      int64
	SocketErrors, Non2xx int64
}

// parseWrk finds the BENCH line in wrk's output.
func parseWrk(out string) (wrkReport, error) {
	for line := range strings.Lines(out) {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "BENCH ")
		if !ok {
			continue
		}
		var r wrkReport
		seen := 0
		for _, kv := range strings.Fields(rest) {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return r, fmt.Errorf("wrk report: field %q is not key=value", kv)
			}
			var err error
			switch k {
			case "rps":
				r.RPS, err = strconv.ParseFloat(v, 64)
			case "p50_ms":
				r.P50ms, err = strconv.ParseFloat(v, 64)
			case "p99_ms":
				r.P99ms, err = strconv.ParseFloat(v, 64)
			case "max_ms":
				r.Maxms, err = strconv.ParseFloat(v, 64)
			case "requests":
				r.Requests, err = strconv.ParseInt(v, 10, 64)
			case "bytes":
				r.Bytes, err = strconv.ParseInt(v, 10, 64)
			case "socket_errors":
				r.SocketErrors, err = strconv.ParseInt(v, 10, 64)
			case "non2xx":
				r.Non2xx, err = strconv.ParseInt(v, 10, 64)
			default:
				continue
			}
			if err != nil {
				return r, fmt.Errorf("wrk report: %s: %w", k, err)
			}
			seen++
		}
		if seen != 8 {
			return r, fmt.Errorf("wrk report: %d of 8 fields in %q", seen, rest)
		}
		return r, nil
	}
	return wrkReport{}, errors.New("wrk printed no BENCH line (was it run with -s report.lua?)")
}

// metricSum adds up every series of the metric name in a Prometheus text
// exposition whose labels include all of want ("" values match nothing
// special: {result="hit"} is want = {"result": "hit"}). found is false if
// no series of it is there, so an absent metric is told from a zero one.
func metricSum(text, name string, want map[string]string) (sum float64, found bool, err error) {
	for line := range strings.Lines(text) {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		series, value, ok := cutSeries(line)
		if !ok {
			return 0, false, fmt.Errorf("metrics: cannot read line %q", line)
		}
		n, labels, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		if !labelsMatch(strings.TrimSuffix(labels, "}"), want) {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return 0, false, fmt.Errorf("metrics: %s: %w", series, err)
		}
		sum += v
		found = true
	}
	return sum, found, nil
}

// cutSeries splits a sample line into its series (name and labels) and
// its value, dropping a timestamp. Label values may hold spaces.
func cutSeries(line string) (series, value string, ok bool) {
	end := 0
	if i := strings.IndexByte(line, '{'); i >= 0 {
		inQuote, escaped := false, false
		for j := i; j < len(line); j++ {
			c := line[j]
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inQuote = !inQuote
			case c == '}' && !inQuote:
				end = j + 1
			}
			if end > 0 {
				break
			}
		}
		if end == 0 {
			return "", "", false
		}
	} else {
		end = strings.IndexAny(line, " \t")
		if end < 0 {
			return "", "", false
		}
	}
	f := strings.Fields(line[end:])
	if len(f) == 0 {
		return "", "", false
	}
	return line[:end], f[0], true
}

// labelsMatch reports whether the label set (the text between braces)
// has every label of want with its value.
func labelsMatch(labels string, want map[string]string) bool {
	if len(want) == 0 {
		return true
	}
	have := map[string]string{}
	for labels != "" {
		k, rest, ok := strings.Cut(labels, `="`)
		if !ok {
			return false
		}
		var v strings.Builder
		i := 0
		for ; i < len(rest); i++ {
			if rest[i] == '\\' && i+1 < len(rest) {
				i++
				v.WriteByte(rest[i])
				continue
			}
			if rest[i] == '"' {
				break
			}
			v.WriteByte(rest[i])
		}
		have[strings.TrimSpace(k)] = v.String()
		labels = strings.TrimPrefix(strings.TrimSpace(rest[min(i+1, len(rest)):]), ",")
	}
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// commandStats parses INFO commandstats: the calls of each command
// ("cmdstat_evalsha:calls=12,usec=..." is "evalsha": 12).
func commandStats(info string) (map[string]int64, error) {
	out := map[string]int64{}
	for line := range strings.Lines(info) {
		line = strings.TrimSpace(line)
		rest, ok := strings.CutPrefix(line, "cmdstat_")
		if !ok {
			continue
		}
		name, fields, ok := strings.Cut(rest, ":")
		if !ok {
			return nil, fmt.Errorf("commandstats: cannot read %q", line)
		}
		found := false
		for _, kv := range strings.Split(fields, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					return nil, fmt.Errorf("commandstats: %s: %w", name, err)
				}
				out[name] = n
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("commandstats: no calls= in %q", line)
		}
	}
	return out, nil
}

// infoField returns a field of an INFO section ("total_net_output_bytes").
func infoField(info, field string) (int64, error) {
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("INFO has no %s", field)
}

// deltaCalls is after minus before, per command, leaving out commands that
// did not move, and the total. Commands reset (a restarted Redis) count
// from zero.
func deltaCalls(before, after map[string]int64) (map[string]int64, int64) {
	d := map[string]int64{}
	var total int64
	for k, a := range after {
		n := a - before[k]
		if n < 0 {
			n = a
		}
		if n > 0 {
			d[k] = n
			total += n
		}
	}
	return d, total
}

// vmHWM reads the peak resident set size (VmHWM) from a /proc/PID/status,
// in KiB.
func vmHWM(status string) (int64, error) {
	sc := bufio.NewScanner(strings.NewReader(status))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, errors.New("no VmHWM in the process status")
}

// infoFloat returns a numeric field of an INFO section ("used_cpu_user").
func infoFloat(info, field string) (float64, error) {
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("INFO has no %s", field)
}

// formatCalls lists commands by calls, most first: "evalsha 120, ping 3".
func formatCalls(calls map[string]int64) string {
	type kv struct {
		k string
		v int64
	}
	var s []kv
	for k, v := range calls {
		s = append(s, kv{k, v})
	}
	slices.SortFunc(s, func(a, b kv) int {
		if a.v != b.v {
			return cmp.Compare(b.v, a.v)
		}
		return strings.Compare(a.k, b.k)
	})
	var parts []string
	for _, x := range s {
		parts = append(parts, fmt.Sprintf("%s %d", x.k, x.v))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// commandUsec parses INFO commandstats for the time Redis spent in each
// command, in µs ("cmdstat_evalsha:calls=12,usec=340,..." is "evalsha":
// 340).
func commandUsec(info string) (map[string]int64, error) {
	out := map[string]int64{}
	for line := range strings.Lines(info) {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_")
		if !ok {
			continue
		}
		name, fields, _ := strings.Cut(rest, ":")
		for _, kv := range strings.Split(fields, ",") {
			if v, ok := strings.CutPrefix(kv, "usec="); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					return nil, fmt.Errorf("commandstats: %s: %w", name, err)
				}
				out[name] = n
			}
		}
	}
	return out, nil
}
