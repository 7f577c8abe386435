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
	tier := newTier(t, r.URL, opt)
	free := newTier(t, r.URL, opt)
	for _, tr := range []*Tier[string]{tier, free} {
		if _, _, err := tr.Read(bg(), 0); err != nil { // connected, warm
			t.Fatal(err)
		}
	}
	r.Stop()
	defer r.Cont()
	starvedRead := func() error {
		// Stopped 200 ms into the call (a shell starts well within its
		// second, even on a loaded machine), resumed half a second after
		// its deadline.
		stopper := exec.Command("sh", "-c", fmt.Sprintf("sleep 0.2; kill -STOP %d; sleep 1.5; kill -CONT %d", os.Getpid(), os.Getpid()))
		if err := stopper.Start(); err != nil {
			t.Fatal(err)
		}
		defer stopper.Wait()
		_, _, err := tier.Read(bg(), 0)
		return err
	}
	for i := range maxStarvedRun {
		if err := starvedRead(); !errors.Is(err, errStarved) {
			t.Errorf("starved call %d: %v, want it marked starved", i, err)
		}
	}
	if n := tier.Stats().BreakerOpened; n != 0 || tier.BreakerOpen() {
		t.Errorf("breaker opened %d times by %d calls this process was too late for, want 0", n, maxStarvedRun)
	}
	for i := range tier.breaker.threshold {
		if err := starvedRead(); errors.Is(err, errStarved) {
			t.Errorf("starved call %d past maxStarvedRun in a row still excused: %v", maxStarvedRun+i, err)
		}
	}
	if n := tier.Stats().BreakerOpened; n != 1 {
		t.Errorf("breaker opened %d times after %d starved calls in a row on a hung Redis, want 1", n, maxStarvedRun+tier.breaker.threshold)
	}

	for range free.breaker.threshold {
		if _, _, err := free.Read(bg(), 0); errors.Is(err, errStarved) {
			t.Errorf("a call on a free CPU marked starved: %v", err)
		}
	}
	if n := free.Stats().BreakerOpened; n != 1 {
		t.Errorf("breaker opened %d times on a hung Redis with the process running, want 1", n)
	}
}
