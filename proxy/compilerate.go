package proxy

import (
	"fmt"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"
)

// compileRate bounds how many filters and projections each remote address
// may have compiled per second: a compile costs milliseconds of CPU, and
// texts already cached cost nothing. A token bucket per address, the
// addresses kept in an LRU so a flood of addresses cannot grow memory
// (an address pushed out starts with a full bucket again).
type compileRate struct {
	perSec float64
	burst  int
	lims   *lru.Cache[string, *rate.Limiter]
}

// compileRateError refuses a compile past the rate (429 with Retry-After).
type compileRateError struct {
	retry  time.Duration
	perSec float64
}

func (e *compileRateError) Error() string {
	return fmt.Sprintf("too many new filters from this address: compiling one costs CPU, so each address may have %g compiled a second (LSMUX_COMPILE_RATE); retry in %ds (filters already in use by anyone cost nothing)",
		e.perSec, e.retrySeconds())
}

// retrySeconds is the wait in whole seconds, rounded up, as Retry-After
// and the message both give it.
func (e *compileRateError) retrySeconds() int {
	return max(1, int((e.retry+time.Second-1)/time.Second))
}

func newCompileRate(perSec float64, burst int) *compileRate {
	lims, _ := lru.New[string, *rate.Limiter](10_000)
	return &compileRate{perSec: perSec, burst: max(burst, 1), lims: lims}
}

// allow takes n compiles from addr's bucket, or says how long to wait.
func (c *compileRate) allow(addr string, n int) error {
	if n == 0 || c.perSec <= 0 {
		return nil
	}
	lim, ok := c.lims.Get(addr)
	if !ok {
		lim = rate.NewLimiter(rate.Limit(c.perSec), c.burst)
		c.lims.Add(addr, lim)
	}
	now := time.Now()
	r := lim.ReserveN(now, min(n, c.burst))
	if !r.OK() {
		return &compileRateError{retry: time.Second, perSec: c.perSec}
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return &compileRateError{retry: d, perSec: c.perSec}
	}
	return nil
}
