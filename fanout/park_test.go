package fanout

import (
	"context"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// TestParkedSubscriberIsNotifiedOnceAtTheNextHit: a parked subscriber
// holds no large batch array, is told once when the next hit arrives (not at
// later ones until it parks again), and a Close takes it off the list so
// nothing is called for a subscriber that left.
func TestParkedSubscriberIsNotifiedOnceAtTheNextHit(t *testing.T) {
	synctest.Test(t, testParkedSubscriberIsNotifiedOnce)
}

func testParkedSubscriberIsNotifiedOnce(t *testing.T) {
	h := NewHub(Options{MaxHits: 100, MaxBytes: 1 << 20, FirstSeq: 1})
	defer h.Close()
	size := func(e *Entry) int { return e.Size() }
	var calls [2]atomic.Int32
	subs := [2]*Subscriber{h.Subscribe(Live, Info{}, nil), h.Subscribe(Live, Info{}, nil)}
	for i, s := range subs {
		entries, _, wake, err := s.Poll(context.Background(), size, 1<<20)
		if err != nil || len(entries) != 0 || wake == nil {
			t.Fatalf("poll at the live edge: %d entries, wake %v, err %v", len(entries), wake != nil, err)
		}
		if !s.Park(wake, func() { calls[i].Add(1) }) {
			t.Fatal("Park refused the hub's current wake-up channel")
		}
		if cap(s.buf) > smallBatch {
			t.Errorf("subscriber %d holds a %d-entry batch array while parked, want at most %d", i, cap(s.buf), smallBatch)
		}
	}
	subs[1].Close()
	h.Append([]byte(`{"a":1}`), time.Now())
	h.Append([]byte(`{"a":2}`), time.Now())
	synctest.Wait() // the notices are sent on a goroutine of their own
	if got := calls[0].Load(); got != 1 {
		t.Errorf("parked subscriber notified %d times by two hits, want once", got)
	}
	if got := calls[1].Load(); got != 0 {
		t.Errorf("a subscriber that left was notified %d times", got)
	}
	entries, _, wake, _ := subs[0].Poll(context.Background(), size, 1<<20)
	if len(entries) != 2 {
		t.Fatalf("after the notice Poll found %d hits, want 2", len(entries))
	}
	if wake != nil {
		t.Fatal("Poll that returned hits also returned a wake channel")
	}
	_, _, wake, _ = subs[0].Poll(context.Background(), size, 1<<20)
	h.Append([]byte(`{"a":3}`), time.Now()) // before it parks: the channel it holds is closed
	if subs[0].Park(wake, func() { calls[0].Add(1) }) {
		t.Error("Park accepted a wake-up channel that had been closed (the hit would be missed)")
	}
	subs[0].Close()
}
