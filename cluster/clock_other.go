//go:build !linux

package cluster

import "time"

// sinceBoot falls back to the wall clock where CLOCK_BOOTTIME does not
// exist: it counts a suspend, but follows clock steps.
func sinceBoot() time.Duration { return time.Duration(time.Now().UnixNano()) }
