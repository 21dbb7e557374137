package fanout

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
	"time"
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
				sub := h.Subscribe(Oldest, Info{})
				wg.Go(func() {
					defer sub.Close()
					<-start
					for got := uint64(0); got < total; {
						e, gap, wake := sub.Poll(wsSizeBench, 256<<10)
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
