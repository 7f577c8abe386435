package main

import (
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

//go:embed report.lua
var reportLua []byte

// wrkRunner runs wrk with report.lua's done() hook, which prints one line
// of exact numbers.
type wrkRunner struct {
	e       *env
	threads int
	script  string
}

func newWrk(e *env, threads int) (*wrkRunner, error) {
	script := filepath.Join(e.work, "report.lua")
	if err := os.WriteFile(script, reportLua, 0o644); err != nil {
		return nil, err
	}
	return &wrkRunner{e: e, threads: threads, script: script}, nil
}

// run is one wrk run against url with conns connections for d, asking for
// coding enc ("identity": no Accept-Encoding). wrk's own output is kept in
// the work directory as wrk-LABEL.txt.
func (w *wrkRunner) run(label string, conns int, d time.Duration, url, enc string) (wrkReport, error) {
	args := []string{fmt.Sprintf("-t%d", w.threads), fmt.Sprintf("-c%d", conns), "-d" + wrkDuration(d), "--latency", "-s", w.script}
	if enc != "" && enc != "identity" {
		args = append(args, "-H", "Accept-Encoding: "+enc)
	}
	args = append(args, url)
	out, err := exec.CommandContext(w.e.ctx, "wrk", args...).CombinedOutput()
	os.WriteFile(filepath.Join(w.e.work, "wrk-"+label+".txt"), out, 0o644)
	if err != nil {
		if w.e.ctx.Err() != nil {
			return wrkReport{}, w.e.ctx.Err()
		}
		return wrkReport{}, fmt.Errorf("wrk %s: %v\n%s", label, err, out)
	}
	return parseWrk(string(out))
}

// wrkDuration writes d as wrk reads it: whole seconds (wrk takes "1.5s"
// as 1s), at least one.
func wrkDuration(d time.Duration) string {
	return fmt.Sprintf("%ds", max(1, int((d+time.Second/2)/time.Second)))
}
