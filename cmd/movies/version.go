package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/movies-dev/movies/pkg/web"
)

// readBuild names this binary from the build information the go command
// embeds (debug.ReadBuildInfo): the main module's version, which go build
// derives from the VCS (v0.0.0-<date>-<commit>, +dirty for a modified
// tree, or the tag), the VCS revision, and the Go toolchain. A binary built
// without VCS information (go run, -buildvcs=false, a build context with no
// .git, as the Dockerfile's) says "(devel)" and "unknown", as go version -m
// and Prometheus's exporters do.
func readBuild(info *debug.BuildInfo, ok bool) web.Build {
	b := web.Build{Version: "(devel)", Revision: "unknown", GoVersion: runtime.Version()}
	if !ok {
		return b
	}
	if info.Main.Version != "" {
		b.Version = info.Main.Version
	}
	if info.GoVersion != "" {
		b.GoVersion = info.GoVersion
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && s.Value != "" {
			b.Revision = s.Value
		}
	}
	return b
}

// versionLine is what -version prints.
func versionLine(b web.Build) string {
	return fmt.Sprintf("movies %s (revision %s, %s)", b.Version, b.Revision, b.GoVersion)
}
