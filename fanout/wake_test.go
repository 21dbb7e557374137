package fanout

import (
	"context"
	"testing"
	"testing/synctest"
	"time"
)

// TestWakeDelayGathersHits: with a wake delay, a subscriber waiting at the
// live edge wakes once, a delay after the first hit, with every hit of
// the window; without one it wakes at the first hit.
func TestWakeDelayGathersHits(t *testing.T) {
	for _, delay := range []time.Duration{0, 20 * time.Millisecond} {
		synctest.Test(t, func(t *testing.T) {
			h := NewHub(Options{MaxHits: 100, MaxBytes: 1 << 20, FirstSeq: 1, WakeDelay: delay})
			defer h.Close()
			sub := h.Subscribe(Live, Info{}, nil)
			defer sub.Close()
			size := func(e *Entry) int { return e.Size() }
			entries, _, wake, err := sub.Poll(context.Background(), size, 1<<20)
			if err != nil || len(entries) != 0 || wake == nil {
				t.Fatalf("first poll: %d entries, wake %v, err %v", len(entries), wake != nil, err)
			}
			start := time.Now()
			woke := make(chan time.Duration, 1)
			go func() { <-wake; woke <- time.Since(start) }()
			for i := range 5 {
				h.Append([]byte(`{"hitIdHigh":1,"hitIdLow":`+string(rune('1'+i))+`}`), time.Now())
				time.Sleep(2 * time.Millisecond) // fake time: hits 2 ms apart
			}
			after := <-woke
			entries, _, _, _ = sub.Poll(context.Background(), size, 1<<20)
			switch {
			case delay == 0 && after != 0:
				t.Errorf("without a delay the subscriber woke %v after the first hit, want at once", after)
			case delay > 0 && after != delay:
				t.Errorf("with a %v delay the subscriber woke %v after the first hit", delay, after)
			case delay > 0 && len(entries) != 5:
				t.Errorf("with a %v delay the wake-up found %d hits, want all 5 of the window", delay, len(entries))
			}
		})
	}
}
