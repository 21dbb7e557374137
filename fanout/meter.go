package fanout

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"

	"golang.org/x/time/rate"
)

// Limits bound what one subscriber may cost lsmux: its filters' CPU (a
// budget of CEL cost units, across all its named filters) and how far
// behind live it may fall. The zero Limits bound nothing.
type Limits struct {
	// FilterBudget is the CEL cost units per second the subscriber's
	// filters may spend (0: unlimited), with bursts of FilterBurst
	// (0: one second's worth). Results shared with other subscribers of
	// the same filter are free. Over budget, the subscriber is held back
	// until the budget allows again (it falls behind, alone).
	FilterBudget float64
	FilterBurst  int
	// FilterHold is how long in total it may be held back before it is
	// dropped with ErrFilterCost (0: never).
	FilterHold time.Duration
	// FilterStrikes is how many evaluations may hit the cost limit before
	// it is dropped with ErrFilterCost (0: never): such a filter never
	// answers, it only costs.
	FilterStrikes int
	// MaxLag treats a subscriber whose next hit (one that arrived while
	// it was subscribed) was read from Live Stream longer ago than this as
	// slow: it gets a gap notice and continues with the hits of the last
	// MaxLag (0: only the ring's bounds make it slow). A resume's backlog
	// does not count.
	MaxLag time.Duration
}

// ErrFilterCost ends a subscriber whose filters cost more than its limits
// allow (see Limits). The error's text says which limit.
var ErrFilterCost = errors.New("filter too expensive")

// costMeter is one subscriber's filter spending. Used only by the
// subscriber's own goroutine.
type costMeter struct {
	lim      Limits
	bucket   *rate.Limiter
	held     time.Duration // time held back so far
	strikes  int
	pauseFor time.Duration // held back before the next evaluation
	spent    uint64        // units spent in the current Poll
}

func newCostMeter(lim Limits) *costMeter {
	m := &costMeter{lim: lim}
	if lim.FilterBudget > 0 {
		burst := lim.FilterBurst
		if burst <= 0 {
			burst = int(lim.FilterBudget)
		}
		m.bucket = rate.NewLimiter(rate.Limit(lim.FilterBudget), max(burst, 1))
	}
	return m
}

// charge records cost units spent on one hit, and whether the evaluation
// hit the cost limit. It returns false when the subscriber must stop for
// now: held back by its budget, done with this Poll's share of work
// (perPollCost), or to be dropped (see check).
func (m *costMeter) charge(cost uint64, overLimit bool) bool {
	m.spent += cost
	if overLimit {
		m.strikes++
	}
	if m.bucket != nil {
		r := m.bucket.ReserveN(time.Now(), int(min(cost, uint64(m.bucket.Burst()))))
		if d := r.Delay(); d > 0 {
			// Each reservation's delay already counts the ones before it
			// (the bucket is in debt by all of them): the wait is the
			// longest, not their sum.
			m.pauseFor = max(m.pauseFor, d)
			return false
		}
	}
	return m.spent < perPollCost && !m.struckOut()
}

func (m *costMeter) struckOut() bool {
	return m.lim.FilterStrikes > 0 && m.strikes >= m.lim.FilterStrikes
}

// check says whether the subscriber has to go.
func (m *costMeter) check() error {
	if m.struckOut() {
		return fmt.Errorf("%w: its filters hit the cost limit on %d hits (a filter that does that never matches; simplify it)", ErrFilterCost, m.strikes)
	}
	if m.lim.FilterHold > 0 && m.held > m.lim.FilterHold {
		return fmt.Errorf("%w: its filters needed more than their budget of %.0f cost units a second for %v", ErrFilterCost, m.lim.FilterBudget, m.held.Round(time.Second))
	}
	return nil
}

// hold waits out what the budget asks before the next evaluation.
func (m *costMeter) hold(ctx context.Context) error {
	if m.pauseFor <= 0 {
		return nil
	}
	d := m.pauseFor
	m.pauseFor = 0
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
	}
	m.held += d
	return m.check()
}

// evalSlots bounds filter work (evaluations by subscribers, compiles of new
// filters) to half the machine's cores (at least one): however many
// expensive filters arrive, the other half serves unfiltered subscribers,
// health checks and the upstream reader.
var evalSlots = make(chan struct{}, max(1, runtime.GOMAXPROCS(0)/2))

// perPollCost bounds the units one Poll spends before it returns (even
// with nothing matched), so a subscriber's loop looks at its client and at
// shutdown between slices of work, and gives the evaluation slot to the
// next subscriber.
const perPollCost = 20 * DefaultCostLimit
