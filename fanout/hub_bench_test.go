package fanout

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"lsmux/upstream/simulator"
)

// BenchmarkFanout appends b.N hits of ~1.2 KB while N subscribers read
// them through their cursors (the writers' socket work is not included:
// this measures the hub). One op is one hit delivered to every subscriber;
// deliveries/s = N × hits/s.
func BenchmarkFanout(b *testing.B) {
	raw := append([]byte(`{"hitIdHigh":1,"hitIdLow":2,"pad":"`), bytes.Repeat([]byte("x"), 1150)...)
	raw = append(raw, `"}`...)
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) {
			h := NewHub(Options{MaxHits: 100_000, FirstSeq: 1})
			var wg sync.WaitGroup
			total := uint64(b.N)
			start := make(chan struct{})
			for range n {
				sub := h.Subscribe(Oldest, Info{}, nil)
				wg.Go(func() {
					defer sub.Close()
					<-start
					for got := uint64(0); got < total; {
						e, gap, wake, _ := sub.Poll(context.Background(), wsSizeBench, 256<<10)
						if gap != nil {
							panic("subscriber fell off the ring in a benchmark")
						}
						got += uint64(len(e))
						if len(e) == 0 {
							<-wake
						}
					}
				})
			}
			b.ReportAllocs()
			b.ResetTimer()
			close(start)
			for range b.N {
				h.Append(raw, time.Time{})
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "hits/s")
			b.ReportMetric(float64(b.N)*float64(n)/b.Elapsed().Seconds(), "deliveries/s")
		})
	}
}

func wsSizeBench(e *Entry) int { return len(e.WSFrame()) }

// slowest is the lowest cursor among subscribers, minus the first seq.
func (h *Hub) slowest() uint64 {
	h.subs.mu.Lock()
	defer h.subs.mu.Unlock()
	low := ^uint64(0)
	for _, s := range h.subs.subs {
		low = min(low, s.Cursor())
	}
	return low - 1
}

// BenchmarkFilters: 1,000 subscribers sharing 10 distinct filters against
// 1,000 without, on the simulator's realistic hits. One op is one hit
// offered to all 1,000 subscribers.
func BenchmarkFilters(b *testing.B) {
	sim, err := simulator.New(simulator.Options{Rate: 1})
	if err != nil {
		b.Fatal(err)
	}
	hits := make([][]byte, 4096)
	for k := range hits {
		hits[k] = sim.Hit("demo", uint64(k))
	}
	sim.Close()
	exprs := []string{`hit.geoCountry == "fra"`, `hit.geoCountry == "usa"`, `hit.pageName.startsWith("checkout")`,
		`has(hit.events.purchase)`, `has(hit.events.prodView)`, `hit.browser == "Safari"`, `hit.geoDMA > 700`,
		`hit.language == "de-DE"`, `hit.products.size() > 0`, `hit.evars.evars.eVar1 != ""`}
	for _, nf := range []int{0, 10} {
		b.Run(fmt.Sprintf("subscribers=1000/filters=%d", nf), func(b *testing.B) {
			c, _ := NewCompiler(0)
			h := NewHub(Options{MaxHits: 100_000, MaxBytes: 1 << 40, FirstSeq: 1})
			total := uint64(b.N)
			var wg sync.WaitGroup
			start := make(chan struct{})
			var delivered atomic.Int64
			for i := range 1000 {
				var sel *Selector
				if nf > 0 {
					f, err := c.Filter(exprs[i%nf])
					if err != nil {
						b.Fatal(err)
					}
					sel = &Selector{Filter: f}
				}
				sub := h.Subscribe(Oldest, Info{}, sel)
				wg.Go(func() {
					defer sub.Close()
					<-start
					n := 0
					for sub.Cursor() < 1+total {
						e, _, wake, _ := sub.Poll(context.Background(), wsSizeBench, 256<<10)
						n += len(e)
						if len(e) == 0 && wake != nil && sub.Cursor() < 1+total {
							<-wake
						}
					}
					delivered.Add(int64(n))
				})
			}
			b.ReportAllocs()
			b.ResetTimer()
			close(start)
			// Hits arrive in rounds of 100 and the next round waits for the
			// slowest subscriber, as on a live stream where subscribers
			// read near the head (a producer thousands of hits ahead
			// would measure re-decoding beyond the derived window).
			for i := range b.N {
				h.Append(hits[i%len(hits)], time.Time{})
				if i%100 == 99 {
					for h.slowest() < uint64(i) {
						runtime.Gosched()
					}
				}
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "hits/s")
			b.ReportMetric(float64(delivered.Load())/b.Elapsed().Seconds(), "deliveries/s")
		})
	}
}
