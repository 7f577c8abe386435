//go:build linux

// The Redis deployments operators run, started by hand from Debian's
// redis-server, redis-sentinel, redis-cli and openssl on loopback, for
// e2e/deployments_test.go. package fleettest starts the one plain
// redis-server the other tests share; these need other flags, several
// processes and a setup step each, and only the e2e tests use them, so they
// live here rather than there.

package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisNode is one redis-server or redis-sentinel the test started.
type redisNode struct {
	name string
	addr string // 127.0.0.1:port; "" for a node on a unix socket only
	p    *process
	opts redis.Options // how the test itself reaches it (TLS, ACL)

	once sync.Once
	c    *redis.Client
}

// client is a plain client of the node for the test to poke at, one per
// node (the waits poll it every 50ms), closed when the test ends.
func (n *redisNode) client(t testing.TB) *redis.Client {
	n.once.Do(func() {
		o := n.opts
		o.MaxRetries = -1
		n.c = redis.NewClient(&o)
		t.Cleanup(func() { n.c.Close() })
	})
	return n.c
}

// port is the node's TCP port.
func (n *redisNode) port() string {
	_, p, _ := net.SplitHostPort(n.addr)
	return p
}

// kill SIGKILLs the node, as a crash or the OOM killer would.
func (n *redisNode) kill(t testing.TB) {
	t.Helper()
	if err := syscall.Kill(-n.p.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-n.p.done
}

// startRedisNode starts bin (redis-server or redis-sentinel) with args and
// waits until the test can PING it with opts (opts.Addr defaults to addr).
// The server keeps nothing on disk: its working directory is the test's.
func startRedisNode(t testing.TB, name, bin, addr string, opts redis.Options, args ...string) *redisNode {
	t.Helper()
	if opts.Addr == "" {
		opts.Addr = addr
	}
	if opts.Network == "" {
		opts.Network = "tcp"
	}
	opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout = time.Second, 2*time.Second, 2*time.Second
	n := &redisNode{name: name, addr: addr, opts: opts}
	n.p = startProcess(t, name, mustLookPath(t, bin), args...)
	c := n.client(t)
	waitFor(t, 10*time.Second, name+" answering PING", func() error {
		if n.p.exited() {
			return fmt.Errorf("%w: exited: %v", errStop, n.p.err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return c.Ping(ctx).Err()
	})
	return n
}

// redisServerArgs are the flags every test redis-server gets: loopback
// only, nothing saved, its files in dir.
func redisServerArgs(dir string, extra ...string) []string {
	return append([]string{"--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir}, extra...)
}

// startPlainRedis starts one redis-server on a free loopback port with
// extra flags; opts is how the test authenticates (TLS, ACL).
func startPlainRedis(t testing.TB, name string, opts redis.Options, extra ...string) *redisNode {
	t.Helper()
	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	dir := t.TempDir()
	return startRedisNode(t, name, "redis-server", addr, opts, redisServerArgs(dir, append([]string{"--port", port}, extra...)...)...)
}

// redisCluster is a Redis Cluster of masters without replicas.
type redisCluster struct {
	nodes []*redisNode
}

// startRedisCluster starts n cluster-enabled redis-servers and joins them
// with redis-cli --cluster create, as an operator does, then waits until
// every node says the cluster is ok (every slot served, the nodes agree).
func startRedisCluster(t testing.TB, n int) *redisCluster {
	t.Helper()
	cli := mustLookPath(t, "redis-cli")
	c := &redisCluster{}
	var addrs []string
	for i := range n {
		addr := freeAddr(t)
		_, port, _ := net.SplitHostPort(addr)
		dir := t.TempDir()
		c.nodes = append(c.nodes, startRedisNode(t, fmt.Sprintf("redis-cluster-%d", i+1), "redis-server", addr, redis.Options{},
			redisServerArgs(dir, "--port", port, "--cluster-enabled", "yes",
				"--cluster-config-file", filepath.Join(dir, "nodes.conf"), "--cluster-node-timeout", "2000")...))
		addrs = append(addrs, addr)
	}
	out, err := exec.Command(cli, append(append([]string{"--cluster", "create"}, addrs...), "--cluster-replicas", "0", "--cluster-yes")...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	waitFor(t, 20*time.Second, "the cluster ok on every node", func() error {
		for _, node := range c.nodes {
			info, err := node.client(t).ClusterInfo(context.Background()).Result()
			if err != nil {
				return err
			}
			if !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, fmt.Sprintf("cluster_known_nodes:%d", n)) {
				return fmt.Errorf("%s: %s", node.name, info)
			}
		}
		return nil
	})
	return c
}

// url is the -redis URL of the cluster in go-redis's ParseClusterURL form:
// the first node, the others as seeds (?addr=).
func (c *redisCluster) url() string {
	u := "redis://" + c.nodes[0].addr
	for i, n := range c.nodes[1:] {
		sep := "&"
		if i == 0 {
			sep = "?"
		}
		u += sep + "addr=" + n.addr
	}
	return u
}

// nodeID is a node's cluster id.
func (c *redisCluster) nodeID(t testing.TB, n *redisNode) string {
	t.Helper()
	id, err := n.client(t).Do(context.Background(), "CLUSTER", "MYID").Text()
	if err != nil {
		t.Fatalf("%s CLUSTER MYID: %v", n.name, err)
	}
	return id
}

// owner is the node that serves slot, as the first node sees it.
func (c *redisCluster) owner(t testing.TB, slot int64) *redisNode {
	t.Helper()
	slots, err := c.nodes[0].client(t).ClusterSlots(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		if int64(s.Start) <= slot && slot <= int64(s.End) && len(s.Nodes) > 0 {
			for _, n := range c.nodes {
				if n.addr == s.Nodes[0].Addr {
					return n
				}
			}
		}
	}
	t.Fatalf("no node serves slot %d: %v", slot, slots)
	return nil
}

// findKeys returns the keys matching pattern on any node (SCAN on each
// master: a cluster has no keyspace-wide SCAN).
func (c *redisCluster) findKeys(t testing.TB, pattern string) []string {
	t.Helper()
	var out []string
	for _, n := range c.nodes {
		keys, err := scanAll(n.client(t), pattern)
		if err != nil {
			t.Fatalf("%s SCAN: %v", n.name, err)
		}
		out = append(out, keys...)
	}
	return out
}

// scanAll is every key matching pattern, by SCAN, not KEYS, as an operator
// looking at a production Redis would.
func scanAll(c *redis.Client, pattern string) ([]string, error) {
	var out []string
	var cursor uint64
	for {
		keys, next, err := c.Scan(context.Background(), cursor, pattern, 100).Result()
		if err != nil {
			return nil, err
		}
		out = append(out, keys...)
		if cursor = next; cursor == 0 {
			return out, nil
		}
	}
}

// moveSlot moves slot from its owner to dst while the fleet runs, by hand,
// as redis-cli --cluster reshard does it: IMPORTING on dst, MIGRATING on
// the source, the slot's keys migrated one at a time (with pause between
// them, so the fleet meets ASK and TRYAGAIN replies while keys sit on both
// nodes), then the slot assigned to dst on every node (MOVED from then on).
// It returns the number of keys moved.
func (c *redisCluster) moveSlot(t testing.TB, slot int64, src, dst *redisNode, pause time.Duration) int {
	t.Helper()
	ctx := context.Background()
	srcID, dstID := c.nodeID(t, src), c.nodeID(t, dst)
	sc, dc := src.client(t), dst.client(t)
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("moving slot %d from %s to %s: %s: %v", slot, src.name, dst.name, what, err)
		}
	}
	must("IMPORTING", dc.Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", srcID).Err())
	must("MIGRATING", sc.Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", dstID).Err())
	host, port, _ := net.SplitHostPort(dst.addr)
	moved := 0
	for deadline := time.Now().Add(10 * time.Second); ; {
		keys, err := sc.ClusterGetKeysInSlot(ctx, int(slot), 10).Result()
		must("GETKEYSINSLOT", err)
		if len(keys) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot %d still has keys on %s after 10s: %v", slot, src.name, keys)
		}
		for _, k := range keys {
			// NOKEY: it expired (or the fleet deleted it) meanwhile.
			if err := sc.Migrate(ctx, host, port, k, 0, 5*time.Second).Err(); err != nil && !strings.Contains(err.Error(), "NOKEY") {
				must("MIGRATE "+k, err)
			}
			moved++
			time.Sleep(pause)
		}
	}
	// The new owner first, then the old, then the rest: the order
	// redis-cli uses, so no node ever sends a client back and forth.
	must("NODE on "+dst.name, dc.Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", dstID).Err())
	must("NODE on "+src.name, sc.Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", dstID).Err())
	for _, n := range c.nodes {
		if n != src && n != dst {
			must("NODE on "+n.name, n.client(t).Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", dstID).Err())
		}
	}
	return moved
}

// sentinelSet is a master, its replica and three sentinels watching them
// as "mymaster".
type sentinelSet struct {
	servers   []*redisNode // [0] the master at start, [1] its replica
	sentinels []*redisNode
}

// sentinelMaster is the name the sentinels know the master by.
const sentinelMaster = "mymaster"

// startSentinelSet starts a master, a replica of it and three sentinels
// with quorum 2, down-after-milliseconds downAfter and failover-timeout
// failoverTimeout (short, so a test sees a failover within seconds), and
// waits until every sentinel knows the replica and the two other
// sentinels: before that a failover would find no replica to promote or
// no majority to authorise it.
func startSentinelSet(t testing.TB, downAfter, failoverTimeout time.Duration) *sentinelSet {
	t.Helper()
	s := &sentinelSet{}
	master := startPlainRedis(t, "redis-master", redis.Options{})
	replica := startPlainRedis(t, "redis-replica", redis.Options{}, "--replicaof", "127.0.0.1", master.port())
	s.servers = []*redisNode{master, replica}
	for i := range 3 {
		addr := freeAddr(t)
		_, port, _ := net.SplitHostPort(addr)
		dir := t.TempDir()
		// A sentinel rewrites its config file as it learns: it must be
		// its own, writable.
		conf := filepath.Join(dir, "sentinel.conf")
		text := fmt.Sprintf(`port %s
bind 127.0.0.1
dir %s
sentinel monitor %s 127.0.0.1 %s 2
sentinel down-after-milliseconds %[3]s %[5]d
sentinel failover-timeout %[3]s %[6]d
sentinel parallel-syncs %[3]s 1
`, port, dir, sentinelMaster, master.port(), downAfter.Milliseconds(), failoverTimeout.Milliseconds())
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		s.sentinels = append(s.sentinels, startRedisNode(t, fmt.Sprintf("sentinel-%d", i+1), "redis-sentinel", addr, redis.Options{}, conf))
	}
	waitFor(t, 30*time.Second, "every sentinel knowing the replica and the other sentinels", func() error {
		for _, sn := range s.sentinels {
			m, err := sn.client(t).Do(context.Background(), "SENTINEL", "MASTER", sentinelMaster).Result()
			if err != nil {
				return err
			}
			f := fieldMap(m)
			if f["num-slaves"] != "1" || f["num-other-sentinels"] != "2" {
				return fmt.Errorf("%s: num-slaves %s, num-other-sentinels %s", sn.name, f["num-slaves"], f["num-other-sentinels"])
			}
		}
		return nil
	})
	return s
}

// url is the -redis URL in go-redis's ParseFailoverURL form: the
// sentinels, and the master's name.
func (s *sentinelSet) url() string {
	u := "redis://" + s.sentinels[0].addr + "?master_name=" + sentinelMaster
	for _, n := range s.sentinels[1:] {
		u += "&addr=" + n.addr
	}
	return u
}

// masterAddr is the master's address as the first live sentinel says.
func (s *sentinelSet) masterAddr(t testing.TB) string {
	t.Helper()
	var last error
	for _, sn := range s.sentinels {
		a, err := sn.client(t).Do(context.Background(), "SENTINEL", "GET-MASTER-ADDR-BY-NAME", sentinelMaster).StringSlice()
		if err == nil && len(a) == 2 {
			return net.JoinHostPort(a[0], a[1])
		}
		last = err
	}
	t.Fatalf("no sentinel names the master: %v", last)
	return ""
}

// server is the redis-server at addr.
func (s *sentinelSet) server(t testing.TB, addr string) *redisNode {
	t.Helper()
	for _, n := range s.servers {
		if n.addr == addr {
			return n
		}
	}
	t.Fatalf("no server at %s", addr)
	return nil
}

// waitReplicaOf waits until n is a replica of master with its link up, as
// it says itself and as every sentinel sees it: after a failover the old
// master is demoted by the sentinels some seconds later, and only then can
// it be promoted by the next failover.
func (s *sentinelSet) waitReplicaOf(t testing.TB, n, master *redisNode, within time.Duration) {
	t.Helper()
	waitFor(t, within, n.name+" a replica of "+master.name, func() error {
		info, err := n.client(t).Info(context.Background(), "replication").Result()
		if err != nil {
			return err
		}
		if !strings.Contains(info, "role:slave") || !strings.Contains(info, "master_port:"+master.port()) || !strings.Contains(info, "master_link_status:up") {
			return fmt.Errorf("%s INFO replication:\n%s", n.name, info)
		}
		for _, sn := range s.sentinels {
			if sn.p.exited() {
				continue
			}
			rs, err := sn.client(t).Do(context.Background(), "SENTINEL", "REPLICAS", sentinelMaster).Slice()
			if err != nil {
				return err
			}
			ok := false
			for _, r := range rs {
				f := fieldMap(r)
				if f["name"] == n.addr && f["flags"] == "slave" && f["master-link-status"] == "ok" {
					ok = true
				}
			}
			if !ok {
				return fmt.Errorf("%s does not see %s as a healthy replica: %v", sn.name, n.name, rs)
			}
		}
		return nil
	})
}

// fieldMap reads a SENTINEL reply (a flat list of names and values, or a
// RESP3 map) into a map.
func fieldMap(v any) map[string]string {
	out := map[string]string{}
	switch v := v.(type) {
	case []any:
		for i := 0; i+1 < len(v); i += 2 {
			out[fmt.Sprint(v[i])] = fmt.Sprint(v[i+1])
		}
	case map[any]any:
		for k, x := range v {
			out[fmt.Sprint(k)] = fmt.Sprint(x)
		}
	case map[string]any:
		for k, x := range v {
			out[k] = fmt.Sprint(x)
		}
	}
	return out
}

// testPKI is a CA the test made, and a server and a client certificate it
// signed, as PEM files in a temporary folder.
type testPKI struct {
	dir                                                  string
	caCert, serverCert, serverKey, clientCert, clientKey string
}

// makeTestPKI makes a CA, a certificate for a server at 127.0.0.1 and one
// for a client, with openssl as an operator would (EC P-256 keys: quick to
// make, and what TLS 1.3 prefers). Go checks the subjectAltName, not the
// CN, so each gets one; the extended key usages keep a client certificate
// from serving as a server's.
func makeTestPKI(t testing.TB) *testPKI {
	t.Helper()
	openssl := mustLookPath(t, "openssl")
	dir := t.TempDir()
	p := &testPKI{
		dir:    dir,
		caCert: filepath.Join(dir, "ca.pem"), serverCert: filepath.Join(dir, "server.pem"), serverKey: filepath.Join(dir, "server.key"),
		clientCert: filepath.Join(dir, "client.pem"), clientKey: filepath.Join(dir, "client.key"),
	}
	run := func(args ...string) {
		t.Helper()
		cmd := exec.Command(openssl, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	key := func(path string) {
		run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
	}
	key("ca.key")
	run("req", "-x509", "-new", "-key", "ca.key", "-sha256", "-days", "2", "-subj", "/CN=movies e2e CA", "-out", p.caCert)
	sign := func(name, subj, ext string) {
		t.Helper()
		extFile := filepath.Join(dir, name+".ext")
		if err := os.WriteFile(extFile, []byte(ext), 0o644); err != nil {
			t.Fatal(err)
		}
		key(name + ".key")
		run("req", "-new", "-key", name+".key", "-subj", subj, "-out", name+".csr")
		run("x509", "-req", "-in", name+".csr", "-CA", p.caCert, "-CAkey", "ca.key", "-CAcreateserial",
			"-days", "2", "-sha256", "-extfile", extFile, "-out", name+".pem")
	}
	sign("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
	sign("client", "/CN=movies", "subjectAltName=DNS:movies\nextendedKeyUsage=clientAuth\n")
	return p
}

// clientTLS is the TLS configuration the test itself uses to reach the
// server: the test's CA, its client certificate.
func (p *testPKI) clientTLS(t testing.TB) *tls.Config {
	t.Helper()
	ca, err := os.ReadFile(p.caCert)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		t.Fatal(errors.New("ca.pem holds no certificate"))
	}
	cert, err := tls.LoadX509KeyPair(p.clientCert, p.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
}

// startTLSRedis starts a redis-server that speaks only TLS (--port 0) and
// requires a client certificate signed by the test's CA (mutual TLS).
func startTLSRedis(t testing.TB, p *testPKI) *redisNode {
	t.Helper()
	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	dir := t.TempDir()
	return startRedisNode(t, "redis-tls", "redis-server", addr, redis.Options{TLSConfig: p.clientTLS(t)},
		redisServerArgs(dir, "--port", "0", "--tls-port", port,
			"--tls-cert-file", p.serverCert, "--tls-key-file", p.serverKey, "--tls-ca-cert-file", p.caCert,
			"--tls-auth-clients", "yes")...)
}

// startUnixRedis starts a redis-server listening only on a unix socket,
// and returns it and the socket's path.
func startUnixRedis(t testing.TB) (*redisNode, string) {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "redis.sock")
	n := startRedisNode(t, "redis-unix", "redis-server", "", redis.Options{Network: "unix", Addr: sock},
		redisServerArgs(dir, "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700")...)
	return n, sock
}
