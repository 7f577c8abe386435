package fleet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// The deployments a Redis can be reached as (Redis.Mode).
const (
	ModeStandalone = "standalone" // one server (or a proxy routing to the master)
	ModeSentinel   = "sentinel"   // a master found, and followed, through sentinels
	ModeCluster    = "cluster"    // a Redis Cluster (also managed services in cluster mode)
)

// Redis says where the fleet's Redis is and how to reach it.
type Redis struct {
	// URL, in ModeStandalone, is redis://[user:password@]host:port[/db],
	// rediss://... for TLS, or unix://[user:password@]/path/to/socket[?db=N].
	// In ModeSentinel it names a sentinel, as go-redis's ParseFailoverURL
	// reads it: redis://[sentinel-user:password@]host:port[/db]?master_name=NAME
	// [&addr=host:port ...][&username=U&password=P for the master]. In
	// ModeCluster it names a seed node, as ParseClusterURL reads it:
	// redis://[user:password@]host:port[?addr=host:port ...].
	URL string
	// Mode is ModeStandalone (the default when empty), ModeSentinel or
	// ModeCluster.
	Mode string
	// CAFile, if set, is a PEM file of certificate authorities trusted
	// for the server's certificate, besides the system's (which
	// SSL_CERT_FILE and SSL_CERT_DIR choose). CertFile and KeyFile, set
	// together, are the client certificate for servers that require one
	// (tls-auth-clients). All need a rediss:// URL.
	CAFile, CertFile, KeyFile string
}

// Check parses r and reads its files, without touching the network: a
// configuration that cannot work is refused at start-up, with the
// password kept out of the message.
func (r Redis) Check() error {
	_, err := r.parse()
	return err
}

// parsed is a Redis made ready for go-redis: one of the three is set.
type parsed struct {
	simple   *redis.Options
	failover *redis.FailoverOptions
	cluster  *redis.ClusterOptions
	redacted string // the URL as logs may show it
	db       int
}

func (r Redis) parse() (parsed, error) {
	var p parsed
	u, err := url.Parse(r.URL)
	if err != nil || u.Scheme == "" {
		return p, errors.New("fleet: the Redis URL is not a URL") // url's error would quote the password
	}
	p.redacted = redact(u)
	fail := func(format string, args ...any) (parsed, error) {
		return parsed{}, fmt.Errorf("fleet: Redis %s: "+format, append([]any{p.redacted}, args...)...)
	}
	if strings.Contains(u.Host, ",") {
		return fail("a host list is not one Redis: name one host, and give the others as ?addr=host:port with the sentinel or cluster mode")
	}
	// go-redis's messages may quote parts of the URL: never the password
	// (masked here anyway), and they say which part is wrong.
	why := func(err error) string {
		msg := strings.TrimPrefix(err.Error(), "redis: ")
		for _, pw := range passwords(u) {
			msg = strings.ReplaceAll(msg, pw, "xxxxx")
		}
		return msg
	}
	switch r.Mode {
	case "", ModeStandalone:
		if u.Scheme != "redis" && u.Scheme != "rediss" && u.Scheme != "unix" {
			return fail("scheme must be redis, rediss or unix")
		}
		if u.Scheme != "unix" && u.Host == "" {
			return fail("no host")
		}
		if p.simple, err = redis.ParseURL(r.URL); err != nil {
			return fail("%s (want redis://[user:password@]host:port[/db], rediss://... or unix:///path/to/socket[?db=N])", why(err))
		}
		p.db = p.simple.DB
	case ModeSentinel:
		if p.failover, err = redis.ParseFailoverURL(r.URL); err != nil {
			return fail("%s (want redis://[user:password@]sentinel:port[/db]?master_name=NAME[&addr=sentinel2:port...])", why(err))
		}
		if p.failover.MasterName == "" {
			return fail("the sentinel mode needs ?master_name=NAME, the master the sentinels watch")
		}
		p.db = p.failover.DB
	case ModeCluster:
		if p.cluster, err = redis.ParseClusterURL(r.URL); err != nil {
			return fail("%s (want redis://[user:password@]node:port[?addr=node2:port...])", why(err))
		}
	default:
		return parsed{}, fmt.Errorf("fleet: Redis mode %q: want %s, %s or %s", r.Mode, ModeStandalone, ModeSentinel, ModeCluster)
	}
	conf := p.tlsConfig()
	if r.CAFile == "" && r.CertFile == "" && r.KeyFile == "" {
		return p, nil
	}
	if conf == nil {
		return fail("a CA file or client certificate needs a rediss:// URL")
	}
	if r.CAFile != "" {
		pem, err := os.ReadFile(r.CAFile)
		if err != nil {
			return fail("CA file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return fail("CA file %s holds no PEM certificate", r.CAFile)
		}
		conf.RootCAs = pool
	}
	if (r.CertFile == "") != (r.KeyFile == "") {
		return fail("a client certificate needs both its file and its key's")
	}
	if r.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(r.CertFile, r.KeyFile)
		if err != nil {
			return fail("client certificate: %w", err)
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	return p, nil
}

// tlsConfig is the parsed URL's TLS configuration: nil without TLS.
func (p parsed) tlsConfig() *tls.Config {
	switch {
	case p.simple != nil:
		return p.simple.TLSConfig
	case p.failover != nil:
		return p.failover.TLSConfig
	default:
		return p.cluster.TLSConfig
	}
}

// client makes the go-redis client, with no call yet. Every call is
// bounded by its context, with no retries hidden inside the client: a sick
// Redis must cost a request one bounded call, after which the breaker
// keeps it out of the way.
func (p parsed) client(timeout time.Duration, dialer func(context.Context, string, string) (net.Conn, error), hook redis.Hook) redis.UniversalClient {
	// MinIdleConns: a connection kept ready, so a replica's first call
	// after start or idle does not spend its bounded call on a dial and a
	// handshake. DisableIdentity: no CLIENT SETINFO round trip on each new
	// connection. Maintenance notifications (a managed-service feature)
	// would resolve the host at New and add a round trip to each
	// connection. DialerRetries: one dial a try, not five with pauses.
	off := &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	switch {
	case p.simple != nil:
		o := p.simple
		o.ContextTimeoutEnabled, o.MaxRetries, o.DialerRetries = true, -1, 1
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout = timeout, timeout, timeout, timeout
		o.MinIdleConns, o.DisableIdentity, o.MaintNotificationsConfig = 1, true, off
		if dialer != nil {
			o.Dialer = dialer
		}
		c := redis.NewClient(o)
		c.AddHook(hook)
		return c
	case p.failover != nil:
		o := p.failover
		o.ContextTimeoutEnabled, o.MaxRetries, o.DialerRetries = true, -1, 1
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout = timeout, timeout, timeout, timeout
		o.MinIdleConns, o.DisableIdentity = 1, true
		if dialer != nil {
			o.Dialer = dialer
		}
		c := redis.NewFailoverClient(o)
		c.AddHook(hook)
		return c
	default:
		o := p.cluster
		// A MOVED or ASK reply (a slot moving) is followed within the
		// call's bound, as go-redis does by default: a redirect is an
		// answer, not a failure.
		o.ContextTimeoutEnabled, o.MaxRetries, o.DialerRetries = true, -1, 1
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout = timeout, timeout, timeout, timeout
		o.MinIdleConns, o.DisableIdentity, o.MaintNotificationsConfig = 1, true, off
		if dialer != nil {
			o.Dialer = dialer
		}
		c := redis.NewClusterClient(o)
		c.OnNewNode(func(n *redis.Client) { n.AddHook(hook) })
		return c
	}
}

// Redacted returns r's URL as logs may show it: without its passwords,
// in the user part or the query (a Sentinel master's ?password=), or
// "(unparsable URL)".
func (r Redis) Redacted() string {
	u, err := url.Parse(r.URL)
	if err != nil {
		return "(unparsable URL)"
	}
	return redact(u)
}

// redact shows u without its password, in the user part or the query.
func redact(u *url.URL) string {
	c := *u
	if q := c.Query(); q.Has("password") || q.Has("sentinel_password") {
		for _, k := range []string{"password", "sentinel_password"} {
			if q.Has(k) {
				q.Set(k, "xxxxx")
			}
		}
		c.RawQuery = q.Encode()
	}
	return c.Redacted()
}

// passwords are the secrets in u, to mask wherever they might be quoted.
func passwords(u *url.URL) []string {
	var out []string
	if pw, ok := u.User.Password(); ok && pw != "" {
		out = append(out, pw)
	}
	for _, k := range []string{"password", "sentinel_password"} {
		if pw := u.Query().Get(k); pw != "" {
			out = append(out, pw)
		}
	}
	return out
}

// dialWatch keeps the outcome of the last dial: go-redis dials in the
// background, and a call waiting on it reports only that its time ran
// out, while the dial's own error (an untrusted certificate, a refused
// connection) says what happened.
type dialWatch struct{ last atomic.Pointer[error] }

func (w *dialWatch) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := next(ctx, network, addr)
		if err != nil && ctx.Err() == nil {
			w.last.Store(&err)
		} else if err == nil {
			w.last.Store(nil)
		}
		return c, err
	}
}

func (*dialWatch) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (*dialWatch) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// failed returns the last dial's error if the last dial failed.
func (w *dialWatch) failed() error {
	if p := w.last.Load(); p != nil {
		return *p
	}
	return nil
}
