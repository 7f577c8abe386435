package check

import (
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// redisURLPattern finds redis:// and rediss:// URLs in prose, code and
// YAML: up to the first space, quote, backtick, pipe or closing bracket.
var redisURLPattern = regexp.MustCompile("rediss?://[^\\s`'\"|)<>]+")

// RedisURLs returns the Redis URLs written in text that name a real
// address. Placeholders such as redis://[user:password@]host:port[/db] or
// rediss://… name none and are left out.
func RedisURLs(text string) []string {
	var urls []string
	for _, u := range redisURLPattern.FindAllString(text, -1) {
		u = strings.TrimRight(u, ".,;:")
		if strings.ContainsAny(u, "[]…") || strings.HasSuffix(u, "://") {
			continue
		}
		urls = append(urls, u)
	}
	return urls
}

// RedisPorts returns the TCP ports a replica given the Redis URL raw
// connects to: the URL's own (6379 when it names none, as go-redis
// assumes for redis:// and rediss:// alike) and those of every ?addr=
// (the further sentinels or seed nodes of -redis-mode sentinel and
// cluster).
func RedisPorts(raw string) ([]int32, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	hosts := append([]string{u.Host}, u.Query()["addr"]...)
	var ports []int32
	for _, h := range hosts {
		port := "6379"
		if _, p, err := net.SplitHostPort(h); err == nil {
			port = p
		}
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("%s: port %q", raw, port)
		}
		ports = append(ports, int32(n))
	}
	return ports, nil
}

// AdmitsEgress reports whether the policy lets its pods open a TCP
// connection to port, to any peer its rule names: a port listed, or
// within a port and its endPort. A named port is not a number and admits
// none here.
func AdmitsEgress(np *networkingv1.NetworkPolicy, port int32) bool {
	for _, rule := range np.Spec.Egress {
		if len(rule.Ports) == 0 {
			return true // a rule without ports admits every port
		}
		for _, p := range rule.Ports {
			if p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP {
				continue
			}
			if p.Port == nil {
				return true // every port of the protocol
			}
			if p.Port.StrVal != "" {
				continue
			}
			from, to := p.Port.IntVal, p.Port.IntVal
			if p.EndPort != nil {
				to = *p.EndPort
			}
			if from <= port && port <= to {
				return true
			}
		}
	}
	return false
}

// UnadmittedRedis returns, sorted, one line for each port of each Redis
// URL found in the named texts that the policy does not let the replicas
// reach.
func UnadmittedRedis(np *networkingv1.NetworkPolicy, texts map[string]string) []string {
	var out []string
	for where, text := range texts {
		for _, u := range RedisURLs(text) {
			ports, err := RedisPorts(u)
			if err != nil {
				out = append(out, fmt.Sprintf("%s: %s: %v", where, u, err))
				continue
			}
			slices.Sort(ports)
			for _, p := range slices.Compact(ports) {
				if !AdmitsEgress(np, p) {
					out = append(out, fmt.Sprintf("%s: %s: port %d is not admitted by NetworkPolicy %s's egress", where, u, p, np.Name))
				}
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
