package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// benchRedis is a redis-server the benchmark started, and a client of its
// own for INFO.
type benchRedis struct {
	p      *proc
	addr   string
	url    string
	client *redis.Client
}

// startRedis starts Debian's redis-server on a free loopback port with no
// persistence: the fleet's keys all expire, and a save would only add
// pauses to the figures.
func (e *env) startRedis() (*benchRedis, error) {
	if err := need("redis-server"); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	p, err := e.start("redis", "redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--maxclients", "20000")
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	c := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true})
	for deadline := time.Now().Add(10 * time.Second); ; {
		if err := c.Ping(e.ctx).Err(); err == nil {
			break
		}
		if p.exited() || time.Now().After(deadline) {
			c.Close()
			return nil, fmt.Errorf("redis-server did not start; its log:\n%s", p.tail())
		}
		if err := sleep(e.ctx, 50*time.Millisecond); err != nil {
			c.Close()
			return nil, err
		}
	}
	return &benchRedis{p: p, addr: addr, url: "redis://" + addr, client: c}, nil
}

func (r *benchRedis) close(e *env) {
	r.client.Close()
	e.stopProc(r.p)
}

// ownCommands are what the benchmark itself sends (INFO, FLUSHALL) or what
// a client sends once on connecting: left out of the fleet's counts.
var ownCommands = map[string]bool{"info": true, "flushall": true, "config": true, "hello": true, "client|setinfo": true, "client|setname": true}

// redisSample is Redis's counters at one instant.
type redisSample struct {
	at      time.Time
	calls   map[string]int64
	usec    map[string]int64 // µs in each command
	netOut  int64            // total_net_output_bytes
	cpuUser float64
	cpuSys  float64
}

// idle waits settle, then returns what Redis ran over the next d: the
// fleet's idle cost, with no client traffic.
func (r *benchRedis) idle(ctx context.Context, settle, d time.Duration) (redisDelta, error) {
	if err := sleep(ctx, settle); err != nil {
		return redisDelta{}, err
	}
	before, err := r.sample(ctx)
	if err != nil {
		return redisDelta{}, err
	}
	if err := sleep(ctx, d); err != nil {
		return redisDelta{}, err
	}
	after, err := r.sample(ctx)
	if err != nil {
		return redisDelta{}, err
	}
	return deltaOf(before, after), nil
}

func (r *benchRedis) sample(ctx context.Context) (redisSample, error) {
	cs, err := r.client.Info(ctx, "commandstats").Result()
	if err != nil {
		return redisSample{}, err
	}
	calls, err := commandStats(cs)
	if err != nil {
		return redisSample{}, err
	}
	usec, err := commandUsec(cs)
	if err != nil {
		return redisSample{}, err
	}
	for k := range calls {
		if ownCommands[k] {
			delete(calls, k)
		}
	}
	st, err := r.client.Info(ctx, "stats", "cpu").Result()
	if err != nil {
		return redisSample{}, err
	}
	out, err := infoField(st, "total_net_output_bytes")
	if err != nil {
		return redisSample{}, err
	}
	s := redisSample{at: time.Now(), calls: calls, usec: usec, netOut: out}
	s.cpuUser, _ = infoFloat(st, "used_cpu_user")
	s.cpuSys, _ = infoFloat(st, "used_cpu_sys")
	return s, nil
}

// redisDelta is what Redis did between two samples.
type redisDelta struct {
	span   time.Duration
	calls  map[string]int64
	usec   map[string]int64 // µs in each command
	total  int64
	netOut int64
	cpu    float64 // seconds of CPU
}

func deltaOf(a, b redisSample) redisDelta {
	calls, total := deltaCalls(a.calls, b.calls)
	usec, _ := deltaCalls(a.usec, b.usec)
	return redisDelta{span: b.at.Sub(a.at), calls: calls, usec: usec, total: total, netOut: b.netOut - a.netOut,
		cpu: (b.cpuUser + b.cpuSys) - (a.cpuUser + a.cpuSys)}
}

func (d redisDelta) perSecond() float64 {
	if d.span <= 0 {
		return 0
	}
	return float64(d.total) / d.span.Seconds()
}

// cpuPercent is Redis's CPU over the span, in % of one core.
func (d redisDelta) cpuPercent() float64 {
	if d.span <= 0 {
		return 0
	}
	return 100 * d.cpu / d.span.Seconds()
}
