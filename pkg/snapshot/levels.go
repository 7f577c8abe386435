//go:build !race

package snapshot

import "github.com/klauspost/compress/zstd"

// Compression levels: near the best each coding has, since it runs once
// per snapshot (see levels_race.go for race-detector builds). Brotli 10
// rather than 11: on this page it was both smaller (3,304 against 3,315
// bytes) and faster (about 9 ms against 23 ms per snapshot). zstd at its
// default level: its best level made the page 35 bytes smaller (3,899
// against 3,934) and more than doubled the process's peak RSS (58 MiB against
// 27 MiB under the same requests), for the encoder's tables.
const (
	brotliQuality = 10
	zstdLevel     = zstd.SpeedDefault
)
