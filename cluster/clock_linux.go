package cluster

import (
	"time"

	"golang.org/x/sys/unix"
)

// sinceBoot is the leader's fence clock: CLOCK_BOOTTIME keeps counting
// while the machine is suspended (Go's monotonic clock does not) and never
// jumps when the wall clock is set, so a leader that wakes from a suspend
// longer than its lease closes its upstream at the next check, and an NTP
// step cannot close it for nothing.
func sinceBoot() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil || !bootClockWorks {
		return time.Since(processStart) // the monotonic clock, on one scale
	}
	return time.Duration(ts.Nano())
}

var (
	processStart   = time.Now()
	bootClockWorks = func() bool {
		var ts unix.Timespec
		return unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) == nil
	}()
)
