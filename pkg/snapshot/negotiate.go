package snapshot

import "strings"

// Negotiate picks the variant for a request's Accept-Encoding lines, the
// header's values as they arrived (nil when the request has none). It runs
// on every cache hit, so it allocates nothing.
//
// The rules are RFC 9110 section 12.5.3, with weights as in section 12.4.2:
//
//   - No Accept-Encoding at all means any coding is acceptable, but does
//     not promise the client can decode it: identity.
//   - Several lines form one list. Coding names are case-insensitive, and
//     x-gzip is gzip (section 8.4.1.3).
//   - A listed coding is acceptable unless its weight is 0. A weight is 0
//     to 1 with at most three decimals; an entry whose weight does not
//     parse is taken as not acceptable, as if q=0. When a coding is listed
//     twice, the last entry decides.
//   - "*" gives its weight to every coding not listed, identity included.
//   - Identity is acceptable by default, unless refused by identity;q=0 or
//     by *;q=0 without an identity entry. Its default weight is the lowest
//     there is, 0.001, so any coding the client did list is preferred. An
//     empty header therefore means identity only.
//   - The acceptable variant with the highest weight wins; among equal
//     weights the smallest body (normally br, then zstd, gzip, identity).
//   - When nothing is acceptable, identity is sent anyway. Section 12.5.3
//     says an origin server "ought to respond without any content coding"
//     when none of its codings is listed as acceptable, and section 12.1
//     lets a server disregard the preference rather than answer 406 (Not
//     Acceptable). Every HTTP client can read identity; a 406 would turn a
//     misconfigured client's request into an error page it cannot use.
func (r *Representation) Negotiate(acceptEncoding []string) *Variant {
	if len(acceptEncoding) == 0 {
		return &r.variants[codingIdentity]
	}
	q := weigh(acceptEncoding)
	best, bestQ := codingIdentity, 0
	for _, c := range r.bySize {
		if q[c] > bestQ { // strictly: on a tie the smaller body stays
			best, bestQ = c, q[c]
		}
	}
	return &r.variants[best]
}

// weigh returns the weight, in thousandths, that Accept-Encoding lines give
// each coding; 0 is not acceptable.
func weigh(lines []string) [numCodings]int {
	var listed [numCodings]int // -1: not listed
	for c := range listed {
		listed[c] = -1
	}
	star := -1
	for _, line := range lines {
		for line != "" {
			var entry string
			entry, line, _ = strings.Cut(line, ",")
			name, params, _ := strings.Cut(entry, ";")
			name = trimOWS(name)
			if name == "" {
				continue // the list syntax allows empty elements
			}
			if name == "*" {
				star = weight(params)
			} else if c, ok := lookupCoding(name); ok {
				listed[c] = weight(params)
			}
		}
	}
	var q [numCodings]int
	for c := range numCodings {
		switch {
		case listed[c] >= 0:
			q[c] = listed[c]
		case star >= 0:
			q[c] = star
		case c == codingIdentity:
			q[c] = 1
		}
	}
	return q
}

// lookupCoding finds the coding a content-coding token names, ignoring
// case. Only codings a representation is prepared in are found.
func lookupCoding(name string) (coding, bool) {
	// By length first: most tokens are then ruled out without a compare.
	switch len(name) {
	case len("br"):
		return codingBr, strings.EqualFold(name, "br")
	case len("gzip"):
		if strings.EqualFold(name, "gzip") {
			return codingGzip, true
		}
		return codingZstd, strings.EqualFold(name, "zstd")
	case len("x-gzip"):
		return codingGzip, strings.EqualFold(name, "x-gzip")
	case len("identity"):
		return codingIdentity, strings.EqualFold(name, "identity")
	}
	return 0, false
}

// weight reads the q parameter from an entry's parameters, in thousandths:
// 1000 when there is none, 0 when it does not parse. Whitespace around the
// name and value is tolerated, as most servers do, though the grammar has
// none there.
func weight(params string) int {
	q := 1000
	for params != "" {
		var p string
		p, params, _ = strings.Cut(params, ";")
		name, value, ok := strings.Cut(p, "=")
		if !ok || !strings.EqualFold(trimOWS(name), "q") {
			continue
		}
		if v, ok := parseQValue(trimOWS(value)); ok {
			q = v
		} else {
			q = 0
		}
	}
	return q
}

// parseQValue parses RFC 9110's qvalue, ( "0" [ "." 0*3DIGIT ] ) /
// ( "1" [ "." 0*3("0") ] ), into thousandths.
func parseQValue(s string) (int, bool) {
	if len(s) == 0 || len(s) > len("0.000") || (s[0] != '0' && s[0] != '1') {
		return 0, false
	}
	q := int(s[0]-'0') * 1000
	if len(s) == 1 {
		return q, true
	}
	if s[1] != '.' {
		return 0, false
	}
	scale := 100
	for _, d := range []byte(s[2:]) {
		if d < '0' || d > '9' || (q == 1000 && d != '0') {
			return 0, false
		}
		q += int(d-'0') * scale
		scale /= 10
	}
	return q, true
}

// trimOWS trims the optional whitespace (spaces and tabs) HTTP allows
// around list elements and parameters.
func trimOWS(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}
