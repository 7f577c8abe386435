package check

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Program is every name of the program a reader can meet: its flags and
// their environment variables (from movies -h), its metric families (from
// a scrape), its alerts (deploy/prometheus/rules.yml) and its routes (the
// router's source). Other holds the flags of everything else the docs show
// being run (the benchmarks, the tests, the go command): a flag of theirs
// in the docs is no claim about movies.
type Program struct {
	Flags, Env, Metrics, Alerts, Routes, Other map[string]bool
	// Port is -addr's default: a URL on localhost at this port names a
	// route.
	Port string
}

// Misnamed checks docs (file name to Markdown) against p both ways. Every
// flag, variable, metric, alert and endpoint the docs name must exist, and
// every one p has must be named somewhere in the docs: nothing stale,
// nothing undocumented. Metrics are not checked when p.Metrics is nil. It
// returns one line per problem, sorted.
func Misnamed(docs map[string]string, p Program) []string {
	var problems []string
	report := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	// What the docs name, where they first name it.
	named := map[string]map[string]string{}
	note := func(kind, name, where string) {
		if named[kind] == nil {
			named[kind] = map[string]string{}
		}
		if _, ok := named[kind][name]; !ok {
			named[kind][name] = where
		}
	}
	files := slices.Sorted(maps.Keys(docs))
	for _, file := range files {
		for i, line := range strings.Split(docs[file], "\n") {
			where := file + ":" + strconv.Itoa(i+1)
			for _, m := range envPattern.FindAllString(line, -1) {
				note("env", m, where)
			}
			for _, m := range metricsIn(line) {
				note("metric", m, where)
			}
			for _, m := range alertPattern.FindAllString(line, -1) {
				note("alert", m, where)
			}
			for _, m := range localURLPattern.FindAllStringSubmatch(line, -1) {
				if path := strings.TrimRight(m[2], ".,:"); m[1] == p.Port && len(path) > 1 {
					note("endpoint", path, where)
				}
			}
		}
		for _, c := range codeOf(docs[file]) {
			where := file + ":" + strconv.Itoa(c.line)
			for _, f := range moviesFlags(c.text) {
				note("flag", f, where)
			}
			if m := methodPathPattern.FindStringSubmatch(c.text); m != nil && c.inline {
				note("endpoint", m[1], where)
			}
		}
	}

	// Named, but not there.
	for f, where := range named["flag"] {
		if !p.Flags[f] && !p.Other[f] {
			report("%s: -%s is no flag of movies (movies -h), nor of the benchmarks, tests or go command", where, f)
		}
	}
	for e, where := range named["env"] {
		if !p.Env[e] {
			report("%s: %s is no environment variable of movies (movies -h)", where, e)
		}
	}
	// A histogram is named by its family or one of its series.
	family := func(m string) string {
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if f := strings.TrimSuffix(m, suffix); f != m && p.Metrics[f] {
				return f
			}
		}
		return m
	}
	namedFamilies := map[string]bool{}
	for m, where := range named["metric"] {
		namedFamilies[family(m)] = true
		if p.Metrics != nil && !p.Metrics[family(m)] {
			report("%s: %s is no metric movies exports", where, m)
		}
	}
	for a, where := range named["alert"] {
		if !p.Alerts[a] {
			report("%s: %s is no alert of deploy/prometheus/rules.yml", where, a)
		}
	}
	for e, where := range named["endpoint"] {
		if !p.Routes[e] {
			report("%s: %s is no route of the server (pkg/web)", where, e)
		}
	}

	// There, but never named.
	var all strings.Builder
	for _, f := range files {
		all.WriteString(docs[f] + "\n")
	}
	corpus := all.String()
	for f := range p.Flags {
		if f != "h" && f != "help" && !regexp.MustCompile("(^|[\\s`(])-"+regexp.QuoteMeta(f)+"([\\s`=,)]|$)").MatchString(corpus) {
			report("flag -%s is documented nowhere in the README or docs/", f)
		}
	}
	for e := range p.Env {
		if !regexp.MustCompile(`\b` + e + `\b`).MatchString(corpus) {
			report("environment variable %s is documented nowhere in the README or docs/", e)
		}
	}
	for m := range p.Metrics {
		if !namedFamilies[m] {
			report("metric %s is documented nowhere in the README or docs/", m)
		}
	}
	for a := range p.Alerts {
		if _, ok := named["alert"][a]; !ok {
			report("alert %s is documented nowhere in the README or docs/", a)
		}
	}
	for r := range p.Routes {
		if !regexp.MustCompile("(^|[\\s`(]|:[0-9]+)" + regexp.QuoteMeta(r) + "($|[\\s`?),;.|'\"])").MatchString(corpus) {
			report("route %s is documented nowhere in the README or docs/", r)
		}
	}
	slices.Sort(problems)
	return problems
}

var (
	// envPattern is a MOVIES_ variable (MOVIES_* names them all, not one).
	envPattern = regexp.MustCompile(`\bMOVIES_[A-Z0-9_]*[A-Z0-9]\b`)
	// metricPattern is a movies_ metric, with or without a histogram's
	// suffix (metricsIn looks at what surrounds it).
	metricPattern = regexp.MustCompile(`movies_[a-z0-9_]+`)
	// alertPattern is an alert's name: the rules name them MoviesSomething.
	alertPattern = regexp.MustCompile(`\bMovies[A-Z][A-Za-z]*\b`)
	// methodPathPattern is an inline code span naming an endpoint.
	methodPathPattern = regexp.MustCompile(`^(?:GET|HEAD|POST|PUT|DELETE|PATCH|OPTIONS) (/[^\s?#]*)`)
	// localURLPattern is a URL of a server run by hand (curl's scheme
	// optional): its port, its path.
	localURLPattern = regexp.MustCompile(`(?:https?://)?(?:localhost|127\.0\.0\.1):([0-9]+)(/[^\s?#;` + "`" + `'")|]*)?`)
	// flagToken is a single-dash flag in a command line.
	flagToken = regexp.MustCompile(`(?:^|\s)-([a-z][a-z0-9.-]*)`)
	// moviesCommand is movies run with flags: ./cmd/movies, the binary in
	// the image (/movies) or on the PATH.
	moviesCommand = regexp.MustCompile(`(?:^|[\s/])movies\s+-`)
)

// metricsIn returns the metric names in a line of text: movies_ names
// that are not part of a longer word, nor a group (movies_fleet_*).
func metricsIn(line string) []string {
	var names []string
	for _, ix := range metricPattern.FindAllStringIndex(line, -1) {
		name := line[ix[0]:ix[1]]
		if ix[0] > 0 && strings.ContainsRune("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_:", rune(line[ix[0]-1])) {
			continue
		}
		if ix[1] < len(line) && line[ix[1]] == '*' || strings.HasSuffix(name, "_") {
			continue
		}
		names = append(names, name)
	}
	return names
}

// code is a piece of code in a Markdown document: an inline code span or
// one line of a fenced block, with its line number.
type code struct {
	text   string
	line   int
	inline bool
}

// codeOf returns the code spans and fenced lines of a Markdown document.
func codeOf(doc string) []code {
	var out []code
	inFence := false
	spans := regexp.MustCompile("`([^`]+)`")
	for i, l := range strings.Split(doc, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "```") {
			inFence = !inFence
			continue
		}
		if inFence {
			out = append(out, code{text: l, line: i + 1})
			continue
		}
		for _, m := range spans.FindAllStringSubmatch(l, -1) {
			out = append(out, code{text: m[1], line: i + 1, inline: true})
		}
	}
	return out
}

// moviesFlags returns the flags a piece of code passes to movies: every
// flag of a span that starts with one (`-ttl`, `-redis-mode sentinel -redis
// ...`), and every flag after movies in a command line. Flags elsewhere
// (go test -race, kubectl -n) are other programs'.
func moviesFlags(code string) []string {
	code = strings.TrimSpace(code)
	switch {
	case strings.HasPrefix(code, "-") && !strings.HasPrefix(code, "--"):
	case moviesCommand.MatchString(code):
		code = code[moviesCommand.FindStringIndex(code)[1]-1:]
	default:
		return nil
	}
	if i := strings.Index(code, " #"); i >= 0 {
		code = code[:i] // a shell comment
	}
	var flags []string
	for _, m := range flagToken.FindAllStringSubmatch(code, -1) {
		flags = append(flags, strings.TrimRight(m[1], "."))
	}
	return flags
}

// flagDefiners are the flag package's functions and FlagSet methods that
// define a flag, with the index of the name among their arguments.
var flagDefiners = map[string]int{
	"Bool": 0, "Duration": 0, "Float64": 0, "Int": 0, "Int64": 0, "String": 0, "Uint": 0, "Uint64": 0, "Func": 0, "BoolFunc": 0,
	"BoolVar": 1, "DurationVar": 1, "Float64Var": 1, "IntVar": 1, "Int64Var": 1, "StringVar": 1, "UintVar": 1, "Uint64Var": 1, "TextVar": 1, "Var": 1,
}

// DefinedFlags returns the name of every flag the Go files define with the
// flag package (flag.Duration("soak", ...), fs.IntVar(&n, "rounds", ...)).
func DefinedFlags(files map[string][]byte) (map[string]bool, error) {
	flags := map[string]bool{}
	fset := token.NewFileSet()
	for name, src := range files {
		f, err := parser.ParseFile(fset, name, src, parser.SkipObjectResolution)
		if err != nil {
			return nil, err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			i, ok := flagDefiners[sel.Sel.Name]
			if !ok || len(call.Args) <= i {
				return true
			}
			if lit, ok := call.Args[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if s, err := strconv.Unquote(lit.Value); err == nil && s != "" {
					flags[s] = true
				}
			}
			return true
		})
	}
	return flags, nil
}

// Routes returns the path of every route the Go files register on an echo
// router: e.Match(methods, "/path", h), e.GET("/path", h) and the like.
func Routes(files map[string][]byte) (map[string]bool, error) {
	routes := map[string]bool{}
	fset := token.NewFileSet()
	for name, src := range files {
		f, err := parser.ParseFile(fset, name, src, parser.SkipObjectResolution)
		if err != nil {
			return nil, err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			i := 0
			switch sel.Sel.Name {
			case "Match":
				i = 1
			case "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "Any":
			default:
				return true
			}
			if len(call.Args) <= i {
				return true
			}
			if lit, ok := call.Args[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if s, err := strconv.Unquote(lit.Value); err == nil && strings.HasPrefix(s, "/") {
					routes[s] = true
				}
			}
			return true
		})
	}
	return routes, nil
}

// UsageNames returns the flags and environment variables movies -h lists.
func UsageNames(usage string) (flags, env map[string]bool) {
	flags, env = map[string]bool{"h": true, "help": true}, map[string]bool{} // -h and -help: the flag package's own
	for _, m := range regexp.MustCompile(`(?m)^  -(\S+)`).FindAllStringSubmatch(usage, -1) {
		flags[m[1]] = true
	}
	for _, m := range regexp.MustCompile(`\(env (MOVIES_[A-Z0-9_]+)\)`).FindAllStringSubmatch(usage, -1) {
		env[m[1]] = true
	}
	return flags, env
}

// MetricFamilies returns the movies_ families of a text exposition.
func MetricFamilies(exposition string) map[string]bool {
	families := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (movies_\S+) `).FindAllStringSubmatch(exposition, -1) {
		families[m[1]] = true
	}
	return families
}
