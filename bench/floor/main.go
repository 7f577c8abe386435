// Command floor is the stack's floor for the hit benchmark (go run ./bench
// hit): echo v4 on net/http writing, from memory, the very responses movies
// wrote to the benchmark (same status, headers and body), and doing
// nothing else. What
// movies serves below the floor's rate is what its own hit path costs;
// what the floor serves below nginx's is what Go's net/http and echo cost.
//
// Usage:
//
//	floor -addr 127.0.0.1:8081 -dir DIR
//
// DIR holds, for each content coding NAME (identity, gzip, br, zstd),
// NAME.headers (the response head, as curl -D writes it) and NAME.body. A
// GET /movies/ whose Accept-Encoding is exactly NAME gets NAME's response;
// any other, identity's. Matching the exact header value the benchmark sends
// is all the negotiation the floor does: the cost of negotiating properly
// is part of what movies is measured on.
//
// The http.Server has movies' settings (timeouts, header limit), so the
// two differ in the handler chain alone.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/labstack/echo/v4"
)

// response is one prepared answer.
type response struct {
	acceptEncoding string // the exact request header value it answers
	header         []field
	body           []byte
}

// field is one header, in the form it is assigned to the header map: a
// canonical key and a one-element slice with len == cap.
type field struct {
	key   string
	value []string
}

// hopByHop are headers net/http writes itself (Date) or that belong to
// the connection, not the response.
var hopByHop = map[string]bool{"Date": true, "Connection": true, "Keep-Alive": true, "Transfer-Encoding": true}

func load(dir, name string) (response, error) {
	head, err := os.ReadFile(filepath.Join(dir, name+".headers"))
	if err != nil {
		return response{}, err
	}
	body, err := os.ReadFile(filepath.Join(dir, name+".body"))
	if err != nil {
		return response{}, err
	}
	r := response{body: body}
	if name != "identity" {
		r.acceptEncoding = name
	}
	tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(head)))
	status, err := tp.ReadLine()
	if err != nil {
		return response{}, fmt.Errorf("%s.headers: %w", name, err)
	}
	if !strings.Contains(status, " 200") {
		return response{}, fmt.Errorf("%s.headers: status %q, want 200", name, status)
	}
	h, err := tp.ReadMIMEHeader()
	if err != nil && !errors.Is(err, io.EOF) {
		return response{}, fmt.Errorf("%s.headers: %w", name, err)
	}
	for k, vs := range h {
		if hopByHop[k] {
			continue
		}
		r.header = append(r.header, field{k, vs[:len(vs):len(vs)]})
	}
	return r, nil
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("floor", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:8081", "listen address")
	dir := fs.String("dir", "", "directory of NAME.headers and NAME.body files")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("floor: -dir is required")
	}
	var responses []response // identity first: the fallback
	for _, name := range []string{"identity", "gzip", "br", "zstd"} {
		r, err := load(*dir, name)
		if errors.Is(err, os.ErrNotExist) && name != "identity" {
			continue
		}
		if err != nil {
			return fmt.Errorf("floor: %w", err)
		}
		responses = append(responses, r)
	}

	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.GET("/movies/", func(c echo.Context) error {
		r := &responses[0]
		if ae := c.Request().Header["Accept-Encoding"]; len(ae) == 1 {
			for i := range responses[1:] {
				if responses[1+i].acceptEncoding == ae[0] {
					r = &responses[1+i]
					break
				}
			}
		}
		h := c.Response().Header()
		for _, f := range r.header {
			h[f.key] = f.value
		}
		c.Response().WriteHeader(http.StatusOK)
		_, err := c.Response().Write(r.body)
		return err
	})

	srv := &http.Server{
		Addr:              *addr,
		Handler:           e,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      15 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    32 << 10,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	select {
	case err := <-errc:
		return fmt.Errorf("floor: %w", err)
	case <-ctx.Done():
		return srv.Shutdown(context.Background())
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
