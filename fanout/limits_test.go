package fanout

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// expensive costs the cost limit on every hit: nested iterations over
// literal lists, which the compiler's static check cannot bound.
var expensive = func(n int) string {
	l := "[" + strings.Repeat("1,", 99) + "1]"
	return fmt.Sprintf(`%s.all(x, %s.all(y, x != y || hit.n != %d))`, l, l, n)
}

// TestCacheKeepsWhatIsUsedAndEvictsTheRest: 2,000 distinct filters come
// and go; one that a subscriber keeps using stays cached (and keeps its
// result slot), validating a flood of texts caches nothing, and a slot
// freed by eviction never gives another filter a stale result.
func TestCacheKeepsWhatIsUsedAndEvictsTheRest(t *testing.T) {
	c := mustCompiler(t)
	h := NewHub(Options{FirstSeq: 1})
	h.Append([]byte(`{"n":7}`), time.Now())
	steady, err := c.Filter(`hit.n == 7`)
	if err != nil {
		t.Fatal(err)
	}
	sub := h.SubscribeWith(Oldest, Info{}, &Selector{Filter: steady}, Limits{})
	defer sub.Close()
	// A filter true for the hit caches that in its slot, then goes idle.
	gone, _ := c.Filter(`hit.n >= 7`)
	if gone.slot < 0 || !matchOne(h, gone, h.slot(1).Load()) {
		t.Fatalf("slot %d", gone.slot)
	}
	gone.Release()
	// 2,000 filters false for the hit come and go: the idle one is
	// evicted, and its slot goes to one of them. Each must read false.
	for i := range 2000 {
		f, err := c.Filter(fmt.Sprintf(`hit.n == %d`, 1000+i))
		if err != nil {
			t.Fatal(err)
		}
		if matchOne(h, f, h.slot(1).Load()) {
			t.Fatalf("filter %d (slot %d) read a result cached for another filter", i, f.slot)
		}
		f.Release()
	}
	for i := range 3000 {
		if err := c.Check(fmt.Sprintf(`hit.n == %d`, 5000+i)); err != nil {
			t.Fatal(err)
		}
	}
	inUse, idle := c.filters.counts()
	if inUse != 1 || idle != idleCached {
		t.Fatalf("cache holds %d in use and %d idle; want 1 and %d", inUse, idle, idleCached)
	}
	if !c.Cached(`hit.n == 7`) || steady.slot < 0 {
		t.Fatalf("the filter in use was evicted or lost its slot (%d)", steady.slot)
	}
	if c.Cached(`hit.n == 5000`) || c.Cached(`hit.n >= 7`) {
		t.Fatal("a validated text was cached, or an idle one outlived 2,000 newer ones")
	}
	if !matchOne(h, steady, h.slot(1).Load()) {
		t.Fatal("the steady filter no longer matches")
	}
}

// TestFiltersThatHitTheCostLimitAreDropped: a subscriber whose filter
// hits the cost limit again and again is ended with ErrFilterCost after
// FilterStrikes evaluations; the cost a Poll spends is bounded, so it
// returns (no wake channel) with the ring still unread.
func TestFiltersThatHitTheCostLimitAreDropped(t *testing.T) {
	c := mustCompiler(t)
	h := NewHub(Options{FirstSeq: 1})
	for i := range 200 {
		h.Append(fmt.Appendf(nil, `{"n":%d}`, i), time.Now())
	}
	f, err := c.Filter(expensive(0))
	if err != nil {
		t.Fatal(err)
	}
	unlimited := h.SubscribeWith(Oldest, Info{}, &Selector{Filter: f}, Limits{})
	defer unlimited.Close()
	es, gap, wake, err := unlimited.Poll(context.Background(), anySize, 1<<20)
	if err != nil || len(es) != 0 || gap != nil || wake != nil {
		t.Fatalf("a Poll over expensive misses: %d entries, gap %v, wake %v, err %v", len(es), gap, wake, err)
	}
	if cur := unlimited.Cursor(); cur <= 1 || cur > 3+perPollCost/DefaultCostLimit {
		t.Fatalf("one Poll examined up to %d: more than %d units of work", cur-1, perPollCost)
	}
	g, _ := c.Filter(expensive(1))
	limited := h.SubscribeWith(Oldest, Info{}, &Selector{Filter: g}, Limits{FilterStrikes: 5})
	defer limited.Close()
	var polls int
	for ; polls < 10; polls++ {
		if _, _, _, err = limited.Poll(context.Background(), anySize, 1<<20); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrFilterCost) || !strings.Contains(err.Error(), "hit the cost limit") {
		t.Fatalf("after %d polls: %v", polls, err)
	}
}

// TestFilterBudgetHoldsBackThenDrops: a subscriber over its budget waits
// (it falls behind, alone), is dropped once held back longer than
// FilterHold, and stops waiting as soon as its context ends.
func TestFilterBudgetHoldsBackThenDrops(t *testing.T) {
	c := mustCompiler(t)
	h := NewHub(Options{FirstSeq: 1})
	for i := range 2000 {
		h.Append(fmt.Appendf(nil, `{"n":%d,"s":"abcdefghij"}`, i), time.Now())
	}
	f, _ := c.Filter(`hit.s.startsWith("abc") && hit.s.endsWith("xyz") && hit.n >= 0`) // a few units, never true
	sub := h.SubscribeWith(Oldest, Info{}, &Selector{Filter: f}, Limits{FilterBudget: 200, FilterBurst: 200, FilterHold: 300 * time.Millisecond})
	defer sub.Close()
	start := time.Now()
	var err error
	for time.Since(start) < 10*time.Second && err == nil {
		_, _, _, err = sub.Poll(context.Background(), anySize, 1<<20)
	}
	if !errors.Is(err, ErrFilterCost) || !strings.Contains(err.Error(), "budget") {
		t.Fatalf("after %v: %v", time.Since(start), err)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Fatalf("dropped after %v, before it was held back FilterHold", took)
	}

	g, _ := c.Filter(`hit.s.startsWith("abc") && hit.s.endsWith("xyz") && hit.n >= 1`)
	waiting := h.SubscribeWith(Oldest, Info{}, &Selector{Filter: g}, Limits{FilterBudget: 1, FilterBurst: 1, FilterHold: time.Hour})
	defer waiting.Close()
	ctx, cancel := context.WithCancel(context.Background())
	waiting.Poll(ctx, anySize, 1<<20) // spends its budget, owes seconds
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	start = time.Now()
	if _, _, _, err := waiting.Poll(ctx, anySize, 1<<20); !errors.Is(err, context.Canceled) || time.Since(start) > 5*time.Second {
		t.Fatalf("a held-back Poll: %v after %v", err, time.Since(start))
	}
}

// TestSubscriberTooFarBehindLiveIsSlow: with MaxLag, a subscriber whose
// next hit arrived while it was subscribed and is older than MaxLag skips
// to the hits of the last MaxLag with a gap notice; a resume's backlog,
// however old, is not late.
func TestSubscriberTooFarBehindLiveIsSlow(t *testing.T) {
	h := NewHub(Options{FirstSeq: 1})
	old := time.Now().Add(-time.Hour)
	for i := range 10 {
		h.Append(hit(i), old) // before the subscription: a backlog
	}
	resume := h.SubscribeWith(Oldest, Info{}, nil, Limits{MaxLag: time.Minute})
	defer resume.Close()
	lagging := h.SubscribeWith(Live, Info{}, nil, Limits{MaxLag: time.Minute})
	defer lagging.Close()
	for i := 10; i < 20; i++ {
		h.Append(hit(i), time.Now().Add(-10*time.Minute)) // arrived while subscribed, read long ago
	}
	for i := 20; i < 25; i++ {
		h.Append(hit(i), time.Now())
	}
	es, gap, _, _ := resume.Poll(context.Background(), anySize, 1<<30)
	if gap != nil || len(es) != 25 {
		t.Fatalf("the resume: gap %v, %d entries; want none and all 25", gap, len(es))
	}
	es, gap, _, _ = lagging.Poll(context.Background(), anySize, 1<<30)
	if gap == nil || gap.From != 11 || gap.To != 20 || len(es) != 5 || es[0].Seq != 21 {
		t.Fatalf("the late subscriber: gap %+v, %d entries from %d", gap, len(es), es[0].Seq)
	}
}

// TestSlotsGoToNewFiltersWhenAllAreIdle: once every result slot has been
// used by filters that came and went (still cached, idle), a new filter
// still gets a slot, taken from the least recently used idle one, and
// does not read that one's results; the idle filter, used again, works
// without a slot.
func TestSlotsGoToNewFiltersWhenAllAreIdle(t *testing.T) {
	c := mustCompiler(t)
	h := NewHub(Options{FirstSeq: 1})
	h.Append([]byte(`{"n":7}`), time.Now())
	c.track(h) // as a subscriber's first Subscribe does
	var first string
	for i := range resultSlots {
		text := fmt.Sprintf(`hit.n == 7 && %d >= 0`, i) // true for the hit: each caches true in its slot
		if i == 0 {
			first = text
		}
		f, err := c.Filter(text)
		if err != nil {
			t.Fatal(err)
		}
		if f.slot < 0 || !matchOne(h, f, h.slot(1).Load()) {
			t.Fatalf("filter %d: slot %d", i, f.slot)
		}
		f.Release()
	}
	fresh, err := c.Filter(`hit.n == 8`)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Release()
	if fresh.slot < 0 {
		t.Fatal("a new filter got no result slot although every filter holding one is idle")
	}
	if matchOne(h, fresh, h.slot(1).Load()) {
		t.Fatalf("the new filter read a result cached in slot %d for an idle one", fresh.slot)
	}
	old, err := c.Filter(first) // the least recently used: it gave its slot away
	if err != nil {
		t.Fatal(err)
	}
	defer old.Release()
	if old.slot >= 0 && old.slot == fresh.slot {
		t.Fatal("two filters share a slot")
	}
	if !matchOne(h, old, h.slot(1).Load()) {
		t.Fatal("the idle filter, used again, no longer matches")
	}
}

// TestBudgetHoldIsTheDebtNotItsSum: a hit evaluated by 16 named filters of
// 100 units each, with the burst spent, holds the subscriber back for the
// 1,600 units its budget needs to refill (1.6 s at 1,000 a second), not
// for the sum of every reservation's delay (13.6 s), which would drop a
// 16-view dashboard the first time it went over.
func TestBudgetHoldIsTheDebtNotItsSum(t *testing.T) {
	m := newCostMeter(Limits{FilterBudget: 1000, FilterBurst: 100})
	m.charge(100, false) // the burst
	for range 16 {
		m.charge(100, false)
	}
	if m.pauseFor < 1500*time.Millisecond || m.pauseFor > 1700*time.Millisecond {
		t.Fatalf("held back for %v; want about 1.6 s", m.pauseFor)
	}
}

// TestSampleAloneIsBoundedPerPoll: a subscriber with only a rare sample
// over a long ring looks at a bounded number of hits per Poll (so its
// session notices its client and shutdown between slices), and gets
// through the ring in later Polls.
func TestSampleAloneIsBoundedPerPoll(t *testing.T) {
	h := NewHub(Options{FirstSeq: 1, MaxHits: 50_000})
	for i := range 20_000 {
		h.Append(fmt.Appendf(nil, `{"hitIdHigh":%d,"hitIdLow":1}`, i), time.Now())
	}
	s := h.SubscribeWith(Oldest, Info{}, &Selector{Sample: 1e-12}, Limits{})
	defer s.Close()
	es, gap, wake, err := s.Poll(context.Background(), anySize, 1<<20)
	if err != nil || len(es) != 0 || gap != nil || wake != nil {
		t.Fatalf("first Poll: %d entries, gap %v, wake %v, err %v; want nothing yet and no wake channel", len(es), gap, wake, err)
	}
	if cur := s.Cursor(); cur <= 1 || cur > 1+perPollScan+MaxBatch {
		t.Fatalf("one Poll looked at %d hits; the bound is %d", cur-1, perPollScan)
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	before := s.Cursor()
	if _, _, _, err := s.Poll(cancelled, anySize, 1<<20); err == nil && s.Cursor()-before > MaxBatch {
		t.Fatalf("a Poll whose context had ended looked at %d hits", s.Cursor()-before)
	}
	for polls := 0; wake == nil; polls++ {
		if polls > 100 {
			t.Fatalf("still reading after %d Polls, at %d", polls, s.Cursor())
		}
		_, _, wake, err = s.Poll(context.Background(), anySize, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
	}
	if s.Cursor() != 20_001 {
		t.Fatalf("at live with the cursor at %d", s.Cursor())
	}
}

// TestLagGapCountsWhatFellOffTheRing: a live subscriber that fell off the
// ring and is also past MaxLag is told of every hit it lost, from its own
// cursor, in one notice.
func TestLagGapCountsWhatFellOffTheRing(t *testing.T) {
	h := NewHub(Options{MaxHits: 10, FirstSeq: 1})
	sub := h.SubscribeWith(Live, Info{Transport: "ws"}, nil, Limits{MaxLag: time.Minute})
	defer sub.Close()
	old := time.Now().Add(-time.Hour)
	for i := range 30 { // 1..30, an hour old; the ring keeps 21..30
		h.Append(fmt.Appendf(nil, `{"i":%d}`, i), old)
	}
	for range 5 { // 31..35, fresh; the ring keeps 26..35
		h.Append([]byte(`{"fresh":1}`), time.Now())
	}
	entries, gap, _, err := sub.Poll(context.Background(), func(e *Entry) int { return len(e.Raw()) }, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if gap == nil || gap.From != 1 || gap.To != 30 || len(entries) != 5 || entries[0].Seq != 31 {
		t.Fatalf("gap %+v, then %d entries; want the gap 1..30, then 31..35", gap, len(entries))
	}
}
