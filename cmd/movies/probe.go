package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"
)

// probe asks the server listening on addr for /healthz: the container
// HEALTHCHECK, which has no shell or curl.
func probe(ctx context.Context, addr string) error {
	host, port, _ := net.SplitHostPort(addr) // validated by parseConfig
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(host, port)+"/healthz", nil)
	if err != nil {
		return fmt.Errorf("%w: %w", errUnhealthy, err)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %w", errUnhealthy, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: /healthz answered %s", errUnhealthy, resp.Status)
	}
	return nil
}
