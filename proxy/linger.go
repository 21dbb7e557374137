package proxy

import (
	"sync"
	"time"
)

// lingerClock ticks every WriterLinger/2 while writers linger: one timer
// for all of them, instead of one each (thousands of lingering writers
// would each add and remove a timer at every wake-up).
type lingerClock struct {
	period  time.Duration
	mu      sync.Mutex
	ch      chan struct{} // closed at the next tick
	waiting int           // lingering writers
	timer   *time.Timer
	armed   bool // timer will fire
}

// enter counts a lingering writer until leave; the clock runs while
// there are any.
func (c *lingerClock) enter() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ch == nil {
		c.ch = make(chan struct{})
		c.timer = time.AfterFunc(time.Hour, c.fire)
	}
	c.waiting++
	if !c.armed {
		c.armed = true
		c.timer.Reset(c.period)
	}
}

func (c *lingerClock) leave() {
	c.mu.Lock()
	c.waiting--
	c.mu.Unlock()
}

// tick returns a channel closed at the next tick.
func (c *lingerClock) tick() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ch
}

func (c *lingerClock) fire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	close(c.ch)
	c.ch = make(chan struct{})
	c.armed = c.waiting > 0
	if c.armed {
		c.timer.Reset(c.period)
	}
}
