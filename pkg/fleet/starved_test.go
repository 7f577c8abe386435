package fleet

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"
)

// TestTier_AStarvedProcessIsNoVerdictOnRedis: a call whose own timer fires
// late, because the kernel did not run this process (stopped here with
// SIGSTOP for 1.5 s while the call waits on a hung Redis), is no verdict
// on Redis: the breaker stays closed and the error says starved, for
// maxStarvedRun calls in a row; after that the calls count again, so a
// hung Redis on a host that stays saturated still opens the breaker. The
// same calls with the process running are judged at once. Pins
// starvedAfter and maxStarvedRun. Not parallel: it stops the whole test
// process.
func TestTier_AStarvedProcessIsNoVerdictOnRedis(t *testing.T) {
	r := startRedis(t)
	opt := func(o *Options[string]) { o.CallTimeout = time.Second }
	// A machine too busy to start the stopping shell within the call
	// leaves a call unstopped, and that tier's count of failures in a row
	// spoilt: the run starts again on a fresh one (warmed while Redis ran).
	const attempts = 3
	var tiers []*Tier[string]
	for range attempts + 1 {
		tr := newTier(t, r.URL, opt)
		if _, _, err := tr.Read(bg(), 0); err != nil {
			t.Fatal(err)
		}
		tiers = append(tiers, tr)
	}
	r.Stop()
	defer r.Cont()
	// stoppedRead calls Redis (renew: a call that is not asked again when
	// starved, as reads are, see callRead) with the process stopped 200
	// ms into the call and resumed half a second after its deadline;
	// stopped says whether the stop fell inside the call (it then lasted
	// past the deadline).
	stoppedRead := func(tier *Tier[string]) (err error, stopped bool) {
		stopper := exec.Command("sh", "-c", fmt.Sprintf("sleep 0.2; kill -STOP %d; sleep 1.5; kill -CONT %d", os.Getpid(), os.Getpid()))
		if err := stopper.Start(); err != nil {
			t.Fatal(err)
		}
		defer stopper.Wait()
		start := time.Now()
		_, err = tier.renew(bg(), "1 x")
		return err, time.Since(start) > time.Second+300*time.Millisecond
	}
	run := func(tier *Tier[string]) bool {
		for i := range maxStarvedRun {
			err, stopped := stoppedRead(tier)
			if !stopped {
				return false
			}
			if !errors.Is(err, errStarved) {
				t.Errorf("starved call %d: %v, want it marked starved", i, err)
			}
		}
		if n := tier.Stats().BreakerOpened; n != 0 || tier.BreakerOpen() {
			t.Errorf("breaker opened %d times by %d calls this process was too late for, want 0", n, maxStarvedRun)
		}
		for i := range tier.breaker.threshold {
			err, stopped := stoppedRead(tier)
			if !stopped {
				return false
			}
			if errors.Is(err, errStarved) {
				t.Errorf("starved call %d past maxStarvedRun in a row still excused: %v", maxStarvedRun+i, err)
			}
		}
		if n := tier.Stats().BreakerOpened; n != 1 {
			t.Errorf("breaker opened %d times after %d starved calls in a row on a hung Redis, want 1", n, maxStarvedRun+tier.breaker.threshold)
		}
		return true
	}
	for i := range attempts {
		if run(tiers[i]) {
			break
		}
		if i == attempts-1 {
			t.Fatalf("in %d attempts the stop never fell inside every call: the machine is too busy for this test", attempts)
		}
		t.Logf("attempt %d: a stop missed its call (a busy machine); again on a fresh tier", i)
	}

	free := tiers[attempts]
	for range free.breaker.threshold {
		if _, err := free.renew(bg(), "1 x"); errors.Is(err, errStarved) {
			t.Errorf("a call on a free CPU marked starved: %v", err)
		}
	}
	if n := free.Stats().BreakerOpened; n != 1 {
		t.Errorf("breaker opened %d times on a hung Redis with the process running, want 1", n)
	}
}
