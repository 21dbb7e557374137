package main

import (
	"os"
	"runtime/debug"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/sirupsen/logrus"

	"lsmux/internal/cli"
)

// memoryRatio is the share of the container's memory limit given to Go as
// its soft limit (GOMEMLIMIT): the rest is for what Go does not count
// (stacks' slack, the binary, kernel buffers charged to the cgroup).
const memoryRatio = 0.9

// gcPercent is lsmux's GOGC unless the environment sets one: most of its
// memory is the ring, long-lived, and with Go's default of 100 the heap
// would grow to twice it before the collector runs. At 25 it stays within
// a quarter over the live data; the ring changes slowly, so collections
// stay cheap (a busy stream allocates a few MB a second).
const gcPercent = 25

// applyGCPercent sets gcPercent unless GOGC is set, and says so.
func applyGCPercent(log logrus.FieldLogger) {
	if v := os.Getenv("GOGC"); v != "" {
		log.WithField("GOGC", v).Info("memory: the collector's pace comes from GOGC")
		return
	}
	debug.SetGCPercent(gcPercent)
}

// applyMemoryLimit sets Go's soft memory limit from the container's cgroup
// memory limit, when there is one and GOMEMLIMIT is not set already: the
// garbage collector then works harder before the container is OOM-killed,
// instead of letting the heap grow to twice the live data. It returns the
// limit set (0: none).
func applyMemoryLimit(log logrus.FieldLogger, provider memlimit.Provider) int64 {
	if v := os.Getenv("GOMEMLIMIT"); v != "" {
		log.WithField("GOMEMLIMIT", v).Info("memory: Go's soft limit comes from GOMEMLIMIT")
		return debug.SetMemoryLimit(-1)
	}
	limit, err := memlimit.SetGoMemLimitWithOpts(memlimit.WithRatio(memoryRatio), memlimit.WithProvider(provider))
	if err != nil {
		log.Warnf("memory: could not read the container's memory limit (%v); Go's heap is not limited", err)
		return 0
	}
	if limit > 0 {
		log.WithField("GOMEMLIMIT", cli.FormatBytes(limit)).Infof("memory: Go's soft limit set to %.0f%% of the container's memory limit", memoryRatio*100)
	}
	return limit
}
