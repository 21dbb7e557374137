// Package persec counts events per second over a recent window, for the
// rates status pages show (hits per second in an upstream slot, hits in
// and deliveries out of a hub). Writers only add; readers sum. It takes no
// lock: a writer on the hot path pays two atomic operations.
package persec

import (
	"sync/atomic"
	"time"
)

// Counter holds one count per second for the last Len seconds. Only one
// goroutine should add for a given second at a time as it rolls over
// (a count added in the same nanoseconds as the roll-over may be lost);
// the hub's and the upstream's writers are serialised already.
type Counter struct {
	born   time.Time
	secs   []atomic.Int64
	counts []atomic.Uint64
}

// New returns a Counter for the last seconds seconds, starting now: rates
// over a window longer than the Counter has lived average over its life.
func New(seconds int, now time.Time) *Counter {
	return &Counter{born: now, secs: make([]atomic.Int64, seconds+1), counts: make([]atomic.Uint64, seconds+1)}
}

// Add counts n events at t.
func (c *Counter) Add(t time.Time, n uint64) {
	sec := t.Unix()
	i := sec % int64(len(c.secs))
	if c.secs[i].Load() != sec {
		c.counts[i].Store(0)
		c.secs[i].Store(sec)
	}
	c.counts[i].Add(n)
}

// Len is the window in seconds.
func (c *Counter) Len() int { return len(c.secs) - 1 }

// window is the complete seconds [from, to) the counter can speak for:
// those before now's second, within its length, after the second it was
// born in (which is partial).
func (c *Counter) window(now time.Time, seconds int) (from, to int64) {
	to = now.Unix()
	from = to - int64(min(seconds, c.Len()))
	if !c.born.IsZero() {
		from = max(from, c.born.Unix()+1)
	}
	return from, max(from, to)
}

// Rate is the average per second over the last seconds complete seconds
// (or over the Counter's life when it is shorter).
func (c *Counter) Rate(now time.Time, seconds int) float64 {
	from, to := c.window(now, seconds)
	if from >= to {
		return 0
	}
	var sum uint64
	for i := range c.secs {
		if s := c.secs[i].Load(); s >= from && s < to {
			sum += c.counts[i].Load()
		}
	}
	return float64(sum) / float64(to-from)
}

// Series returns the counts of the last seconds complete seconds, oldest
// first, and the second the first of them began. Seconds before the
// Counter was born are left out.
func (c *Counter) Series(now time.Time, seconds int) (start time.Time, counts []uint64) {
	from, to := c.window(now, seconds)
	counts = make([]uint64, to-from)
	for i := range c.secs {
		if s := c.secs[i].Load(); s >= from && s < to {
			counts[s-from] = c.counts[i].Load()
		}
	}
	return time.Unix(from, 0), counts
}
