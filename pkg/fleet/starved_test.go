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
// on Redis: the breaker stays closed and the error says starved. The same
// calls with the process running open it. Pins starvedAfter. Not
// parallel: it stops the whole test process.
func TestTier_AStarvedProcessIsNoVerdictOnRedis(t *testing.T) {
	r := startRedis(t)
	tier := newTier(t, r.URL, func(o *Options[string]) { o.CallTimeout = time.Second })
	if _, _, err := tier.Read(bg(), 0); err != nil { // connected, warm
		t.Fatal(err)
	}
	r.Stop()
	defer r.Cont()
	for i := range 3 { // the breaker's threshold
		// Stopped as the call starts (a shell starts well within its
		// second, even on a loaded machine), resumed half a second after
		// its deadline.
		stopper := exec.Command("sh", "-c", fmt.Sprintf("kill -STOP %d; sleep 1.5; kill -CONT %d", os.Getpid(), os.Getpid()))
		if err := stopper.Start(); err != nil {
			t.Fatal(err)
		}
		_, _, err := tier.Read(bg(), 0)
		stopper.Wait()
		if !errors.Is(err, errStarved) {
			t.Errorf("call %d: %v, want it marked starved", i, err)
		}
	}
	if n := tier.Stats().BreakerOpened; n != 0 || tier.BreakerOpen() {
		t.Errorf("breaker opened %d times by calls this process was too late for, want 0", n)
	}
	for range 5 {
		if _, _, err := tier.Read(bg(), 0); errors.Is(err, errStarved) {
			t.Errorf("a call on a free CPU marked starved: %v", err)
		}
	}
	if n := tier.Stats().BreakerOpened; n != 1 {
		t.Errorf("breaker opened %d times on a hung Redis with the process running, want 1", n)
	}
}
