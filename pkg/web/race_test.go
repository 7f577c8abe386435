//go:build race

package web

// raceEnabled says the race detector is on: the simulator explores fewer
// seeds under it (test.sh runs the full count without it).
const raceEnabled = true
