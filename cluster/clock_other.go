//go:build !linux

package cluster

import "time"

// sinceBoot falls back to the monotonic clock where CLOCK_BOOTTIME does
// not exist: it ignores clock steps but not a suspend (the timer already
// covers that case as well as it can).
func sinceBoot() time.Duration { return time.Since(processStart) }

var processStart = time.Now()
