//go:build race

package snapshot

import "github.com/klauspost/compress/zstd"

// Compression levels in race-detector builds. The detector slows brotli's
// best level about twelvefold, to some 0.3 s for the page, and the server
// builds a snapshot inside the load's time bound, which its tests set at
// 250 ms: at the best levels those tests would time out, measuring the
// detector rather than the server. Every coding still round-trips; only
// the bytes differ, and bytes are not what a race build is for.
const (
	brotliQuality = 5
	zstdLevel     = zstd.SpeedDefault
)
