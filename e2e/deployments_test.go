//go:build linux

// The fleet on the Redis deployments operators run: a Redis
// Cluster with a slot moved under load, a Sentinel set through a
// failover and the master's death, TLS with the test's own CA and client
// certificates, the minimal ACL user (and one permission short), a full
// Redis under noeviction, and a unix socket. Each case runs three replica
// processes of the real binary under light round-robin load, and beside it
// its control, the same replicas without Redis. Verdicts come from the
// fake upstream's own record (its marker timeline and the /films requests
// it received) and the clients' observations, never from the servers'
// metrics; the logs and metrics are checked only where they are the thing
// under test (a WARN naming the cause, the fallbacks counted by cause, the
// alert).

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// deployTTL is short so each case sees many TTL windows in seconds.
	deployTTL      = 2 * time.Second
	deployReplicas = 3
	// deployClients is light load: a few hundred requests a second over
	// the three replicas, the machine left to the replicas and Redis.
	deployClients = 3
	// deployGapSlack is how much closer than TTL/2 two fetches of a
	// sharing fleet may start (TestFleet_FetchesPerTTL's reasoning: a
	// reading of Redis's expiry errs early by at most the 100ms call
	// bound; the fake sees a request a moment after its lock).
	deployGapSlack = 150 * time.Millisecond
	// deployLease is package fleet's lease term: a request that waited one
	// out shows as a second or more.
	deployLease = time.Second
)

// deployACLRule is a minimal ACL rule, written here apart from the docs: the
// fleet's keys and channel only, and the commands the shared tier sends.
// The case runs the rule the docs give (docsACLRule) and this one only
// while they give none.
const deployACLRule = "on >secret resetkeys resetchannels ~movies:* &movies:* -@all " +
	"+evalsha +eval +get +set +del +rename +type +strlen +getrange +pttl +pexpire +publish +subscribe +ping"

// docsACLRule finds the rule an operator copies from README.md or
// docs/fleet.md, an `ACL SETUSER movies ...` line, with its password
// replaced by the test's ("secret"): the case tests what the docs say.
// It returns "" and where it looked if there is none.
func docsACLRule(t *testing.T) (rule, from string) {
	t.Helper()
	for _, rel := range []string{"README.md", "docs/fleet.md"} {
		b, err := os.ReadFile(filepath.Join(repoRoot(t), rel))
		if err != nil {
			t.Fatal(err)
		}
		if rule := parseACLRule(string(b)); rule != "" {
			return rule, rel
		}
	}
	return "", "README.md, docs/fleet.md"
}

// parseACLRule reads the first `ACL SETUSER movies <rule>` in a markdown
// text: the rule ends at the line's end or a closing backtick; a password
// (>...) becomes >secret, and one is added if the rule names none.
func parseACLRule(md string) string {
	const cmd = "ACL SETUSER movies "
	for line := range strings.Lines(md) {
		i := strings.Index(strings.ToUpper(line), strings.ToUpper(cmd))
		if i < 0 {
			continue
		}
		rest := line[i+len(cmd):]
		if j := strings.IndexByte(rest, '`'); j >= 0 {
			rest = rest[:j]
		}
		var out []string
		password := false
		for _, f := range strings.Fields(rest) {
			if strings.HasPrefix(f, ">") {
				f, password = ">secret", true
			}
			out = append(out, f)
		}
		if !password {
			out = append(out, ">secret")
		}
		return strings.Join(out, " ")
	}
	return ""
}

// TestDeployments runs each case in sequence (each loads the machine), its
// control first.
func TestDeployments(t *testing.T) {
	skipIfShort(t)
	for _, c := range []struct {
		name string
		run  func(t *testing.T, lone loneFigures)
	}{
		{"cluster", caseCluster},
		{"sentinel", caseSentinel},
		{"tls", caseTLS},
		{"acl", caseACL},
		{"full redis under noeviction", caseFullRedis},
		{"unix socket", caseUnixSocket},
	} {
		t.Run(c.name, func(t *testing.T) {
			var lone loneFigures
			if !t.Run("lone", func(t *testing.T) { lone = runLoneControl(t) }) {
				t.Fatal("the control failed: nothing to judge the fleet against")
			}
			t.Run("fleet", func(t *testing.T) { c.run(t, lone) })
		})
	}
}

// TestDeployments_HostListRefused: a comma-separated host list in a
// single-node -redis URL cannot work (go-redis dials the whole string),
// so start-up refuses it with exit status 2 and one line naming -redis.
func TestDeployments_HostListRefused(t *testing.T) {
	bin := moviesBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-addr", "127.0.0.1:0", "-upstream", "builtin", "-redis", "redis://127.0.0.1:6379,127.0.0.1:6380")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 {
		t.Fatalf("movies -redis with a host list: %v, want exit status 2\n%s", err, out)
	}
	if !strings.Contains(string(out), "-redis") {
		t.Errorf("the refusal does not name -redis:\n%s", out)
	}
	t.Logf("refused: %s", strings.TrimSpace(string(out)))
}

// loneFigures is what a control run measured.
type loneFigures struct {
	fleetFigures
	fetches    int
	perWindow  float64 // fetches per TTL window
	maxLatency time.Duration
	slow       int // requests that took a lease or longer
}

func (l loneFigures) String() string {
	return fmt.Sprintf("%v max=%v slow=%d fetches=%d per_window=%.2f", l.fleetFigures, l.maxLatency.Round(time.Millisecond), l.slow, l.fetches, l.perWindow)
}

// runLoneControl runs the case's replicas without Redis under the same
// load for three TTLs: what the fleet must never do worse than. Without
// -redis the deployment's flags mean nothing, so every case's control is
// the same processes; each case runs its own, beside it in time, so the
// machine is as loaded as for the fleet.
func runLoneControl(t *testing.T) loneFigures {
	rig := newFleetRigOn(t, "", "-ttl", deployTTL.String())
	for i := range deployReplicas {
		rig.addReplica(fmt.Sprintf("r%d", i+1))
	}
	const d = 3 * deployTTL
	start := time.Now()
	load := rig.startLoad(deployClients, "lone")
	time.Sleep(d)
	obs, _ := load.stop()
	end := time.Now()
	judgeFleet(obs, rig.timeline, deployTTL)
	l := loneFigures{
		fleetFigures: figures(obs, func(fleetObs) bool { return true }),
		fetches:      len(rig.filmsBetween(start, end)),
		maxLatency:   maxLatency(obs),
		slow:         slowRequests(obs),
	}
	l.perWindow = float64(l.fetches) / (float64(end.Sub(start)) / float64(deployTTL))
	logSummary(t, fmt.Sprintf("deploy control=lone %v", l))
	requireClean(t, "lone", l.fleetFigures, false)
	if l.fetches < deployReplicas*int(d/deployTTL) {
		t.Errorf("%d lone replicas made %d fetches in %v, want at least %d: the count does not see them", deployReplicas, l.fetches, d, deployReplicas*int(d/deployTTL))
	}
	return l
}

func maxLatency(obs []fleetObs) time.Duration {
	var m time.Duration
	for _, o := range obs {
		m = max(m, o.got.Sub(o.sent))
	}
	return m
}

// slowRequests counts the requests that took a lease or longer: what a
// request that waited out another replica's lease costs: two such
// requests in thousands move no percentile, so they are counted.
func slowRequests(obs []fleetObs) int {
	n := 0
	for _, o := range obs {
		if o.got.Sub(o.sent) >= deployLease {
			n++
		}
	}
	return n
}

// deployRun is a fleet under load through a sequence of steps: each a
// phase of the load, opened by an event (a slot moved, a failover, memory
// freed) and judged from the fake's /films requests in it.
type deployRun struct {
	t     *testing.T
	rig   *fleetRig
	lone  loneFigures
	load  *fleetLoad
	start time.Time
	steps []*deployStep
}

// deployStep is one phase.
type deployStep struct {
	name                 string
	eventStart, eventEnd time.Time
	end                  time.Time
	// resumeWithin: sharing is expected back this long after the event
	// started (0: the phase is not expected to share, e.g. Redis full).
	resumeWithin time.Duration
	// Measured after the load.
	fig        fleetFigures
	maxLatency time.Duration
	slow       int // requests that took a lease or longer
	// backwardsSettled counts pages older than one already served, sent
	// once sharing was due back; backwardsSpan is when the first and the
	// last of them were sent, after the event started.
	backwardsSettled int
	backwardsSpan    [2]time.Duration
	backwardsSeen    []string
	// backAfter is when the last replica logged "shared tier back",
	// after the event started; 0 if none did.
	backAfter      time.Duration
	fetches        int
	resumed        time.Duration // after eventStart; -1: not within the phase
	relapses       int           // fetches sharing would have saved, after it resumed
	settledFetches int
	settledWindows float64
}

func (s *deployStep) perWindow() float64 {
	if s.settledWindows <= 0 {
		return 0
	}
	return float64(s.settledFetches) / s.settledWindows
}

func (s *deployStep) String() string {
	resumed := "n/a"
	switch {
	case s.resumeWithin > 0 && s.resumed < 0:
		resumed = "never"
	case s.resumeWithin > 0:
		resumed = s.resumed.Round(time.Millisecond).String()
	}
	back := "-"
	if s.backAfter > 0 {
		back = s.backAfter.Round(time.Millisecond).String()
	}
	return fmt.Sprintf("phase=%s event=%v %v max=%v slow=%d fetches=%d settled_per_window=%.2f (%d in %.1f windows) resumed_after=%s relapses=%d backwards_settled=%d tier_back_logged_after=%s",
		s.name, s.eventEnd.Sub(s.eventStart).Round(time.Millisecond), s.fig, s.maxLatency.Round(time.Millisecond), s.slow, s.fetches,
		s.perWindow(), s.settledFetches, s.settledWindows, resumed, s.relapses, s.backwardsSettled, back)
}

// startDeployRun starts the replicas on rig; the first step starts the load.
func startDeployRun(t *testing.T, rig *fleetRig, lone loneFigures) *deployRun {
	t.Helper()
	for i := range deployReplicas {
		rig.addReplica(fmt.Sprintf("r%d", i+1))
	}
	return &deployRun{t: t, rig: rig, lone: lone}
}

// step opens a phase called name: it runs event (nil: none; it may block,
// say until Sentinel has promoted a replica, and counts as part of the
// event), then lets the load run for after. resumeWithin is when, counted
// from the event's start, the fleet must be sharing again (0: it is not
// expected to share in this phase).
func (r *deployRun) step(name string, resumeWithin time.Duration, event func(), after time.Duration) {
	r.t.Helper()
	s := &deployStep{name: name, resumeWithin: resumeWithin}
	if r.load == nil {
		r.start = time.Now()
		r.load = r.rig.startLoad(deployClients, name)
	} else {
		r.load.setPhase(name)
	}
	s.eventStart = time.Now()
	if len(r.steps) > 0 {
		r.steps[len(r.steps)-1].end = s.eventStart
	}
	r.steps = append(r.steps, s)
	if event != nil {
		event()
	}
	s.eventEnd = time.Now()
	time.Sleep(after)
}

// finish stops the load and judges every phase: no request failed and no
// page was past the TTL, in any phase, events included; where sharing is
// expected, it is back within resumeWithin of the event, and from then on
// the fleet's fetches per window are at the design (one per TTL and one
// early refresh, +1 for each window the phase cuts) and no more than the
// control's.
func (r *deployRun) finish() []*deployStep {
	t := r.t
	t.Helper()
	obs, _ := r.load.stop()
	end := time.Now()
	r.steps[len(r.steps)-1].end = end
	judgeFleet(obs, r.rig.timeline, deployTTL)
	all := r.rig.filmsBetween(r.start, end)
	logs := r.rig.tierLogs()
	minGap := deployTTL/2 - deployGapSlack
	for _, s := range r.steps {
		in := func(o fleetObs) bool { return !o.sent.Before(s.eventStart) && o.sent.Before(s.end) }
		s.fig = figures(obs, in)
		mine := slices.DeleteFunc(slices.Clone(obs), func(o fleetObs) bool { return !in(o) })
		s.maxLatency, s.slow = maxLatency(mine), slowRequests(mine)
		firstBack := map[string]time.Time{}
		for _, l := range logs {
			if l.msg == "shared tier back" && !l.at.Before(s.eventStart) && l.at.Before(s.end) {
				if f, ok := firstBack[l.replica]; !ok || l.at.Before(f) {
					firstBack[l.replica] = l.at
				}
			}
		}
		for _, at := range firstBack {
			s.backAfter = max(s.backAfter, at.Sub(s.eventStart))
		}
		// Fetches sharing would have saved: closer to the one before than
		// a sharing fleet's can be.
		var dups []time.Time
		for i, a := range all {
			if a.at.Before(s.eventStart) || !a.at.Before(s.end) {
				continue
			}
			s.fetches++
			if i > 0 && a.at.Sub(all[i-1].at) < minGap {
				dups = append(dups, a.at)
			}
		}
		from := s.eventEnd
		if s.resumeWithin > 0 {
			from = s.eventStart.Add(s.resumeWithin)
			s.resumed, s.relapses = resumedAfter(s.eventStart, s.end, s.resumeWithin, dups)
		}
		if from.Before(s.end) {
			s.settledFetches = len(r.rig.filmsBetween(from, s.end))
			s.settledWindows = float64(s.end.Sub(from)) / float64(deployTTL)
			for _, o := range mine {
				if o.backwards != "" && !o.sent.Before(from) {
					at := o.sent.Sub(s.eventStart)
					if s.backwardsSettled == 0 {
						s.backwardsSpan[0] = at
					}
					s.backwardsSpan[1] = at
					s.backwardsSettled++
					if len(s.backwardsSeen) < 5 {
						s.backwardsSeen = append(s.backwardsSeen, fmt.Sprintf("+%v: %s", at.Round(time.Millisecond), o.backwards))
					}
				}
			}
		}
		logSummary(t, "deploy "+s.String())
		requireClean(t, s.name, s.fig, false)
		if s.slow > r.lone.slow {
			t.Errorf("%s: %d requests took %v or longer (a lease waited out?), the lone control %d", s.name, s.slow, deployLease, r.lone.slow)
		}
		if len(s.fig.backwardsExamples) > 0 {
			t.Logf("%s: %d pages older than one already served (counted, not judged), e.g.:\n%s", s.name, s.fig.backwards, strings.Join(s.fig.backwardsExamples, "\n"))
		}
		if s.resumeWithin == 0 {
			continue
		}
		if s.resumed < 0 || s.resumed > s.resumeWithin {
			t.Errorf("%s: sharing not back within %v of the event (resumed after %v; fetches %v)", s.name, s.resumeWithin, s.resumed, fetchGaps(r.rig.filmsBetween(s.eventStart, s.end)))
		}
		if bound := int(2*s.settledWindows) + 2; s.settledFetches > bound {
			t.Errorf("%s: %d fetches in %.1f TTL windows once settled, want at most %d (the design: one per TTL and one early refresh): the fleet is not sharing; fetches %v",
				s.name, s.settledFetches, s.settledWindows, bound, fetchGaps(r.rig.filmsBetween(from, s.end)))
		}
		// Sharing back means the fleet switching together again too:
		// Redis is healthy, and the promise of monotonic reads holds.
		if s.backwardsSettled > 0 {
			t.Errorf("%s: %d pages older than one the fleet had served over %v earlier, sent %v to %v after the event, once sharing was due back; want none (the replicas do not switch together), the first:\n%s",
				s.name, s.backwardsSettled, monotonicSlack, s.backwardsSpan[0].Round(time.Millisecond), s.backwardsSpan[1].Round(time.Millisecond), strings.Join(s.backwardsSeen, "\n"))
		}
		if s.perWindow() > r.lone.perWindow {
			t.Errorf("%s: %.2f fetches per window once settled, more than the %.2f of the lone control", s.name, s.perWindow(), r.lone.perWindow)
		}
	}
	return r.steps
}

// resumedAfter is when, after the event at start, sharing resumed: the
// last of the first run of fetches sharing would have saved (dups), once
// two TTLs passed with none (0 if there were none, or none within
// resumeWithin of the event: it never stopped; -1 if the phase ended
// first). A later one, say a call that timed out on a loaded machine and
// fetched alone, is a relapse, counted apart: the fetches per window
// judge those.
func resumedAfter(start, end time.Time, resumeWithin time.Duration, dups []time.Time) (resumed time.Duration, relapses int) {
	if len(dups) == 0 || dups[0].Sub(start) > resumeWithin {
		return 0, len(dups)
	}
	for i, d := range dups {
		next := end
		if i+1 < len(dups) {
			next = dups[i+1]
		}
		if next.Sub(d) >= 2*deployTTL {
			return d.Sub(start), len(dups) - i - 1
		}
	}
	return -1, 0
}

// fetchGaps shows the times between fetches, for failure messages.
func fetchGaps(films []arrival) []time.Duration {
	times := make([]time.Time, len(films))
	for i, a := range films {
		times[i] = a.at
	}
	return gaps(times)
}

// tierLog is one of the shared tier's log lines (msg "shared tier ...").
type tierLog struct {
	replica string
	at      time.Time
	level   string
	msg     string
	cause   string
	line    string
}

// tierLogs reads every replica's JSON log for the shared tier's lines.
func (rig *fleetRig) tierLogs() []tierLog {
	rig.mu.Lock()
	all := slices.Clone(rig.all)
	rig.mu.Unlock()
	var out []tierLog
	for _, r := range all {
		for line := range strings.Lines(r.p.out.String()) {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) != nil {
				continue
			}
			msg, _ := rec["msg"].(string)
			if !strings.HasPrefix(msg, "shared tier") {
				continue
			}
			l := tierLog{replica: r.name, msg: msg, line: strings.TrimSpace(line)}
			l.level, _ = rec["level"].(string)
			l.cause, _ = rec["cause"].(string)
			if ts, ok := rec["time"].(string); ok {
				l.at, _ = time.Parse(time.RFC3339Nano, ts)
			}
			out = append(out, l)
		}
	}
	return out
}

// warns is the WARN lines among logs.
func warns(logs []tierLog) []tierLog {
	return slices.DeleteFunc(slices.Clone(logs), func(l tierLog) bool { return l.level != "WARN" })
}

// requireTierWarn wants a WARN of the shared tier with cause=cause whose
// line names each of words (case-insensitive), on every replica: each
// replica meets the refusal, so each must say so. It also wants no more
// than maxPerReplica such WARN lines from any replica: one when the
// condition starts or its cause changes, not one per fallback.
func requireTierWarn(t *testing.T, logs []tierLog, cause string, maxPerReplica int, words ...string) {
	t.Helper()
	perReplica := map[string]int{}
	named := map[string]bool{}
	for _, l := range warns(logs) {
		perReplica[l.replica]++
		if l.cause != cause {
			continue
		}
		ok := true
		for _, w := range words {
			ok = ok && strings.Contains(strings.ToLower(l.line), strings.ToLower(w))
		}
		named[l.replica] = named[l.replica] || ok
	}
	for i := range deployReplicas {
		name := fmt.Sprintf("r%d", i+1)
		if !named[name] {
			t.Errorf("%s logged no WARN of the shared tier with cause=%s naming %q; its shared tier lines:\n%s", name, cause, words, showLogs(logs, name))
		}
		if perReplica[name] > maxPerReplica {
			t.Errorf("%s logged %d WARN lines of the shared tier, want at most %d (one when the condition starts or changes):\n%s", name, perReplica[name], maxPerReplica, showLogs(logs, name))
		}
	}
}

// requireNoTierWarn wants no WARN of the shared tier in [from, to).
func requireNoTierWarn(t *testing.T, logs []tierLog, what string, from, to time.Time) {
	t.Helper()
	var bad []string
	for _, l := range warns(logs) {
		if !l.at.Before(from) && l.at.Before(to) {
			bad = append(bad, l.replica+": "+l.line)
		}
	}
	if len(bad) > 0 {
		t.Errorf("%s: %d WARN lines of the shared tier while Redis was healthy, want none:\n%s", what, len(bad), strings.Join(bad[:min(len(bad), 10)], "\n"))
	}
}

// showLogs is a replica's shared tier lines ("" for all), for messages.
func showLogs(logs []tierLog, replica string) string {
	var lines []string
	for _, l := range logs {
		if replica == "" || l.replica == replica {
			lines = append(lines, l.replica+": "+l.line)
		}
	}
	if len(lines) == 0 {
		return "(none)"
	}
	return strings.Join(lines[:min(len(lines), 12)], "\n")
}

// logTierLines puts the shared tier's log lines in the test log, so the
// report shows what an operator would read.
func logTierLines(t *testing.T, logs []tierLog) {
	t.Helper()
	t.Logf("shared tier log lines (%d):\n%s", len(logs), showLogs(logs, ""))
}

// caseCluster: three masters joined by redis-cli --cluster create; the
// replicas as a cluster client seeded with all three. First the fleet must
// share at all (scripts whose keys span slots fail with CROSSSLOT or MOVED,
// and every replica would run alone for good); then the slot
// holding the fleet's keys moves to another master while the load runs
// (ASK and TRYAGAIN while its keys are on both nodes, MOVED after): no
// request fails, and sharing is back within a few seconds, on the new
// owner.
func caseCluster(t *testing.T, lone loneFigures) {
	cluster := startRedisCluster(t, 3)
	t.Run("slot moved", func(t *testing.T) {
		rig := newFleetRigOn(t, cluster.url(), "-ttl", deployTTL.String(), "-redis-mode", "cluster")
		run := startDeployRun(t, rig, lone)
		run.step("steady", deployTTL, nil, 4*deployTTL)

		var (
			slot     int64
			src, dst *redisNode
			moved    int
			keys     []string
		)
		run.step("slot-moved", 4*time.Second, func() {
			keys = cluster.findKeys(t, "movies:*")
			if len(keys) == 0 {
				t.Fatal("no fleet keys in the cluster after four TTLs of sharing")
			}
			var err error
			slot, err = cluster.nodes[0].client(t).ClusterKeySlot(context.Background(), keys[0]).Result()
			if err != nil {
				t.Fatal(err)
			}
			src = cluster.owner(t, slot)
			dst = cluster.nodes[0]
			if dst == src {
				dst = cluster.nodes[1]
			}
			moved = cluster.moveSlot(t, slot, src, dst, 150*time.Millisecond)
		}, 5*deployTTL)
		steps := run.finish()
		logs := rig.tierLogs()
		logTierLines(t, logs)
		requireNoTierWarn(t, logs, "steady", steps[0].eventStart, steps[0].end)
		logSummary(t, fmt.Sprintf("deploy case=cluster keys=%v slot=%d from=%s to=%s keys_migrated=%d", keys, slot, src.name, dst.name, moved))

		// The fleet followed the slot: its keys are on the new owner and none
		// are left on the old.
		if now := cluster.owner(t, slot); now != dst {
			t.Errorf("slot %d is served by %s after the move, want %s", slot, now.name, dst.name)
		}
		left, err := src.client(t).ClusterCountKeysInSlot(context.Background(), int(slot)).Result()
		if err != nil {
			t.Fatal(err)
		}
		onDst, err := dst.client(t).ClusterCountKeysInSlot(context.Background(), int(slot)).Result()
		if err != nil {
			t.Fatal(err)
		}
		if left != 0 || onDst == 0 {
			t.Errorf("after the move, slot %d has %d keys on the old owner %s and %d on the new %s; want all on the new", slot, left, src.name, onDst, dst.name)
		}
	})
	t.Run("as the ACL user", func(t *testing.T) { clusterAsACLUser(t, cluster, lone) })
}

// clusterACLExtra is what a Cluster client needs besides the docs' rule:
// the slot map (CLUSTER SLOTS), and COMMAND, which go-redis's cluster
// client asks once for the commands' key positions and, refused, asks
// again before every command (its cache keeps no error), each refusal an
// ACL LOG entry: this case found that one.
const clusterACLExtra = "+cluster|slots +command"

// clusterAsACLUser runs the fleet on the cluster as the ACL user the docs
// give, with clusterACLExtra, set on every node (ACLs are per node): the
// rule a managed service in cluster mode would be given. No node may
// refuse the user anything (ACL LOG).
func clusterAsACLUser(t *testing.T, cluster *redisCluster, lone loneFigures) {
	rule, from := docsACLRule(t)
	if rule == "" {
		t.Fatalf("%s give no ACL rule", from)
	}
	rule += " " + clusterACLExtra
	ctx := context.Background()
	for _, n := range cluster.nodes {
		args := []any{"ACL", "SETUSER", "movies", "reset"}
		for _, f := range strings.Fields(rule) {
			args = append(args, f)
		}
		if err := n.client(t).Do(ctx, args...).Err(); err != nil {
			t.Fatalf("%s ACL SETUSER movies %s: %v", n.name, rule, err)
		}
		if err := n.client(t).Do(ctx, "ACL", "LOG", "RESET").Err(); err != nil {
			t.Fatal(err)
		}
	}
	u := strings.Replace(cluster.url(), "redis://", "redis://movies:secret@", 1)
	rig := newFleetRigOn(t, u, "-ttl", deployTTL.String(), "-redis-mode", "cluster")
	run := startDeployRun(t, rig, lone)
	run.step("steady", deployTTL, nil, 3*deployTTL)
	steps := run.finish()
	logs := rig.tierLogs()
	logTierLines(t, logs)
	requireNoTierWarn(t, logs, "steady", steps[0].eventStart, steps[0].end)
	for _, n := range cluster.nodes {
		if denied := aclDenials(t, n.client(t)); len(denied) > 0 {
			t.Errorf("%s refused the fleet's user %d times under %q:\n%s", n.name, len(denied), rule, strings.Join(denied, "\n"))
		}
	}
}

// caseSentinel: a master, one replica and three sentinels (quorum 2,
// down-after 1s, failover-timeout 3s); the replicas name the sentinels
// and the master's name. Under load: SENTINEL FAILOVER (a client that kept
// its connections to the demoted master would get READONLY on every write,
// and every replica would fetch alone until someone failed back); then, once
// the old master is a replica again, SIGKILL of the new master. Each time
// the fleet must follow the sentinels to the new master within seconds.
func caseSentinel(t *testing.T, lone loneFigures) {
	const (
		downAfter       = time.Second
		failoverTimeout = 3 * time.Second
	)
	set := startSentinelSet(t, downAfter, failoverTimeout)
	rig := newFleetRigOn(t, set.url(), "-ttl", deployTTL.String(), "-redis-mode", "sentinel")
	run := startDeployRun(t, rig, lone)
	run.step("steady", deployTTL, nil, 3*deployTTL)

	first := set.server(t, set.masterAddr(t))
	var second *redisNode
	var failoverTook, demotedAfter time.Duration
	run.step("failover", 4*time.Second, func() {
		at := time.Now()
		// NOGOODSLAVE until the sentinel has a fresh enough view of the
		// replica: ask again, as an operator would.
		waitFor(t, 10*time.Second, "SENTINEL FAILOVER accepted", func() error {
			err := set.sentinels[0].client(t).Do(context.Background(), "SENTINEL", "FAILOVER", sentinelMaster).Err()
			if err != nil && !strings.Contains(err.Error(), "NOGOODSLAVE") {
				return fmt.Errorf("%w: %v", errStop, err)
			}
			return err
		})
		waitFor(t, 10*time.Second, "the sentinels naming a new master", func() error {
			if a := set.masterAddr(t); a != first.addr {
				second = set.server(t, a)
				return nil
			}
			return errors.New("still " + first.addr)
		})
		failoverTook = time.Since(at)
	}, 0)
	// Where the replicas hear the fleet's news once the failover has had
	// its seconds: a subscription left on the old master, still a master
	// until the sentinels demote it, hears no commit made on the new one.
	time.Sleep(4 * time.Second)
	subsOld, subsNew := fleetSubscribers(t, first), fleetSubscribers(t, second)
	// The sentinels demote the old master some seconds later (they wait
	// for news of a newer configuration first); only then is there a
	// replica for the next failover to promote. The load runs on, which
	// is the phase's settling time.
	set.waitReplicaOf(t, first, second, 30*time.Second)
	demotedAfter = time.Since(run.steps[len(run.steps)-1].eventStart)
	if left := 4*time.Second + 3*deployTTL - demotedAfter; left > 0 {
		time.Sleep(left)
	}

	var third *redisNode
	var promotedAfter time.Duration
	run.step("master-killed", 7*time.Second, func() {
		at := time.Now()
		second.kill(t)
		waitFor(t, 15*time.Second, "the sentinels promoting "+first.name, func() error {
			if a := set.masterAddr(t); a != second.addr {
				third = set.server(t, a)
				return nil
			}
			return errors.New("still " + second.addr)
		})
		promotedAfter = time.Since(at)
	}, 7*time.Second+3*deployTTL)
	steps := run.finish()
	logs := rig.tierLogs()
	logTierLines(t, logs)
	requireNoTierWarn(t, logs, "steady", steps[0].eventStart, steps[0].end)
	logSummary(t, fmt.Sprintf("deploy case=sentinel failover=%s->%s in %v (old master a replica %v after) fleet_subscribers_4s_after: old_master=%d new_master=%d kill=%s promoted=%s %v after the kill",
		first.name, second.name, failoverTook.Round(time.Millisecond), demotedAfter.Round(time.Millisecond), subsOld, subsNew,
		second.name, third.name, promotedAfter.Round(time.Millisecond)))
}

// fleetSubscribers counts the pub/sub connections on n that are not a
// sentinel's (sentinels subscribe to every instance they watch, and name
// their connections sentinel-<id>-pubsub): the replicas' news channels.
func fleetSubscribers(t *testing.T, n *redisNode) int {
	t.Helper()
	list, err := n.client(t).ClientList(context.Background()).Result()
	if err != nil {
		t.Errorf("%s CLIENT LIST: %v", n.name, err)
		return -1
	}
	count := 0
	for line := range strings.Lines(list) {
		if strings.Contains(line, "name=sentinel-") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "sub="); ok && v != "0" {
				count++
			}
		}
	}
	return count
}

// caseTLS: a redis-server speaking only TLS, with the test's own CA and
// mutual TLS (--tls-auth-clients yes); the replicas given the CA, a client
// certificate and its key. Then the same
// replicas without -redis-ca: the x509 failure must be one WARN naming it,
// and every request is still served, as by lone replicas.
func caseTLS(t *testing.T, lone loneFigures) {
	pki := makeTestPKI(t)
	srv := startTLSRedis(t, pki)
	url := "rediss://" + srv.addr
	t.Run("with the CA", func(t *testing.T) {
		rig := newFleetRigOn(t, url, "-ttl", deployTTL.String(),
			"-redis-ca", pki.caCert, "-redis-cert", pki.clientCert, "-redis-key", pki.clientKey)
		run := startDeployRun(t, rig, lone)
		run.step("steady", deployTTL, nil, 4*deployTTL)
		steps := run.finish()
		logs := rig.tierLogs()
		logTierLines(t, logs)
		requireNoTierWarn(t, logs, "steady", steps[0].eventStart, steps[0].end)
	})
	t.Run("without the CA", func(t *testing.T) {
		rig := newFleetRigOn(t, url, "-ttl", deployTTL.String(), "-redis-cert", pki.clientCert, "-redis-key", pki.clientKey)
		run := startDeployRun(t, rig, lone)
		run.step("untrusted", 0, nil, 3*deployTTL)
		steps := run.finish()
		logs := rig.tierLogs()
		logTierLines(t, logs)
		requireTierWarn(t, logs, "tls", 3, "x509")
		requireNotSlower(t, steps[0], lone)
	})
}

// requireNotSlower: a refusing Redis costs no waiting. Every phase
// already wants no more requests of a lease or longer than the control
// had (finish); this wants the bulk no slower either: a p99 within the
// machine's noise of the control's, far below the 100ms a Redis call may
// take.
func requireNotSlower(t *testing.T, s *deployStep, lone loneFigures) {
	t.Helper()
	if s.fig.p99 > lone.p99+50*time.Millisecond {
		t.Errorf("%s: p99 %v, lone replicas' %v: slower than lone", s.name, s.fig.p99, lone.p99)
	}
}

// caseACL: the fleet as the minimal ACL user (deployACLRule). ACL LOG
// says whether any command the fleet sent
// was refused. Then the same rule without +del: a configuration error,
// which must be one WARN naming NOPERM and the command, and no slower than
// lone replicas.
func caseACL(t *testing.T, lone loneFigures) {
	srv := startPlainRedis(t, "redis-acl", redis.Options{})
	admin := srv.client(t)
	ctx := context.Background()
	setUser := func(rule string) {
		t.Helper()
		args := []any{"ACL", "SETUSER", "movies", "reset"}
		for _, f := range strings.Fields(rule) {
			args = append(args, f)
		}
		if err := admin.Do(ctx, args...).Err(); err != nil {
			t.Fatalf("ACL SETUSER movies %s: %v", rule, err)
		}
		if err := admin.Do(ctx, "ACL", "LOG", "RESET").Err(); err != nil {
			t.Fatal(err)
		}
		// Each run starts on an empty database: the rule, not the keys a
		// run before left, decides what the fleet can do.
		if err := admin.FlushAll(ctx).Err(); err != nil {
			t.Fatal(err)
		}
	}
	url := "redis://movies:secret@" + srv.addr
	rule, from := docsACLRule(t)
	if rule == "" {
		t.Errorf("%s give no `ACL SETUSER movies ...` rule for the operator; running the brief's: %s", from, deployACLRule)
		rule = deployACLRule
	} else {
		t.Logf("the rule of %s: %s", from, rule)
	}
	t.Run("minimal rule", func(t *testing.T) {
		setUser(rule)
		rig := newFleetRigOn(t, url, "-ttl", deployTTL.String())
		run := startDeployRun(t, rig, lone)
		run.step("steady", deployTTL, nil, 4*deployTTL)
		// Who the fleet's connections are: the ACL user, not default.
		clients, err := admin.ClientList(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		steps := run.finish()
		logs := rig.tierLogs()
		logTierLines(t, logs)
		requireNoTierWarn(t, logs, "steady", steps[0].eventStart, steps[0].end)
		if n := strings.Count(clients, "user=movies"); n < deployReplicas {
			t.Errorf("%d connections as user movies, want at least one per replica:\n%s", n, clients)
		}
		if denied := aclDenials(t, admin); len(denied) > 0 {
			t.Errorf("the minimal rule refused the fleet %d times: it needs more than %q:\n%s", len(denied), rule, strings.Join(denied, "\n"))
		}
	})
	t.Run("without +del", func(t *testing.T) {
		if !strings.Contains(rule, " +del") {
			t.Fatalf("the rule grants no +del to take away: %s", rule)
		}
		setUser(strings.Replace(rule, " +del", "", 1))
		rig := newFleetRigOn(t, url, "-ttl", deployTTL.String())
		run := startDeployRun(t, rig, lone)
		run.step("no-del", 0, nil, 3*deployTTL)
		steps := run.finish()
		logs := rig.tierLogs()
		logTierLines(t, logs)
		requireTierWarn(t, logs, "noperm", 3, "noperm", "del")
		requireNotSlower(t, steps[0], lone)
		t.Logf("ACL LOG: %v", aclDenials(t, admin))
	})
}

// aclDenials is ACL LOG, one line per entry: the command or key refused,
// and to whom.
func aclDenials(t *testing.T, c *redis.Client) []string {
	t.Helper()
	entries, err := c.Do(context.Background(), "ACL", "LOG").Slice()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		f := fieldMap(e)
		out = append(out, fmt.Sprintf("%s x%s: reason=%s object=%s context=%s", f["username"], f["count"], f["reason"], f["object"], f["context"]))
	}
	return out
}

// caseFullRedis: Redis at its maxmemory under noeviction (Redis's
// default), filled by other keys: every request served, one WARN naming OOM,
// fallbacks counted with cause="oom", and a real Prometheus with the
// shipped rules shows MoviesFleetSharingNothing pending or firing; once
// the filler keys are deleted, sharing resumes within seconds, with an
// INFO "shared tier back".
func caseFullRedis(t *testing.T, lone loneFigures) {
	const alert = "MoviesFleetSharingNothing"
	if _, ok := alertRules(t)[alert]; !ok {
		t.Fatalf("deploy/prometheus/rules.yml has no alert %s", alert)
	}
	promBin := mustLookPath(t, "prometheus")
	srv := startPlainRedis(t, "redis-full", redis.Options{}, "--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
	rc := srv.client(t)
	ctx := context.Background()
	filler := strings.Repeat("x", 10<<10)
	n := 0
	for ; ; n++ {
		err := rc.Set(ctx, fmt.Sprintf("filler:%d", n), filler, 0).Err()
		if err != nil {
			if !strings.HasPrefix(err.Error(), "OOM") {
				t.Fatalf("filling Redis: %v", err)
			}
			break
		}
		if n > 1000 {
			t.Fatal("Redis took 10 MB under maxmemory 2mb")
		}
	}
	t.Logf("Redis full after %d keys of 10 KiB", n)

	rig := newFleetRigOn(t, "redis://"+srv.addr, "-ttl", deployTTL.String())
	run := startDeployRun(t, rig, lone)
	var targets []string
	for _, r := range rig.all {
		targets = append(targets, strings.TrimPrefix(r.url, "http://"))
	}
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, testPrometheusConfig(t, targets), 0o644); err != nil {
		t.Fatal(err)
	}
	promAddr := freeAddr(t)
	startProcess(t, "prometheus", promBin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr, "--log.level=warn")
	prom := &promAPI{base: "http://" + promAddr}

	var (
		oomBefore, oomAfter float64
		alertState          string
		alertAfter          time.Duration
	)
	run.step("full", 0, func() {
		at := time.Now()
		time.Sleep(deployTTL)
		oomBefore = sumCounter(t, rig, "movies_fleet_fallbacks_total", "cause", "oom")
		waitFor(t, 40*time.Second, alert+" pending or firing", func() error {
			s, err := prom.alertState(alert)
			if err != nil {
				return err
			}
			if s != "pending" && s != "firing" {
				return fmt.Errorf("%s is %q", alert, s)
			}
			alertState, alertAfter = s, time.Since(at)
			return nil
		})
		oomAfter = sumCounter(t, rig, "movies_fleet_fallbacks_total", "cause", "oom")
	}, deployTTL)
	var freed int
	run.step("freed", 4*time.Second, func() {
		keys, err := scanAll(rc, "filler:*")
		if err != nil {
			t.Fatal(err)
		}
		for c := range slices.Chunk(keys, 100) {
			if err := rc.Unlink(ctx, c...).Err(); err != nil {
				t.Fatal(err)
			}
		}
		freed = len(keys)
	}, 4*time.Second+3*deployTTL)
	steps := run.finish()
	logs := rig.tierLogs()
	logTierLines(t, logs)
	logSummary(t, fmt.Sprintf("deploy case=full-redis filler_keys=%d alert=%s after %v fallbacks{cause=oom} %v -> %v freed=%d",
		n, alertState, alertAfter.Round(time.Millisecond), oomBefore, oomAfter, freed))
	requireTierWarn(t, logs, "oom", 3, "oom")
	if oomAfter <= oomBefore || oomBefore == 0 {
		t.Errorf("movies_fleet_fallbacks_total{cause=\"oom\"} went from %v to %v while Redis was full, want it counting", oomBefore, oomAfter)
	}
	back := 0
	for _, l := range logs {
		if l.level == "INFO" && l.msg == "shared tier back" && !l.at.Before(steps[1].eventStart) {
			back++
		}
	}
	if back == 0 {
		t.Errorf(`no replica logged INFO "shared tier back" after memory was freed`)
	}
	requireNotSlower(t, steps[0], lone)
}

// sumCounter adds name{label=value} over the live replicas; a replica that
// has no such series counts 0.
func sumCounter(t *testing.T, rig *fleetRig, name, label, value string) float64 {
	t.Helper()
	sum := 0.0
	for _, r := range rig.all {
		if v, err := scrapeCounter(r.url, name, label, value); err == nil {
			sum += v
		}
	}
	return sum
}

// alertState is an alert's state in Prometheus: "firing", "pending" or "".
func (p *promAPI) alertState(name string) (string, error) {
	var data struct {
		Alerts []struct {
			Labels map[string]string `json:"labels"`
			State  string            `json:"state"`
		} `json:"alerts"`
	}
	if err := p.get("/api/v1/alerts", &data); err != nil {
		return "", err
	}
	state := ""
	for _, a := range data.Alerts {
		if a.Labels["alertname"] != name {
			continue
		}
		if a.State == "firing" || state == "" {
			state = a.State
		}
	}
	return state, nil
}

// caseUnixSocket: a redis-server on a unix socket only, named by a
// unix:// URL, which go-redis supports.
func caseUnixSocket(t *testing.T, lone loneFigures) {
	_, sock := startUnixRedis(t)
	rig := newFleetRigOn(t, "unix://"+sock, "-ttl", deployTTL.String())
	run := startDeployRun(t, rig, lone)
	run.step("steady", deployTTL, nil, 3*deployTTL)
	steps := run.finish()
	logs := rig.tierLogs()
	requireNoTierWarn(t, logs, "steady", steps[0].eventStart, steps[0].end)
}

// TestParseACLRule: the rule is read from the docs as an operator would
// copy it.
func TestParseACLRule(t *testing.T) {
	for md, want := range map[string]string{
		"text\n```\nACL SETUSER movies on >PASSWORD ~movies:* &movies:* -@all +get\n```\n": "on >secret ~movies:* &movies:* -@all +get",
		"| ACL | `redis-cli ACL SETUSER movies on >s3cret ~movies:* +ping` |":              "on >secret ~movies:* +ping",
		"`acl setuser movies on nopass +ping`":                                             "on nopass +ping >secret",
		"no rule here":                                                                     "",
	} {
		if got := parseACLRule(md); got != want {
			t.Errorf("parseACLRule(%q) = %q, want %q", md, got, want)
		}
	}
}

// TestResumedAfter pins the reading of "sharing resumed" the cases judge
// by, on made-up fetch times.
func TestResumedAfter(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms ...int) []time.Time {
		var out []time.Time
		for _, m := range ms {
			out = append(out, t0.Add(time.Duration(m)*time.Millisecond))
		}
		return out
	}
	end := t0.Add(20 * time.Second)
	for _, c := range []struct {
		name     string
		dups     []time.Time
		resumed  time.Duration
		relapses int
	}{
		{"never stopped", nil, 0, 0},
		{"a run, then quiet", at(100, 900, 1500), 1500 * time.Millisecond, 0},
		{"a run, quiet, a relapse", at(100, 900, 9000), 900 * time.Millisecond, 1},
		{"the first saved fetch after resumeWithin is a relapse", at(8000), 0, 1},
		{"alone to the end", at(100, 1000, 3000, 4500, 6000, 7500, 9000, 10500, 12000, 13500, 15000, 16500, 18000, 19000), -1, 0},
	} {
		resumed, relapses := resumedAfter(t0, end, 4*time.Second, c.dups)
		if resumed != c.resumed || relapses != c.relapses {
			t.Errorf("%s: resumed %v with %d relapses, want %v and %d", c.name, resumed, relapses, c.resumed, c.relapses)
		}
	}
}
