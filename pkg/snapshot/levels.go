//go:build !race

package snapshot

import "github.com/klauspost/compress/zstd"

// Compression levels: near the best each coding has, since it runs once
// per snapshot (see levels_race.go for race-detector builds). Brotli 10
// rather than 11: on this page it was both smaller (3,304 against 3,315
// bytes) and faster (about 9 ms against 23 ms per snapshot).
const (
	brotliQuality = 10
	zstdLevel     = zstd.SpeedBestCompression
)
