package web

// The simulator's wire: the fake upstream each replica reaches through its
// own transport (so a fault can be one replica's connection), and the
// connections to miniredis, which the faults delay, stall, drop, reorder
// and cut. Every fault acts where it acts in a real system: on the bytes,
// not on the code under test.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/movies-dev/movies/pkg/ghibli/builtin"
)

// simTransport is the fake upstream as one replica reaches it: /films
// gets the next marker as it arrives, and the faults in force.
type simTransport struct {
	s *sim
	r *simReplica
}

func (tr simTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	s, r := tr.s, tr.r
	s.mu.Lock()
	dead := r.dead
	s.mu.Unlock()
	if dead {
		<-req.Context().Done()
		return nil, req.Context().Err()
	}
	s.waitResumed(r) // a paused process sends nothing
	films := strings.HasSuffix(req.URL.Path, "/films")
	if s.once("reset-one", r.id, films) {
		s.logf("upstream %s from r%d: connection reset", req.URL.Path, r.id)
		return nil, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	}
	latency := s.sc.usual/2 + time.Duration(s.rand(fmt.Sprint("upstream", r.id, req.URL.Path), int64(s.sc.usual)))
	if _, ok := s.active("upstream-jitter", -1); ok {
		latency = time.Duration(float64(latency) * (0.1 + float64(s.rand(fmt.Sprint("jitter", r.id, req.URL.Path), 1000))/100))
	}
	if f, ok := s.active("slow-upstream", -1); ok {
		latency = f.d
	}
	if f, ok := s.active("slow-one", r.id); ok && !f.all {
		latency = f.d
	}
	if _, ok := s.active("hung-upstream", -1); ok || s.once("hang-one", r.id, films) {
		latency = time.Hour
	}
	status, retry := 0, time.Duration(-1)
	if _, ok := s.active("outage", -1); ok {
		status = http.StatusInternalServerError
	}
	if f, ok := s.active("outage-ra", -1); ok {
		status, retry = http.StatusServiceUnavailable, f.d
	}
	if f, ok := s.onceAny("503-once-ra", films); ok {
		status, retry = http.StatusServiceUnavailable, f.d
	}
	rec := httptest.NewRecorder()
	marker := 0
	if films {
		s.mu.Lock()
		s.inflight[r.id]++
		defer func() {
			s.mu.Lock()
			s.inflight[r.id]--
			s.mu.Unlock()
		}()
		marker = len(s.arrivals) + 1
		s.arrivals = append(s.arrivals, simArrival{at: s.now(), marker: marker, status: max(status, 200), by: r.id})
		s.mu.Unlock()
		s.logf("upstream /films #%d from r%d (status %d, latency %v)", marker, r.id, max(status, 200), latency)
	}
	if status != 0 {
		if retry >= 0 {
			rec.Header().Set("Retry-After", strconv.Itoa(int(retry/time.Second)))
		}
		rec.WriteHeader(status)
	} else {
		// The marker and the body it goes in, at once: two /films
		// requests must not swap markers.
		s.serveMu.Lock()
		if marker != 0 {
			s.data.Update(func(d *builtin.Data) { d.Films[0]["title"] = fmt.Sprintf("Castle in the Sky #%d", marker) })
		}
		s.data.ServeHTTP(rec, req)
		s.serveMu.Unlock()
	}
	answered := func() {
		if marker != 0 {
			s.mu.Lock()
			s.arrivals[marker-1].done = s.now()
			s.mu.Unlock()
		}
	}
	select {
	case <-time.After(latency):
	case <-req.Context().Done():
		answered()
		return nil, req.Context().Err()
	}
	if marker != 0 {
		s.mu.Lock()
		s.arrivals[marker-1].sent = s.now()
		s.mu.Unlock()
	}
	s.waitResumed(r) // nor reads a response
	answered()
	if err := req.Context().Err(); err != nil {
		// The deadline passed while the process was frozen: on waking,
		// its timer is seen first (a real one may see either first).
		return nil, err
	}
	if marker != 0 && retry > 0 { // delivered: the Retry-After now holds
		s.mu.Lock()
		s.arrivals[marker-1].retryAfter = retry
		s.mu.Unlock()
	}
	resp := rec.Result()
	resp.Request = req
	return resp, nil
}

// once reports whether a one-shot fault of kind for replica acts on this
// request: the first /films request (or any, for reset-one) of that
// replica from the fault's start on, once per fault, however long that
// takes (a replica whose fetches others make may never meet it).
func (s *sim) once(kind string, replica int, films bool) bool {
	if !films && kind != "reset-one" {
		return false
	}
	_, ok := s.fire(kind, replica)
	return ok
}

// onceAny is once for a fault that hits whichever replica asks first.
func (s *sim) onceAny(kind string, films bool) (fault, bool) {
	if !films {
		return fault{}, false
	}
	return s.fire(kind, -1)
}

// fire finds a one-shot fault of kind, started and not yet fired, for
// replica (-1: any), and fires it: its span, for the judge, is from now
// for one fetch. The twin meets it on its own first request after the
// fault's start, as the fleet did on its own.
func (s *sim) fire(kind string, replica int) (fault, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for i, f := range s.sc.faults {
		if f.kind != kind || now < f.at || s.oneShots[i] || (replica >= 0 && f.replica != replica) {
			continue
		}
		s.oneShots[i] = true
		s.fired = append(s.fired, fault{kind: f.kind, at: now, until: now + s.sc.timeout, replica: f.replica})
		s.trace = append(s.trace, fmt.Sprintf("%8v fault %s fires", now.Round(time.Microsecond), f))
		return f, true
	}
	return fault{}, false
}

// dial connects replica r to the miniredis, unless Redis is down, r dead,
// or r frozen: go-redis dials a subscription holding its PubSub's mutex,
// which a frozen dial would hold across the pause, and a goroutine waiting
// on a mutex stops a bubble's clock. A frozen process dials nothing; this
// one fails at once, and go-redis dials again after it resumes.
func (s *sim) dial(r *simReplica) (net.Conn, error) {
	s.mu.Lock()
	dead, frozen := r.dead, r.paused > s.now()
	s.mu.Unlock()
	if frozen {
		return nil, errors.New("sim: the process is frozen")
	}
	if _, down := s.active("redis-down", -1); down || dead {
		return nil, errors.New("sim: connection refused")
	}
	c, err := s.redis.Dial()
	if err != nil {
		return nil, err
	}
	sc := &simConn{Conn: c, s: s, r: r, ready: make(chan struct{}, 1)}
	s.mu.Lock()
	s.conns = append(s.conns, sc)
	s.mu.Unlock()
	return sc, nil
}

// breakConns closes the connections of r (nil: of everyone), as a Redis
// restart or a killed replica does.
func (s *sim) breakConns(r *simReplica) {
	s.mu.Lock()
	defer s.mu.Unlock()
	keep := s.conns[:0]
	for _, c := range s.conns {
		if r == nil || c.r == r {
			c.Conn.Close()
		} else {
			keep = append(keep, c)
		}
	}
	s.conns = keep
}

// simConn is a connection to Redis that the faults act on: healthy replies
// come a little late, a slow Redis answers near the call budget, a
// stalled one after the call gave up (the script ran), one that stalls
// execution runs the commands late, a down one answers nothing, and a
// subscription's messages are dropped or delayed (hence reordered).
type simConn struct {
	net.Conn
	s *sim
	r *simReplica

	mu         sync.Mutex
	deadline   time.Time
	subscriber bool // carries pub/sub: its messages go through pump
	setup      bool // the last command written sets the connection up
	closed     bool
	// The subscription's frames, as pump lets them through.
	pumping bool
	out     []byte
	outErr  error
	ready   chan struct{} // signalled when out or outErr changes
	// Commands held back by a stall of execution, in order.
	held chan heldWrite
}

type heldWrite struct {
	b  []byte
	at time.Time // when Redis gets to it
}

// Write notes what the client sends. go-redis holds its PubSub's mutex
// while it sets up the subscription's connection (HELLO), and in a
// synctest bubble a goroutine waiting on a mutex stops virtual time: a
// reply delayed there would never come. So set-up replies are never
// delayed; the subscription's messages are delayed by its pump, which
// go-redis reads without its mutex.
func (c *simConn) Write(b []byte) (int, error) {
	cmd := bytes.ToLower(b) // go-redis writes its commands in lower case
	c.mu.Lock()
	c.setup = bytes.Contains(cmd, []byte("hello"))
	if bytes.Contains(cmd, []byte("subscribe")) && !c.pumping {
		// From now on the pump reads the connection, whether or not
		// go-redis is reading (it sleeps 100 ms between attempts after
		// an error): miniredis writes under a lock its publishing waits
		// for, and a goroutine waiting on a lock stops a bubble's clock.
		c.subscriber, c.pumping = true, true
		c.Conn.SetReadDeadline(time.Time{})
		go c.pump()
	}
	sub, setup, held := c.subscriber, c.setup, c.held
	c.mu.Unlock()
	if !sub && !setup {
		// A frozen process writes when it resumes (not the set-up and
		// subscription writes go-redis makes under its PubSub's mutex).
		c.s.waitResumed(c.r)
	}
	f, stalled := c.s.active("redis-stall-exec", -1)
	if sub || setup || (!stalled && held == nil) {
		return c.Conn.Write(b)
	}
	// Redis is busy: the command sits in its socket and runs when it gets
	// to it, whether or not the client still waits.
	if held == nil {
		c.mu.Lock()
		c.held = make(chan heldWrite, 64)
		held = c.held
		c.mu.Unlock()
		go c.deliverHeld(held)
	}
	d := time.Duration(0)
	if stalled {
		d = f.d
	}
	held <- heldWrite{b: bytes.Clone(b), at: time.Now().Add(d)}
	return len(b), nil
}

// deliverHeld hands held commands to Redis at their time, in order, and
// closes the connection once the client has and all are delivered.
func (c *simConn) deliverHeld(held chan heldWrite) {
	for w := range held {
		time.Sleep(time.Until(w.at))
		if _, err := c.Conn.Write(w.b); err != nil {
			break
		}
	}
	for range held {
	}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		c.Conn.Close()
	}
}

func (c *simConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	if c.held != nil {
		close(c.held) // deliverHeld closes the connection after the rest
		// Nobody reads the replies now, and miniredis writes them under
		// a lock its publishing waits for: read them, or all would wait.
		go io.Copy(io.Discard, c.Conn)
		return nil
	}
	return c.Conn.Close()
}

func (c *simConn) SetDeadline(t time.Time) error {
	if c.setDeadline(t) {
		return c.Conn.SetWriteDeadline(t)
	}
	return c.Conn.SetDeadline(t)
}

func (c *simConn) SetReadDeadline(t time.Time) error {
	if c.setDeadline(t) {
		return nil
	}
	return c.Conn.SetReadDeadline(t)
}

// setDeadline notes the read deadline, and reports whether the pump reads
// the connection: then the deadline is readSubscription's, not the pump's.
func (c *simConn) setDeadline(t time.Time) (pumped bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = t
	return c.pumping
}

func (c *simConn) Read(b []byte) (int, error) {
	if _, down := c.s.active("redis-down", -1); down {
		c.Conn.Close()
		return 0, io.ErrUnexpectedEOF
	}
	c.mu.Lock()
	sub, setup, dl := c.subscriber, c.setup, c.deadline
	c.mu.Unlock()
	if sub {
		n, err := c.readSubscription(b)
		c.s.waitResumed(c.r)
		return n, err
	}
	n, err := c.Conn.Read(b)
	if err != nil {
		return n, err
	}
	c.s.waitResumed(c.r) // a paused process reads its reply when it resumes
	if setup {
		return n, nil
	}
	delay := time.Duration(c.s.rand(fmt.Sprint("redis", c.r.id), int64(c.s.sc.redisLatency)+1))
	if f, ok := c.s.active("redis-slow", -1); ok {
		delay = time.Duration(c.s.rand(fmt.Sprint("redis-slow", c.r.id), int64(f.d)+1))
	}
	if f, ok := c.s.active("redis-stall", -1); ok {
		delay = f.d
	}
	if !dl.IsZero() && time.Now().Add(delay).After(dl) {
		// The reply comes after the caller gave up: it is lost with the
		// connection, which the client drops.
		c.s.logf("r%d: a Redis reply %v late, %v past the call's deadline", c.r.id, delay, delay-time.Until(dl))
		time.Sleep(time.Until(dl))
		c.Conn.Close()
		return 0, os.ErrDeadlineExceeded
	}
	time.Sleep(delay)
	return n, nil
}

// readSubscription reads what pump let through of the subscription,
// honouring the read deadline (go-redis pings an idle subscription).
func (c *simConn) readSubscription(b []byte) (int, error) {
	for {
		c.mu.Lock()
		if len(c.out) > 0 {
			n := copy(b, c.out)
			c.out = c.out[n:]
			c.mu.Unlock()
			return n, nil
		}
		err, dl := c.outErr, c.deadline
		c.mu.Unlock()
		if err != nil {
			return 0, err
		}
		var timeout <-chan time.Time
		if !dl.IsZero() {
			if time.Until(dl) <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			timeout = time.After(time.Until(dl))
		}
		select {
		case <-c.ready:
		case <-timeout:
			return 0, os.ErrDeadlineExceeded
		}
	}
}

// pump reads the subscription's frames from Redis and lets them through:
// at once, or, for a message on the fleet's channel under a fault, never
// (dropped) or later (delayed, and so out of order with the rest).
func (c *simConn) pump() {
	var raw []byte
	buf := make([]byte, 4096)
	for {
		n, err := c.Conn.Read(buf)
		raw = append(raw, buf[:n]...)
		for {
			m, ok := frameLen(raw)
			if !ok {
				break
			}
			frame := bytes.Clone(raw[:m])
			raw = raw[m:]
			c.route(frame)
		}
		if err != nil {
			c.deliver(nil, err)
			return
		}
	}
}

func (c *simConn) route(frame []byte) {
	if !isMessage(frame) {
		c.deliver(frame, nil)
		return
	}
	if _, ok := c.s.active("pubsub-drop", c.r.id); ok {
		c.s.logf("r%d: dropped a message", c.r.id)
		return
	}
	if f, ok := c.s.active("pubsub-delay", c.r.id); ok && f.d > 0 {
		d := time.Duration(c.s.rand(fmt.Sprint("pubsub-delay", c.r.id), int64(f.d)))
		time.AfterFunc(d, func() { c.deliver(frame, nil) })
		return
	}
	c.deliver(frame, nil)
}

func (c *simConn) deliver(frame []byte, err error) {
	c.mu.Lock()
	if err != nil {
		c.outErr = err
	} else if c.outErr == nil {
		c.out = append(c.out, frame...)
	}
	c.mu.Unlock()
	select {
	case c.ready <- struct{}{}:
	default:
	}
}

// isMessage reports whether a RESP frame is a pub/sub message.
func isMessage(frame []byte) bool {
	if len(frame) == 0 || (frame[0] != '>' && frame[0] != '*') {
		return false
	}
	_, rest, _ := bytes.Cut(frame, []byte("\r\n"))
	return bytes.HasPrefix(rest, []byte("$7\r\nmessage\r\n"))
}

// frameLen is the length of the first complete RESP2/RESP3 frame in b,
// false if b does not hold one yet.
func frameLen(b []byte) (int, bool) {
	i := bytes.Index(b, []byte("\r\n"))
	if len(b) == 0 || i < 0 {
		return 0, false
	}
	switch b[0] {
	case '$', '!', '=':
		n, _ := strconv.Atoi(string(b[1:i]))
		end := i + 2 + n + 2
		if n < 0 {
			end = i + 2
		}
		return end, len(b) >= end
	case '*', '>', '~', '%', '|':
		n, _ := strconv.Atoi(string(b[1:i]))
		if b[0] == '%' || b[0] == '|' {
			n *= 2
		}
		off := i + 2
		for range max(n, 0) {
			m, ok := frameLen(b[off:])
			if !ok {
				return 0, false
			}
			off += m
		}
		return off, true
	}
	return i + 2, true // a line: + - : _ # , (
}
