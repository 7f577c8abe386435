package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/movies-dev/movies/metrics"
	"github.com/movies-dev/movies/pkg/cache"
	"github.com/movies-dev/movies/pkg/ghibli"
	"github.com/movies-dev/movies/pkg/ghibli/ghiblitest"
)

// discardWriter is a ResponseWriter that keeps nothing, so a benchmark
// measures the handler, not a recorder's buffering.
type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(int)             {}

// warmServer is the real handler chain over a cache holding the bundled
// data, with a TTL long enough that every request in the benchmark hits.
func warmServer(b *testing.B) (*server, http.Handler, []byte) {
	b.Helper()
	up := ghiblitest.NewServer(ghiblitest.Bundled())
	b.Cleanup(up.Close)
	client := &ghibli.Client{BaseURL: up.URL, HTTPClient: ghibli.NewHTTPClient(5 * time.Second)}
	b.Cleanup(client.HTTPClient.CloseIdleConnections)
	s := &server{log: slog.New(slog.NewTextHandler(io.Discard, nil)), ids: newIDSource(), securityHeaders: newSecurityHeaders()}
	m, err := metrics.New(prometheus.NewRegistry(), func() metrics.CacheStats { return metrics.CacheStats{} })
	if err != nil {
		b.Fatal(err)
	}
	s.metrics = m
	s.cache = cache.New[*page](s.load(client), cache.Options{TTL: time.Minute, LoadTimeout: 5 * time.Second, RefreshAhead: true})
	snap, err := s.cache.Get(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	s.ready.Store(true)
	return s, s.routes(nil), snap.Value.html.identity.body
}

func benchHandler(b *testing.B, h http.Handler, acceptEncoding string) {
	req := httptest.NewRequest(http.MethodGet, "/movies/", nil)
	if acceptEncoding != "" {
		req.Header.Set("Accept-Encoding", acceptEncoding)
	}
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		h.ServeHTTP(w, req)
	}
}

// BenchmarkHit is a cache hit through the whole middleware chain.
func BenchmarkHit(b *testing.B) {
	_, h, _ := warmServer(b)
	b.Run("identity", func(b *testing.B) { benchHandler(b, h, "") })
	b.Run("gzip", func(b *testing.B) { benchHandler(b, h, "gzip, deflate, br") })
}

// BenchmarkEchoBaseline is the framework alone writing the same bytes: the
// floor against which BenchmarkHit's extra cost is read.
func BenchmarkEchoBaseline(b *testing.B) {
	_, _, body := warmServer(b)
	e := echo.New()
	e.GET("/movies/", func(c echo.Context) error { return c.Blob(http.StatusOK, "text/html; charset=utf-8", body) })
	benchHandler(b, e, "")
}
