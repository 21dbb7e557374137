package upstream

import (
	"math/rand/v2"
	"time"
)

// Outcome is how one connection attempt ended, as far as the reconnect
// policy cares.
type Outcome int

const (
	// Lost: the connection was established and streamed, then ended (drop,
	// stall, read error). Live Stream asks for about 60 s of quiet before
	// the next connect so its balancer notices the old one is gone.
	Lost Outcome = iota
	// Refused: the server or the network said "not now" (409, 503, 500,
	// dial errors). Each one doubles the wait, up to the maximum.
	Refused
	// Unauthorized: 401. A fresh token is fetched and tried once after a
	// short pause; after that it counts as Refused.
	Unauthorized
	// Misconfigured: 400, 404, 405, 406, 424, 505 and rejected client
	// credentials. Retrying cannot help until someone changes something,
	// so attempts are spaced at the maximum delay, but the process stays up.
	Misconfigured
)

func (o Outcome) String() string {
	switch o {
	case Lost:
		return "lost"
	case Refused:
		return "refused"
	case Unauthorized:
		return "unauthorized"
	case Misconfigured:
		return "misconfigured"
	}
	return "unknown"
}

// Policy holds the reconnect timings. All of them are configuration, so
// tests shorten them through the same code path production uses.
type Policy struct {
	// Delay is the wait after a lost connection and the first step of the
	// doubling after refusals (default 60 s, Adobe's guidance).
	Delay time.Duration
	// MaxDelay caps the doubling and spaces attempts that fail for
	// configuration reasons (default 5 min: Live Stream's backfill covers
	// a reconnect within a few minutes, not much longer).
	MaxDelay time.Duration
	// AuthRetry is the short pause before retrying with a fresh token
	// after a 401 (default 5 s).
	AuthRetry time.Duration
	// HealthyAfter is how long a connection must stream for the doubling
	// to start over (default MaxDelay: a connection that streamed as long
	// as the longest wait counts as healthy).
	HealthyAfter time.Duration
	// Jitter adds up to this fraction of the delay (default 0.1; negative:
	// none). It only ever adds: no wait is shorter than the configured
	// delay.
	Jitter float64
}

// DefaultPolicy is Adobe's guidance: 60 s after a loss, doubling to 5 min.
func DefaultPolicy() Policy {
	return Policy{Delay: 60 * time.Second, MaxDelay: 5 * time.Minute, AuthRetry: 5 * time.Second, HealthyAfter: 5 * time.Minute, Jitter: 0.1}
}

func (p Policy) withDefaults() Policy {
	d := DefaultPolicy()
	if p.Delay <= 0 {
		p.Delay = d.Delay
	}
	if p.MaxDelay <= 0 {
		p.MaxDelay = d.MaxDelay
	}
	if p.MaxDelay < p.Delay {
		p.MaxDelay = p.Delay
	}
	if p.AuthRetry <= 0 {
		p.AuthRetry = d.AuthRetry
	}
	if p.HealthyAfter <= 0 {
		p.HealthyAfter = p.MaxDelay
	}
	if p.Jitter == 0 {
		p.Jitter = d.Jitter
	}
	if p.Jitter < 0 {
		p.Jitter = 0
	}
	return p
}

// Backoff decides how long one connection slot waits before its next
// attempt. It is the single place where the reconnect rules live; a slot
// owns one and calls Next after every attempt. Not safe for concurrent use.
type Backoff struct {
	p           Policy
	failures    int  // consecutive attempts that did not stream for long
	authRetried bool // the quick retry after a 401 has been spent
	rand        func() float64
}

// NewBackoff returns a Backoff for p, with zero fields set to the defaults.
func NewBackoff(p Policy) *Backoff {
	return &Backoff{p: p.withDefaults(), rand: rand.Float64}
}

// Next returns the wait before the next attempt, given how the last one
// ended and, for Lost, how long it streamed.
func (b *Backoff) Next(o Outcome, streamed time.Duration) time.Duration {
	var d time.Duration
	switch o {
	case Lost:
		b.authRetried = false
		if streamed >= b.p.HealthyAfter {
			b.failures = 0
		}
		d = b.step()
	case Unauthorized:
		if !b.authRetried {
			b.authRetried = true
			return b.jitter(b.p.AuthRetry)
		}
		d = b.step()
	case Misconfigured:
		d = b.p.MaxDelay
	default: // Refused
		d = b.step()
	}
	return b.jitter(d)
}

// step returns Delay·2^failures capped at MaxDelay and counts the failure.
func (b *Backoff) step() time.Duration {
	d := b.p.Delay
	for i := 0; i < b.failures && d < b.p.MaxDelay; i++ {
		d *= 2
	}
	b.failures++
	return min(d, b.p.MaxDelay)
}

func (b *Backoff) jitter(d time.Duration) time.Duration {
	if b.p.Jitter == 0 {
		return d
	}
	return d + time.Duration(float64(d)*b.p.Jitter*b.rand())
}
