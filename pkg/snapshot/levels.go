//go:build !race

package snapshot

import (
	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
)

// Compression levels: the best each coding has, since it runs once per
// snapshot (see levels_race.go for race-detector builds).
const (
	brotliQuality = brotli.BestCompression
	zstdLevel     = zstd.SpeedBestCompression
)
